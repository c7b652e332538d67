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
Q4_1, Q8_0 and F32/F16/BF16 weights: ggml's own float sums, bit for bit (exact_dots.py); so are Q5_0/Q5_1
(exact_legacy.py), the types llama.cpp repacks on AVX2, Q4_0/IQ4_NL/Q4_K (exact_repack.py), and Q2_K..Q6_K/IQ4_XS
(exact_kquants.py); the remaining types keep the float order below. The activations for all types come from
activations.py. Types without a native decoder go through
`workbench.quant.dequantize`, a block of rows at a time.
"""

import functools

import numba
import numpy as np
from numba import njit, prange

from workbench.gguf import GGMLType

from workbench.cpu.act_quant import prepare_activations, vec_dot_type
from workbench.cpu import tiled as exact_kquants
from workbench.cpu import vec_dot_q5 as exact_legacy
from workbench.cpu import repack as exact_repack
from workbench.cpu.to_float import MIN_SUBBLOCK, NATIVE_TYPES, decode_row
from workbench.cpu.vec_dot_avx2 import q4_1_matmul_avx2, q4_1_matvec_avx2, q8_0_matmul_avx2, q8_0_matvec_avx2
from workbench.cpu.sgemm_f16 import f16_matmul, f16_matvec
from workbench.cpu.ir import has_avx2
from workbench.cpu.vec_dot_ir import q4_1_matvec, q8_0_matvec
from workbench.cpu.vec_dot import (_h, float_rows_batch, float_rows_exact, hardware_fma, q4_1_q8_1, q4_1_q8_1_batch, q8_0_q8_0,
                         q8_0_q8_0_batch)

_FAST = {"reassoc", "contract"}     # let LLVM vectorize the float sums; no nan/inf assumptions
_FALLBACK_ROWS = 256                # rows dequantized at a time by the generic path


class MatmulError(ValueError):
    """Shapes or types that the matmul cannot handle; names the weight."""


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


_FUSED = (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q8_0)
_FLOAT = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)
_Q4_0, _Q4_1 = int(GGMLType.Q4_0), int(GGMLType.Q4_1)


_HW_FMA = None
# weight types whose sums another module reproduces bit for bit (ggml's AVX2 vec_dot / tinyBLAS / repack order)
_EXACT = {t: mod.matmul for mod in (exact_legacy, exact_repack, exact_kquants) for t in mod.SUPPORTED}


# one token on these weights: lanes_ir's vector kernels
_LANES = (GGMLType.Q4_1, GGMLType.Q8_0)
_has_avx2 = functools.cache(has_avx2)


def _one_token(rows, wtype, K, x):
    """Generation on Q4_1 / Q8_0 weights (x a C-contiguous float32 (1, K), K % 32 == 0): lanes_ir's kernels."""
    out = np.empty((1, rows.shape[0]), np.float32)
    if wtype == GGMLType.Q4_1:
        (q4_1_matvec_avx2 if _has_avx2() else q4_1_matvec)(rows, K, x[0], out[0])
    else:
        (q8_0_matvec_avx2 if _has_avx2() else q8_0_matvec)(rows, K, x[0], out[0])
    return out


def matmul_raw(rows: np.ndarray, wtype: GGMLType, K: int, x: np.ndarray, quantize_act: bool = True,
               name: str = "weight", mul_mat_id: bool = False) -> np.ndarray:
    """y (T, N) = x (T, K) @ W^T for W given as raw rows (N, row_bytes) of ggml type `wtype`.
    mul_mat_id: the rows are one expert of a stack (ggml_mul_mat_id never takes the tinyBLAS path)."""
    if (wtype in _LANES and quantize_act and type(x) is np.ndarray and x.shape == (1, K) and K % 32 == 0
            and x.dtype == np.float32 and x.flags.c_contiguous and rows.shape[0] > 0):
        return _one_token(rows, wtype, K, x)               # generation: checked above, nothing else to do
    wtype = GGMLType(wtype)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != K:
        raise MatmulError(f"{name}: activations {x.shape} do not match n_per_row {K}")
    if K % wtype.block_size:
        raise MatmulError(f"{name}: n_per_row {K} is not a multiple of the {wtype.name} block size")
    global _HW_FMA
    if _HW_FMA is None:
        _HW_FMA = hardware_fma()
    act = vec_dot_type(wtype)
    N, T = rows.shape[0], x.shape[0]
    out = np.empty((T, N), np.float32)
    if T == 0 or N == 0:
        return out
    if T == 1 and quantize_act and wtype in _LANES:
        return _one_token(rows, wtype, K, x)
    if T == 1 and quantize_act and wtype == GGMLType.F16 and _has_avx2():
        f16_matvec(rows.view(np.uint16), K, x[0], out[0])  # ggml_vec_dot_f16 (one token, or one expert's)
        return out
    if quantize_act and wtype in _EXACT:
        exact = _EXACT[wtype](rows, wtype, K, x, mul_mat_id)
        if exact is not None:
            return exact
    if wtype in NATIVE_TYPES:
        # Q4_0's -8 offset is applied as a min over blocks of 32 in the fused path
        S = MIN_SUBBLOCK.get(wtype, 32 if wtype == GGMLType.Q4_0 else K)
        if wtype in _FLOAT and quantize_act:
            xh, _ = prepare_activations(x, act, K, True)
            tiny_blas = T >= 2 and not mul_mat_id
            if tiny_blas and wtype == GGMLType.F16 and K % 8 == 0 and _has_avx2():
                f16_matmul(rows.view(np.uint16), K, np.ascontiguousarray(xh), out)
            elif tiny_blas and _HW_FMA:
                float_rows_batch(rows, int(wtype), K, np.ascontiguousarray(xh.T), out)
            else:
                float_rows_exact(rows, int(wtype), K, xh, out, tiny_blas)
            return out
        if wtype == GGMLType.Q4_1 and quantize_act:
            _, s, xq, dx = prepare_activations(x, act, S, True, with_ints=True)
            if _has_avx2():
                q4_1_matmul_avx2(rows, K, xq, dx, s, out)
            elif not _HW_FMA:
                q4_1_q8_1(rows, K, xq, dx, s, out)
            else:
                q4_1_q8_1_batch(rows, K, np.ascontiguousarray(xq.T, dtype=np.float32),
                                 np.ascontiguousarray(dx.T), np.ascontiguousarray(s.T), out)
            return out
        if wtype == GGMLType.Q8_0 and quantize_act:
            _, _, xq, dx = prepare_activations(x, act, S, True, with_ints=True)
            if _has_avx2():
                q8_0_matmul_avx2(rows, K, xq, dx, out)
            elif not _HW_FMA:
                q8_0_q8_0(rows, K, xq, dx, out)
            else:
                q8_0_q8_0_batch(rows, K, np.ascontiguousarray(xq.T, dtype=np.float32), np.ascontiguousarray(dx.T), out)
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
