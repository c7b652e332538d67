"""Exact ggml sums for the weight types that ggml-cpu REPACKS on AVX2: Q4_0, IQ4_NL, Q4_K.

When a weight of these types has a row count divisible by 8, llama.cpp's CPU backend stores it in the
CPU_REPACK buffer (ggml-cpu/repack.cpp, ggml_repack_get_optimal_repack_type: q4_0_8x8_q8_0,
iq4_nl_8x8_q8_0, q4_K_8x8_q8_K) and multiplies it with the interleaved kernels of
ggml-cpu/arch/x86/repack.cpp instead of ggml_vec_dot_* / tinyBLAS. tensor_traits::forward_mul_mat hands
the first T - T % 4 tokens to ggml_gemm_* (groups of 4 tokens, activations quantized by
ggml_quantize_mat_q8_0_4x8 / _q8_K_4x8) and the last T % 4 tokens to ggml_gemv_* (activations
quantized by quantize_row_q8_0 / _q8_K). The quantized values are the same either way:

* ggml_quantize_mat_q8_0_4x8 (AVX2) computes d = amax / 127, id = 127 / amax, rint(x * id) exactly like
  quantize_row_q8_0 (AVX2).
* ggml_quantize_mat_q8_K_4x8 (AVX2) picks the sign of the scale differently from quantize_row_q8_K_ref
  when a block holds both +amax and -amax; that flips the signs of d, q and bsums together (rint is
  symmetric) and leaves every product d_w * d_x * sum(q_w q_x) unchanged.

so act_quant.prepare_activations gives them. repack_gemv holds the one-token gemv as LLVM vector code,
gemm_tiles the many-token Q4_0 and Q4_K products (tiles of rows x tokens). The float order, per output (row r, token t):

Q4_0 / IQ4_NL (gemv_q4_b32_8x8_q8_0_lut_avx and gemm_q4_b32_8x8_q8_0_lut_avx, identical order):
    acc = 0;  for each block b of 32:  acc = fma(float(isum_b), d_w[b] * d_x[b], acc)
    (isum_b the exact integer dot of the signed weight values -8..7 or kvalues_iq4nl with the int8 x)
Q4_K (ggml_gemv_q4_K_8x8_q8_K / ggml_gemm_q4_K_8x8_q8_K), per super-block of 256 with d_x float32:
    gemv (one token): acc  = fma(float(sum_j sc_j isum_j), d_w * d_x, acc)          j over 8 sub-blocks
                      accm = fma(float(sum_j m_j bsum_j), dmin_w * d_x, accm)
    gemm (4 tokens):  the same two fmas once per PAIR of sub-blocks (j = 2p, 2p+1), 4 per super-block
    result acc - accm.
Integer parts are exact (no int16 saturation is reachable with |q_x| <= 127); only the int -> float
conversion of a Q4_K super-block sum can round (above 2^24), as _mm256_cvtepi32_ps does.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from workbench.gguf import GGMLType

from workbench.cpu import features, gemm_tiles, repack_gemv
from workbench.cpu.act_quant import prepare_activations
from workbench.cpu.fp16 import get_fp16
from workbench.cpu.simd import fma32

SUPPORTED = (GGMLType.Q4_0, GGMLType.IQ4_NL, GGMLType.Q4_K)

# signed values of a 4-bit index, as the signextendlut of ggml_gemv_q4_0_8x8_q8_0 (the repack xors the
# nibbles with 8, the LUT maps them back to -8..7) and ggml_gemv_iq4_nl_8x8_q8_0 (kvalues_iq4nl)
LUT_Q4_0 = np.arange(-8, 8, dtype=np.float32)
LUT_IQ4_NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float32)
_B32 = {GGMLType.Q4_0: LUT_Q4_0, GGMLType.IQ4_NL: LUT_IQ4_NL}   # 18-byte blocks: fp16 d + 16 bytes


# --- Q4_0 / IQ4_NL: one fma per block of 32 ---------------------------------------------------------

@njit(cache=True, parallel=True)
def b32_q8_0(W, K, lut, xq, dx, out):
    """gemv_q4_b32_8x8_q8_0_lut_avx / gemm_q4_b32_8x8_q8_0_lut_avx, one token at a time (the spec):
    acc = fma(float(isum), d_w * d_x, acc) per block; element j < 16 is the low nibble of byte j,
    element j + 16 its high nibble."""
    N = W.shape[0]
    T = xq.shape[0]
    for r in prange(N):
        row = W[r]
        for t in range(T):
            acc = np.float32(0.0)
            for b in range(K // 32):
                o = b * 18
                isum = np.int32(0)
                for j in range(16):
                    byte = row[o + 2 + j]
                    isum += np.int32(lut[byte & np.uint8(15)]) * np.int32(xq[t, 32 * b + j])
                    isum += np.int32(lut[byte >> np.uint8(4)]) * np.int32(xq[t, 32 * b + j + 16])
                acc = fma32(np.float32(isum), get_fp16(row, o) * dx[t, b], acc)
            out[t, r] = acc


def _b32_q8_0_batch_impl(W, K, lut, xqT, dxT, out):
    """b32_q8_0 for T tokens at once, vectorized over tokens: xqT (K, T) integer activations as float32
    (a block's integer dot stays below 32 * 127 * 127 < 2^24: exact), dxT (K/32, T). Compiled with
    fastmath 'contract' so that `isum * dd + acc` is one hardware fma, like _mm256_fmadd_ps."""
    N = W.shape[0]
    T = xqT.shape[1]
    for r in prange(N):
        row = W[r]
        acc = np.zeros(T, np.float32)
        isum = np.empty(T, np.float32)
        dd = np.empty(T, np.float32)
        for b in range(K // 32):
            o = b * 18
            d = get_fp16(row, o)
            isum[:] = 0.0
            for j in range(16):
                byte = row[o + 2 + j]
                wl = lut[byte & np.uint8(15)]
                wh = lut[byte >> np.uint8(4)]
                xl = xqT[32 * b + j]
                xh = xqT[32 * b + j + 16]
                for t in range(T):
                    isum[t] += wl * xl[t] + wh * xh[t]
            for t in range(T):
                dd[t] = d * dxT[b, t]
            for t in range(T):
                acc[t] = isum[t] * dd[t] + acc[t]
        for t in range(T):
            out[t, r] = acc[t]


b32_q8_0_batch = njit(cache=True, parallel=True, fastmath={"contract"})(_b32_q8_0_batch_impl)


# --- Q4_K: per super-block (gemv) or per pair of sub-blocks (gemm) ----------------------------------

@njit(cache=True, inline="always")
def _scale_min_k4(row, o, j):
    """get_scale_min_k4 (ggml-quants.c): 6-bit scale and min of sub-block j from the 12 scale bytes."""
    q = o + 4
    if j < 4:
        return np.int32(row[q + j] & np.uint8(63)), np.int32(row[q + j + 4] & np.uint8(63))
    sc = np.int32(row[q + j + 4] & np.uint8(15)) | (np.int32(row[q + j - 4] >> np.uint8(6)) << 4)
    m = np.int32(row[q + j + 4] >> np.uint8(4)) | (np.int32(row[q + j] >> np.uint8(6)) << 4)
    return sc, m


@njit(cache=True, parallel=True)
def q4_K_q8_K(W, K, xq, dx, n_gemm, out):
    """ggml_gemm_q4_K_8x8_q8_K for tokens t < n_gemm (one fma pair per 64 values), ggml_gemv_q4_K_8x8_q8_K
    for the others (one fma pair per super-block of 256); result acc - accm. Sub-block j of 32: values
    64 (j//2) + l are the low (j even) or high (j odd) nibbles of qs[32 (j//2) + l]."""
    N = W.shape[0]
    T = xq.shape[0]
    for r in prange(N):
        row = W[r]
        for t in range(T):
            step = 2 if t < n_gemm else 8        # sub-blocks per float fma
            acc = np.float32(0.0)
            accm = np.float32(0.0)
            for b in range(K // 256):
                o = b * 144
                dd = get_fp16(row, o) * dx[t, b]
                ddm = get_fp16(row, o + 2) * dx[t, b]
                isum = np.int64(0)
                imin = np.int64(0)
                for j in range(8):
                    sc, m = _scale_min_k4(row, o, j)
                    dot = np.int64(0)
                    bsum = np.int64(0)
                    for l in range(32):
                        byte = row[o + 16 + 32 * (j // 2) + l]
                        q = (byte >> np.uint8(4)) if j % 2 else (byte & np.uint8(15))
                        xv = np.int64(xq[t, 256 * b + 32 * j + l])
                        dot += np.int64(q) * xv
                        bsum += xv
                    isum += sc * dot
                    imin += m * bsum
                    if (j + 1) % step == 0:
                        acc = fma32(np.float32(isum), dd, acc)
                        accm = fma32(np.float32(imin), ddm, accm)
                        isum = np.int64(0)
                        imin = np.int64(0)
            out[t, r] = acc - accm


# --- entry point -----------------------------------------------------------------------------------

def _tiled_q4_K(rows, K, xq, dx, n_gemm, out):
    """gemm_tiles's Q4_K tiles: tokens < n_gemm in the gemm's order, the rest in the gemv's; False if no variant
    takes this row count."""
    n = numba.get_num_threads()
    for kind in gemm_tiles.kinds():
        if rows.shape[0] % gemm_tiles.SHAPES_Q4_K[kind][0]:
            continue
        for lo, hi, gemm_order in ((0, n_gemm, True), (n_gemm, xq.shape[0], False)):
            if hi > lo:
                part = np.empty((hi - lo, rows.shape[0]), np.float32)
                gemm_tiles.q4_K_gemm(rows, K, xq[lo:hi], dx[lo:hi], part, n, gemm_order, kind)
                out[lo:hi] = part
        return True
    return False


def matmul(rows, wtype, K, x, mul_mat_id=False, vectorized=None):
    """(T, N) float32 bit-equal to ggml-cpu's repacked mul_mat on AVX2, or None when llama.cpp would not
    repack the weight (row count not a multiple of 8; block-size misfit). mul_mat_id (one expert's rows):
    repack's forward_mul_mat_id sends every token through the gemv kernel, so no groups of 4.
    vectorized: force (True) or avoid (False) the token-vectorized kernels; default: for 4 or more tokens
    when the hardware fma is available (one token: the scalar kernels are faster)."""
    wtype = GGMLType(wtype)
    if wtype not in SUPPORTED:
        return None
    N = rows.shape[0]
    if N % 8 or K % wtype.block_size:
        return None
    x = np.ascontiguousarray(x, dtype=np.float32)
    T = x.shape[0]
    out = np.empty((T, N), np.float32)
    if T == 0 or N == 0:
        return out
    if vectorized is None and T < 4 and repack_gemv.matvec(np.ascontiguousarray(rows), wtype.name, K, x, out):
        return out          # below 4 tokens every token goes through the gemv: repack_gemv's vector kernels
    if vectorized is None:
        vectorized = features.hardware_fma() and T >= 4
    rows = np.ascontiguousarray(rows)
    if wtype == GGMLType.Q4_K:
        _, _, xq, dx = prepare_activations(x, GGMLType.Q8_K, 256, True, with_ints=True)
        n_gemm = 0 if mul_mat_id else T - T % 4    # forward_mul_mat_one_chunk: gemm for whole groups of 4
        if not (vectorized and _tiled_q4_K(rows, K, xq, dx, n_gemm, out)):
            q4_K_q8_K(rows, K, xq, dx, n_gemm, out)
        return out
    _, _, xq, dx = prepare_activations(x, GGMLType.Q8_0, 32, True, with_ints=True)
    if vectorized and wtype == GGMLType.Q4_0 and any(gemm_tiles.q4_0_gemm(rows, K, xq, dx, out, numba.get_num_threads(),
                                                                          kind) for kind in gemm_tiles.kinds()):
        return out
    lut = _B32[wtype]
    if vectorized:
        b32_q8_0_batch(rows, K, lut, np.ascontiguousarray(xq.T, dtype=np.float32), np.ascontiguousarray(dx.T), out)
    else:
        b32_q8_0(rows, K, lut, xq, dx, out)
    return out
