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

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from workbench.gguf.constants import QK_K

from workbench.cpu import features, gemm_tiles
from workbench.cpu.act_quant import q8_K_token, q8_lanes
from workbench.cpu.ir import (F32, I32, V8I, V16B, V16I, V16S, V32B, byte_vec, c64, fma, fp16, half_to_f32, hsum_i32,
                              iq4nl_lookup, lanes_mask, load, madd, maddubs, row_pointers, scales_mins_k4,
                              signed_products, splat, x86)


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

def _b32_rows4_codegen(iq4nl, avx2):
    """Rows r..r+3: per block, each row's exact integer dot (an <8 x i32> of lane sums: the signed 4-bit values
    times the int8 x), the 4 rows' lanes added together (three pairwise additions instead of four horizontal
    sums), then acc = fma((float) isum, d_w * d_x, acc) for the 4 rows side by side in one <4 x float>;
    writes out[r..r+3]."""
    V4F = ir.VectorType(F32, 4)

    def pair_sums(builder, a, b):
        """[a0+a1, a2+a3, b0+b1, b2+b3, a4+a5, a6+a7, b4+b5, b6+b7] (vphaddd's lanes)."""
        even = builder.shuffle_vector(a, b, lanes_mask([0, 2, 8, 10, 4, 6, 12, 14]))
        odd = builder.shuffle_vector(a, b, lanes_mask([1, 3, 9, 11, 5, 7, 13, 15]))
        return builder.add(even, odd)

    def codegen(context, builder, sig, args):
        W, r, nb, xq, dx, out = args
        wa = context.make_array(sig.args[0])(context, builder, W)
        stride = cgutils.unpack_tuple(builder, wa.strides)[0]
        base = builder.bitcast(wa.data, ir.IntType(8).as_pointer())
        rows = [builder.gep(base, [builder.mul(builder.add(r, c64(i)), stride)]) for i in range(4)]
        xq, dx, out = (builder.bitcast(context.make_array(sig.args[i])(context, builder, args[i]).data,
                                       ir.IntType(8).as_pointer()) for i in (3, 4, 5))
        dx = builder.bitcast(dx, F32.as_pointer())
        acc = cgutils.alloca_once_value(builder, ir.Constant(V4F, [0.0] * 4))
        ones = ir.Constant(V16S, [1] * 16)
        fma4 = cgutils.get_or_insert_function(builder.module, ir.FunctionType(V4F, [V4F] * 3), "llvm.fma.v4f32")
        with cgutils.for_range(builder, nb) as loop:
            b = loop.index
            o = builder.mul(b, c64(18))
            y = load(builder, xq, builder.mul(b, c64(32)), V32B)
            sums, ds = [], ir.Constant(V4F, ir.Undefined)
            for i, row in enumerate(rows):
                ds = builder.insert_element(ds, fp16(builder, row, o), ir.Constant(ir.IntType(32), i))
                q16 = load(builder, row, builder.add(o, c64(2)), V16B)
                both = builder.shuffle_vector(q16, q16, lanes_mask(list(range(16)) * 2))
                idx = builder.and_(builder.lshr(both, ir.Constant(V32B, [0] * 16 + [4] * 16)), byte_vec(15))
                q = iq4nl_lookup(builder, idx, avx2) if iq4nl else builder.sub(idx, byte_vec(8))
                sums.append(madd(builder, signed_products(builder, q, y, avx2), ones, avx2))
            s = pair_sums(builder, pair_sums(builder, sums[0], sums[1]), pair_sums(builder, sums[2], sums[3]))
            isum = builder.add(builder.shuffle_vector(s, s, lanes_mask(range(4))),
                               builder.shuffle_vector(s, s, lanes_mask(range(4, 8))))
            dd = builder.fmul(ds, builder.shuffle_vector(
                builder.insert_element(ir.Constant(V4F, ir.Undefined), builder.load(builder.gep(dx, [b])),
                                       ir.Constant(ir.IntType(32), 0)),
                ir.Constant(V4F, ir.Undefined), lanes_mask([0] * 4)))
            builder.store(builder.call(fma4, [builder.sitofp(isum, V4F), dd, builder.load(acc)]), acc)
        builder.store(builder.load(acc), builder.bitcast(builder.gep(builder.bitcast(out, F32.as_pointer()), [r]),
                                                          V4F.as_pointer()), align=4)
        return context.get_dummy_value()
    return codegen


def _make_b32_rows4(iq4nl, avx2):
    def rows_intrinsic(typingctx, W, r, nb, xq, dx, out):
        return types.void(W, r, nb, xq, dx, out), _b32_rows4_codegen(iq4nl, avx2)
    rows_intrinsic.__name__ = f"_{'iq4_nl' if iq4nl else 'q4_0'}_rows4_{'avx2' if avx2 else 'portable'}"
    return intrinsic(rows_intrinsic)


_q4_0_rows4_avx2, _q4_0_rows4_portable = _make_b32_rows4(False, True), _make_b32_rows4(False, False)
_iq4_nl_rows4_avx2, _iq4_nl_rows4_portable = _make_b32_rows4(True, True), _make_b32_rows4(True, False)


@njit(cache=True)
def _tail4(W, N4):
    """The rows after N4 (fewer than 4) and zero rows up to 4 (llama.cpp repacks rows % 8 == 0 only)."""
    tail = np.zeros((4, W.shape[1]), np.uint8)
    tail[:W.shape[0] - N4] = W[N4:]
    return tail


@njit(cache=True, parallel=True)
def q4_0_matvec_avx2(W, K, x, out):
    """out[r] = the repacked Q4_0 gemv's result for row r and x quantized to Q8_0: one token, 4 rows at a time."""
    xq, _, dx, _ = q8_lanes(x, 0, False)
    N = W.shape[0]
    N4 = N - N % 4
    for g in prange(N4 // 4):
        _q4_0_rows4_avx2(W, 4 * g, K // 32, xq, dx, out)
    if N4 < N:
        part = np.empty(4, np.float32)
        _q4_0_rows4_avx2(_tail4(W, N4), 0, K // 32, xq, dx, part)
        out[N4:] = part[:N - N4]


@njit(cache=True, parallel=True)
def q4_0_matvec_portable(W, K, x, out):
    xq, _, dx, _ = q8_lanes(x, 0, False)
    N = W.shape[0]
    N4 = N - N % 4
    for g in prange(N4 // 4):
        _q4_0_rows4_portable(W, 4 * g, K // 32, xq, dx, out)
    if N4 < N:
        part = np.empty(4, np.float32)
        _q4_0_rows4_portable(_tail4(W, N4), 0, K // 32, xq, dx, part)
        out[N4:] = part[:N - N4]


@njit(cache=True, parallel=True)
def iq4_nl_matvec_avx2(W, K, x, out):
    """out[r] = the repacked IQ4_NL gemv's result for row r and x quantized to Q8_0: one token, 4 rows at a time."""
    xq, _, dx, _ = q8_lanes(x, 0, False)
    N = W.shape[0]
    N4 = N - N % 4
    for g in prange(N4 // 4):
        _iq4_nl_rows4_avx2(W, 4 * g, K // 32, xq, dx, out)
    if N4 < N:
        part = np.empty(4, np.float32)
        _iq4_nl_rows4_avx2(_tail4(W, N4), 0, K // 32, xq, dx, part)
        out[N4:] = part[:N - N4]


@njit(cache=True, parallel=True)
def iq4_nl_matvec_portable(W, K, x, out):
    xq, _, dx, _ = q8_lanes(x, 0, False)
    N = W.shape[0]
    N4 = N - N % 4
    for g in prange(N4 // 4):
        _iq4_nl_rows4_portable(W, 4 * g, K // 32, xq, dx, out)
    if N4 < N:
        part = np.empty(4, np.float32)
        _iq4_nl_rows4_portable(_tail4(W, N4), 0, K // 32, xq, dx, part)
        out[N4:] = part[:N - N4]


# --- Q4_0 on AVX-512 VNNI: 16 rows per <16 x float> ------------------------------------------------------
# The same per-row sums as above with vpdpbusd on the unsigned nibbles: 4 rows' 16 bytes of a block fill one
# zmm (row r0 + L in 128-bit lane L); its low and high nibbles meet the activations' first and second 16 bytes
# (broadcast to the 4 lanes). Four such accumulators (16 rows) reduce to one <16 x i32> by two rounds of
# unpack + add, whose lane 4L + j holds row r + 4j + L; minus 8 * the block's activation sum that is the
# exact isum of Q4_0's signed values. The d_w are gathered in that lane order, so each lane runs
# acc = fma((float) isum, d_w * d_x, acc) for its row, block after block, and one shuffle puts the rows in order.

V16F = ir.VectorType(F32, 16)
_ROW_OF_LANE = [4 * (i % 4) + i // 4 for i in range(16)]      # lane 4L + j -> row 4j + L (and back: same map)


def _rows16(context, builder, sig, args):
    """(W, r, nb, arrays...) of a 16-row intrinsic: byte pointers to rows r..r+15 of W, and to the arrays' data."""
    wa = context.make_array(sig.args[0])(context, builder, args[0])
    stride = cgutils.unpack_tuple(builder, wa.strides)[0]
    base = builder.bitcast(wa.data, ir.IntType(8).as_pointer())
    rows = [builder.gep(base, [builder.mul(builder.add(args[1], c64(i)), stride)]) for i in range(16)]
    return rows, [builder.bitcast(context.make_array(sig.args[i])(context, builder, args[i]).data,
                                  ir.IntType(8).as_pointer()) for i in range(3, len(args))]


def _f16_by_lane(builder, rows, o):
    """The fp16 at byte o of each of the 16 rows, as float32 in the folded lane order (lane 4L + j: row 4j + L)."""
    v = ir.Constant(ir.VectorType(ir.IntType(16), 16), ir.Undefined)
    for i in range(16):
        v = builder.insert_element(v, load(builder, rows[_ROW_OF_LANE[i]], o, ir.IntType(16)), ir.Constant(I32, i))
    return half_to_f32(builder, v)


def _store_rows16(builder, out, r, v):
    """out[r..r+15] = v, whose lanes are in the folded order."""
    builder.store(builder.shuffle_vector(v, v, lanes_mask(_ROW_OF_LANE)),
                  builder.bitcast(builder.gep(builder.bitcast(out, F32.as_pointer()), [r]), V16F.as_pointer()),
                  align=4)


def _fold4(builder, vecs):
    """4 <16 x i32> whose 128-bit lane L holds 4 partial sums of row 4k + L (k: the vector) -> one <16 x i32> of the
    row sums, lane 4L + k holding row 4k + L: two rounds of unpack (32-bit, then 64-bit) and add."""
    def two(a, b, idx):
        return builder.shuffle_vector(a, b, lanes_mask(idx))
    lo32 = [i for L in range(4) for i in (4 * L, 16 + 4 * L, 4 * L + 1, 17 + 4 * L)]
    p = [builder.add(two(u, v, lo32), two(u, v, [i + 2 for i in lo32])) for u, v in (vecs[:2], vecs[2:])]
    lo64 = [i for L in range(4) for i in (4 * L, 4 * L + 1, 16 + 4 * L, 17 + 4 * L)]
    return builder.add(two(p[0], p[1], lo64), two(p[0], p[1], [i + 2 for i in lo64]))


def _q4_0_rows16_codegen(context, builder, sig, args):
    r, nb = args[1], args[2]
    rows, (xq, bs8, dx, out) = _rows16(context, builder, sig, args)
    bs8 = builder.bitcast(bs8, ir.IntType(32).as_pointer())
    dx = builder.bitcast(dx, F32.as_pointer())
    acc = cgutils.alloca_once_value(builder, ir.Constant(V16F, [0.0] * 16))
    zero = ir.Constant(V16I, [0] * 16)
    fma16 = cgutils.get_or_insert_function(builder.module, ir.FunctionType(V16F, [V16F] * 3), "llvm.fma.v16f32")

    def two_sources(a, b, idx):
        return builder.shuffle_vector(a, b, lanes_mask(idx))

    with cgutils.for_range(builder, nb) as loop:
        b = loop.index
        o = builder.mul(b, c64(18))
        xb = builder.mul(b, c64(32))
        xlo = load(builder, xq, xb, V16B)
        xhi = load(builder, xq, builder.add(xb, c64(16)), V16B)
        xlo, xhi = (builder.bitcast(builder.shuffle_vector(v, v, lanes_mask(list(range(16)) * 4)), V16I)
                    for v in (xlo, xhi))
        dots = []
        for g in range(4):
            q = [load(builder, rows[4 * g + L], builder.add(o, c64(2)), V16B) for L in range(4)]
            q = two_sources(two_sources(q[0], q[1], range(32)), two_sources(q[2], q[3], range(32)), range(64))
            lo = builder.and_(q, byte_vec(15, 64))
            hi = builder.and_(builder.lshr(q, byte_vec(4, 64)), byte_vec(15, 64))
            d = x86(builder, "llvm.x86.avx512.vpdpbusd.512", V16I, [zero, builder.bitcast(lo, V16I), xlo])
            dots.append(x86(builder, "llvm.x86.avx512.vpdpbusd.512", V16I, [d, builder.bitcast(hi, V16I), xhi]))
        isum = builder.sub(_fold4(builder, dots), splat(builder, builder.load(builder.gep(bs8, [b])), 16))
        dd = builder.fmul(_f16_by_lane(builder, rows, o), splat(builder, builder.load(builder.gep(dx, [b])), 16))
        builder.store(builder.call(fma16, [builder.sitofp(isum, V16F), dd, builder.load(acc)]), acc)
    _store_rows16(builder, out, r, builder.load(acc))
    return context.get_dummy_value()


@intrinsic
def _q4_0_rows16_vnni(typingctx, W, r, nb, xq, bs8, dx, out):
    return types.void(W, r, nb, xq, bs8, dx, out), _q4_0_rows16_codegen


@njit(cache=True, parallel=True)
def q4_0_matvec_vnni(W, K, x, out):
    """q4_0_matvec_avx2 on AVX-512 VNNI: 16 rows at a time (the rows after the last 16 as there, 4 at a time)."""
    xq, _, dx, _ = q8_lanes(x, 0, False)
    nb = K // 32
    bs8 = gemm_tiles.block_sums(xq.reshape(1, K), 32, 8)[0]
    N = W.shape[0]
    N16 = N - N % 16
    for g in prange(N16 // 16):
        _q4_0_rows16_vnni(W, 16 * g, nb, xq, bs8, dx, out)
    N4 = N - N % 4
    for g in range(N16 // 4, N4 // 4):
        _q4_0_rows4_avx2(W, 4 * g, nb, xq, dx, out)
    if N4 < N:
        part = np.empty(4, np.float32)
        _q4_0_rows4_avx2(_tail4(W, N4), 0, nb, xq, dx, part)
        out[N4:] = part[:N - N4]


# --- Q4_K on AVX-512 (BW): 16 rows per <16 x float> ---------------------------------------------------------
# _q4_K_codegen's integer steps with 512-bit vectors, two rows per vector (8 int32 lanes each): vpmaddubsw of the
# nibbles with the activations, vpmaddwd with the row's sub-block scale; the mins times the activations' sums per
# 32 likewise. Per super-block the 8 vectors of a 16-row group fold to one <16 x i32> (isum, then imin) in the
# lane order of the Q4_0 kernel above (lane 4L + j: row 4j + L), and each lane runs ggml's two fma chains.

V32S_ = ir.VectorType(ir.IntType(16), 32)


def _fold16(builder, vecs):
    """8 vectors [row 2g: 8 lanes | row 2g + 1: 8 lanes] (g = 0..7) -> one <16 x i32> of the 16 row sums, lane 4L + j
    holding row 4j + L (exact: integer additions): each pair of vectors folds its lanes 4-7 onto 0-3, then _fold4."""
    def two(a, b, idx):
        return builder.shuffle_vector(a, b, lanes_mask(idx))
    quads = []
    for k in range(4):                                   # rows 4k .. 4k + 3 in 4-lane groups
        u, v = vecs[2 * k], vecs[2 * k + 1]
        lo = [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27]
        quads.append(builder.add(two(u, v, lo), two(u, v, [i + 4 for i in lo])))
    return _fold4(builder, quads)


def _q4_K_rows16_codegen(context, builder, sig, args):
    r, nb = args[1], args[2]
    rows, (xq, xd, bs32, out) = _rows16(context, builder, sig, args)
    xd = builder.bitcast(xd, F32.as_pointer())
    zero16 = ir.Constant(V16F, [0.0] * 16)
    acc = cgutils.alloca_once_value(builder, zero16)
    accm = cgutils.alloca_once_value(builder, zero16)
    fma16 = cgutils.get_or_insert_function(builder.module, ir.FunctionType(V16F, [V16F] * 3), "llvm.fma.v16f32")

    def two(a, b, idx):
        return builder.shuffle_vector(a, b, lanes_mask(idx))

    with cgutils.for_range(builder, nb) as loop:
        b = loop.index
        o = builder.mul(b, c64(144))                       # block_q4_K: d dmin scales[12] qs[128]
        ys = []
        for j in range(8):
            y = load(builder, xq, builder.add(builder.mul(b, c64(QK_K)), c64(32 * j)), V32B)
            ys.append(two(y, y, list(range(32)) * 2))
        bs = builder.load(builder.bitcast(builder.gep(bs32, [builder.mul(b, c64(32))]), V8I.as_pointer()), align=4)
        bs = two(bs, bs, list(range(8)) * 2)
        isums, imins = [], []
        for g in range(8):
            ra, rb = rows[2 * g], rows[2 * g + 1]
            sa, sb = scales_mins_k4(builder, ra, o), scales_mins_k4(builder, rb, o)
            iacc = ir.Constant(V16I, [0] * 16)
            for p in range(4):
                raw = two(load(builder, ra, builder.add(o, c64(16 + 32 * p)), V32B),
                          load(builder, rb, builder.add(o, c64(16 + 32 * p)), V32B), range(64))
                for h, nib in enumerate((builder.and_(raw, byte_vec(15, 64)),
                                         builder.and_(builder.lshr(raw, byte_vec(4, 64)), byte_vec(15, 64)))):
                    j = 2 * p + h
                    sc = builder.zext(two(sa, sb, [j] * 16 + [16 + j] * 16), V32S_)
                    pairs = x86(builder, "llvm.x86.avx512.pmaddubs.w.512", V32S_, [nib, ys[j]])
                    iacc = builder.add(iacc, x86(builder, "llvm.x86.avx512.pmaddw.d.512", V16I, [sc, pairs]))
            isums.append(iacc)
            mins = builder.zext(two(sa, sb, list(range(8, 16)) + list(range(24, 32))), V16I)
            imins.append(builder.mul(mins, bs))
        isum, imin = _fold16(builder, isums), _fold16(builder, imins)
        dy = splat(builder, builder.load(builder.gep(xd, [b])), 16)
        dd = builder.fmul(_f16_by_lane(builder, rows, o), dy)
        ddm = builder.fmul(_f16_by_lane(builder, rows, builder.add(o, c64(2))), dy)
        builder.store(builder.call(fma16, [builder.sitofp(isum, V16F), dd, builder.load(acc)]), acc)
        builder.store(builder.call(fma16, [builder.sitofp(imin, V16F), ddm, builder.load(accm)]), accm)
    _store_rows16(builder, out, r, builder.fsub(builder.load(acc), builder.load(accm)))
    return context.get_dummy_value()


@intrinsic
def _q4_K_rows16_avx512(typingctx, W, r, nb, xq, xd, bs32, out):
    return types.void(W, r, nb, xq, xd, bs32, out), _q4_K_rows16_codegen


@njit(cache=True, parallel=True)
def q4_K_matvec_avx512(W, K, x, out):
    """q4_K_matvec_avx2 on AVX-512 BW: 16 rows at a time (the rows after the last 16 one at a time, as there)."""
    xq, xd, _, bs32 = q8_K_token(x)
    nb = K // QK_K
    N = W.shape[0]
    N16 = N - N % 16
    for g in prange(N16 // 16):
        _q4_K_rows16_avx512(W, 16 * g, nb, xq, xd, bs32, out)
    for r in range(N16, N):
        out[r] = _q4_K_row_avx2(W, r, nb, xq, xd, bs32)


# --- entry point for repack.matmul (below 4 tokens every token goes through the gemv) -------------------

# weight type -> (kernel with ggml's AVX2 instructions, portable kernel)
# (on an AVX-512 VNNI host the Q4_0 and Q4_K kernels are the 16-row ones)
MATVEC = {"Q4_K": (q4_K_matvec_avx512 if gemm_tiles.variant() == "vnni512" else q4_K_matvec_avx2,
                   q4_K_matvec_portable),
          "Q4_0": (q4_0_matvec_vnni if gemm_tiles.variant() == "vnni512" else q4_0_matvec_avx2, q4_0_matvec_portable),
          "IQ4_NL": (iq4_nl_matvec_avx2, iq4_nl_matvec_portable)}


def matvec(rows, wtype_name, K, x, out):
    """out (T, N) = the one-token gemv of `wtype_name` for each token of x (T, K) float32 C-contiguous;
    False (nothing written) when there is no kernel here for that type."""
    return features.each_token(MATVEC, rows, wtype_name, K, x, out)
