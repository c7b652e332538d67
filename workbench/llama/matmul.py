"""y = x @ W^T on quantized weights, the way ggml-cpu's mul_mat computes it.

ggml never dequantizes a whole weight matrix: it converts the activations to the weight type's
`vec_dot_type` (type_traits_cpu in ggml-cpu.c: Q8_0 for Q4_0/Q5_0/Q8_0, Q8_1 for Q4_1/Q5_1, Q8_K for the
k-quants, F16 for F16, ...) and takes block-wise dot products (ggml_vec_dot_q4_1_q8_1 etc.):

    y = sum_blocks d_w d_x sum_i q_i xq_i  +  sum_subblocks min_sub * xsum_sub

with xq the integer activations, d_x their block scale and xsum the scaled sum of the activations of a
sub-block (Q8_1's `s`, Q8_K's `bsums`). We compute the same sums as  w . xhat + mins . xsum  with
w = d_w q (cpu/to_float.decode_row) and xhat = d_x xq (the activations exactly as ggml's quantization leaves
them): equal up to float rounding order. `quantize_act=False` gives the exact float product instead.

Prompt path: decode R rows at a time, reuse them for every token (parallel over row chunks).
Generation path (one token): fused decode+dot per block for the common formats, no buffer.
Q4_1, Q8_0 and F32/F16/BF16 weights: ggml's own float sums, bit for bit (cpu/vec_dot.py, vec_dot_ir.py,
vec_dot_avx2.py, sgemm_f16.py); so are Q5_0/Q5_1 (cpu/vec_dot_q5.py), the types llama.cpp repacks on AVX2,
Q4_0/IQ4_NL/Q4_K (cpu/repack.py, repack_gemv.py), and Q2_K..Q6_K/IQ4_XS (cpu/tiled.py, vec_dot_kquants.py);
the remaining types keep the float order below. The activations for all types come from cpu/act_quant.py. Types without a native decoder go through
`workbench.quant.dequantize`, a block of rows at a time.
"""

import numba
import numpy as np
from numba import njit, prange

from workbench.gguf import GGMLType

from workbench.cpu import features, gemm_q8_0, repack, tiled, vec_dot_q5
from workbench.cpu.act_quant import prepare_activations, vec_dot_type
from workbench.cpu.fp16 import get_fp16
from workbench.cpu.sgemm_f16 import f16_matmul, f16_matvec
from workbench.cpu.to_float import MIN_SUBBLOCK, NATIVE_TYPES, decode_row
from workbench.cpu.vec_dot import (float_rows_batch, float_rows_exact, q4_1_q8_1, q4_1_q8_1_batch, q8_0_q8_0,
                                   q8_0_q8_0_batch)
from workbench.cpu.vec_dot_avx2 import q4_1_matmul_avx2, q4_1_matvec_avx2, q8_0_matmul_avx2, q8_0_matvec_avx2
from workbench.cpu.vec_dot_ir import q4_1_matvec, q8_0_matvec
from workbench.quant import dequantize

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
            d = get_fp16(row, o)
            for j in range(16):
                q = row[o + bs - 16 + j]
                acc[j] += (d * np.float32(q & np.uint8(15))) * x[32 * b + j]
                acc[j + 16] += (d * np.float32(q >> np.uint8(4))) * x[32 * b + j + 16]
            if tid == _Q4_1:
                extra += get_fp16(row, o + 2) * xs[b]
            else:
                extra -= (np.float32(8.0) * d) * xs[b]
    else:  # Q8_0
        for b in range(K // 32):
            o = b * 34
            d = get_fp16(row, o)
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

# --- THE dispatch table: which ggml code multiplies a weight, and our kernels for it -------------------------
# ggml_compute_forward_mul_mat (ggml-cpu.c, AVX2 build on x86) tries, in this order: the CPU_REPACK buffer's
# kernels (repack.cpp, for weights ggml_repack_get_optimal_repack_type repacked at load), llamafile_sgemm
# (tinyBLAS: two or more tokens, never for mul_mat_id), the tiled k-quant matmul (tiled.cpp, from
# ggml_tiled_min_batch tokens), and the type's vec_dot for every (row, token) otherwise.
VEC_DOT = "vec_dot"     # ggml_vec_dot_<type>_<vec_dot_type> (arch/x86/quants.c, vec.c)
SGEMM = "sgemm"         # llamafile's tinyBLAS (tinyBLAS, tinyBLAS_Q0_AVX)
REPACK = "repack"       # ggml_gemm_* for groups of 4 tokens, ggml_gemv_* for the rest (repack.cpp)
TILED = "tiled"         # ggml_compute_forward_mul_mat_tiled (tiled.cpp)
DECODED = "decoded"     # not one of ggml's: rows decoded to floats (or dequantized), our own float order

_REPACKED = repack.SUPPORTED                       # Q4_0, IQ4_NL, Q4_K (rows % 8 == 0)
_SGEMM = (GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q5_0)
_VEC_DOT = _FLOAT + (GGMLType.Q4_1, GGMLType.Q8_0) + vec_dot_q5.SUPPORTED + tiled.SUPPORTED


def ggml_path(wtype: GGMLType, n_tokens: int, n_rows: int, mul_mat_id: bool = False) -> str:
    """The ggml code that computes x (n_tokens, K) @ W^T for a weight of `wtype` with `n_rows` rows (AVX2 build);
    DECODED where we do not reproduce ggml's sums (they agree up to float rounding order)."""
    wtype = GGMLType(wtype)
    if wtype in _REPACKED:
        return REPACK if n_rows % 8 == 0 else DECODED
    if wtype in tiled.SUPPORTED and n_tokens >= tiled.TILED_MIN_BATCH:
        return TILED
    if wtype in _SGEMM and n_tokens >= 2 and not mul_mat_id:
        return SGEMM
    return VEC_DOT if wtype in _VEC_DOT else DECODED


def _one_token(rows, wtype, K, x, out):
    """Generation on Q4_1 / Q8_0 weights (x a C-contiguous float32 (1, K)): vec_dot_avx2's / vec_dot_ir's kernels."""
    if wtype == GGMLType.Q4_1:
        (q4_1_matvec_avx2 if features.has_avx2() else q4_1_matvec)(rows, K, x[0], out[0])
    else:
        q8 = gemm_q8_0.q8_0_matvec_vnni if gemm_q8_0.variant() == "vnni512" else \
            q8_0_matvec_avx2 if features.has_avx2() else q8_0_matvec
        q8(rows, K, x[0], out[0])
    return out


def _q8_blocks(rows, wtype, K, x, out, mul_mat_id, spec=False):
    """Q4_1 (vec_dot) and Q8_0 (vec_dot, and tinyBLAS_Q0_AVX with the same float steps per (row, token))."""
    if not spec and x.shape[0] == 1:
        return _one_token(rows, wtype, K, x, out)
    _, s, xq, dx = prepare_activations(x, vec_dot_type(wtype), 32, True, with_ints=True)
    q4_1 = wtype == GGMLType.Q4_1
    if not spec and not q4_1 and gemm_q8_0.q8_0_gemm(rows, K, xq, dx, out, numba.get_num_threads()):
        return out          # AVX-512 VNNI: two tokens per 512-bit vector, the same order
    if spec or not (features.has_avx2() or features.hardware_fma()):
        q4_1_q8_1(rows, K, xq, dx, s, out) if q4_1 else q8_0_q8_0(rows, K, xq, dx, out)
    elif features.has_avx2():
        n = numba.get_num_threads()
        q4_1_matmul_avx2(rows, K, xq, dx, s, out, n) if q4_1 else q8_0_matmul_avx2(rows, K, xq, dx, out, n)
    else:
        xqT, dxT = np.ascontiguousarray(xq.T, dtype=np.float32), np.ascontiguousarray(dx.T)
        q4_1_q8_1_batch(rows, K, xqT, dxT, np.ascontiguousarray(s.T), out) if q4_1 else q8_0_q8_0_batch(rows, K, xqT, dxT, out)
    return out


def _floats(rows, wtype, K, x, out, mul_mat_id, spec=False):
    """F32 / F16 / BF16: ggml_vec_dot_f16 / _f32 (one token, mul_mat_id) or tinyBLAS (two or more tokens)."""
    sgemm = x.shape[0] >= 2 and not mul_mat_id
    if not spec and not sgemm and x.shape[0] == 1 and wtype == GGMLType.F16 and features.has_avx2():
        f16_matvec(rows.view(np.uint16), K, x[0], out[0])
        return out
    xh, _ = prepare_activations(x, vec_dot_type(wtype), K, True)
    if not spec and sgemm and wtype == GGMLType.F16 and K % 8 == 0 and features.has_avx2():
        f16_matmul(rows.view(np.uint16), K, np.ascontiguousarray(xh), out, numba.get_num_threads())
    elif not spec and sgemm and features.hardware_fma():
        float_rows_batch(rows, int(wtype), K, np.ascontiguousarray(xh.T), out)
    else:
        float_rows_exact(rows, int(wtype), K, xh, out, sgemm)
    return out


def _q5(rows, wtype, K, x, out, mul_mat_id, spec=False):
    """Q5_0 (tinyBLAS_Q0_AVX or vec_dot: one order) and Q5_1 (vec_dot): vec_dot_q5."""
    if not spec:
        return vec_dot_q5.matmul(rows, wtype, K, x, mul_mat_id)
    _, s, xq, dx = prepare_activations(x, vec_dot_type(wtype), 32, True, with_ints=True)
    if wtype == GGMLType.Q5_0:
        vec_dot_q5.q5_0_q8_0(rows, K, xq, dx, out)
    else:
        vec_dot_q5.q5_1_q8_1(rows, K, xq, dx, s, out)
    return out


def _repacked(rows, wtype, K, x, out, mul_mat_id, spec=False):
    """Q4_0 / IQ4_NL / Q4_K in the CPU_REPACK buffer: repack.py (gemm + gemv), repack_gemv.py (vector gemv)."""
    return repack.matmul(rows, wtype, K, x, mul_mat_id, vectorized=False if spec else None)


def _kquants(rows, wtype, K, x, out, mul_mat_id, spec=False):
    """Q6_K, Q5_K, Q3_K, IQ4_XS, Q2_K: their vec_dot below 8 tokens, tiled.cpp from 8 (tiled.py, vec_dot_kquants.py)."""
    return tiled.matmul(rows, wtype, K, x, mul_mat_id, vector=not spec)


# (weight type, ggml path) -> our kernel for it; each takes spec=True for its readable statement (same bits)
KERNELS = {}
for _t in (GGMLType.Q4_1, GGMLType.Q8_0):
    KERNELS[_t, VEC_DOT] = _q8_blocks
KERNELS[GGMLType.Q8_0, SGEMM] = _q8_blocks
for _t in _FLOAT:
    KERNELS[_t, VEC_DOT] = KERNELS[_t, SGEMM] = _floats
for _t in vec_dot_q5.SUPPORTED:
    KERNELS[_t, VEC_DOT] = _q5
KERNELS[GGMLType.Q5_0, SGEMM] = _q5
for _t in _REPACKED:
    KERNELS[_t, REPACK] = _repacked
for _t in tiled.SUPPORTED:
    KERNELS[_t, VEC_DOT] = KERNELS[_t, TILED] = _kquants


def matmul_raw(rows: np.ndarray, wtype: GGMLType, K: int, x: np.ndarray, quantize_act: bool = True,
               name: str = "weight", mul_mat_id: bool = False) -> np.ndarray:
    """y (T, N) = x (T, K) @ W^T for W given as raw rows (N, row_bytes) of ggml type `wtype`.
    mul_mat_id: the rows are one expert of a stack (ggml_mul_mat_id never takes the tinyBLAS path).
    quantize_act=False: the exact float product of the dequantized weights (no ggml path)."""
    if (quantize_act and type(x) is np.ndarray and x.shape == (1, K) and (wtype == GGMLType.Q4_1 or wtype == GGMLType.Q8_0)
            and K % 32 == 0 and x.dtype == np.float32 and x.flags.c_contiguous and rows.shape[0] > 0):
        # generation, the hottest call: checked above, nothing else to do
        return _one_token(rows, wtype, K, x, np.empty((1, rows.shape[0]), np.float32))
    wtype = GGMLType(wtype)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != K:
        raise MatmulError(f"{name}: activations {x.shape} do not match n_per_row {K}")
    if K % wtype.block_size:
        raise MatmulError(f"{name}: n_per_row {K} is not a multiple of the {wtype.name} block size")
    N, T = rows.shape[0], x.shape[0]
    out = np.empty((T, N), np.float32)
    if T == 0 or N == 0:
        return out
    path = ggml_path(wtype, T, N, mul_mat_id) if quantize_act else DECODED
    if path != DECODED:
        y = KERNELS[wtype, path](rows, wtype, K, x, out, mul_mat_id)
        if y is not None:           # None: rows that are not blocks of this type (the kernels check)
            return y
    return _decoded(rows, wtype, K, x, out, quantize_act)


def _decoded(rows, wtype, K, x, out, quantize_act):
    """Our own float order: rows decoded (native types) or dequantized by workbench.quant, times the activations
    as the vec_dot_type sees them (or the float activations, quantize_act=False)."""
    act = vec_dot_type(wtype)
    T, N = out.shape
    if wtype in NATIVE_TYPES:
        # Q4_0's -8 offset is applied as a min over blocks of 32 in the fused path
        S = MIN_SUBBLOCK.get(wtype, 32 if wtype == GGMLType.Q4_0 else K)
        xh, xsum = prepare_activations(x, act, S, quantize_act)
        if T == 1 and wtype in _FUSED:
            _gemv(rows, int(wtype), K, xh, xsum, out, numba.get_num_threads())
        else:
            _matmul_rows(rows, int(wtype), K, S, wtype in MIN_SUBBLOCK, xh, xsum, out, numba.get_num_threads())
        return out
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
    return np.asarray(dequantize(rows[ids], wtype, K), dtype=np.float32)
