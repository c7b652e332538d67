"""Exact ggml sums for the k-quants Q6_K, Q5_K, Q3_K, IQ4_XS and Q2_K on an AVX2 (no AVX512) CPU.

There mul_mat never repacks them (repack.cpp's ggml_repack_get_optimal_repack_type picks Q5_K / Q6_K only
on NEON, Q2_K only with AVX512) and llamafile's tinyBLAS does not take k-quants. Activations are
quantized to Q8_K (quantize_row_q8_K_ref). Below 8 tokens (and for a mul_mat_id expert with fewer than 8
routed tokens) every row goes through the type's AVX2 vec_dot (arch/x86/quants.c), which share one float
structure:

    per super-block of 256:  sumi[8]   eight int32 lanes; lane k holds the products of the elements
                                       32c + 4k .. 32c + 4k + 3 of every 32-element chunk c, each times
                                       its sub-block scale (maddubs_epi16 + madd_epi16: exact integers)
                             acc[k]    = fma(d, (float) sumi[k], acc[k]),  d = y.d * fp16(x.d)
    result                   hsum_float_8(acc)  (+ summs for the formats with mins)

What differs per type is only which integers land in a lane:
  Q6_K  unsigned 6-bit q (0..63) times the int8 scale; the -32 offset is subtracted per lane as
        32 * (bsums[2k] * sc[2k] + bsums[2k+1] * sc[2k+1]) (q8sclsub), i.e. on OTHER elements than the
        lane's own products: the lane values differ from the signed products, so we reproduce it.
  Q5_K  unsigned 5-bit q times the 6-bit scale; the mins go into a scalar
        summs += dmin * sum_j min_j * (bsums[2j] + bsums[2j+1]) with dmin = -y.d * fp16(x.dmin)
        (GCC contracts that statement into an fma, like Q4_1's summs).
  Q3_K  signed q = low 2 bits - 4 * (high bit not set), times the 6-bit scale - 32.
  IQ4_XS kvalues_iq4nl[nibble] times the 6-bit scale - 32.
  Q2_K  unsigned 2-bit q times the 4-bit scale (per 16); before the scale fma of each super-block,
        acc[k] = fma(dmin, (float)(min[2k] * bsums[2k] + min[2k+1] * bsums[2k+1]), acc[k]),
        dmin = -y.d * fp16(x.dmin).

From 8 tokens on (ggml_tiled_min_batch; for mul_mat_id: 8 tokens routed to the expert), mul_mat takes
ggml_compute_forward_mul_mat_tiled instead (tiled/tiled.cpp, tiled_run_microtile_avx2): per super-block
the whole integer sum s1 = sum of scale * signed q * q8 (the AVX2 bias tricks cancel exactly) and, for
Q5_K / Q2_K, s2 = sum of min * bsums; res = d_w * (float) s1, res = fnmadd(dmin_w, (float) s2, res),
out = fma(res, y.d, out), super-block after super-block (no lanes, no horizontal sum).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from workbench.gguf import GGMLType

from workbench.gguf.constants import KVALUES_IQ4NL, QK_K

from workbench.cpu import gemm_tiles, vec_dot_kquants
from workbench.cpu.act_quant import prepare_activations
from workbench.cpu.fp16 import get_fp16
from workbench.cpu.simd import hsum8

TILED_MIN_BATCH = 8       # tiled.cpp ggml_tiled_min_batch
_Q6_K, _Q5_K, _Q3_K, _IQ4_XS, _Q2_K = 0, 1, 2, 3, 4
_KIND = {GGMLType.Q6_K: _Q6_K, GGMLType.Q5_K: _Q5_K, GGMLType.Q3_K: _Q3_K, GGMLType.IQ4_XS: _IQ4_XS,
         GGMLType.Q2_K: _Q2_K}
_BLOCK_BYTES = np.array([210, 176, 110, 136, 84], np.int64)  # sizeof(block_q6_K / q5_K / q3_K / iq4_xs / q2_K)
_KVALUES_IQ4NL = KVALUES_IQ4NL.astype(np.int32)          # read as int32 products

SUPPORTED = (GGMLType.Q6_K, GGMLType.Q5_K, GGMLType.Q3_K, GGMLType.IQ4_XS, GGMLType.Q2_K)


@njit(cache=True)
def fma_exact(a, b, c):
    """_mm256_fmadd_ps on one lane, correctly rounded: a*b is exact in double; TwoSum gives the rounding
    error e of the double sum s, and when s sits exactly on a float midpoint the exact value lies on the
    side of e, so s is nudged one double ulp that way before the final rounding to float32."""
    p = np.float64(a) * np.float64(b)
    c64 = np.float64(c)
    s = p + c64
    bp = s - p
    e = (p - (s - bp)) + (c64 - bp)
    f = np.float32(s)
    if e != 0.0 and np.float64(f) != s:
        g = np.nextafter(f, np.float32(np.inf) if s > np.float64(f) else np.float32(-np.inf))
        if 2.0 * s == np.float64(f) + np.float64(g):          # s is the midpoint between f and g
            f = np.float32(np.nextafter(s, np.inf if e > 0 else -np.inf))
    return f


@njit(cache=True, inline="always")
def _decode_block(kind, row, o, w, sc, mins):
    """Integer weights of one super-block as the AVX2 kernel multiplies them: w[e] = scale * q (q as the
    kernel stores it: unsigned for Q6_K / Q5_K). Fills sc (Q6_K scales) / mins (Q5_K), returns
    (fp16 d, fp16 dmin) as float32. Layouts: ggml-common.h block_*; element order: dequantize_row_*."""
    if kind == _Q6_K:                   # ql[128] qh[64] scales[16] d
        for k in range(16):
            sc[k] = np.int32(np.int8(row[o + 192 + k]))
        for n in range(2):              # halves of 128: ql += 64, qh += 32
            for l in range(32):
                ql0, ql1, qh = row[o + 64 * n + l], row[o + 64 * n + 32 + l], row[o + 128 + 32 * n + l]
                e = 128 * n + l
                w[e] = sc[e // 16] * np.int32((ql0 & 15) | ((qh & 3) << 4))
                w[e + 32] = sc[(e + 32) // 16] * np.int32((ql1 & 15) | (((qh >> 2) & 3) << 4))
                w[e + 64] = sc[(e + 64) // 16] * np.int32((ql0 >> 4) | (((qh >> 4) & 3) << 4))
                w[e + 96] = sc[(e + 96) // 16] * np.int32((ql1 >> 4) | (((qh >> 6) & 3) << 4))
        return get_fp16(row, o + 208), np.float32(0.0)
    if kind == _Q5_K:                   # d dmin scales[12] qh[32] qs[128]
        s = o + 4
        for j in range(8):              # get_scale_min_k4
            if j < 4:
                scj, mj = row[s + j] & 63, row[s + j + 4] & 63
            else:
                scj = (row[s + j + 4] & 15) | ((row[s + j - 4] >> 6) << 4)
                mj = (row[s + j + 4] >> 4) | ((row[s + j] >> 6) << 4)
            sc[j] = np.int32(scj)
            mins[j] = np.int32(mj)
        for j in range(4):              # 64 elements: low nibbles + bit 2j, high nibbles + bit 2j+1
            for l in range(32):
                b, qh = row[o + 48 + 32 * j + l], row[o + 16 + l]
                w[64 * j + l] = sc[2 * j] * np.int32((b & 15) + (((qh >> (2 * j)) & 1) << 4))
                w[64 * j + 32 + l] = sc[2 * j + 1] * np.int32((b >> 4) + (((qh >> (2 * j + 1)) & 1) << 4))
        return get_fp16(row, o), get_fp16(row, o + 2)
    if kind == _Q3_K:                   # hmask[32] qs[64] scales[12] d
        s = o + 96
        for i in range(4):              # the kmask1/kmask2 unpacking of the 12 scale bytes, bytewise
            hi = row[s + 8 + i]
            sc[i] = np.int32((row[s + i] & 15) | ((hi & 3) << 4)) - 32
            sc[i + 4] = np.int32((row[s + i + 4] & 15) | (((hi >> 2) & 3) << 4)) - 32
            sc[i + 8] = np.int32((row[s + i] >> 4) | (((hi >> 4) & 3) << 4)) - 32
            sc[i + 12] = np.int32((row[s + i + 4] >> 4) | (((hi >> 6) & 3) << 4)) - 32
        for n in range(2):
            for j in range(4):          # shift 2j of qs[32n + l], high bit 4n + j of hmask[l]
                for l in range(32):
                    e = 128 * n + 32 * j + l
                    q = np.int32((row[o + 32 + 32 * n + l] >> (2 * j)) & 3)
                    if not (row[o + l] >> (4 * n + j)) & 1:
                        q -= 4
                    w[e] = sc[e // 16] * q
        return get_fp16(row, o + 108), np.float32(0.0)
    if kind == _Q2_K:                   # scales[16] (scale | min << 4) qs[64] d dmin
        for k in range(16):
            sc[k] = np.int32(row[o + k] & 15)
            mins[k] = np.int32(row[o + k] >> 4)
        for n in range(2):
            for j in range(4):          # shift 2j of qs[32n + l]
                for l in range(32):
                    e = 128 * n + 32 * j + l
                    w[e] = sc[e // 16] * np.int32((row[o + 16 + 32 * n + l] >> (2 * j)) & 3)
        return get_fp16(row, o + 80), get_fp16(row, o + 82)
    # IQ4_XS: d scales_h(u16) scales_l[4] qs[128]
    sh = np.int32(row[o + 2]) | (np.int32(row[o + 3]) << 8)
    for ib in range(8):
        ls = np.int32((row[o + 4 + ib // 2] >> (4 * (ib % 2))) & 15) | (((sh >> (2 * ib)) & 3) << 4)
        ls -= 32
        for j in range(16):
            b = row[o + 8 + 16 * ib + j]
            w[32 * ib + j] = ls * _KVALUES_IQ4NL[b & 15]
            w[32 * ib + 16 + j] = ls * _KVALUES_IQ4NL[b >> 4]
    return get_fp16(row, o), np.float32(0.0)


@njit(cache=True, parallel=True)
def kquant_q8_K(W, kind, K, xq, xqT, dT, bsT, tiled, out):
    """T tokens of Q8_K activations (xq (T, K) and xqT (K, T): the int32 quants, dT (K/256, T) scales, bsT (K/16, T) int32
    bsums) times the rows W; out (T, N).
    tiled False: ggml_vec_dot_{q6_K,q5_K,q3_K,iq4_xs,q2_K}_q8_K (AVX2): 8 float lanes, hsum_float_8 (+ summs).
    tiled True: tiled_run_microtile_avx2 (tiled/tiled-kernel.cpp): per super-block the whole integer sum
    s1 (and s2 = the mins' sum), res = d_w * s1 (- dmin_w * s2 as one fnmadd), out = fma(res, d_y, out)
    block after block."""
    N = W.shape[0]
    T = xqT.shape[1]
    nb = K // QK_K
    bsz = _BLOCK_BYTES[kind]
    for r in prange(N):
        row = W[r]
        w = np.empty(QK_K, np.int32)
        sc = np.zeros(16, np.int32)
        mins = np.zeros(16, np.int32)
        isum = np.empty((8, T), np.int32)
        prod = np.empty(QK_K, np.int32)
        part = np.empty(32, np.int32)
        acc = np.zeros((8, T), np.float32)
        summs = np.zeros(T, np.float32)
        for b in range(nb):
            dw, dmw = _decode_block(kind, row, b * bsz, w, sc, mins)
            o = b * QK_K
            if not tiled:               # vec_dot: 8 lanes per token (few tokens: one at a time)
                for t in range(T):
                    for e in range(QK_K):
                        prod[e] = w[e] * xq[t, o + e]
                    part[:] = 0         # the 32 bytes of a register: sum over the 8 chunks ...
                    for c in range(8):
                        for j in range(32):
                            part[j] += prod[32 * c + j]
                    for k in range(8):  # ... then 4 bytes per int32 lane
                        isum[k, t] = (part[4 * k] + part[4 * k + 1]) + (part[4 * k + 2] + part[4 * k + 3])
                if kind == _Q6_K:       # q8sclsub: the -32 offset, lane k on bsums 2k and 2k+1
                    for k in range(8):
                        for t in range(T):
                            isum[k, t] -= 32 * (bsT[16 * b + 2 * k, t] * sc[2 * k] + bsT[16 * b + 2 * k + 1, t] * sc[2 * k + 1])
            else:                       # tiled: only the super-block total s1, tokens innermost
                isum[0, :] = 0
                for e in range(0, QK_K, 4):
                    w0, w1, w2, w3 = w[e], w[e + 1], w[e + 2], w[e + 3]
                    for t in range(T):
                        isum[0, t] += (w0 * xqT[o + e, t] + w1 * xqT[o + e + 1, t]) + (w2 * xqT[o + e + 2, t] + w3 * xqT[o + e + 3, t])
                if kind == _Q6_K:       # the -32 offset of every sub-block
                    for j in range(16):
                        for t in range(T):
                            isum[0, t] -= 32 * sc[j] * bsT[16 * b + j, t]
            for t in range(T):
                m = np.int32(0)         # sum of min * bsums (Q5_K: mins per 32, Q2_K: per 16)
                if kind == _Q5_K:
                    for j in range(8):
                        m += mins[j] * (bsT[16 * b + 2 * j, t] + bsT[16 * b + 2 * j + 1, t])
                elif kind == _Q2_K:
                    for j in range(16):
                        m += mins[j] * bsT[16 * b + j, t]
                if tiled:
                    res = dw * np.float32(isum[0, t])
                    if kind == _Q5_K or kind == _Q2_K:
                        res = fma_exact(-dmw, np.float32(m), res)
                    acc[0, t] = fma_exact(res, dT[b, t], acc[0, t])
                else:
                    d = dT[b, t] * dw
                    if kind == _Q2_K:   # the mins first: madd_epi16(mins, bsums), one lane per 2 sub-blocks
                        dmin = -dT[b, t] * dmw
                        for k in range(8):
                            mk = mins[2 * k] * bsT[16 * b + 2 * k, t] + mins[2 * k + 1] * bsT[16 * b + 2 * k + 1, t]
                            acc[k, t] = fma_exact(dmin, np.float32(mk), acc[k, t])
                    for k in range(8):
                        acc[k, t] = fma_exact(d, np.float32(isum[k, t]), acc[k, t])
                    if kind == _Q5_K:
                        summs[t] = fma_exact(-dT[b, t] * dmw, np.float32(m), summs[t])
        for t in range(T):
            out[t, r] = acc[0, t] if tiled else hsum8(acc[:, t]) + summs[t]


def matmul(rows, wtype, K, x, mul_mat_id=False, vector=True):
    """(T, N) float32 bit-equal to ggml-cpu's mul_mat and mul_mat_id on AVX2, or None when not handled.
    vector=False: below 8 tokens the readable kernel (kquant_q8_K) instead of vec_dot_kquants' vector code."""
    wtype = GGMLType(wtype)
    kind = _KIND.get(wtype)
    if kind is None or K % QK_K or rows.ndim != 2 or rows.shape[1] != wtype.row_bytes(K):
        return None
    x = np.ascontiguousarray(x, dtype=np.float32)
    T = x.shape[0]
    out = np.empty((T, rows.shape[0]), np.float32)
    if T == 0:
        return out
    if vector and T < TILED_MIN_BATCH and vec_dot_kquants.matvec(np.ascontiguousarray(rows), wtype.name, K, x, out):
        return out                  # vec_dot token by token: vec_dot_kquants' vector kernels, same bits
    _, _, xq, dx = prepare_activations(x, GGMLType.Q8_K, 16, True, with_ints=True)
    if vector and T >= TILED_MIN_BATCH and wtype == GGMLType.Q6_K and any(
            gemm_tiles.q6_K_gemm(rows, K, xq, dx, out, numba.get_num_threads(), kind) for kind in gemm_tiles.kinds()):
        return out                  # the tiled path's integer tiles (gemm_tiles), same bits
    xq32 = xq.astype(np.int32)
    bs = xq32.reshape(T, K // 16, 16).sum(axis=2, dtype=np.int32)      # block_q8_K bsums
    # ggml_compute_forward_mul_mat_tiled takes batches of >= 8 tokens (ggml_tiled_min_batch; for
    # mul_mat_id: >= 8 tokens routed to the expert); smaller ones go through the type's vec_dot
    tiled = T >= TILED_MIN_BATCH
    kquant_q8_K(np.ascontiguousarray(rows), kind, K, xq32, np.ascontiguousarray(xq32.T), np.ascontiguousarray(dx.T),
                np.ascontiguousarray(bs.T), tiled, out)
    return out
