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

This module also holds the IR helpers the other vector-code modules share (the generic ones come from
workbench.cpu.ir, which the dequantize kernels use too): lanes_avx2 (the same sums with
AVX2's integer instructions, one token and prompt batches), lanes_f16 (F16 weights), lanes_kquants.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from workbench.cpu.ir import fp16 as _f16, half_to_f32, load as _load, splat as _splat, x86 as _x86
from workbench.cpu.ops import round_f16

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


def _fma(builder, a, b, c):
    """llvm.fma: one rounding, like _mm256_fmadd_ps (a software fma where the CPU has none)."""
    ty = a.type
    name = "llvm.fma.v8f32" if isinstance(ty, ir.VectorType) else "llvm.fma.f32"
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty, ty, ty]), name)
    return builder.call(fn, [a, b, c])


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
        return half_to_f32(builder, args[0])

    return sig, codegen


# --- helpers for AVX2's integer products (lanes_avx2, lanes_kquants) ---------------------------------------
# mul_sum_us8_pairs_float / mul_sum_i8_pairs_float: vpmaddubsw (u8 x i8 -> pairs of i16) then vpmaddwd with
# ones (-> the 8 lane sums of 4 products as i32), no saturation at these magnitudes.
_V32B = ir.VectorType(ir.IntType(8), 32)
_V16S = ir.VectorType(ir.IntType(16), 16)


def _lane_sums_u8_i8(builder, u8, i8):
    """_mm256_madd_epi16(_mm256_maddubs_epi16(u8, i8), ones) as float: the 8 lane sums of 4 products."""
    pairs = _x86(builder, "llvm.x86.avx2.pmadd.ub.sw", _V16S, [u8, i8])
    quads = _x86(builder, "llvm.x86.avx2.pmadd.wd", _V8I, [pairs, ir.Constant(_V16S, [1] * 16)])
    return builder.sitofp(quads, _V8F)
