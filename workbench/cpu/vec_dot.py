"""Exact emulations of ggml's SIMD dot products for the formats whose rounding we reproduce bit for bit.

ggml_vec_dot_q4_1_q8_1 (arch/x86/quants.c, AVX2): per block of 32, 8 lanes of 4 integer products,
acc_lane = fma(d_w * d_x, lane sum, acc_lane); result hsum_float_8(acc) + sum(m * s).
Float weights: llamafile's tinyBLAS (mul_mat with >= 2 tokens) or ggml_vec_dot_f16/_f32 (one token, and
every mul_mat_id). See simd.py for why the order of a float sum matters here.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from workbench.cpu.fp16 import get_fp16
from workbench.cpu.simd import fma32, hsum8
from workbench.cpu.to_float import decode_row


@njit(cache=True, parallel=True)
def q4_1_q8_1(W, K, xq, dx, s, out):
    """ggml_vec_dot_q4_1_q8_1 (AVX2) exactly, one token per call of the inner loop (generation):
    per block 8 lanes of 4 integer products each, acc_lane = fma(d_w * d_x, lane sum, acc_lane);
    result hsum_float_8(acc) + sum of m * s (the compiler contracts summs += m * s into an fma too)."""
    N = W.shape[0]
    T = xq.shape[0]
    for r in prange(N):
        row = W[r]
        acc = np.zeros(8, np.float32)
        for t in range(T):
            acc[:] = 0.0
            summs = np.float32(0.0)
            for b in range(K // 32):
                o = b * 20
                summs = fma32(get_fp16(row, o + 2), s[t, b], summs)
                dd = get_fp16(row, o) * dx[t, b]
                for lane in range(8):
                    isum = np.int32(0)
                    for k in range(4):
                        e = 4 * lane + k
                        byte = row[o + 4 + (e % 16)]
                        q = np.int32(byte & np.uint8(15)) if e < 16 else np.int32(byte >> np.uint8(4))
                        isum += q * np.int32(xq[t, 32 * b + e])
                    acc[lane] = fma32(dd, np.float32(isum), acc[lane])
            out[t, r] = hsum8(acc) + summs


def _q4_1_q8_1_batch_impl(W, K, xqT, dxT, sT, out):
    """The same sums for T tokens at once, vectorized over tokens: xqT (K, T) integer activations as
    float32 (lane sums of 4 products are exact in float32), dxT and sT (K/32, T). Compiled with
    fastmath 'contract' so that `dd * ls + acc` is one hardware fma, like _mm256_fmadd_ps."""
    N = W.shape[0]
    T = xqT.shape[1]
    for r in prange(N):
        row = W[r]
        acc = np.zeros((8, T), np.float32)
        summs = np.zeros(T, np.float32)
        dd = np.empty(T, np.float32)
        for b in range(K // 32):
            o = b * 20
            d, m = get_fp16(row, o), get_fp16(row, o + 2)
            for t in range(T):
                summs[t] = m * sT[b, t] + summs[t]
                dd[t] = d * dxT[b, t]
            for lane in range(8):
                e = 4 * lane          # elements e..e+3: low nibbles of bytes 0-15, then high nibbles
                sh = np.uint8(0) if e < 16 else np.uint8(4)
                q0 = np.float32((row[o + 4 + e % 16] >> sh) & np.uint8(15))
                q1 = np.float32((row[o + 5 + e % 16] >> sh) & np.uint8(15))
                q2 = np.float32((row[o + 6 + e % 16] >> sh) & np.uint8(15))
                q3 = np.float32((row[o + 7 + e % 16] >> sh) & np.uint8(15))
                x0, x1, x2, x3 = xqT[32 * b + e], xqT[32 * b + e + 1], xqT[32 * b + e + 2], xqT[32 * b + e + 3]
                for t in range(T):
                    ls = (q0 * x0[t] + q1 * x1[t]) + (q2 * x2[t] + q3 * x3[t])
                    acc[lane, t] = dd[t] * ls + acc[lane, t]
        for t in range(T):
            out[t, r] = (((acc[0, t] + acc[4, t]) + (acc[2, t] + acc[6, t]))
                         + ((acc[1, t] + acc[5, t]) + (acc[3, t] + acc[7, t]))) + summs[t]


q4_1_q8_1_batch = njit(cache=True, parallel=True, fastmath={"contract"})(_q4_1_q8_1_batch_impl)


@njit(cache=True, parallel=True)
def float_rows_exact(W, tid, K, xh, out, tiny_blas):
    """F32/F16/BF16 weights in the order of ggml's float kernels: tinyBLAS (llamafile_sgemm, used by
    mul_mat for two or more tokens: 8 lanes, one fma chain each, hsum8) or ggml_vec_dot_f16/_f32 (one
    token, and every mul_mat_id: 4 x 8 lanes over chunks of 32, pairwise reduce, then the tail in order)."""
    N = W.shape[0]
    T = xh.shape[0]
    K32 = K - K % 32
    for r in prange(N):
        w = np.empty(K, np.float32)
        mins = np.zeros(1, np.float32)
        decode_row(tid, W[r], K, w, mins)
        lanes = np.zeros(32, np.float32)
        for t in range(T):
            lanes[:] = 0.0
            if tiny_blas:
                for i in range(K):
                    lanes[i % 8] = fma32(w[i], xh[t, i], lanes[i % 8])
                out[t, r] = hsum8(lanes)
            else:
                for i in range(K32):
                    lanes[i % 32] = fma32(w[i], xh[t, i], lanes[i % 32])
                x8 = np.empty(8, np.float32)
                for i in range(8):
                    x8[i] = (lanes[i] + lanes[16 + i]) + (lanes[8 + i] + lanes[24 + i])
                acc = np.float64(((x8[0] + x8[4]) + (x8[1] + x8[5])) + ((x8[2] + x8[6]) + (x8[3] + x8[7])))
                for i in range(K32, K):
                    acc += np.float64(w[i] * xh[t, i])
                out[t, r] = np.float32(acc)


@njit(cache=True, parallel=True)
def q8_0_q8_0(W, K, xq, dx, out):
    """ggml_vec_dot_q8_0_q8_0 (AVX2) exactly: per block of 32, 8 lanes of 4 integer products
    (mul_sum_i8_pairs_float), acc_lane = fma(d_w * d_x, lane sum, acc_lane); result hsum_float_8(acc).
    llamafile's tinyBLAS_Q0_AVX (two or more tokens) sums in the same order."""
    N = W.shape[0]
    T = xq.shape[0]
    Wi8 = W.view(np.int8)
    for r in prange(N):
        row, rowi8 = W[r], Wi8[r]
        acc = np.zeros(8, np.float32)
        for t in range(T):
            acc[:] = 0.0
            for b in range(K // 32):
                o = b * 34
                dd = get_fp16(row, o) * dx[t, b]
                for lane in range(8):
                    isum = np.int32(0)
                    for k in range(4):
                        e = 4 * lane + k
                        isum += np.int32(rowi8[o + 2 + e]) * np.int32(xq[t, 32 * b + e])
                    acc[lane] = fma32(dd, np.float32(isum), acc[lane])
            out[t, r] = hsum8(acc)


def _q8_0_q8_0_batch_impl(W, K, xqT, dxT, out):
    """q8_0_q8_0 for T tokens at once, vectorized over tokens like _q4_1_q8_1_batch_impl (xqT (K, T) integer
    activations as float32: a lane sum of 4 products stays below 2^16, exact)."""
    N = W.shape[0]
    T = xqT.shape[1]
    Wi8 = W.view(np.int8)
    for r in prange(N):
        row, rowi8 = W[r], Wi8[r]
        acc = np.zeros((8, T), np.float32)
        dd = np.empty(T, np.float32)
        for b in range(K // 32):
            o = b * 34
            d = get_fp16(row, o)
            for t in range(T):
                dd[t] = d * dxT[b, t]
            for lane in range(8):
                e = 4 * lane
                q0, q1 = np.float32(rowi8[o + 2 + e]), np.float32(rowi8[o + 3 + e])
                q2, q3 = np.float32(rowi8[o + 4 + e]), np.float32(rowi8[o + 5 + e])
                x0, x1, x2, x3 = xqT[32 * b + e], xqT[32 * b + e + 1], xqT[32 * b + e + 2], xqT[32 * b + e + 3]
                for t in range(T):
                    ls = (q0 * x0[t] + q1 * x1[t]) + (q2 * x2[t] + q3 * x3[t])
                    acc[lane, t] = dd[t] * ls + acc[lane, t]
        for t in range(T):
            out[t, r] = (((acc[0, t] + acc[4, t]) + (acc[2, t] + acc[6, t]))
                         + ((acc[1, t] + acc[5, t]) + (acc[3, t] + acc[7, t])))


q8_0_q8_0_batch = njit(cache=True, parallel=True, fastmath={"contract"})(_q8_0_q8_0_batch_impl)


def _float_rows_batch_impl(W, tid, K, xT, out):
    """float_rows_exact's tinyBLAS order for T >= 2 tokens, vectorized over tokens: xT (K, T) activations.
    Compiled with fastmath 'contract' so that `w * x + acc` is one hardware fma (only used where it is)."""
    N = W.shape[0]
    T = xT.shape[1]
    for r in prange(N):
        w = np.empty(K, np.float32)
        mins = np.zeros(1, np.float32)
        decode_row(tid, W[r], K, w, mins)
        acc = np.zeros((8, T), np.float32)
        for i in range(K):
            wi = w[i]
            xi = xT[i]
            a = acc[i % 8]
            for t in range(T):
                a[t] = wi * xi[t] + a[t]
        for t in range(T):
            out[t, r] = (((acc[0, t] + acc[4, t]) + (acc[2, t] + acc[6, t]))
                         + ((acc[1, t] + acc[5, t]) + (acc[3, t] + acc[7, t])))


float_rows_batch = njit(cache=True, parallel=True, fastmath={"contract"})(_float_rows_batch_impl)
