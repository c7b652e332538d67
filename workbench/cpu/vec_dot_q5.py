"""ggml's float sums for the legacy 5-bit weights Q5_0 and Q5_1, bit for bit (AVX2 build of ggml-cpu).

Which ggml code multiplies them (llama.cpp 0c1e570, x86 with AVX2+FMA+F16C):
  * neither type is repacked on x86 (repack.cpp only takes Q4_0 / Q4_K / IQ4_NL / Q8_0) and the tiled
    path (tiled/tiled.cpp) only takes k-quants and i-quants;
  * Q5_0, two or more tokens: ggml_compute_forward_mul_mat hands it to llamafile_sgemm, which runs
    tinyBLAS_Q0_AVX<block_q5_0, block_q8_0>. Every tile shape (gemm4xN, gemmMx4, gemm<RM,RN>) computes per
    block  C = fma(d_w * d_x, updot(|q_w|, sign(q_x, q_w)), C)  on 8 lanes of 4 integer products and ends
    with hsum: the same float operations, in the same order, as
  * Q5_0, one token (and MUL_MAT_ID): ggml_vec_dot_q5_0_q8_0 (arch/x86/quants.c):
        acc = fma(d_w * d_x, mul_sum_i8_pairs_float(q_w, q_x), acc);   result hsum_float_8(acc)
    so one kernel serves both;
  * Q5_1 (vec_dot_type Q8_1) has no tinyBLAS case: ggml_vec_dot_q5_1_q8_1 for every row and token:
        acc = fma(lane sums, d_w * d_x, acc);  summs += m_w * s_x;  result hsum_float_8(acc) + summs.
    (GCC contracts summs += m * s into an fma; m and s are both fp16 values, so m * s is exact in
    float32 and fused or not gives the same sum.)
The integer lane sums (4 products of a 5-bit weight and an int8 activation, via maddubs/madd) are exact
in int32 and in float32 (|sum| < 2^14), so only the float order above matters.

Block layouts (ggml-common.h): block_q5_0 = d (fp16), qh (u32), qs[16];  block_q5_1 = d, m (fp16), qh,
qs[16]. Element j < 16 is the low nibble of qs[j] plus bit j of qh as 16; element j + 16 the high nibble
of qs[j] plus bit j + 16 of qh. Q5_0 subtracts 16 (bytes_from_bits_32 + andnot 0xF0 in the SIMD code).

Kernels: q5_0_q8_0 / q5_1_q8_1 are the readable spec (fma emulated by fma32, any number of tokens, used when
'contract' gives no hardware fma); q5_batch (token-vectorized, 4 rows at a time) computes the same sums
with hardware fmas, and one token goes through the vector code at the end (q5_0_matvec_avx2 etc., LLVM IR). The tests check all of them
against each other bit for bit.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from workbench.gguf import GGMLType

from workbench.cpu import features
from workbench.cpu.act_quant import prepare_activations, q8_lanes, vec_dot_type
from workbench.cpu.fp16 import get_fp16
from workbench.cpu.ir import (F32, I32, V8F, V16B, V16S, V32B, byte_vec, c64, fma, fp16, hsum_float_8, lanes_mask, load,
                              madd, maddubs, row_pointers, signed_products, splat)
from workbench.cpu.simd import fma32, hsum8

SUPPORTED = (GGMLType.Q5_0, GGMLType.Q5_1)


@njit(cache=True, inline="always")
def _unpack5(row, p, off, q):
    """The 32 weights of one block as integers: p = offset of qh in the row, off = 16 for Q5_0, 0 for Q5_1
    (bytes_from_nibbles_32 | bytes_from_bits_32 in ggml_vec_dot_q5_*)."""
    qh = np.int64(row[p]) | (np.int64(row[p + 1]) << 8) | (np.int64(row[p + 2]) << 16) | (np.int64(row[p + 3]) << 24)
    for j in range(16):
        byte = np.int64(row[p + 4 + j])
        q[j] = np.int32((byte & 15) | (((qh >> j) & 1) << 4)) - off
        q[j + 16] = np.int32((byte >> 4) | (((qh >> (j + 16)) & 1) << 4)) - off


@njit(cache=True, parallel=True)
def q5_0_q8_0(W, K, xq, dx, out):
    """ggml_vec_dot_q5_0_q8_0 (AVX2) and tinyBLAS_Q0_AVX<block_q5_0> exactly, token by token:
    per block of 32, dd = d_w * d_x, 8 lanes of 4 integer products, acc_lane = fma(dd, lane sum, acc_lane);
    result hsum_float_8(acc)."""
    N = W.shape[0]
    T = xq.shape[0]
    for r in prange(N):
        row = W[r]
        acc = np.zeros(8, np.float32)
        q = np.empty(32, np.int32)
        for t in range(T):
            acc[:] = 0.0
            for b in range(K // 32):
                o = b * 22
                _unpack5(row, o + 2, 16, q)
                dd = get_fp16(row, o) * dx[t, b]
                for lane in range(8):
                    isum = np.int32(0)
                    for k in range(4):
                        e = 4 * lane + k
                        isum += q[e] * np.int32(xq[t, 32 * b + e])
                    acc[lane] = fma32(dd, np.float32(isum), acc[lane])
            out[t, r] = hsum8(acc)


@njit(cache=True, parallel=True)
def q5_1_q8_1(W, K, xq, dx, s, out):
    """ggml_vec_dot_q5_1_q8_1 (AVX2) exactly, token by token: acc_lane = fma(lane sum, d_w * d_x, acc_lane),
    summs = fma(m_w, s_x, summs); result hsum_float_8(acc) + summs."""
    N = W.shape[0]
    T = xq.shape[0]
    for r in prange(N):
        row = W[r]
        acc = np.zeros(8, np.float32)
        q = np.empty(32, np.int32)
        for t in range(T):
            acc[:] = 0.0
            summs = np.float32(0.0)
            for b in range(K // 32):
                o = b * 24
                _unpack5(row, o + 4, 0, q)
                summs = fma32(get_fp16(row, o + 2), s[t, b], summs)
                dd = get_fp16(row, o) * dx[t, b]
                for lane in range(8):
                    isum = np.int32(0)
                    for k in range(4):
                        e = 4 * lane + k
                        isum += q[e] * np.int32(xq[t, 32 * b + e])
                    acc[lane] = fma32(np.float32(isum), dd, acc[lane])
            out[t, r] = hsum8(acc) + summs


def _q5_batch_impl(W, K, bs, xqT, dxT, sT, out):
    """q5_0_q8_0 (bs = 22, sT unused) or q5_1_q8_1 (bs = 24) for T tokens at once, vectorized over tokens:
    xqT (K, T) integer activations as float32 (a lane sum of 4 products is exact), dxT and sT (K/32, T).
    Rows go 4 at a time so that each load of the activations serves 4 rows. Compiled with fastmath
    'contract' so that `dd * ls + acc` and `m * s + summs` are hardware fmas, like _mm256_fmadd_ps (only
    used where features.hardware_fma() holds)."""
    N = W.shape[0]
    T = xqT.shape[1]
    has_min = bs == 24
    off = 0 if has_min else 16
    for g in prange((N + 3) // 4):
        r0 = 4 * g
        nr = min(4, N - r0)                 # the last group may be short: its missing rows stay zero
        acc = np.zeros((4, 8, T), np.float32)
        summs = np.zeros((4, T), np.float32)
        dd = np.zeros((4, T), np.float32)
        qi = np.empty(32, np.int32)
        q = np.zeros((4, 32), np.float32)
        for b in range(K // 32):
            o = b * bs
            for i in range(nr):
                row = W[r0 + i]
                _unpack5(row, o + bs - 20, off, qi)
                for e in range(32):
                    q[i, e] = np.float32(qi[e])
                d = get_fp16(row, o)
                for t in range(T):
                    dd[i, t] = d * dxT[b, t]
                if has_min:
                    m = get_fp16(row, o + 2)
                    for t in range(T):
                        summs[i, t] = m * sT[b, t] + summs[i, t]
            for lane in range(8):
                e = 4 * lane
                x0, x1, x2, x3 = xqT[32 * b + e], xqT[32 * b + e + 1], xqT[32 * b + e + 2], xqT[32 * b + e + 3]
                a0, a1, a2, a3 = acc[0, lane], acc[1, lane], acc[2, lane], acc[3, lane]
                d0, d1, d2, d3 = dd[0], dd[1], dd[2], dd[3]
                w00, w01, w02, w03 = q[0, e], q[0, e + 1], q[0, e + 2], q[0, e + 3]
                w10, w11, w12, w13 = q[1, e], q[1, e + 1], q[1, e + 2], q[1, e + 3]
                w20, w21, w22, w23 = q[2, e], q[2, e + 1], q[2, e + 2], q[2, e + 3]
                w30, w31, w32, w33 = q[3, e], q[3, e + 1], q[3, e + 2], q[3, e + 3]
                for t in range(T):
                    y0, y1, y2, y3 = x0[t], x1[t], x2[t], x3[t]
                    a0[t] = d0[t] * ((w00 * y0 + w01 * y1) + (w02 * y2 + w03 * y3)) + a0[t]
                    a1[t] = d1[t] * ((w10 * y0 + w11 * y1) + (w12 * y2 + w13 * y3)) + a1[t]
                    a2[t] = d2[t] * ((w20 * y0 + w21 * y1) + (w22 * y2 + w23 * y3)) + a2[t]
                    a3[t] = d3[t] * ((w30 * y0 + w31 * y1) + (w32 * y2 + w33 * y3)) + a3[t]
        for i in range(nr):
            for t in range(T):
                out[t, r0 + i] = ((((acc[i, 0, t] + acc[i, 4, t]) + (acc[i, 2, t] + acc[i, 6, t]))
                                   + ((acc[i, 1, t] + acc[i, 5, t]) + (acc[i, 3, t] + acc[i, 7, t]))) + summs[i, t])


q5_batch = njit(cache=True, parallel=True, fastmath={"contract"})(_q5_batch_impl)


# --- Q5_0 / Q5_1: ggml_vec_dot_q5_0_q8_0 / ggml_vec_dot_q5_1_q8_1 (this module's order) --------------
# One token as LLVM vector code (the integer helpers of workbench.cpu.ir, like vec_dot_kquants): per block of 32, the 8 lane sums of 4 products
# (element j: nibble j of qs plus bit j of qh as 16; Q5_0 minus 16, signed through vpsign), then
# acc = fma(d_w * d_x, lanes, acc) on <8 x float>; Q5_1 adds summs = fma(m_w, s_x, summs) per block;
# result hsum_float_8(acc) (+ summs). q5_0_q8_0 / q5_1_q8_1 above are the scalar statement.

def _q5_codegen(q5_1, avx2):
    def codegen(context, builder, sig, args):
        row, nb, ptrs = row_pointers(context, builder, sig, args)
        xq, dx = ptrs[0], builder.bitcast(ptrs[1], F32.as_pointer())
        sx = builder.bitcast(ptrs[2], F32.as_pointer()) if q5_1 else None
        acc = cgutils.alloca_once_value(builder, ir.Constant(V8F, [0.0] * 8))
        summs = cgutils.alloca_once_value(builder, ir.Constant(F32, 0.0))
        ones = ir.Constant(V16S, [1] * 16)
        head = 4 if q5_1 else 2                         # d (, m) fp16, then qh (u32), qs[16]
        with cgutils.for_range(builder, nb) as loop:
            b = loop.index
            o = builder.mul(b, c64(head + 20))
            dd = builder.fmul(fp16(builder, row, o), builder.load(builder.gep(dx, [b])))
            if q5_1:
                m = fp16(builder, row, builder.add(o, c64(2)))
                builder.store(fma(builder, m, builder.load(builder.gep(sx, [b])), builder.load(summs)), summs)
            qh = load(builder, row, builder.add(o, c64(head)), I32)
            bits = builder.zext(builder.bitcast(qh, ir.VectorType(ir.IntType(1), 32)), V32B)   # bytes_from_bits_32
            q16 = load(builder, row, builder.add(o, c64(head + 4)), V16B)
            both = builder.shuffle_vector(q16, q16, lanes_mask(list(range(16)) * 2))
            nib = builder.and_(builder.lshr(both, ir.Constant(V32B, [0] * 16 + [4] * 16)), byte_vec(15))
            q = builder.or_(nib, builder.shl(bits, byte_vec(4)))
            y = load(builder, xq, builder.mul(b, c64(32)), V32B)
            if q5_1:
                p16 = maddubs(builder, q, y, avx2)
            else:
                p16 = signed_products(builder, builder.sub(q, byte_vec(16)), y, avx2)
            lanes = builder.sitofp(madd(builder, p16, ones, avx2), V8F)
            builder.store(fma(builder, splat(builder, dd), lanes, builder.load(acc)), acc)
        res = hsum_float_8(builder, builder.load(acc))
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


# --- entry point ---------------------------------------------------------------------------------------

MATVEC = {"Q5_0": (q5_0_matvec_avx2, q5_0_matvec_portable), "Q5_1": (q5_1_matvec_avx2, q5_1_matvec_portable)}


def matvec(rows, wtype_name, K, x, out):
    """out (T, N) = the one-token vector kernel for each token of x (Q5_0 / Q5_1; False for other types)."""
    return features.each_token(MATVEC, rows, wtype_name, K, x, out)


def matmul(rows, wtype, K, x, mul_mat_id=False):
    """(T, N) float32 bit-equal to ggml-cpu's mul_mat (and mul_mat_id: the same vec_dot) on AVX2 for Q5_0 /
    Q5_1 weights `rows` (N, row_bytes) and activations x (T, K); None for other types or odd shapes."""
    wtype = GGMLType(wtype)
    if wtype not in SUPPORTED:
        return None
    rows = np.asarray(rows)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if (rows.dtype != np.uint8 or rows.ndim != 2 or x.ndim != 2 or K <= 0 or K % 32
            or x.shape[1] != K or rows.shape[1] != wtype.row_bytes(K)):
        return None
    rows = np.ascontiguousarray(rows)
    N, T = rows.shape[0], x.shape[0]
    out = np.empty((T, N), np.float32)
    if T == 0 or N == 0:
        return out
    if T == 1 and matvec(rows, wtype.name, K, x, out):
        return out                  # generation: the same sums as vector code (q5_*_matvec_*)
    _, s, xq, dx = prepare_activations(x, vec_dot_type(wtype), 32, True, with_ints=True)
    bs = wtype.type_size
    if not features.hardware_fma():     # the spec kernels, fma emulated
        if wtype == GGMLType.Q5_0:
            q5_0_q8_0(rows, K, xq, dx, out)
        else:
            q5_1_q8_1(rows, K, xq, dx, s, out)
    else:
        q5_batch(rows, K, bs, np.ascontiguousarray(xq.T, dtype=np.float32), np.ascontiguousarray(dx.T),
                 np.ascontiguousarray(s.T), out)
    return out
