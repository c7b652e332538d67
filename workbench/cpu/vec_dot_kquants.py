"""One-token products of k-quant weights in ggml's AVX2 order, written as LLVM vector code (like vec_dot_ir).

Generation multiplies every weight by ONE token; the scalar statement of ggml's order
(tiled.kquant_q8_K with tiled=False) stays the readable spec, but LLVM does not vectorize it. Here the
same sums are spelled out with numba's @intrinsic on the vectors ggml itself uses:

Q6_K  (ggml_vec_dot_q6_K_q8_K, arch/x86/quants.c): per super-block of 256, for each 32-element chunk c
      the unsigned 6-bit q (low nibble from ql, 2 high bits from qh) times the int8 activations
      (vpmaddubsw: pairs -> int16), times the chunk's two int8 scales (vpmaddwd: -> 8 int32 lanes), summed
      over the 8 chunks; minus q8sclsub = 32 * madd(bsums, scales) (the -32 offset, on the lanes of the
      bsums); acc = fma(d_y * d_w, (float) lanes, acc) on <8 x float>; result hsum_float_8(acc).
Q5_K, Q3_K, Q2_K, IQ4_XS (ggml_vec_dot_*_q8_K): Q6_K's lane structure with each type's quants and scales
      (Q3_K / IQ4_XS signed, through vpsign like ggml's mul_add_epi8) and float tail: Q5_K's
      summs = fma(-d_y * dmin_w, mins . bsums, summs) added after the hsum, Q2_K's per-lane mins fma
      before the scale fma of each super-block (tiled's docstring).

The repacked Q4_K / Q4_0 / IQ4_NL gemv (arch/x86/repack.cpp) is in repack_gemv, Q5_0 / Q5_1 in vec_dot_q5.
Only the integer parts are computed differently from ggml (any order is exact: no int16 saturation can
be reached with |q_x| <= 127, int32 sums are associative); every float operation (the scale products,
llvm.fma, hsum order, the final subtraction) is ggml's. Where numba compiles for an AVX2 host
(features.has_avx2()) the integer products are ggml's own instructions (llvm.x86.avx2.pmadd.ub.sw,
llvm.x86.avx2.pmadd.wd); elsewhere the same integers come from portable widening multiplies (the *_portable
kernels). The activations are quantized inside the kernels (act_quant.q8_K_token: quantize_row_q8_K_ref,
the values of act_quant.prepare_activations). tests/test_vec_dot_kquants.py checks both variants against the
scalar spec bit for bit.
"""
from __future__ import annotations

from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from workbench.gguf.constants import QK_K

from workbench.cpu import features
from workbench.cpu.act_quant import q8_K_token
from workbench.cpu.ir import (F32, I8, I16, I32, V4I, V8F, V8I, V16B, V16S, V32B, byte_vec, c64, fma, fp16, hsum_float_8, hsum_i32,
                              iq4nl_lookup, lanes_mask, load, madd, maddubs, row_pointers, scales_mins_k4, signed_products,
                              splat)


# --- Q6_K: ggml_vec_dot_q6_K_q8_K ----------------------------------------------------------------------

def _q6_K_codegen(avx2):
    def codegen(context, builder, sig, args):
        row, nb, (xq, xd, bs16) = row_pointers(context, builder, sig, args)
        xd = builder.bitcast(xd, F32.as_pointer())
        acc = cgutils.alloca_once_value(builder, ir.Constant(V8F, [0.0] * 8))
        with cgutils.for_range(builder, nb) as loop:
            b = loop.index
            o = builder.mul(b, c64(210))                   # block_q6_K: ql[128] qh[64] scales[16] d
            d = builder.fmul(builder.load(builder.gep(xd, [b])), fp16(builder, row, builder.add(o, c64(208))))
            scales16 = builder.sext(load(builder, row, builder.add(o, c64(192)), V16B), V16S)
            q8sums = load(builder, bs16, builder.mul(b, c64(32)), V16S)
            q8sclsub = builder.shl(madd(builder, q8sums, scales16, avx2), ir.Constant(V8I, [5] * 8))
            sumi = ir.Constant(V8I, [0] * 8)
            for j in range(2):                              # two halves of 128 values
                q4bits1 = load(builder, row, builder.add(o, c64(64 * j)), V32B)
                q4bits2 = load(builder, row, builder.add(o, c64(64 * j + 32)), V32B)
                q4bitsH = load(builder, row, builder.add(o, c64(128 + 32 * j)), V32B)
                low1 = builder.and_(q4bits1, byte_vec(15))
                low2 = builder.and_(q4bits2, byte_vec(15))
                high1 = builder.lshr(q4bits1, byte_vec(4))
                high2 = builder.lshr(q4bits2, byte_vec(4))
                q6 = [builder.or_(low1, builder.shl(builder.and_(q4bitsH, byte_vec(3)), byte_vec(4))),
                      builder.or_(low2, builder.shl(builder.and_(q4bitsH, byte_vec(12)), byte_vec(2))),
                      builder.or_(high1, builder.and_(q4bitsH, byte_vec(48))),
                      builder.or_(high2, builder.lshr(builder.and_(q4bitsH, byte_vec(192)), byte_vec(2)))]
                for c in range(4):
                    q8 = load(builder, xq, builder.add(builder.mul(b, c64(QK_K)), c64(128 * j + 32 * c)), V32B)
                    p16 = maddubs(builder, q6[c], q8, avx2)
                    s = 2 * (4 * j + c)                     # get_scale_shuffle: scales s (values 0..15), s + 1
                    sc = builder.shuffle_vector(scales16, scales16, lanes_mask([s] * 8 + [s + 1] * 8))
                    sumi = builder.add(sumi, madd(builder, sc, p16, avx2))
            sumi = builder.sub(sumi, q8sclsub)
            builder.store(fma(builder, splat(builder, d), builder.sitofp(sumi, V8F), builder.load(acc)), acc)
        return hsum_float_8(builder, builder.load(acc))
    return codegen


@intrinsic
def _q6_K_row_avx2(typingctx, W, r, nb, xq, xd, bs16):
    return types.float32(W, r, nb, xq, xd, bs16), _q6_K_codegen(True)


@intrinsic
def _q6_K_row_portable(typingctx, W, r, nb, xq, xd, bs16):
    return types.float32(W, r, nb, xq, xd, bs16), _q6_K_codegen(False)


@njit(cache=True, parallel=True)
def q6_K_matvec_avx2(W, K, x, out):
    """out[r] = ggml_vec_dot_q6_K_q8_K(row r, x quantized to Q8_K), x (K,) float32: one token."""
    xq, xd, bs16, _ = q8_K_token(x)
    for r in prange(W.shape[0]):
        out[r] = _q6_K_row_avx2(W, r, K // QK_K, xq, xd, bs16)


@njit(cache=True, parallel=True)
def q6_K_matvec_portable(W, K, x, out):
    """q6_K_matvec_avx2 without the x86 intrinsics."""
    xq, xd, bs16, _ = q8_K_token(x)
    for r in prange(W.shape[0]):
        out[r] = _q6_K_row_portable(W, r, K // QK_K, xq, xd, bs16)


# --- Q5_K, Q3_K, Q2_K, IQ4_XS: ggml_vec_dot_{q5_K,q3_K,q2_K,iq4_xs}_q8_K ---------------------------------
# The same lane structure as Q6_K (tiled's docstring): for each 32-element chunk c the 32 quants as
# bytes (unsigned for Q5_K / Q2_K, signed for Q3_K / IQ4_XS) times the int8 activations, pairs of products
# times the 16 int16 scale words (the scale of each element's sub-block), summed into 8 int32 lanes.
# Signed quants go through vpsign as in ggml's mul_add_epi8: maddubs(|q|, sign(q8, q)).

def _q3_K_scales(builder, row, o):
    """The 16 six-bit scales of a block_q3_K minus 32, as int16 (the kmask1 / kmask2 word unpacking)."""
    a = [load(builder, row, builder.add(o, c64(96 + 4 * i)), I32) for i in range(3)]
    k1, k2 = ir.Constant(I32, 0x03030303), ir.Constant(I32, 0x0F0F0F0F)
    c = [ir.Constant(I32, v) for v in range(7)]
    words = [builder.or_(builder.and_(a[0], k2), builder.shl(builder.and_(a[2], k1), c[4])),
             builder.or_(builder.and_(a[1], k2), builder.shl(builder.and_(builder.lshr(a[2], c[2]), k1), c[4])),
             builder.or_(builder.and_(builder.lshr(a[0], c[4]), k2), builder.shl(builder.and_(builder.lshr(a[2], c[4]), k1), c[4])),
             builder.or_(builder.and_(builder.lshr(a[1], c[4]), k2), builder.shl(builder.and_(builder.lshr(a[2], c[6]), k1), c[4]))]
    v = ir.Constant(V4I, ir.Undefined)
    for i, w in enumerate(words):
        v = builder.insert_element(v, w, ir.Constant(I32, i))
    return builder.sub(builder.zext(builder.bitcast(v, V16B), V16S), ir.Constant(V16S, [32] * 16))


def _chunks(builder, kind, row, o, avx2):
    """The 8 chunks of 32 quants of one super-block: [(bytes <32 x i8>, signed?, scale words <16 x i16>)],
    plus what the float part needs: fp16 d, fp16 dmin (or None), mins as int16 words (or None)."""
    def f16(off):
        return fp16(builder, row, builder.add(o, c64(off)))

    def per16(sc16, c):                                 # sub-blocks of 16: 2c for words 0..7, 2c + 1 for 8..15
        return builder.shuffle_vector(sc16, sc16, lanes_mask([2 * c] * 8 + [2 * c + 1] * 8))

    out = []
    if kind == "Q5_K":                                  # d dmin scales[12] qh[32] qs[128]
        sm = builder.zext(scales_mins_k4(builder, row, o), V16S)
        qh = load(builder, row, builder.add(o, c64(16)), V32B)
        for c in range(8):
            raw = load(builder, row, builder.add(o, c64(48 + 32 * (c // 2))), V32B)
            nib = builder.lshr(raw, byte_vec(4)) if c % 2 else builder.and_(raw, byte_vec(15))
            hb = builder.shl(builder.and_(builder.lshr(qh, byte_vec(c)), byte_vec(1)), byte_vec(4))
            out.append((builder.or_(nib, hb), False, builder.shuffle_vector(sm, sm, lanes_mask([c] * 16))))
        return out, f16(0), f16(2), builder.shuffle_vector(sm, sm, lanes_mask(range(8, 16)))
    if kind == "Q3_K":                                  # hmask[32] qs[64] scales[12] d
        sc16 = _q3_K_scales(builder, row, o)
        hm = load(builder, row, o, V32B)
        for c in range(8):
            n, j = divmod(c, 4)
            qs = load(builder, row, builder.add(o, c64(32 + 32 * n)), V32B)
            low = builder.and_(builder.lshr(qs, byte_vec(2 * j)), byte_vec(3))
            unset = builder.xor(builder.and_(builder.lshr(hm, byte_vec(4 * n + j)), byte_vec(1)), byte_vec(1))
            out.append((builder.sub(low, builder.shl(unset, byte_vec(2))), True, per16(sc16, c)))
        return out, f16(108), None, None
    if kind == "Q2_K":                                  # scales[16] (scale | min << 4) qs[64] d dmin
        sb = load(builder, row, o, V16B)
        sc16 = builder.zext(builder.and_(sb, byte_vec(15, 16)), V16S)
        mins16 = builder.zext(builder.lshr(sb, byte_vec(4, 16)), V16S)
        for c in range(8):
            n, j = divmod(c, 4)
            qs = load(builder, row, builder.add(o, c64(16 + 32 * n)), V32B)
            out.append((builder.and_(builder.lshr(qs, byte_vec(2 * j)), byte_vec(3)), False, per16(sc16, c)))
        return out, f16(80), f16(82), mins16
    # IQ4_XS: d scales_h (u16) scales_l[4] qs[128]
    sh = builder.zext(load(builder, row, builder.add(o, c64(2)), I16), I32)
    for c in range(8):
        sl = builder.zext(load(builder, row, builder.add(o, c64(4 + c // 2)), I8), I32)
        lo = builder.and_(builder.lshr(sl, ir.Constant(I32, 4 * (c % 2))), ir.Constant(I32, 15))
        hi = builder.and_(builder.lshr(sh, ir.Constant(I32, 2 * c)), ir.Constant(I32, 3))
        ls = builder.sub(builder.or_(lo, builder.shl(hi, ir.Constant(I32, 4))), ir.Constant(I32, 32))
        q16 = load(builder, row, builder.add(o, c64(8 + 16 * c)), V16B)
        both = builder.shuffle_vector(q16, q16, lanes_mask(list(range(16)) * 2))
        idx = builder.and_(builder.lshr(both, ir.Constant(V32B, [0] * 16 + [4] * 16)), byte_vec(15))
        out.append((iq4nl_lookup(builder, idx, avx2), True, builder.shuffle_vector(builder.insert_element(ir.Constant(V16S, ir.Undefined), builder.trunc(ls, I16), ir.Constant(I32, 0)), ir.Constant(V16S, ir.Undefined), lanes_mask([0] * 16))))
    return out, f16(0), None, None


_BLOCK = {"Q5_K": 176, "Q3_K": 110, "Q2_K": 84, "IQ4_XS": 136}


def _lanes_codegen(kind, avx2):
    def codegen(context, builder, sig, args):
        row, nb, (xq, xd, bs16, bs32) = row_pointers(context, builder, sig, args)
        xd = builder.bitcast(xd, F32.as_pointer())
        acc = cgutils.alloca_once_value(builder, ir.Constant(V8F, [0.0] * 8))
        summs = cgutils.alloca_once_value(builder, ir.Constant(F32, 0.0))
        with cgutils.for_range(builder, nb) as loop:
            b = loop.index
            o = builder.mul(b, c64(_BLOCK[kind]))
            chunks, dw, dmw, mins = _chunks(builder, kind, row, o, avx2)
            dy = builder.load(builder.gep(xd, [b]))
            d = builder.fmul(dy, dw)                      # y.d * fp16(x.d) (IQ4_XS: the other way, same product)
            if kind == "Q2_K":                            # the mins first: fma(dmin, madd(mins, bsums), acc)
                dmin = builder.fmul(builder.fneg(dy), dmw)
                prod = madd(builder, mins, load(builder, bs16, builder.mul(b, c64(32)), V16S), avx2)
                builder.store(fma(builder, splat(builder, dmin), builder.sitofp(prod, V8F), builder.load(acc)), acc)
            sumi = ir.Constant(V8I, [0] * 8)
            for c, (q, signed, sc) in enumerate(chunks):
                y = load(builder, xq, builder.add(builder.mul(b, c64(QK_K)), c64(32 * c)), V32B)
                p16 = signed_products(builder, q, y, avx2) if signed else maddubs(builder, q, y, avx2)
                sumi = builder.add(sumi, madd(builder, sc, p16, avx2))
            builder.store(fma(builder, splat(builder, d), builder.sitofp(sumi, V8F), builder.load(acc)), acc)
            if kind == "Q5_K":                            # summs = fma(dmin, mins . bsums per 32, summs)
                dmin = builder.fmul(builder.fneg(dy), dmw)
                bsum = builder.load(builder.bitcast(builder.gep(bs32, [builder.mul(b, c64(32))]), V8I.as_pointer()), align=4)
                m = builder.sitofp(hsum_i32(builder, builder.mul(builder.sext(mins, V8I), bsum)), F32)
                builder.store(fma(builder, dmin, m, builder.load(summs)), summs)
        res = hsum_float_8(builder, builder.load(acc))
        return builder.fadd(res, builder.load(summs)) if kind == "Q5_K" else res
    return codegen


def _make_row(kind, avx2):
    def row_intrinsic(typingctx, W, r, nb, xq, xd, bs16, bs32):
        return types.float32(W, r, nb, xq, xd, bs16, bs32), _lanes_codegen(kind, avx2)
    row_intrinsic.__name__ = f"_{kind.lower()}_row_{'avx2' if avx2 else 'portable'}"
    return intrinsic(row_intrinsic)


_q5_K_row_avx2, _q5_K_row_portable = _make_row("Q5_K", True), _make_row("Q5_K", False)
_q3_K_row_avx2, _q3_K_row_portable = _make_row("Q3_K", True), _make_row("Q3_K", False)
_q2_K_row_avx2, _q2_K_row_portable = _make_row("Q2_K", True), _make_row("Q2_K", False)
_iq4_xs_row_avx2, _iq4_xs_row_portable = _make_row("IQ4_XS", True), _make_row("IQ4_XS", False)


@njit(cache=True, parallel=True)
def q5_K_matvec_avx2(W, K, x, out):
    """out[r] = ggml_vec_dot_q5_K_q8_K(row r, x quantized to Q8_K): one token."""
    xq, xd, bs16, bs32 = q8_K_token(x)
    for r in prange(W.shape[0]):
        out[r] = _q5_K_row_avx2(W, r, K // QK_K, xq, xd, bs16, bs32)


@njit(cache=True, parallel=True)
def q5_K_matvec_portable(W, K, x, out):
    xq, xd, bs16, bs32 = q8_K_token(x)
    for r in prange(W.shape[0]):
        out[r] = _q5_K_row_portable(W, r, K // QK_K, xq, xd, bs16, bs32)


@njit(cache=True, parallel=True)
def q3_K_matvec_avx2(W, K, x, out):
    """out[r] = ggml_vec_dot_q3_K_q8_K(row r, x quantized to Q8_K): one token."""
    xq, xd, bs16, bs32 = q8_K_token(x)
    for r in prange(W.shape[0]):
        out[r] = _q3_K_row_avx2(W, r, K // QK_K, xq, xd, bs16, bs32)


@njit(cache=True, parallel=True)
def q3_K_matvec_portable(W, K, x, out):
    xq, xd, bs16, bs32 = q8_K_token(x)
    for r in prange(W.shape[0]):
        out[r] = _q3_K_row_portable(W, r, K // QK_K, xq, xd, bs16, bs32)


@njit(cache=True, parallel=True)
def q2_K_matvec_avx2(W, K, x, out):
    """out[r] = ggml_vec_dot_q2_K_q8_K(row r, x quantized to Q8_K): one token."""
    xq, xd, bs16, bs32 = q8_K_token(x)
    for r in prange(W.shape[0]):
        out[r] = _q2_K_row_avx2(W, r, K // QK_K, xq, xd, bs16, bs32)


@njit(cache=True, parallel=True)
def q2_K_matvec_portable(W, K, x, out):
    xq, xd, bs16, bs32 = q8_K_token(x)
    for r in prange(W.shape[0]):
        out[r] = _q2_K_row_portable(W, r, K // QK_K, xq, xd, bs16, bs32)


@njit(cache=True, parallel=True)
def iq4_xs_matvec_avx2(W, K, x, out):
    """out[r] = ggml_vec_dot_iq4_xs_q8_K(row r, x quantized to Q8_K): one token."""
    xq, xd, bs16, bs32 = q8_K_token(x)
    for r in prange(W.shape[0]):
        out[r] = _iq4_xs_row_avx2(W, r, K // QK_K, xq, xd, bs16, bs32)


@njit(cache=True, parallel=True)
def iq4_xs_matvec_portable(W, K, x, out):
    xq, xd, bs16, bs32 = q8_K_token(x)
    for r in prange(W.shape[0]):
        out[r] = _iq4_xs_row_portable(W, r, K // QK_K, xq, xd, bs16, bs32)


# --- entry point for tiled.matmul (below ggml_tiled_min_batch tokens) --------------------------------------

# weight type -> (kernel with ggml's AVX2 instructions, portable kernel)
MATVEC = {"Q6_K": (q6_K_matvec_avx2, q6_K_matvec_portable), "Q5_K": (q5_K_matvec_avx2, q5_K_matvec_portable),
          "Q3_K": (q3_K_matvec_avx2, q3_K_matvec_portable), "Q2_K": (q2_K_matvec_avx2, q2_K_matvec_portable),
          "IQ4_XS": (iq4_xs_matvec_avx2, iq4_xs_matvec_portable)}


def matvec(rows, wtype_name, K, x, out):
    """out (T, N) = the one-token kernel of `wtype_name` for each token of x (T, K) float32 C-contiguous;
    False (nothing written) when there is no kernel here for that type."""
    return features.each_token(MATVEC, rows, wtype_name, K, x, out)
