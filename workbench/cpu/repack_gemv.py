"""The one-token gemv of the weights ggml-cpu REPACKS on AVX2 (Q4_K, Q4_0, IQ4_NL with rows % 8 == 0), written
as LLVM vector code: ggml_gemv_q4_K_8x8_q8_K and gemv_q4_b32_8x8_q8_0_lut_avx (ggml-cpu/arch/x86/repack.cpp).

repack.py states ggml's order as readable scalar kernels (repack.q4_K_q8_K with n_gemm=0, repack.b32_q8_0);
LLVM does not vectorize them, so here the same sums are spelled out with numba's @intrinsic:

Q4_K  the gemv's 8 float lanes are 8 ROWS: per row and super-block, the exact integer
      isum = sum_j sc_j * (q_j . x_j) and imin = sum_j m_j * bsum_j (bsum_j the sum of the 32 int8
      activations of sub-block j), then acc = fma((float) isum, d_w * d_y, acc),
      accm = fma((float) imin, dmin_w * d_y, accm); result acc - accm.
Q4_0 / IQ4_NL  per row and block of 32 the exact integer dot, then acc = fma((float) isum, d_w * d_x, acc).

Integer parts in any order (exact), float operations ggml's. AVX2 instructions where numba compiles for an
AVX2 host (features.has_avx2()), portable widening multiplies elsewhere (*_portable). Activations:
act_quant.q8_K_token / q8_lanes. tests/test_vec_dot_kquants.py checks both variants against the scalar spec.
"""
from __future__ import annotations

from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from workbench.gguf.constants import QK_K

from workbench.cpu import features
from workbench.cpu.act_quant import q8_K_token, q8_lanes
from workbench.cpu.ir import (F32, V8I, V16B, V16S, V32B, byte_vec, c64, fma, fp16, hsum_i32, iq4nl_lookup,
                              lanes_mask, load, madd, maddubs, row_pointers, scales_mins_k4, signed_products)


# --- Q4_K: ggml_gemv_q4_K_8x8_q8_K ---------------------------------------------------------------------

def _q4_K_codegen(avx2):
    def codegen(context, builder, sig, args):
        row, nb, (xq, xd, bs32) = row_pointers(context, builder, sig, args)
        xd = builder.bitcast(xd, F32.as_pointer())
        acc = cgutils.alloca_once_value(builder, ir.Constant(F32, 0.0))
        accm = cgutils.alloca_once_value(builder, ir.Constant(F32, 0.0))
        with cgutils.for_range(builder, nb) as loop:
            b = loop.index
            o = builder.mul(b, c64(144))                   # block_q4_K: d dmin scales[12] qs[128]
            dy = builder.load(builder.gep(xd, [b]))
            dd = builder.fmul(fp16(builder, row, o), dy)
            ddm = builder.fmul(fp16(builder, row, builder.add(o, c64(2))), dy)
            sm = builder.zext(scales_mins_k4(builder, row, o), V16S)
            iacc = ir.Constant(V8I, [0] * 8)
            for p in range(4):                              # sub-blocks 2p (low nibbles), 2p + 1 (high)
                raw = load(builder, row, builder.add(o, c64(16 + 32 * p)), V32B)
                for h, nib in enumerate((builder.and_(raw, byte_vec(15)), builder.lshr(raw, byte_vec(4)))):
                    j = 2 * p + h
                    y = load(builder, xq, builder.add(builder.mul(b, c64(QK_K)), c64(32 * j)), V32B)
                    sc = builder.shuffle_vector(sm, sm, lanes_mask([j] * 16))
                    iacc = builder.add(iacc, madd(builder, sc, maddubs(builder, nib, y, avx2), avx2))
            mins = builder.zext(builder.shuffle_vector(sm, sm, lanes_mask(range(8, 16))), V8I)
            bsum = builder.load(builder.bitcast(builder.gep(bs32, [builder.mul(b, c64(32))]), V8I.as_pointer()), align=4)
            isum = builder.sitofp(hsum_i32(builder, iacc), F32)
            imin = builder.sitofp(hsum_i32(builder, builder.mul(mins, bsum)), F32)
            builder.store(fma(builder, isum, dd, builder.load(acc)), acc)
            builder.store(fma(builder, imin, ddm, builder.load(accm)), accm)
        return builder.fsub(builder.load(acc), builder.load(accm))
    return codegen


@intrinsic
def _q4_K_row_avx2(typingctx, W, r, nb, xq, xd, bs32):
    return types.float32(W, r, nb, xq, xd, bs32), _q4_K_codegen(True)


@intrinsic
def _q4_K_row_portable(typingctx, W, r, nb, xq, xd, bs32):
    return types.float32(W, r, nb, xq, xd, bs32), _q4_K_codegen(False)


@njit(cache=True, parallel=True)
def q4_K_matvec_avx2(W, K, x, out):
    """out[r] = ggml_gemv_q4_K_8x8_q8_K's result for row r and x quantized to Q8_K: one token."""
    xq, xd, _, bs32 = q8_K_token(x)
    for r in prange(W.shape[0]):
        out[r] = _q4_K_row_avx2(W, r, K // QK_K, xq, xd, bs32)


@njit(cache=True, parallel=True)
def q4_K_matvec_portable(W, K, x, out):
    """q4_K_matvec_avx2 without the x86 intrinsics."""
    xq, xd, _, bs32 = q8_K_token(x)
    for r in prange(W.shape[0]):
        out[r] = _q4_K_row_portable(W, r, K // QK_K, xq, xd, bs32)


# --- Q4_0 / IQ4_NL: gemv_q4_b32_8x8_q8_0_lut_avx (the repacked gemv, rows % 8 == 0) -------------------
# Per row and block of 32: the exact integer dot of the signed 4-bit values (Q4_0: nibble - 8, IQ4_NL:
# kvalues_iq4nl[nibble]; element j < 16 the low nibble of byte j, j + 16 its high nibble) with the Q8_0
# activations, then acc = fma((float) isum, d_w * d_x, acc) block after block (repack.b32_q8_0).

def _b32_codegen(iq4nl, avx2):
    def codegen(context, builder, sig, args):
        row, nb, (xq, dx) = row_pointers(context, builder, sig, args)
        dx = builder.bitcast(dx, F32.as_pointer())
        acc = cgutils.alloca_once_value(builder, ir.Constant(F32, 0.0))
        ones = ir.Constant(V16S, [1] * 16)
        with cgutils.for_range(builder, nb) as loop:
            b = loop.index
            o = builder.mul(b, c64(18))                    # block_q4_0 / block_iq4_nl: d (fp16), qs[16]
            dd = builder.fmul(fp16(builder, row, o), builder.load(builder.gep(dx, [b])))
            q16 = load(builder, row, builder.add(o, c64(2)), V16B)
            both = builder.shuffle_vector(q16, q16, lanes_mask(list(range(16)) * 2))
            idx = builder.and_(builder.lshr(both, ir.Constant(V32B, [0] * 16 + [4] * 16)), byte_vec(15))
            q = iq4nl_lookup(builder, idx, avx2) if iq4nl else builder.sub(idx, byte_vec(8))
            y = load(builder, xq, builder.mul(b, c64(32)), V32B)
            isum = hsum_i32(builder, madd(builder, signed_products(builder, q, y, avx2), ones, avx2))
            builder.store(fma(builder, builder.sitofp(isum, F32), dd, builder.load(acc)), acc)
        return builder.load(acc)
    return codegen


def _make_b32_row(iq4nl, avx2):
    def row_intrinsic(typingctx, W, r, nb, xq, dx):
        return types.float32(W, r, nb, xq, dx), _b32_codegen(iq4nl, avx2)
    row_intrinsic.__name__ = f"_{'iq4_nl' if iq4nl else 'q4_0'}_row_{'avx2' if avx2 else 'portable'}"
    return intrinsic(row_intrinsic)


_q4_0_row_avx2, _q4_0_row_portable = _make_b32_row(False, True), _make_b32_row(False, False)
_iq4_nl_row_avx2, _iq4_nl_row_portable = _make_b32_row(True, True), _make_b32_row(True, False)


@njit(cache=True, parallel=True)
def q4_0_matvec_avx2(W, K, x, out):
    """out[r] = the repacked Q4_0 gemv's result for row r and x quantized to Q8_0: one token."""
    xq, _, dx, _ = q8_lanes(x, 0, False)
    for r in prange(W.shape[0]):
        out[r] = _q4_0_row_avx2(W, r, K // 32, xq, dx)


@njit(cache=True, parallel=True)
def q4_0_matvec_portable(W, K, x, out):
    xq, _, dx, _ = q8_lanes(x, 0, False)
    for r in prange(W.shape[0]):
        out[r] = _q4_0_row_portable(W, r, K // 32, xq, dx)


@njit(cache=True, parallel=True)
def iq4_nl_matvec_avx2(W, K, x, out):
    """out[r] = the repacked IQ4_NL gemv's result for row r and x quantized to Q8_0: one token."""
    xq, _, dx, _ = q8_lanes(x, 0, False)
    for r in prange(W.shape[0]):
        out[r] = _iq4_nl_row_avx2(W, r, K // 32, xq, dx)


@njit(cache=True, parallel=True)
def iq4_nl_matvec_portable(W, K, x, out):
    xq, _, dx, _ = q8_lanes(x, 0, False)
    for r in prange(W.shape[0]):
        out[r] = _iq4_nl_row_portable(W, r, K // 32, xq, dx)


# --- entry point for repack.matmul (below 4 tokens every token goes through the gemv) -------------------

# weight type -> (kernel with ggml's AVX2 instructions, portable kernel)
MATVEC = {"Q4_K": (q4_K_matvec_avx2, q4_K_matvec_portable), "Q4_0": (q4_0_matvec_avx2, q4_0_matvec_portable),
          "IQ4_NL": (iq4_nl_matvec_avx2, iq4_nl_matvec_portable)}


def matvec(rows, wtype_name, K, x, out):
    """out (T, N) = the one-token gemv of `wtype_name` for each token of x (T, K) float32 C-contiguous;
    False (nothing written) when there is no kernel here for that type."""
    return features.each_token(MATVEC, rows, wtype_name, K, x, out)
