"""y = x @ W^T on quantized weights, the way ggml-cpu's mul_mat computes it.

ggml never dequantizes a whole weight matrix: it converts the activations to the weight type's
`vec_dot_type` (type_traits_cpu in ggml-cpu.c: Q8_0 for Q4_0/Q5_0/Q8_0, Q8_1 for Q4_1/Q5_1, Q8_K for the
k-quants, F16 for F16, ...) and takes block-wise dot products (ggml_vec_dot_q4_1_q8_1 etc.):

    y = sum_blocks d_w d_x sum_i q_i xq_i  +  sum_subblocks min_sub * xsum_sub

with xq the integer activations, d_x their block scale and xsum the scaled sum of the activations of a
sub-block (Q8_1's `s`, Q8_K's `bsums`). We compute the same sums as  w . xhat + mins . xsum  with
w = d_w q (blocks.decode_row) and xhat = d_x xq (the activations exactly as ggml's quantization leaves
them): equal up to float rounding order. `quantize_act=False` gives the exact float product instead.

Prompt path: decode R rows at a time, reuse them for every token (parallel over row chunks).
Generation path (one token): fused decode+dot per block for the common formats, no buffer.
Types without a native decoder go through `workbench.quant.dequantize`, a block of rows at a time.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from workbench.gguf import GGMLType

from .blocks import MIN_SUBBLOCK, NATIVE_TYPES, decode_row
from .ops import F16_TABLE, round_f16 as _round_f16_scalar
from .simd import fma32, hsum8

_FAST = {"reassoc", "contract"}     # let LLVM vectorize the float sums; no nan/inf assumptions
_FALLBACK_ROWS = 256                # rows dequantized at a time by the generic path

# ggml-cpu.c type_traits_cpu[type].vec_dot_type (types not listed: Q8_K, as the i-quants use)
VEC_DOT_TYPE = {
    GGMLType.F32: GGMLType.F32, GGMLType.F16: GGMLType.F16, GGMLType.BF16: GGMLType.BF16,
    GGMLType.Q4_0: GGMLType.Q8_0, GGMLType.Q4_1: GGMLType.Q8_1, GGMLType.Q5_0: GGMLType.Q8_0,
    GGMLType.Q5_1: GGMLType.Q8_1, GGMLType.Q8_0: GGMLType.Q8_0, GGMLType.IQ4_NL: GGMLType.Q8_0,
    GGMLType.MXFP4: GGMLType.Q8_0, GGMLType.NVFP4: GGMLType.Q8_0, GGMLType.Q1_0: GGMLType.Q8_0,
    GGMLType.Q2_0: GGMLType.Q8_0,
}


def vec_dot_type(wtype: GGMLType) -> GGMLType:
    return VEC_DOT_TYPE.get(GGMLType(wtype), GGMLType.Q8_K)


class MatmulError(ValueError):
    """Shapes or types that the matmul cannot handle; names the weight."""


# --- activations -> vec_dot_type -------------------------------------------------------------------

def round_f16(x: np.ndarray) -> np.ndarray:
    """fp32 -> fp16 -> fp32, round to nearest even (ggml_cpu_fp32_to_fp16)."""
    return x.astype(np.float16).astype(np.float32)


def round_bf16(x: np.ndarray) -> np.ndarray:
    """fp32 -> bf16 -> fp32, round to nearest even (ggml_compute_fp32_to_bf16; nan kept quiet)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32) << 16
    r = np.where(np.isnan(x), (u.astype(np.uint32) >> 16 | 64) << 16, r).astype(np.uint32)
    return r.view(np.float32)


@njit(cache=True)
def _quantize_q8(x, bs, kind, S, xh, xsum, xq, dq_out):
    """Per block of bs: Q8_0/Q8_1 (kind 0/1, quantize_row_q8_0/_1 AVX2: q = rint(x*127/amax), d fp16)
    or Q8_K (kind 2, quantize_row_q8_K_ref: signed max, q = rint(-127/max x), d = 1/iscale in f32).
    Writes xhat = d * q and xsum = the scaled sum of q per sub-block of S (Q8_1: s = fp16(d * sum q))."""
    T, K = x.shape
    q = np.empty(bs, np.float32)
    for t in range(T):
        for b in range(K // bs):
            o = b * bs
            amax = np.float32(0.0)
            vmax = np.float32(0.0)
            for i in range(bs):
                a = abs(x[t, o + i])
                if a > amax:
                    amax = a
                    vmax = x[t, o + i]
            if kind == 2:
                iscale = np.float32(-127.0) / vmax if amax > 0 else np.float32(0.0)
                d = np.float32(1.0) / iscale if amax > 0 else np.float32(0.0)
                for i in range(bs):
                    q[i] = min(np.float32(127.0), np.rint(iscale * x[t, o + i]))
                dq = d
            else:
                d = amax / np.float32(127.0)
                iscale = np.float32(127.0) / amax if amax > 0 else np.float32(0.0)
                for i in range(bs):
                    q[i] = np.rint(x[t, o + i] * iscale)
                dq = _round_f16_scalar(d)
            for i in range(bs):
                xh[t, o + i] = dq * q[i]
                xq[t, o + i] = np.int8(q[i])
            dq_out[t, b] = dq
            for j in range(bs // S):          # S > bs (no min term): nothing to sum
                s = np.float32(0.0)
                for i in range(j * S, (j + 1) * S):
                    s += q[i]
                xsum[t, (o // S) + j] = _round_f16_scalar(s * d) if kind == 1 else s * dq


def prepare_activations(x: np.ndarray, act_type: GGMLType, S: int, quantize_act: bool = True, with_ints=False):
    """x (T, K) -> (xhat (T, K), xsum (T, K // S)): the activations as ggml's vec_dot sees them,
    and their sums per sub-block of S (for the formats with a min)."""
    T, K = x.shape
    if act_type in (GGMLType.F32, GGMLType.F16, GGMLType.BF16) or not quantize_act:
        if quantize_act and act_type == GGMLType.F16:
            x = round_f16(x)
        elif quantize_act and act_type == GGMLType.BF16:
            x = round_bf16(x)
        xsum = x.reshape(T, K // S, S).sum(axis=2, dtype=np.float32) if S < K else np.zeros((T, 1), np.float32)
        return x, xsum
    bs = act_type.block_size
    kind = {GGMLType.Q8_0: 0, GGMLType.Q8_1: 1, GGMLType.Q8_K: 2}[act_type]
    xh = np.empty((T, K), np.float32)
    xsum = np.zeros((T, max(K // S, 1)), np.float32)
    xq = np.empty((T, K), np.int8)
    dq = np.empty((T, K // bs), np.float32)
    _quantize_q8(x, bs, kind, S, xh, xsum, xq, dq)
    if with_ints:
        return xh, xsum, xq, dq
    return xh, xsum


@njit(cache=True, parallel=True)
def _q4_1_q8_1(W, K, xq, dx, s, out):
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
                summs = fma32(_h(row, o + 2), s[t, b], summs)
                dd = _h(row, o) * dx[t, b]
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
            d, m = _h(row, o), _h(row, o + 2)
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


_q4_1_q8_1_batch = njit(cache=True, parallel=True, fastmath={"contract"})(_q4_1_q8_1_batch_impl)


@njit(cache=True, fastmath={"contract"})
def _contracted(a, b, c):
    return a * b + c


def _hardware_fma() -> bool:
    """Does 'contract' give a fused multiply-add here? (1 + 2^-12)^2 - (1 + 2^-11) is 2^-24 only when fused."""
    a = np.float32(1 + 2.0 ** -12)
    return bool(_contracted(a, a, np.float32(-(1 + 2.0 ** -11))) == np.float32(2.0 ** -24))


# --- the kernels -----------------------------------------------------------------------------------

@njit(cache=True, parallel=True, fastmath=_FAST)
def _matmul_rows(W, tid, K, S, has_min, xh, xsum, out, n_threads):
    """out[t, r] = w_r . xhat_t + mins_r . xsum_t, rows decoded R at a time and reused for every token."""
    N = W.shape[0]
    T = xh.shape[0]
    ns = max(K // S, 1)
    R = 8
    n_chunks = (N + R - 1) // R
    n_workers = min(n_threads, n_chunks)
    for wk in prange(n_workers):
        w = np.empty((R, K), np.float32)
        mins = np.zeros((R, ns), np.float32)
        for c in range(wk, n_chunks, n_workers):
            r0 = c * R
            r1 = min(N, r0 + R)
            for r in range(r0, r1):
                decode_row(tid, W[r], K, w[r - r0], mins[r - r0])
            for t in range(T):
                xt = xh[t]
                st = xsum[t]
                for r in range(r0, r1):
                    wr = w[r - r0]
                    acc = np.float32(0.0)
                    for i in range(K):
                        acc += wr[i] * xt[i]
                    if has_min:
                        mr = mins[r - r0]
                        for j in range(ns):
                            acc += mr[j] * st[j]
                    out[t, r] = acc


@njit(cache=True, inline="always")
def _h(row, o):
    return F16_TABLE[np.int64(row[o]) | (np.int64(row[o + 1]) << 8)]


@njit(cache=True, fastmath=_FAST, inline="always")
def _row_dot(tid, row, rowi8, K, x, xs, acc):
    """One row of a Q4_0 / Q4_1 / Q8_0 weight . one token, decoding on the fly; `acc` (32 lanes) keeps the
    sum vectorized across blocks (the block scale is folded into the weights, mins added per block)."""
    acc[:] = 0.0
    extra = np.float32(0.0)
    if tid == _Q4_1 or tid == _Q4_0:
        bs = 20 if tid == _Q4_1 else 18
        for b in range(K // 32):
            o = b * bs
            d = _h(row, o)
            for j in range(16):
                q = row[o + bs - 16 + j]
                acc[j] += (d * np.float32(q & np.uint8(15))) * x[32 * b + j]
                acc[j + 16] += (d * np.float32(q >> np.uint8(4))) * x[32 * b + j + 16]
            if tid == _Q4_1:
                extra += _h(row, o + 2) * xs[b]
            else:
                extra -= (np.float32(8.0) * d) * xs[b]
    else:  # Q8_0
        for b in range(K // 32):
            o = b * 34
            d = _h(row, o)
            for j in range(32):
                acc[j] += (d * np.float32(rowi8[o + 2 + j])) * x[32 * b + j]
    return acc.sum() + extra


@njit(cache=True, parallel=True, fastmath=_FAST)
def _gemv(W, tid, K, xh, xsum, out, n_threads):
    """One token: out[0, r] = row_r . xhat (fused decode, parallel over contiguous runs of rows)."""
    x = xh[0]
    xs = xsum[0]
    Wi8 = W.view(np.int8)
    N = W.shape[0]
    nw = min(n_threads, N)
    for wk in prange(nw):
        acc = np.empty(32, np.float32)
        for r in range(wk * N // nw, (wk + 1) * N // nw):
            out[0, r] = _row_dot(tid, W[r], Wi8[r], K, x, xs, acc)


@njit(cache=True, parallel=True)
def _float_rows_exact(W, tid, K, xh, out, tiny_blas):
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


_FUSED = (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q8_0)
_FLOAT = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)
_Q4_0, _Q4_1 = int(GGMLType.Q4_0), int(GGMLType.Q4_1)


_HW_FMA = None


def matmul_raw(rows: np.ndarray, wtype: GGMLType, K: int, x: np.ndarray, quantize_act: bool = True,
               name: str = "weight", mul_mat_id: bool = False) -> np.ndarray:
    """y (T, N) = x (T, K) @ W^T for W given as raw rows (N, row_bytes) of ggml type `wtype`.
    mul_mat_id: the rows are one expert of a stack (ggml_mul_mat_id never takes the tinyBLAS path)."""
    wtype = GGMLType(wtype)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != K:
        raise MatmulError(f"{name}: activations {x.shape} do not match n_per_row {K}")
    if K % wtype.block_size:
        raise MatmulError(f"{name}: n_per_row {K} is not a multiple of the {wtype.name} block size")
    global _HW_FMA
    if _HW_FMA is None:
        _HW_FMA = _hardware_fma()
    act = vec_dot_type(wtype)
    N, T = rows.shape[0], x.shape[0]
    out = np.empty((T, N), np.float32)
    if T == 0 or N == 0:
        return out
    if wtype in NATIVE_TYPES:
        # Q4_0's -8 offset is applied as a min over blocks of 32 in the fused path
        S = MIN_SUBBLOCK.get(wtype, 32 if wtype == GGMLType.Q4_0 else K)
        if wtype in _FLOAT and quantize_act:
            xh, _ = prepare_activations(x, act, K, True)
            _float_rows_exact(rows, int(wtype), K, xh, out, T >= 2 and not mul_mat_id)
            return out
        if wtype == GGMLType.Q4_1 and quantize_act:
            _, s, xq, dx = prepare_activations(x, act, S, True, with_ints=True)
            if T == 1 or not _HW_FMA:
                _q4_1_q8_1(rows, K, xq, dx, s, out)
            else:
                _q4_1_q8_1_batch(rows, K, np.ascontiguousarray(xq.T, dtype=np.float32),
                                 np.ascontiguousarray(dx.T), np.ascontiguousarray(s.T), out)
            return out
        xh, xsum = prepare_activations(x, act, S, quantize_act)
        if T == 1 and wtype in _FUSED:
            _gemv(rows, int(wtype), K, xh, xsum, out, numba.get_num_threads())
        else:
            _matmul_rows(rows, int(wtype), K, S, wtype in MIN_SUBBLOCK, xh, xsum, out, numba.get_num_threads())
        return out
    # generic path: dequantized blocks of rows, times the activations as the vec_dot_type sees them
    from workbench.quant import dequantize  # written by the quant helpers

    xh, xsum = prepare_activations(x, act, K, quantize_act)
    for r0 in range(0, N, _FALLBACK_ROWS):
        wf = np.ascontiguousarray(dequantize(rows[r0:r0 + _FALLBACK_ROWS], wtype, K), dtype=np.float32)
        part = np.empty((T, wf.shape[0]), np.float32)
        _matmul_rows(wf.view(np.uint8), int(GGMLType.F32), K, K, False, xh, xsum, part, numba.get_num_threads())
        out[:, r0:r0 + wf.shape[0]] = part
    return out


@njit(cache=True, parallel=True)
def dequantize_rows(W, tid, K, ids, S, has_min):
    """Float rows W[ids] (ggml_get_rows on the token embedding), native types only."""
    out = np.empty((ids.shape[0], K), np.float32)
    for n in prange(ids.shape[0]):
        mins = np.zeros(max(K // S, 1), np.float32)
        decode_row(tid, W[ids[n]], K, out[n], mins)
        if has_min:
            for i in range(K):
                out[n, i] += mins[i // S]
    return out


def get_rows(rows: np.ndarray, wtype: GGMLType, K: int, ids: np.ndarray) -> np.ndarray:
    """Dequantize only the rows `ids` (the tokens of a batch) of a weight."""
    wtype = GGMLType(wtype)
    ids = np.asarray(ids, dtype=np.int64)
    if wtype in NATIVE_TYPES:
        return dequantize_rows(rows, int(wtype), K, ids, MIN_SUBBLOCK.get(wtype, K), wtype in MIN_SUBBLOCK)
    from workbench.quant import dequantize

    return np.asarray(dequantize(rows[ids], wtype, K), dtype=np.float32)
