"""One-token products of k-quant weights in ggml's AVX2 order, written as LLVM vector code (like lanes_ir).

Generation multiplies every weight by ONE token; the scalar statements of ggml's order
(exact_kquants.kquant_q8_K with tiled=False, exact_repack.q4_K_q8_K with n_gemm=0) stay the readable spec,
but LLVM does not vectorize them. Here the same sums are spelled out with numba's @intrinsic on the
vectors ggml itself uses:

Q6_K  (ggml_vec_dot_q6_K_q8_K, arch/x86/quants.c): per super-block of 256, for each 32-element chunk c
      the unsigned 6-bit q (low nibble from ql, 2 high bits from qh) times the int8 activations
      (vpmaddubsw: pairs -> int16), times the chunk's two int8 scales (vpmaddwd: -> 8 int32 lanes), summed
      over the 8 chunks; minus q8sclsub = 32 * madd(bsums, scales) (the -32 offset, on the lanes of the
      bsums); acc = fma(d_y * d_w, (float) lanes, acc) on <8 x float>; result hsum_float_8(acc).
Q4_K  (ggml_gemv_q4_K_8x8_q8_K, arch/x86/repack.cpp: Q4_K weights with rows % 8 == 0 are repacked on
      AVX2; its 8 float lanes are 8 ROWS): per row and super-block, the exact integer
      isum = sum_j sc_j * (q_j . x_j) and imin = sum_j m_j * bsum_j (bsum_j the sum of the 32 int8
      activations of sub-block j), then acc = fma((float) isum, d_w * d_y, acc),
      accm = fma((float) imin, dmin_w * d_y, accm); result acc - accm.
Q5_K, Q3_K, Q2_K, IQ4_XS (ggml_vec_dot_*_q8_K): Q6_K's lane structure with each type's quants and scales
      (Q3_K / IQ4_XS signed, through vpsign like ggml's mul_add_epi8) and float tail: Q5_K's
      summs = fma(-d_y * dmin_w, mins . bsums, summs) added after the hsum, Q2_K's per-lane mins fma
      before the scale fma of each super-block (exact_kquants' docstring).

Only the integer parts are computed differently from ggml (any order is exact: no int16 saturation can
be reached with |q_x| <= 127, int32 sums are associative); every float operation (the scale products,
llvm.fma, hsum order, the final subtraction) is ggml's. Where numba compiles for an AVX2 host
(lanes_ir.has_avx2()) the integer products are ggml's own instructions (llvm.x86.avx2.pmadd.ub.sw,
llvm.x86.avx2.pmadd.wd); elsewhere the same integers come from portable widening multiplies (the *_portable
kernels). The activations are quantized inside the kernels (q8_K_token: quantize_row_q8_K_ref, the
values of activations.prepare_activations). tests/test_lanes_kquants.py checks both variants against the
scalar spec bit for bit.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from workbench.cpu.vec_dot_ir import _f16, _fma, _hsum8, _load, _splat, _x86, q8_lanes

_I8, _I16, _I32, _I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
_F32 = ir.FloatType()
_V8F = ir.VectorType(_F32, 8)
_V8I = ir.VectorType(_I32, 8)
_V4I = ir.VectorType(_I32, 4)
_V16I = ir.VectorType(_I32, 16)
_V32B = ir.VectorType(_I8, 32)
_V16B = ir.VectorType(_I8, 16)
_V8B = ir.VectorType(_I8, 8)
_V16S = ir.VectorType(_I16, 16)
_V32S = ir.VectorType(_I16, 32)
QK_K = 256


def _c64(v):
    return ir.Constant(_I64, v)


def _bytes(v, n=32):
    return ir.Constant(ir.VectorType(_I8, n), [v & 0xFF] * n)


def _mask(idx):
    return ir.Constant(ir.VectorType(_I32, len(idx)), list(idx))


# --- the two integer instructions, as ggml's intrinsics or portable -----------------------------------

def _maddubs(builder, u8, i8, avx2):
    """_mm256_maddubs_epi16: u8[2i] * i8[2i] + u8[2i+1] * i8[2i+1] as 16 int16 (the saturation of the
    AVX2 instruction is never reached by the values multiplied here)."""
    if avx2:
        return _x86(builder, "llvm.x86.avx2.pmadd.ub.sw", _V16S, [u8, i8])
    p = builder.mul(builder.zext(u8, _V32S), builder.sext(i8, _V32S))
    return builder.add(builder.shuffle_vector(p, p, _mask(range(0, 32, 2))),
                       builder.shuffle_vector(p, p, _mask(range(1, 32, 2))))


def _madd(builder, a16, b16, avx2):
    """_mm256_madd_epi16: a[2i] * b[2i] + a[2i+1] * b[2i+1] as 8 int32."""
    if avx2:
        return _x86(builder, "llvm.x86.avx2.pmadd.wd", _V8I, [a16, b16])
    p = builder.mul(builder.sext(a16, _V16I), builder.sext(b16, _V16I))
    return builder.add(builder.shuffle_vector(p, p, _mask(range(0, 16, 2))),
                       builder.shuffle_vector(p, p, _mask(range(1, 16, 2))))


def _hsum_i32(builder, v):
    """Sum of the 8 int32 lanes (exact in any order)."""
    h = builder.add(builder.shuffle_vector(v, v, _mask(range(4))), builder.shuffle_vector(v, v, _mask(range(4, 8))))
    h = builder.add(builder.shuffle_vector(h, h, _mask(range(2))), builder.shuffle_vector(h, h, _mask(range(2, 4))))
    return builder.add(builder.extract_element(h, ir.Constant(_I32, 0)), builder.extract_element(h, ir.Constant(_I32, 1)))


def _setup(context, builder, sig, args):
    """(W, r, nb, arrays...): byte pointer to row r of W, nb, byte pointers to the arrays' data."""
    W, r = args[0], args[1]
    wa = context.make_array(sig.args[0])(context, builder, W)
    stride0 = cgutils.unpack_tuple(builder, wa.strides)[0]
    row = builder.gep(builder.bitcast(wa.data, _I8.as_pointer()), [builder.mul(r, stride0)])
    ptrs = [builder.bitcast(context.make_array(sig.args[i])(context, builder, args[i]).data, _I8.as_pointer())
            for i in range(3, len(args))]
    return row, args[2], ptrs


# --- activations --------------------------------------------------------------------------------------

@njit(cache=True)
def q8_K_token(x):
    """One token x (K,) as quantize_row_q8_K_ref (the values of activations._quantize_q8, kind 2): per
    block of 256 the value of largest |x| (the first one) gives iscale = -127 / max, d = 1 / iscale,
    q = min(127, rint(iscale * x)). Returns xq (K,) int8, d (K/256,) float32, bsums (K/16,) int16 (block_q8_K
    bsums) and the sums per 32 (K/32,) int32 (what the repacked Q4_K gemv adds with _mm_hadd_epi16)."""
    K = x.shape[0]
    nb = K // QK_K
    xq = np.empty(K, np.int8)
    d = np.empty(nb, np.float32)
    bs16 = np.empty(K // 16, np.int16)
    bs32 = np.empty(K // 32, np.int32)
    for b in range(nb):
        o = b * QK_K
        amax = np.float32(0.0)
        vmax = np.float32(0.0)
        for i in range(QK_K):
            a = abs(x[o + i])
            if a > amax:
                amax = a
                vmax = x[o + i]
        iscale = np.float32(-127.0) / vmax if amax > 0 else np.float32(0.0)
        d[b] = np.float32(1.0) / iscale if amax > 0 else np.float32(0.0)
        for i in range(QK_K):
            xq[o + i] = np.int8(min(np.float32(127.0), np.rint(iscale * x[o + i])))
    for j in range(K // 16):
        s = np.int32(0)
        for i in range(16):
            s += np.int32(xq[16 * j + i])
        bs16[j] = np.int16(s)
    for j in range(K // 32):
        bs32[j] = np.int32(bs16[2 * j]) + np.int32(bs16[2 * j + 1])
    return xq, d, bs16, bs32


# --- Q6_K: ggml_vec_dot_q6_K_q8_K ----------------------------------------------------------------------

def _q6_K_codegen(avx2):
    def codegen(context, builder, sig, args):
        row, nb, (xq, xd, bs16) = _setup(context, builder, sig, args)
        xd = builder.bitcast(xd, _F32.as_pointer())
        acc = cgutils.alloca_once_value(builder, ir.Constant(_V8F, [0.0] * 8))
        with cgutils.for_range(builder, nb) as loop:
            b = loop.index
            o = builder.mul(b, _c64(210))                   # block_q6_K: ql[128] qh[64] scales[16] d
            d = builder.fmul(builder.load(builder.gep(xd, [b])), _f16(builder, row, builder.add(o, _c64(208))))
            scales16 = builder.sext(_load(builder, row, builder.add(o, _c64(192)), _V16B), _V16S)
            q8sums = _load(builder, bs16, builder.mul(b, _c64(32)), _V16S)
            q8sclsub = builder.shl(_madd(builder, q8sums, scales16, avx2), ir.Constant(_V8I, [5] * 8))
            sumi = ir.Constant(_V8I, [0] * 8)
            for j in range(2):                              # two halves of 128 values
                q4bits1 = _load(builder, row, builder.add(o, _c64(64 * j)), _V32B)
                q4bits2 = _load(builder, row, builder.add(o, _c64(64 * j + 32)), _V32B)
                q4bitsH = _load(builder, row, builder.add(o, _c64(128 + 32 * j)), _V32B)
                low1 = builder.and_(q4bits1, _bytes(15))
                low2 = builder.and_(q4bits2, _bytes(15))
                high1 = builder.lshr(q4bits1, _bytes(4))
                high2 = builder.lshr(q4bits2, _bytes(4))
                q6 = [builder.or_(low1, builder.shl(builder.and_(q4bitsH, _bytes(3)), _bytes(4))),
                      builder.or_(low2, builder.shl(builder.and_(q4bitsH, _bytes(12)), _bytes(2))),
                      builder.or_(high1, builder.and_(q4bitsH, _bytes(48))),
                      builder.or_(high2, builder.lshr(builder.and_(q4bitsH, _bytes(192)), _bytes(2)))]
                for c in range(4):
                    q8 = _load(builder, xq, builder.add(builder.mul(b, _c64(QK_K)), _c64(128 * j + 32 * c)), _V32B)
                    p16 = _maddubs(builder, q6[c], q8, avx2)
                    s = 2 * (4 * j + c)                     # get_scale_shuffle: scales s (values 0..15), s + 1
                    sc = builder.shuffle_vector(scales16, scales16, _mask([s] * 8 + [s + 1] * 8))
                    sumi = builder.add(sumi, _madd(builder, sc, p16, avx2))
            sumi = builder.sub(sumi, q8sclsub)
            builder.store(_fma(builder, _splat(builder, d), builder.sitofp(sumi, _V8F), builder.load(acc)), acc)
        return _hsum8(builder, builder.load(acc))
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


# --- Q4_K: ggml_gemv_q4_K_8x8_q8_K ---------------------------------------------------------------------

def _scales_mins_k4(builder, row, o):
    """The 12 scale bytes of a block_q4_K unpacked with ggml's kmask1/2/3 word trick: <16 x i8> with the
    8 six-bit scales, then the 8 mins (get_scale_min_k4 for j = 0..7)."""
    u = [_load(builder, row, builder.add(o, _c64(4 + 4 * i)), _I32) for i in range(3)]
    k1, k2, k3 = (ir.Constant(_I32, v) for v in (0x3F3F3F3F, 0x0F0F0F0F, 0x03030303))
    c4, c6 = ir.Constant(_I32, 4), ir.Constant(_I32, 6)
    u3 = builder.or_(builder.and_(builder.lshr(u[2], c4), k2), builder.shl(builder.and_(builder.lshr(u[1], c6), k3), c4))
    u1 = builder.or_(builder.and_(u[2], k2), builder.shl(builder.and_(builder.lshr(u[0], c6), k3), c4))
    words = [builder.and_(u[0], k1), u1, builder.and_(u[1], k1), u3]
    v = ir.Constant(_V4I, ir.Undefined)
    for i, w in enumerate(words):
        v = builder.insert_element(v, w, ir.Constant(_I32, i))
    return builder.bitcast(v, _V16B)


def _q4_K_codegen(avx2):
    def codegen(context, builder, sig, args):
        row, nb, (xq, xd, bs32) = _setup(context, builder, sig, args)
        xd = builder.bitcast(xd, _F32.as_pointer())
        acc = cgutils.alloca_once_value(builder, ir.Constant(_F32, 0.0))
        accm = cgutils.alloca_once_value(builder, ir.Constant(_F32, 0.0))
        with cgutils.for_range(builder, nb) as loop:
            b = loop.index
            o = builder.mul(b, _c64(144))                   # block_q4_K: d dmin scales[12] qs[128]
            dy = builder.load(builder.gep(xd, [b]))
            dd = builder.fmul(_f16(builder, row, o), dy)
            ddm = builder.fmul(_f16(builder, row, builder.add(o, _c64(2))), dy)
            sm = builder.zext(_scales_mins_k4(builder, row, o), _V16S)
            iacc = ir.Constant(_V8I, [0] * 8)
            for p in range(4):                              # sub-blocks 2p (low nibbles), 2p + 1 (high)
                raw = _load(builder, row, builder.add(o, _c64(16 + 32 * p)), _V32B)
                for h, nib in enumerate((builder.and_(raw, _bytes(15)), builder.lshr(raw, _bytes(4)))):
                    j = 2 * p + h
                    y = _load(builder, xq, builder.add(builder.mul(b, _c64(QK_K)), _c64(32 * j)), _V32B)
                    sc = builder.shuffle_vector(sm, sm, _mask([j] * 16))
                    iacc = builder.add(iacc, _madd(builder, sc, _maddubs(builder, nib, y, avx2), avx2))
            mins = builder.zext(builder.shuffle_vector(sm, sm, _mask(range(8, 16))), _V8I)
            bsum = builder.load(builder.bitcast(builder.gep(bs32, [builder.mul(b, _c64(32))]), _V8I.as_pointer()), align=4)
            isum = builder.sitofp(_hsum_i32(builder, iacc), _F32)
            imin = builder.sitofp(_hsum_i32(builder, builder.mul(mins, bsum)), _F32)
            builder.store(_fma(builder, isum, dd, builder.load(acc)), acc)
            builder.store(_fma(builder, imin, ddm, builder.load(accm)), accm)
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


# --- Q5_K, Q3_K, Q2_K, IQ4_XS: ggml_vec_dot_{q5_K,q3_K,q2_K,iq4_xs}_q8_K ---------------------------------
# The same lane structure as Q6_K (exact_kquants' docstring): for each 32-element chunk c the 32 quants as
# bytes (unsigned for Q5_K / Q2_K, signed for Q3_K / IQ4_XS) times the int8 activations, pairs of products
# times the 16 int16 scale words (the scale of each element's sub-block), summed into 8 int32 lanes.
# Signed quants go through vpsign as in ggml's mul_add_epi8: maddubs(|q|, sign(q8, q)).

_KV_IQ4NL = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]


def _signed_products(builder, q, y, avx2):
    """Pairs of products of two signed byte vectors (mul_add_epi8), as 16 int16."""
    if avx2:
        ax = _x86(builder, "llvm.x86.avx2.psign.b", _V32B, [q, q])
        sy = _x86(builder, "llvm.x86.avx2.psign.b", _V32B, [y, q])
        return _maddubs(builder, ax, sy, True)
    p = builder.mul(builder.sext(q, _V32S), builder.sext(y, _V32S))
    return builder.add(builder.shuffle_vector(p, p, _mask(range(0, 32, 2))),
                       builder.shuffle_vector(p, p, _mask(range(1, 32, 2))))


def _iq4nl_lookup(builder, idx, avx2):
    """kvalues_iq4nl[idx] for 32 byte indices 0..15 (vpshufb on the table in both 128-bit halves)."""
    if avx2:
        table = ir.Constant(_V32B, [v & 0xFF for v in _KV_IQ4NL] * 2)
        return _x86(builder, "llvm.x86.avx2.pshuf.b", _V32B, [table, idx])
    out = _bytes(_KV_IQ4NL[0])
    for i in range(1, 16):
        out = builder.select(builder.icmp_unsigned("==", idx, _bytes(i)), _bytes(_KV_IQ4NL[i]), out)
    return out


def _q3_K_scales(builder, row, o):
    """The 16 six-bit scales of a block_q3_K minus 32, as int16 (the kmask1 / kmask2 word unpacking)."""
    a = [_load(builder, row, builder.add(o, _c64(96 + 4 * i)), _I32) for i in range(3)]
    k1, k2 = ir.Constant(_I32, 0x03030303), ir.Constant(_I32, 0x0F0F0F0F)
    c = [ir.Constant(_I32, v) for v in range(7)]
    words = [builder.or_(builder.and_(a[0], k2), builder.shl(builder.and_(a[2], k1), c[4])),
             builder.or_(builder.and_(a[1], k2), builder.shl(builder.and_(builder.lshr(a[2], c[2]), k1), c[4])),
             builder.or_(builder.and_(builder.lshr(a[0], c[4]), k2), builder.shl(builder.and_(builder.lshr(a[2], c[4]), k1), c[4])),
             builder.or_(builder.and_(builder.lshr(a[1], c[4]), k2), builder.shl(builder.and_(builder.lshr(a[2], c[6]), k1), c[4]))]
    v = ir.Constant(_V4I, ir.Undefined)
    for i, w in enumerate(words):
        v = builder.insert_element(v, w, ir.Constant(_I32, i))
    return builder.sub(builder.zext(builder.bitcast(v, _V16B), _V16S), ir.Constant(_V16S, [32] * 16))


def _chunks(builder, kind, row, o, avx2):
    """The 8 chunks of 32 quants of one super-block: [(bytes <32 x i8>, signed?, scale words <16 x i16>)],
    plus what the float part needs: fp16 d, fp16 dmin (or None), mins as int16 words (or None)."""
    def f16(off):
        return _f16(builder, row, builder.add(o, _c64(off)))

    def per16(sc16, c):                                 # sub-blocks of 16: 2c for words 0..7, 2c + 1 for 8..15
        return builder.shuffle_vector(sc16, sc16, _mask([2 * c] * 8 + [2 * c + 1] * 8))

    out = []
    if kind == "Q5_K":                                  # d dmin scales[12] qh[32] qs[128]
        sm = builder.zext(_scales_mins_k4(builder, row, o), _V16S)
        qh = _load(builder, row, builder.add(o, _c64(16)), _V32B)
        for c in range(8):
            raw = _load(builder, row, builder.add(o, _c64(48 + 32 * (c // 2))), _V32B)
            nib = builder.lshr(raw, _bytes(4)) if c % 2 else builder.and_(raw, _bytes(15))
            hb = builder.shl(builder.and_(builder.lshr(qh, _bytes(c)), _bytes(1)), _bytes(4))
            out.append((builder.or_(nib, hb), False, builder.shuffle_vector(sm, sm, _mask([c] * 16))))
        return out, f16(0), f16(2), builder.shuffle_vector(sm, sm, _mask(range(8, 16)))
    if kind == "Q3_K":                                  # hmask[32] qs[64] scales[12] d
        sc16 = _q3_K_scales(builder, row, o)
        hm = _load(builder, row, o, _V32B)
        for c in range(8):
            n, j = divmod(c, 4)
            qs = _load(builder, row, builder.add(o, _c64(32 + 32 * n)), _V32B)
            low = builder.and_(builder.lshr(qs, _bytes(2 * j)), _bytes(3))
            unset = builder.xor(builder.and_(builder.lshr(hm, _bytes(4 * n + j)), _bytes(1)), _bytes(1))
            out.append((builder.sub(low, builder.shl(unset, _bytes(2))), True, per16(sc16, c)))
        return out, f16(108), None, None
    if kind == "Q2_K":                                  # scales[16] (scale | min << 4) qs[64] d dmin
        sb = _load(builder, row, o, _V16B)
        sc16 = builder.zext(builder.and_(sb, _bytes(15, 16)), _V16S)
        mins16 = builder.zext(builder.lshr(sb, _bytes(4, 16)), _V16S)
        for c in range(8):
            n, j = divmod(c, 4)
            qs = _load(builder, row, builder.add(o, _c64(16 + 32 * n)), _V32B)
            out.append((builder.and_(builder.lshr(qs, _bytes(2 * j)), _bytes(3)), False, per16(sc16, c)))
        return out, f16(80), f16(82), mins16
    # IQ4_XS: d scales_h (u16) scales_l[4] qs[128]
    sh = builder.zext(_load(builder, row, builder.add(o, _c64(2)), _I16), _I32)
    for c in range(8):
        sl = builder.zext(_load(builder, row, builder.add(o, _c64(4 + c // 2)), _I8), _I32)
        lo = builder.and_(builder.lshr(sl, ir.Constant(_I32, 4 * (c % 2))), ir.Constant(_I32, 15))
        hi = builder.and_(builder.lshr(sh, ir.Constant(_I32, 2 * c)), ir.Constant(_I32, 3))
        ls = builder.sub(builder.or_(lo, builder.shl(hi, ir.Constant(_I32, 4))), ir.Constant(_I32, 32))
        q16 = _load(builder, row, builder.add(o, _c64(8 + 16 * c)), _V16B)
        both = builder.shuffle_vector(q16, q16, _mask(list(range(16)) * 2))
        idx = builder.and_(builder.lshr(both, ir.Constant(_V32B, [0] * 16 + [4] * 16)), _bytes(15))
        out.append((_iq4nl_lookup(builder, idx, avx2), True, builder.shuffle_vector(builder.insert_element(ir.Constant(_V16S, ir.Undefined), builder.trunc(ls, _I16), ir.Constant(_I32, 0)), ir.Constant(_V16S, ir.Undefined), _mask([0] * 16))))
    return out, f16(0), None, None


_BLOCK = {"Q5_K": 176, "Q3_K": 110, "Q2_K": 84, "IQ4_XS": 136}


def _lanes_codegen(kind, avx2):
    def codegen(context, builder, sig, args):
        row, nb, (xq, xd, bs16, bs32) = _setup(context, builder, sig, args)
        xd = builder.bitcast(xd, _F32.as_pointer())
        acc = cgutils.alloca_once_value(builder, ir.Constant(_V8F, [0.0] * 8))
        summs = cgutils.alloca_once_value(builder, ir.Constant(_F32, 0.0))
        with cgutils.for_range(builder, nb) as loop:
            b = loop.index
            o = builder.mul(b, _c64(_BLOCK[kind]))
            chunks, dw, dmw, mins = _chunks(builder, kind, row, o, avx2)
            dy = builder.load(builder.gep(xd, [b]))
            d = builder.fmul(dy, dw)                      # y.d * fp16(x.d) (IQ4_XS: the other way, same product)
            if kind == "Q2_K":                            # the mins first: fma(dmin, madd(mins, bsums), acc)
                dmin = builder.fmul(builder.fneg(dy), dmw)
                prod = _madd(builder, mins, _load(builder, bs16, builder.mul(b, _c64(32)), _V16S), avx2)
                builder.store(_fma(builder, _splat(builder, dmin), builder.sitofp(prod, _V8F), builder.load(acc)), acc)
            sumi = ir.Constant(_V8I, [0] * 8)
            for c, (q, signed, sc) in enumerate(chunks):
                y = _load(builder, xq, builder.add(builder.mul(b, _c64(QK_K)), _c64(32 * c)), _V32B)
                p16 = _signed_products(builder, q, y, avx2) if signed else _maddubs(builder, q, y, avx2)
                sumi = builder.add(sumi, _madd(builder, sc, p16, avx2))
            builder.store(_fma(builder, _splat(builder, d), builder.sitofp(sumi, _V8F), builder.load(acc)), acc)
            if kind == "Q5_K":                            # summs = fma(dmin, mins . bsums per 32, summs)
                dmin = builder.fmul(builder.fneg(dy), dmw)
                bsum = builder.load(builder.bitcast(builder.gep(bs32, [builder.mul(b, _c64(32))]), _V8I.as_pointer()), align=4)
                m = builder.sitofp(_hsum_i32(builder, builder.mul(builder.sext(mins, _V8I), bsum)), _F32)
                builder.store(_fma(builder, dmin, m, builder.load(summs)), summs)
        res = _hsum8(builder, builder.load(acc))
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


# --- Q4_0 / IQ4_NL: gemv_q4_b32_8x8_q8_0_lut_avx (the repacked gemv, rows % 8 == 0) -------------------
# Per row and block of 32: the exact integer dot of the signed 4-bit values (Q4_0: nibble - 8, IQ4_NL:
# kvalues_iq4nl[nibble]; element j < 16 the low nibble of byte j, j + 16 its high nibble) with the Q8_0
# activations, then acc = fma((float) isum, d_w * d_x, acc) block after block (exact_repack.b32_q8_0).

def _b32_codegen(iq4nl, avx2):
    def codegen(context, builder, sig, args):
        row, nb, (xq, dx) = _setup(context, builder, sig, args)
        dx = builder.bitcast(dx, _F32.as_pointer())
        acc = cgutils.alloca_once_value(builder, ir.Constant(_F32, 0.0))
        ones = ir.Constant(_V16S, [1] * 16)
        with cgutils.for_range(builder, nb) as loop:
            b = loop.index
            o = builder.mul(b, _c64(18))                    # block_q4_0 / block_iq4_nl: d (fp16), qs[16]
            dd = builder.fmul(_f16(builder, row, o), builder.load(builder.gep(dx, [b])))
            q16 = _load(builder, row, builder.add(o, _c64(2)), _V16B)
            both = builder.shuffle_vector(q16, q16, _mask(list(range(16)) * 2))
            idx = builder.and_(builder.lshr(both, ir.Constant(_V32B, [0] * 16 + [4] * 16)), _bytes(15))
            q = _iq4nl_lookup(builder, idx, avx2) if iq4nl else builder.sub(idx, _bytes(8))
            y = _load(builder, xq, builder.mul(b, _c64(32)), _V32B)
            isum = _hsum_i32(builder, _madd(builder, _signed_products(builder, q, y, avx2), ones, avx2))
            builder.store(_fma(builder, builder.sitofp(isum, _F32), dd, builder.load(acc)), acc)
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


# --- Q5_0 / Q5_1: ggml_vec_dot_q5_0_q8_0 / ggml_vec_dot_q5_1_q8_1 (exact_legacy's order) --------------
# Not k-quants, but the same kind of one-token kernel: per block of 32, the 8 lane sums of 4 products
# (element j: nibble j of qs plus bit j of qh as 16; Q5_0 minus 16, signed through vpsign), then
# acc = fma(d_w * d_x, lanes, acc) on <8 x float>; Q5_1 adds summs = fma(m_w, s_x, summs) per block;
# result hsum_float_8(acc) (+ summs). exact_legacy.q5_0_q8_0 / q5_1_q8_1 are the scalar statement.

def _q5_codegen(q5_1, avx2):
    def codegen(context, builder, sig, args):
        row, nb, ptrs = _setup(context, builder, sig, args)
        xq, dx = ptrs[0], builder.bitcast(ptrs[1], _F32.as_pointer())
        sx = builder.bitcast(ptrs[2], _F32.as_pointer()) if q5_1 else None
        acc = cgutils.alloca_once_value(builder, ir.Constant(_V8F, [0.0] * 8))
        summs = cgutils.alloca_once_value(builder, ir.Constant(_F32, 0.0))
        ones = ir.Constant(_V16S, [1] * 16)
        head = 4 if q5_1 else 2                         # d (, m) fp16, then qh (u32), qs[16]
        with cgutils.for_range(builder, nb) as loop:
            b = loop.index
            o = builder.mul(b, _c64(head + 20))
            dd = builder.fmul(_f16(builder, row, o), builder.load(builder.gep(dx, [b])))
            if q5_1:
                m = _f16(builder, row, builder.add(o, _c64(2)))
                builder.store(_fma(builder, m, builder.load(builder.gep(sx, [b])), builder.load(summs)), summs)
            qh = _load(builder, row, builder.add(o, _c64(head)), _I32)
            bits = builder.zext(builder.bitcast(qh, ir.VectorType(ir.IntType(1), 32)), _V32B)   # bytes_from_bits_32
            q16 = _load(builder, row, builder.add(o, _c64(head + 4)), _V16B)
            both = builder.shuffle_vector(q16, q16, _mask(list(range(16)) * 2))
            nib = builder.and_(builder.lshr(both, ir.Constant(_V32B, [0] * 16 + [4] * 16)), _bytes(15))
            q = builder.or_(nib, builder.shl(bits, _bytes(4)))
            y = _load(builder, xq, builder.mul(b, _c64(32)), _V32B)
            if q5_1:
                p16 = _maddubs(builder, q, y, avx2)
            else:
                p16 = _signed_products(builder, builder.sub(q, _bytes(16)), y, avx2)
            lanes = builder.sitofp(_madd(builder, p16, ones, avx2), _V8F)
            builder.store(_fma(builder, _splat(builder, dd), lanes, builder.load(acc)), acc)
        res = _hsum8(builder, builder.load(acc))
        return builder.fadd(res, builder.load(summs)) if q5_1 else res
    return codegen


def _make_q5_row(q5_1, avx2):
    if q5_1:
        def row_intrinsic(typingctx, W, r, nb, xq, dx, sx):
            return types.float32(W, r, nb, xq, dx, sx), _q5_codegen(True, avx2)
    else:
        def row_intrinsic(typingctx, W, r, nb, xq, dx):
            return types.float32(W, r, nb, xq, dx), _q5_codegen(False, avx2)
    row_intrinsic.__name__ = f"_q5_{int(q5_1)}_row_{'avx2' if avx2 else 'portable'}"
    return intrinsic(row_intrinsic)


_q5_0_row_avx2, _q5_0_row_portable = _make_q5_row(False, True), _make_q5_row(False, False)
_q5_1_row_avx2, _q5_1_row_portable = _make_q5_row(True, True), _make_q5_row(True, False)


@njit(cache=True, parallel=True)
def q5_0_matvec_avx2(W, K, x, out):
    """out[r] = ggml_vec_dot_q5_0_q8_0(row r, x quantized to Q8_0): one token."""
    xq, _, dx, _ = q8_lanes(x, 0, False)
    for r in prange(W.shape[0]):
        out[r] = _q5_0_row_avx2(W, r, K // 32, xq, dx)


@njit(cache=True, parallel=True)
def q5_0_matvec_portable(W, K, x, out):
    xq, _, dx, _ = q8_lanes(x, 0, False)
    for r in prange(W.shape[0]):
        out[r] = _q5_0_row_portable(W, r, K // 32, xq, dx)


@njit(cache=True, parallel=True)
def q5_1_matvec_avx2(W, K, x, out):
    """out[r] = ggml_vec_dot_q5_1_q8_1(row r, x quantized to Q8_1): one token."""
    xq, _, dx, sx = q8_lanes(x, 1, False)
    for r in prange(W.shape[0]):
        out[r] = _q5_1_row_avx2(W, r, K // 32, xq, dx, sx)


@njit(cache=True, parallel=True)
def q5_1_matvec_portable(W, K, x, out):
    xq, _, dx, sx = q8_lanes(x, 1, False)
    for r in prange(W.shape[0]):
        out[r] = _q5_1_row_portable(W, r, K // 32, xq, dx, sx)


# --- entry point for exact_kquants / exact_repack ------------------------------------------------------

def _avx2() -> bool:
    global _AVX2
    if _AVX2 is None:
        from workbench.cpu.ir import has_avx2
        _AVX2 = has_avx2()
    return _AVX2


_AVX2 = None
# weight type -> (kernel with ggml's AVX2 instructions, portable kernel); the caller decides which of
# ggml's orders applies (vec_dot for Q6_K .. IQ4_XS; the repacked gemv, rows % 8 == 0, for Q4_K, Q4_0, IQ4_NL)
MATVEC = {"Q6_K": (q6_K_matvec_avx2, q6_K_matvec_portable), "Q4_K": (q4_K_matvec_avx2, q4_K_matvec_portable),
          "Q5_K": (q5_K_matvec_avx2, q5_K_matvec_portable), "Q3_K": (q3_K_matvec_avx2, q3_K_matvec_portable),
          "Q2_K": (q2_K_matvec_avx2, q2_K_matvec_portable), "IQ4_XS": (iq4_xs_matvec_avx2, iq4_xs_matvec_portable),
          "Q4_0": (q4_0_matvec_avx2, q4_0_matvec_portable), "IQ4_NL": (iq4_nl_matvec_avx2, iq4_nl_matvec_portable)}
MATVEC.update({"Q5_0": (q5_0_matvec_avx2, q5_0_matvec_portable), "Q5_1": (q5_1_matvec_avx2, q5_1_matvec_portable)})
_BLOCK_SIZE = {"Q4_0": 32, "IQ4_NL": 32, "Q5_0": 32, "Q5_1": 32}


def matvec(rows, wtype_name, K, x, out):
    """out (T, N) = the one-token kernel of `wtype_name` for each token of x (T, K) float32 C-contiguous;
    False (nothing written) when there is no kernel here for that type."""
    pair = MATVEC.get(wtype_name)
    if pair is None or K % _BLOCK_SIZE.get(wtype_name, QK_K):
        return False
    kernel = pair[0] if _avx2() else pair[1]
    for t in range(x.shape[0]):
        kernel(rows, K, x[t], out[t])
    return True
