"""One-token dot products of Q4_1 and Q8_0 rows in ggml's AVX2 lane order, written as LLVM vector code.

ggml_vec_dot_q4_1_q8_1 and ggml_vec_dot_q8_0_q8_0 (arch/x86/quants.c) keep 8 float lanes per row. For
every block of 32 weights, lane l receives the integer sum of the 4 products of elements 4l .. 4l+3
(mul_sum_us8_pairs_float / mul_sum_i8_pairs_float) and does acc_l = fma(d_w * d_x, that sum, acc_l);
the row's result is hsum_float_8(acc) (+ the sum of m * s for Q4_1, one fma per block).

vec_dot.q4_1_q8_1 / q8_0_q8_0 are the readable scalar statement of that order. LLVM does not vectorize
them (the lane sums read 4 elements at a stride of 4), so here the same arithmetic is spelled out on
<8 x float> vectors with numba's @intrinsic:

- the activations come in "lane order", xl[b, k, l] = x[32 b + 4 l + k] (as float32, see lane_order);
- the 16 bytes of a Q4_1 block, read as 4 int32 words w0..w3, hold element 4 l + k of lane l < 4 in the
  low nibble of byte k of word l, and of lane l >= 4 in the high nibble of byte k of word l - 4; so with
  W = [w0 w1 w2 w3 w0>>4 w1>>4 w2>>4 w3>>4], the weights of step k are (W >> 8k) & 15 for all 8 lanes;
- the 32 int8 of a Q8_0 block, read as 8 int32 words, hold element 4 l + k in byte k of word l;
- a lane's 4 products are integers below 2^16, so summing them as float fmas is exact, in any order.

Every step is the same float operation as ggml's (one rounding per fma, llvm.fma is always fused), so the
results are bit for bit those of the scalar kernels (tests/test_vec_dot_ir.py). The activations come from
act_quant.q8_lanes; the IR helpers from workbench.cpu.ir. vec_dot_avx2 computes the same sums with AVX2's
integer instructions (one token and prompt batches).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from workbench.cpu.act_quant import q8_lanes
from workbench.cpu.ir import F32, I32, I64, V8F, V8I, fma, fp16, hsum_float_8, load, splat


def lane_order(xq: np.ndarray) -> np.ndarray:
    """(T, K) integer activations -> (T, K/32, 4, 8) float32 with [t, b, k, l] = x[t, 32 b + 4 l + k]."""
    T, K = xq.shape
    return np.ascontiguousarray(xq.reshape(T, K // 32, 8, 4).transpose(0, 1, 3, 2), dtype=np.float32)


def _row_setup(context, builder, sig, args):
    """Data pointers of (W, r, nb, xl, dx[, s]) and the byte pointer to row r of W."""
    W, r = args[0], args[1]
    wa = context.make_array(sig.args[0])(context, builder, W)
    stride0 = cgutils.unpack_tuple(builder, wa.strides)[0]
    row = builder.gep(builder.bitcast(wa.data, ir.IntType(8).as_pointer()), [builder.mul(r, stride0)])
    floats = [builder.bitcast(context.make_array(sig.args[i])(context, builder, args[i]).data, F32.as_pointer())
              for i in range(3, len(args))]
    return row, args[2], floats


def _lane_sums(builder, words, xl_ptr, b, unpack):
    """Per lane, the exact sum over k of unpack(words, k) * xl[b, k, lane] as <8 x float>."""
    v = ir.Constant(V8F, [0.0] * 8)
    for k in range(4):
        xk = builder.load(builder.bitcast(builder.gep(xl_ptr, [builder.add(builder.mul(b, ir.Constant(I64, 32)),
                                                                       ir.Constant(I64, 8 * k))]),
                                          V8F.as_pointer()), align=4)
        v = fma(builder, builder.sitofp(unpack(words, k), V8F), xk, v)
    return v


@intrinsic
def _q4_1_row(typingctx, W, r, nb, xl, dx, s):
    sig = types.float32(W, r, nb, xl, dx, s)

    def codegen(context, builder, sig, args):
        row, nb_, (xl_p, dx_p, s_p) = _row_setup(context, builder, sig, args)
        acc = cgutils.alloca_once_value(builder, ir.Constant(V8F, [0.0] * 8))
        summs = cgutils.alloca_once_value(builder, ir.Constant(F32, 0.0))
        shifts = ir.Constant(V8I, [0, 0, 0, 0, 4, 4, 4, 4])
        with cgutils.for_range(builder, nb_) as loop:
            b = loop.index
            o = builder.mul(b, ir.Constant(I64, 20))                 # block_q4_1: d, m (fp16), 16 bytes
            d = fp16(builder, row, o)
            m = fp16(builder, row, builder.add(o, ir.Constant(I64, 2)))
            builder.store(fma(builder, m, builder.load(builder.gep(s_p, [b])), builder.load(summs)), summs)
            dd = builder.fmul(d, builder.load(builder.gep(dx_p, [b])))
            w4 = load(builder, row, builder.add(o, ir.Constant(I64, 4)), ir.VectorType(I32, 4))
            w8 = builder.lshr(builder.shuffle_vector(w4, w4, ir.Constant(V8I, [0, 1, 2, 3, 0, 1, 2, 3])), shifts)

            def nibbles(w, k):
                return builder.and_(builder.lshr(w, ir.Constant(V8I, [8 * k] * 8)), ir.Constant(V8I, [15] * 8))

            v = _lane_sums(builder, w8, xl_p, b, nibbles)
            builder.store(fma(builder, splat(builder, dd), v, builder.load(acc)), acc)
        return builder.fadd(hsum_float_8(builder, builder.load(acc)), builder.load(summs))

    return sig, codegen


@intrinsic
def _q8_0_row(typingctx, W, r, nb, xl, dx):
    sig = types.float32(W, r, nb, xl, dx)

    def codegen(context, builder, sig, args):
        row, nb_, (xl_p, dx_p) = _row_setup(context, builder, sig, args)
        acc = cgutils.alloca_once_value(builder, ir.Constant(V8F, [0.0] * 8))
        with cgutils.for_range(builder, nb_) as loop:
            b = loop.index
            o = builder.mul(b, ir.Constant(I64, 34))                 # block_q8_0: d (fp16), 32 int8
            dd = builder.fmul(fp16(builder, row, o), builder.load(builder.gep(dx_p, [b])))
            w8 = load(builder, row, builder.add(o, ir.Constant(I64, 2)), V8I)

            def int8s(w, k):                                          # sign-extended byte k of each word
                return builder.ashr(builder.shl(w, ir.Constant(V8I, [24 - 8 * k] * 8)), ir.Constant(V8I, [24] * 8))

            v = _lane_sums(builder, w8, xl_p, b, int8s)
            builder.store(fma(builder, splat(builder, dd), v, builder.load(acc)), acc)
        return hsum_float_8(builder, builder.load(acc))

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
