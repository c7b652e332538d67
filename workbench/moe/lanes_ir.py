"""One-token dot products of Q4_1 and Q8_0 rows in ggml's AVX2 lane order, written as LLVM vector code.

ggml_vec_dot_q4_1_q8_1 and ggml_vec_dot_q8_0_q8_0 (arch/x86/quants.c) keep 8 float lanes per row. For
every block of 32 weights, lane l receives the integer sum of the 4 products of elements 4l .. 4l+3
(mul_sum_us8_pairs_float / mul_sum_i8_pairs_float) and does acc_l = fma(d_w * d_x, that sum, acc_l);
the row's result is hsum_float_8(acc) (+ the sum of m * s for Q4_1, one fma per block).

exact_dots.q4_1_q8_1 / q8_0_q8_0 are the readable scalar statement of that order. LLVM does not vectorize
them (the lane sums read 4 elements at a stride of 4), so here the same arithmetic is spelled out on
<8 x float> vectors with numba's @intrinsic:

- the activations come in "lane order", xl[b, k, l] = x[32 b + 4 l + k] (as float32, see lane_order);
- the 16 bytes of a Q4_1 block, read as 4 int32 words w0..w3, hold element 4 l + k of lane l < 4 in the
  low nibble of byte k of word l, and of lane l >= 4 in the high nibble of byte k of word l - 4; so with
  W = [w0 w1 w2 w3 w0>>4 w1>>4 w2>>4 w3>>4], the weights of step k are (W >> 8k) & 15 for all 8 lanes;
- the 32 int8 of a Q8_0 block, read as 8 int32 words, hold element 4 l + k in byte k of word l;
- a lane's 4 products are integers below 2^16, so summing them as float fmas is exact, in any order.

Every step is the same float operation as ggml's (one rounding per fma, llvm.fma is always fused), so the
results are bit for bit those of the scalar kernels (tests/test_lanes_ir.py).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .ops import round_f16

_F32 = ir.FloatType()
_I64 = ir.IntType(64)
_I32 = ir.IntType(32)
_V8F = ir.VectorType(_F32, 8)
_V8I = ir.VectorType(_I32, 8)


@njit(cache=True)
def q8_lanes(x, kind, with_lanes=True):
    """One token x (K,) quantized as ggml's quantize_row_q8_0 (kind 0) / _q8_1 (kind 1) for a vec_dot (the
    values of activations._quantize_q8, computed for one row with loops LLVM vectorizes), in the forms the
    kernels here read: xq (K,) int8, xl (K/32, 4, 8) the same as float32 in lane order (empty unless
    with_lanes: only the portable kernels read it), dx (K/32,) the fp16
    scales, s (K/32,) the block sums (Q8_1's s = fp16(d * sum q); only Q4_1's min term reads them)."""
    K = x.shape[0]
    nb = K // 32
    xq = np.empty(K, np.int8)
    dx = np.empty(nb, np.float32)
    s = np.empty(nb, np.float32)
    q = np.empty(32, np.float32)
    for b in range(nb):
        xb = x[32 * b:32 * b + 32]
        amax = np.float32(0.0)
        for i in range(32):
            a = abs(xb[i])
            amax = a if a > amax else amax
        d = amax / np.float32(127.0)
        iscale = np.float32(127.0) / amax if amax > 0 else np.float32(0.0)
        total = np.float32(0.0)
        for i in range(32):
            q[i] = np.rint(xb[i] * iscale)
            total += q[i]
        for i in range(32):
            xq[32 * b + i] = np.int8(q[i])
        dq = round_f16(d)
        dx[b] = dq
        s[b] = round_f16(total * d) if kind == 1 else total * dq
    xl = np.empty((nb if with_lanes else 0, 4, 8), np.float32)
    for b in range(nb if with_lanes else 0):
        for lane in range(8):
            for k in range(4):
                xl[b, k, lane] = xq[32 * b + 4 * lane + k]
    return xq, xl, dx, s


def lane_order(xq: np.ndarray) -> np.ndarray:
    """(T, K) integer activations -> (T, K/32, 4, 8) float32 with [t, b, k, l] = x[t, 32 b + 4 l + k]."""
    T, K = xq.shape
    return np.ascontiguousarray(xq.reshape(T, K // 32, 8, 4).transpose(0, 1, 3, 2), dtype=np.float32)


def _splat(builder, value, n=8):
    vec = ir.VectorType(value.type, n)
    v = builder.insert_element(ir.Constant(vec, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(vec, ir.Undefined), ir.Constant(_V8I, [0] * n))


def _fma(builder, a, b, c):
    """llvm.fma: one rounding, like _mm256_fmadd_ps (a software fma where the CPU has none)."""
    ty = a.type
    name = "llvm.fma.v8f32" if isinstance(ty, ir.VectorType) else "llvm.fma.f32"
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty, ty, ty]), name)
    return builder.call(fn, [a, b, c])


def _ptr(builder, base, offset, ty):
    """Pointer to a `ty` at byte `offset` from an i8* `base` (no alignment assumed)."""
    return builder.bitcast(builder.gep(base, [offset]), ty.as_pointer())


def _load(builder, base, offset, ty):
    return builder.load(_ptr(builder, base, offset, ty), align=1)


def _f16(builder, base, offset):
    h = builder.bitcast(_load(builder, base, offset, ir.IntType(16)), ir.HalfType())
    return builder.fpext(h, _F32)


def _hsum8(builder, acc):
    """hsum_float_8: ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))."""
    a = [builder.extract_element(acc, ir.Constant(_I32, i)) for i in range(8)]
    return builder.fadd(builder.fadd(builder.fadd(a[0], a[4]), builder.fadd(a[2], a[6])),
                        builder.fadd(builder.fadd(a[1], a[5]), builder.fadd(a[3], a[7])))


def _row_setup(context, builder, sig, args):
    """Data pointers of (W, r, nb, xl, dx[, s]) and the byte pointer to row r of W."""
    W, r = args[0], args[1]
    wa = context.make_array(sig.args[0])(context, builder, W)
    stride0 = cgutils.unpack_tuple(builder, wa.strides)[0]
    row = builder.gep(builder.bitcast(wa.data, ir.IntType(8).as_pointer()), [builder.mul(r, stride0)])
    floats = [builder.bitcast(context.make_array(sig.args[i])(context, builder, args[i]).data, _F32.as_pointer())
              for i in range(3, len(args))]
    return row, args[2], floats


def _lane_sums(builder, words, xl_ptr, b, unpack):
    """Per lane, the exact sum over k of unpack(words, k) * xl[b, k, lane] as <8 x float>."""
    v = ir.Constant(_V8F, [0.0] * 8)
    for k in range(4):
        xk = builder.load(builder.bitcast(builder.gep(xl_ptr, [builder.add(builder.mul(b, ir.Constant(_I64, 32)),
                                                                       ir.Constant(_I64, 8 * k))]),
                                          _V8F.as_pointer()), align=4)
        v = _fma(builder, builder.sitofp(unpack(words, k), _V8F), xk, v)
    return v


@intrinsic
def _q4_1_row(typingctx, W, r, nb, xl, dx, s):
    sig = types.float32(W, r, nb, xl, dx, s)

    def codegen(context, builder, sig, args):
        row, nb_, (xl_p, dx_p, s_p) = _row_setup(context, builder, sig, args)
        acc = cgutils.alloca_once_value(builder, ir.Constant(_V8F, [0.0] * 8))
        summs = cgutils.alloca_once_value(builder, ir.Constant(_F32, 0.0))
        shifts = ir.Constant(_V8I, [0, 0, 0, 0, 4, 4, 4, 4])
        with cgutils.for_range(builder, nb_) as loop:
            b = loop.index
            o = builder.mul(b, ir.Constant(_I64, 20))                 # block_q4_1: d, m (fp16), 16 bytes
            d = _f16(builder, row, o)
            m = _f16(builder, row, builder.add(o, ir.Constant(_I64, 2)))
            builder.store(_fma(builder, m, builder.load(builder.gep(s_p, [b])), builder.load(summs)), summs)
            dd = builder.fmul(d, builder.load(builder.gep(dx_p, [b])))
            w4 = _load(builder, row, builder.add(o, ir.Constant(_I64, 4)), ir.VectorType(_I32, 4))
            w8 = builder.lshr(builder.shuffle_vector(w4, w4, ir.Constant(_V8I, [0, 1, 2, 3, 0, 1, 2, 3])), shifts)

            def nibbles(w, k):
                return builder.and_(builder.lshr(w, ir.Constant(_V8I, [8 * k] * 8)), ir.Constant(_V8I, [15] * 8))

            v = _lane_sums(builder, w8, xl_p, b, nibbles)
            builder.store(_fma(builder, _splat(builder, dd), v, builder.load(acc)), acc)
        return builder.fadd(_hsum8(builder, builder.load(acc)), builder.load(summs))

    return sig, codegen


@intrinsic
def _q8_0_row(typingctx, W, r, nb, xl, dx):
    sig = types.float32(W, r, nb, xl, dx)

    def codegen(context, builder, sig, args):
        row, nb_, (xl_p, dx_p) = _row_setup(context, builder, sig, args)
        acc = cgutils.alloca_once_value(builder, ir.Constant(_V8F, [0.0] * 8))
        with cgutils.for_range(builder, nb_) as loop:
            b = loop.index
            o = builder.mul(b, ir.Constant(_I64, 34))                 # block_q8_0: d (fp16), 32 int8
            dd = builder.fmul(_f16(builder, row, o), builder.load(builder.gep(dx_p, [b])))
            w8 = _load(builder, row, builder.add(o, ir.Constant(_I64, 2)), _V8I)

            def int8s(w, k):                                          # sign-extended byte k of each word
                return builder.ashr(builder.shl(w, ir.Constant(_V8I, [24 - 8 * k] * 8)), ir.Constant(_V8I, [24] * 8))

            v = _lane_sums(builder, w8, xl_p, b, int8s)
            builder.store(_fma(builder, _splat(builder, dd), v, builder.load(acc)), acc)
        return _hsum8(builder, builder.load(acc))

    return sig, codegen


@njit(cache=True, parallel=True)
def q4_1_matvec(W, K, x, out):
    """out[r] = ggml_vec_dot_q4_1_q8_1(row r, x quantized to Q8_1), x (K,) float32: one token."""
    _, xl, dx, s = q8_lanes(x, 1, True)
    for r in prange(W.shape[0]):
        out[r] = _q4_1_row(W, r, K // 32, xl, dx, s)


@njit(cache=True, parallel=True)
def q8_0_matvec(W, K, x, out):
    """out[r] = ggml_vec_dot_q8_0_q8_0(row r, x quantized to Q8_0), x (K,) float32: one token."""
    _, xl, dx, _ = q8_lanes(x, 0, True)
    for r in prange(W.shape[0]):
        out[r] = _q8_0_row(W, r, K // 32, xl, dx)


@intrinsic
def half_to_float(typingctx, bits):
    """The fp16 number with these bits (uint16) as float32: exact, one vcvtph2ps lane where LLVM vectorizes."""
    sig = types.float32(bits)

    def codegen(context, builder, sig, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), _F32)

    return sig, codegen




# --- the same sums with AVX2's integer instructions, as ggml computes them ----------------------------------
# mul_sum_us8_pairs_float / mul_sum_i8_pairs_float: vpmaddubsw (u8 x i8 -> pairs of i16) then vpmaddwd with
# ones (-> the 8 lane sums of 4 products as i32), no saturation at these magnitudes. Same integer lane sums
# as above, so the same floats; about twice as fast. Only where the compile target has AVX2 (has_avx2).
_V32B = ir.VectorType(ir.IntType(8), 32)
_V16S = ir.VectorType(ir.IntType(16), 16)


def has_avx2() -> bool:
    """Does numba compile for a CPU with AVX2 (the host, unless NUMBA_CPU_NAME names another target)?"""
    from numba.core import config
    if config.CPU_NAME not in (None, "host"):
        return False
    import llvmlite.binding as ll
    return bool(ll.get_host_cpu_features().get("avx2", False))


def _x86(builder, name, ret, args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, [a.type for a in args]), name)
    return builder.call(fn, args)


def _lane_sums_u8_i8(builder, u8, i8):
    """_mm256_madd_epi16(_mm256_maddubs_epi16(u8, i8), ones) as float: the 8 lane sums of 4 products."""
    pairs = _x86(builder, "llvm.x86.avx2.pmadd.ub.sw", _V16S, [u8, i8])
    quads = _x86(builder, "llvm.x86.avx2.pmadd.wd", _V8I, [pairs, ir.Constant(_V16S, [1] * 16)])
    return builder.sitofp(quads, _V8F)


def _row_i8(context, builder, sig, args):
    """As _row_setup, with the activations as int8 (K,) instead of lane order."""
    W, r = args[0], args[1]
    wa = context.make_array(sig.args[0])(context, builder, W)
    stride0 = cgutils.unpack_tuple(builder, wa.strides)[0]
    row = builder.gep(builder.bitcast(wa.data, ir.IntType(8).as_pointer()), [builder.mul(r, stride0)])
    xq = builder.bitcast(context.make_array(sig.args[3])(context, builder, args[3]).data, ir.IntType(8).as_pointer())
    floats = [builder.bitcast(context.make_array(sig.args[i])(context, builder, args[i]).data, _F32.as_pointer())
              for i in range(4, len(args))]
    return row, args[2], xq, floats


@intrinsic
def _q4_1_row_avx2(typingctx, W, r, nb, xq, dx, s):
    sig = types.float32(W, r, nb, xq, dx, s)

    def codegen(context, builder, sig, args):
        row, nb_, xq_p, (dx_p, s_p) = _row_i8(context, builder, sig, args)
        acc = cgutils.alloca_once_value(builder, ir.Constant(_V8F, [0.0] * 8))
        summs = cgutils.alloca_once_value(builder, ir.Constant(_F32, 0.0))
        with cgutils.for_range(builder, nb_) as loop:
            b = loop.index
            o = builder.mul(b, ir.Constant(_I64, 20))
            d = _f16(builder, row, o)
            m = _f16(builder, row, builder.add(o, ir.Constant(_I64, 2)))
            builder.store(_fma(builder, m, builder.load(builder.gep(s_p, [b])), builder.load(summs)), summs)
            dd = builder.fmul(d, builder.load(builder.gep(dx_p, [b])))
            v16 = _load(builder, row, builder.add(o, ir.Constant(_I64, 4)), ir.VectorType(ir.IntType(8), 16))
            both = builder.shuffle_vector(v16, v16, ir.Constant(ir.VectorType(_I32, 32), list(range(16)) * 2))
            shifts = ir.Constant(_V32B, [0] * 16 + [4] * 16)          # bytes_from_nibbles_32
            nib = builder.and_(builder.lshr(both, shifts), ir.Constant(_V32B, [15] * 32))
            y = _load(builder, xq_p, builder.mul(b, ir.Constant(_I64, 32)), _V32B)
            v = _lane_sums_u8_i8(builder, nib, y)
            builder.store(_fma(builder, _splat(builder, dd), v, builder.load(acc)), acc)
        return builder.fadd(_hsum8(builder, builder.load(acc)), builder.load(summs))

    return sig, codegen


@intrinsic
def _q8_0_row_avx2(typingctx, W, r, nb, xq, dx):
    sig = types.float32(W, r, nb, xq, dx)

    def codegen(context, builder, sig, args):
        row, nb_, xq_p, (dx_p,) = _row_i8(context, builder, sig, args)
        acc = cgutils.alloca_once_value(builder, ir.Constant(_V8F, [0.0] * 8))
        with cgutils.for_range(builder, nb_) as loop:
            b = loop.index
            o = builder.mul(b, ir.Constant(_I64, 34))
            dd = builder.fmul(_f16(builder, row, o), builder.load(builder.gep(dx_p, [b])))
            x = _load(builder, row, builder.add(o, ir.Constant(_I64, 2)), _V32B)
            y = _load(builder, xq_p, builder.mul(b, ir.Constant(_I64, 32)), _V32B)
            ax = _x86(builder, "llvm.x86.avx2.psign.b", _V32B, [x, x])   # |x| (as u8: -128 -> 128)
            sy = _x86(builder, "llvm.x86.avx2.psign.b", _V32B, [y, x])   # y with x's sign
            v = _lane_sums_u8_i8(builder, ax, sy)
            builder.store(_fma(builder, _splat(builder, dd), v, builder.load(acc)), acc)
        return _hsum8(builder, builder.load(acc))

    return sig, codegen


@njit(cache=True, parallel=True)
def q4_1_matvec_avx2(W, K, x, out):
    """q4_1_matvec with AVX2's integer products."""
    xq, _, dx, s = q8_lanes(x, 1, False)
    for r in prange(W.shape[0]):
        out[r] = _q4_1_row_avx2(W, r, K // 32, xq, dx, s)


@njit(cache=True, parallel=True)
def q8_0_matvec_avx2(W, K, x, out):
    """q8_0_matvec with AVX2's integer products."""
    xq, _, dx, _ = q8_lanes(x, 0, False)
    for r in prange(W.shape[0]):
        out[r] = _q8_0_row_avx2(W, r, K // 32, xq, dx)


@intrinsic
def _f16_row32(typingctx, W16, r, n32, xh):
    """GGML_F16_VEC_REDUCE of ggml_vec_dot_f16's 4 x 8 accumulators over the first 32 * n32 elements of row r
    of W16 (fp16 bits) times xh (float32 values of fp16): acc_j = fma(w, x, acc_j) per chunk of 32."""
    sig = types.float32(W16, r, n32, xh)

    def codegen(context, builder, sig, args):
        wa = context.make_array(sig.args[0])(context, builder, args[0])
        stride0 = cgutils.unpack_tuple(builder, wa.strides)[0]
        row = builder.gep(builder.bitcast(wa.data, ir.IntType(8).as_pointer()), [builder.mul(args[1], stride0)])
        xh = builder.bitcast(context.make_array(sig.args[3])(context, builder, args[3]).data,
                             ir.IntType(8).as_pointer())
        zero = ir.Constant(_V8F, [0.0] * 8)
        accs = [cgutils.alloca_once_value(builder, zero) for _ in range(4)]
        with cgutils.for_range(builder, args[2]) as loop:
            for j in range(4):
                e = builder.add(builder.mul(loop.index, ir.Constant(_I64, 32)), ir.Constant(_I64, 8 * j))
                w = builder.fpext(_load(builder, row, builder.mul(e, ir.Constant(_I64, 2)),
                                        ir.VectorType(ir.HalfType(), 8)), _V8F)
                x = _load(builder, xh, builder.mul(e, ir.Constant(_I64, 4)), _V8F)
                builder.store(_fma(builder, w, x, builder.load(accs[j])), accs[j])
        a0, a1, a2, a3 = (builder.load(a) for a in accs)
        v = builder.fadd(builder.fadd(a0, a2), builder.fadd(a1, a3))     # x[i] of _reduce32
        lane = [builder.extract_element(v, ir.Constant(_I32, i)) for i in range(8)]
        t = [builder.fadd(lane[i], lane[i + 4]) for i in range(4)]
        return builder.fadd(builder.fadd(t[0], t[1]), builder.fadd(t[2], t[3]))

    return sig, codegen


@njit(cache=True, parallel=True)
def f16_matvec(W16, K, x, out):
    """out[r] = ggml_vec_dot_f16(row r, fp16(x)) for one token: W16 (N, K) uint16 fp16 bits; 32 lanes
    (4 x 8) over chunks of 32 elements, GGML_F16_VEC_REDUCE, then the tail (K % 32) in double, as
    exact_dots.float_rows_exact does element by element."""
    xh = np.empty(K, np.float32)
    for i in range(K):
        xh[i] = round_f16(x[i])
    K32 = K - K % 32
    for r in prange(W16.shape[0]):
        acc = np.float64(_f16_row32(W16, r, K32 // 32, xh)) if K32 else 0.0
        w = W16[r]
        for i in range(K32, K):
            acc += np.float64(half_to_float(w[i]) * xh[i])
        out[r] = np.float32(acc)


# --- prompt batches: the same sums for several tokens per pass over a row (AVX2) -------------------------------
# One row's block is unpacked once and multiplied with RN tokens' int8 blocks, RN accumulators in registers
# (llama.cpp runs vec_dot per (row, token) for Q4_1, tinyBLAS_Q0_AVX for Q8_0: the same float steps per
# (row, token) either way). Each (row, token) keeps its own order, so the results are the one-token ones.
_RN = 8


def _tile_codegen(kind, rn):
    """IR for out[t0 + i, r], i < rn, of a Q4_1 (kind 1) or Q8_0 (kind 0) row against rn tokens."""
    def codegen(context, builder, sig, args):
        W, r, nb, XQ, DX, S, t0, out = args
        wa = context.make_array(sig.args[0])(context, builder, W)
        row = builder.gep(builder.bitcast(wa.data, ir.IntType(8).as_pointer()),
                          [builder.mul(r, cgutils.unpack_tuple(builder, wa.strides)[0])])
        arrs = [context.make_array(sig.args[i])(context, builder, args[i]) for i in (3, 4, 5, 7)]
        xq_a, dx_a, s_a, out_a = arrs
        byte = ir.IntType(8).as_pointer()
        xq_p, dx_p, s_p, out_p = (builder.bitcast(a.data, byte) for a in arrs)
        xq_st, dx_st, s_st, out_st = (cgutils.unpack_tuple(builder, a.strides) for a in arrs)
        zero = ir.Constant(_V8F, [0.0] * 8)
        accs = [cgutils.alloca_once_value(builder, zero) for _ in range(rn)]
        summs = [cgutils.alloca_once_value(builder, ir.Constant(_F32, 0.0)) for _ in range(rn)]
        toks = [builder.add(t0, ir.Constant(_I64, i)) for i in range(rn)]
        bs = 20 if kind == 1 else 34
        with cgutils.for_range(builder, nb) as loop:
            b = loop.index
            o = builder.mul(b, ir.Constant(_I64, bs))
            d = _f16(builder, row, o)
            if kind == 1:
                m = _f16(builder, row, builder.add(o, ir.Constant(_I64, 2)))
                v16 = _load(builder, row, builder.add(o, ir.Constant(_I64, 4)), ir.VectorType(ir.IntType(8), 16))
                both = builder.shuffle_vector(v16, v16, ir.Constant(ir.VectorType(_I32, 32), list(range(16)) * 2))
                wv = builder.and_(builder.lshr(both, ir.Constant(_V32B, [0] * 16 + [4] * 16)),
                                  ir.Constant(_V32B, [15] * 32))
            else:
                x = _load(builder, row, builder.add(o, ir.Constant(_I64, 2)), _V32B)
                wv = _x86(builder, "llvm.x86.avx2.psign.b", _V32B, [x, x])
            for i, t in enumerate(toks):
                def at(ptr, st, col, size):
                    return builder.add(builder.mul(t, st[0]), builder.mul(col, ir.Constant(_I64, size)))
                y = _load(builder, xq_p, builder.add(builder.mul(t, xq_st[0]), builder.mul(b, ir.Constant(_I64, 32))),
                          _V32B)
                if kind == 0:
                    y = _x86(builder, "llvm.x86.avx2.psign.b", _V32B, [y, x])
                v = _lane_sums_u8_i8(builder, wv, y)
                dxt = _load(builder, dx_p, at(dx_p, dx_st, b, 4), _F32)
                if kind == 1:
                    st = _load(builder, s_p, at(s_p, s_st, b, 4), _F32)
                    builder.store(_fma(builder, m, st, builder.load(summs[i])), summs[i])
                dd = builder.fmul(d, dxt)
                builder.store(_fma(builder, _splat(builder, dd), v, builder.load(accs[i])), accs[i])
        for i, t in enumerate(toks):
            res = _hsum8(builder, builder.load(accs[i]))
            if kind == 1:
                res = builder.fadd(res, builder.load(summs[i]))
            ptr = _ptr(builder, out_p, builder.add(builder.mul(t, out_st[0]), builder.mul(r, out_st[1])), _F32)
            builder.store(res, ptr)
        return context.get_dummy_value()
    return codegen


def _tile_intrinsic(kind, rn):
    @intrinsic
    def tile(typingctx, W, r, nb, XQ, DX, S, t0, out):
        return types.void(W, r, nb, XQ, DX, S, t0, out), _tile_codegen(kind, rn)
    return tile


_q4_1_tile, _q4_1_tile1 = _tile_intrinsic(1, _RN), _tile_intrinsic(1, 1)
_q8_0_tile, _q8_0_tile1 = _tile_intrinsic(0, _RN), _tile_intrinsic(0, 1)


@njit(cache=True, parallel=True)
def q4_1_matmul_avx2(W, K, XQ, DX, S, out):
    """out (T, N) = ggml_vec_dot_q4_1_q8_1 of every (token, row): XQ (T, K) int8, DX, S (T, K/32) float32
    (prepare_activations' Q8_1 values); tokens in groups of _RN per pass over a row."""
    T = XQ.shape[0]
    T4 = T - T % _RN
    for r in prange(W.shape[0]):
        for t0 in range(0, T4, _RN):
            _q4_1_tile(W, r, K // 32, XQ, DX, S, t0, out)
        for t0 in range(T4, T):
            _q4_1_tile1(W, r, K // 32, XQ, DX, S, t0, out)


@njit(cache=True, parallel=True)
def q8_0_matmul_avx2(W, K, XQ, DX, out):
    """out (T, N) = ggml_vec_dot_q8_0_q8_0 (= tinyBLAS_Q0_AVX's sums) of every (token, row)."""
    T = XQ.shape[0]
    T4 = T - T % _RN
    for r in prange(W.shape[0]):
        for t0 in range(0, T4, _RN):
            _q8_0_tile(W, r, K // 32, XQ, DX, DX, t0, out)
        for t0 in range(T4, T):
            _q8_0_tile1(W, r, K // 32, XQ, DX, DX, t0, out)


def _f16_tile_codegen(rm, rn):
    """IR for out[t0 + j, r + i] (i < rm, j < rn) = tinyBLAS's F16 dot: 8 lanes, one fma chain each over
    k = lane, lane + 8, ..., then hsum_float_8; rm rows x rn tokens of accumulators in registers."""
    def codegen(context, builder, sig, args):
        W, r, k8, XH, t0, out = args
        byte = ir.IntType(8).as_pointer()
        wa, xa, oa = (context.make_array(sig.args[i])(context, builder, args[i]) for i in (0, 3, 5))
        w_p, x_p, o_p = (builder.bitcast(a.data, byte) for a in (wa, xa, oa))
        w_st, x_st, o_st = (cgutils.unpack_tuple(builder, a.strides) for a in (wa, xa, oa))
        rows = [builder.gep(w_p, [builder.mul(builder.add(r, ir.Constant(_I64, i)), w_st[0])]) for i in range(rm)]
        toks = [builder.gep(x_p, [builder.mul(builder.add(t0, ir.Constant(_I64, j)), x_st[0])]) for j in range(rn)]
        zero = ir.Constant(_V8F, [0.0] * 8)
        accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(rn)] for _ in range(rm)]
        with cgutils.for_range(builder, k8) as loop:
            k = builder.mul(loop.index, ir.Constant(_I64, 8))
            ws = [builder.fpext(_load(builder, row, builder.mul(k, ir.Constant(_I64, 2)),
                                      ir.VectorType(ir.HalfType(), 8)), _V8F) for row in rows]
            xs = [_load(builder, tok, builder.mul(k, ir.Constant(_I64, 4)), _V8F) for tok in toks]
            for i in range(rm):
                for j in range(rn):
                    builder.store(_fma(builder, ws[i], xs[j], builder.load(accs[i][j])), accs[i][j])
        for i in range(rm):
            for j in range(rn):
                o = builder.add(builder.mul(builder.add(t0, ir.Constant(_I64, j)), o_st[0]),
                                builder.mul(builder.add(r, ir.Constant(_I64, i)), o_st[1]))
                builder.store(_hsum8(builder, builder.load(accs[i][j])), _ptr(builder, o_p, o, _F32))
        return context.get_dummy_value()
    return codegen


def _f16_tile_intrinsic(rm, rn):
    @intrinsic
    def tile(typingctx, W, r, k8, XH, t0, out):
        return types.void(W, r, k8, XH, t0, out), _f16_tile_codegen(rm, rn)
    return tile


_F16_RM, _F16_RN = 2, 4
_f16_tile = _f16_tile_intrinsic(_F16_RM, _F16_RN)
_f16_tile_r1 = _f16_tile_intrinsic(1, _F16_RN)
_f16_tile_t1 = _f16_tile_intrinsic(_F16_RM, 1)
_f16_tile_11 = _f16_tile_intrinsic(1, 1)


@njit(cache=True, parallel=True)
def f16_matmul(W16, K, XH, out):
    """out (T, N) = llamafile_sgemm's tinyBLAS product of F16 rows W16 (N, K) uint16 with XH (T, K) float32
    (the activations rounded to fp16), K % 8 == 0: per (token, row) 8 fma lanes over k, then hsum_float_8,
    as exact_dots.float_rows_batch; 2 rows x 4 tokens per tile."""
    N, T = W16.shape[0], XH.shape[0]
    k8 = K // 8
    NR = N - N % _F16_RM
    T4 = T - T % _F16_RN
    for g in prange((N + _F16_RM - 1) // _F16_RM):
        r = g * _F16_RM
        if r < NR:
            for t0 in range(0, T4, _F16_RN):
                _f16_tile(W16, r, k8, XH, t0, out)
            for t0 in range(T4, T):
                _f16_tile_t1(W16, r, k8, XH, t0, out)
        else:
            for t0 in range(0, T4, _F16_RN):
                _f16_tile_r1(W16, r, k8, XH, t0, out)
            for t0 in range(T4, T):
                _f16_tile_11(W16, r, k8, XH, t0, out)
