"""Q4_1: blocks of 32, fp16 scale d and offset m, 4-bit levels q in 0..15, x ~ d*q + m.

Without an imatrix: quantize_row_q4_1_ref (d = (max-min)/15, m = min, truncation after +0.5).
With one: quantize_row_q4_1_impl, make_qkx3_quants(32, 15, rmin -0.9, rdelta 0.05, 36 steps) with
weight = imatrix * sqrt(sigma2 + x^2), sigma2 = mean of x^2 over the row.
"""
import numpy as np
from numba import njit, prange

from workbench.cpu import ir as lanes
from workbench.cpu.fp16 import put_fp16
from workbench.quant.blocks import pack_nibbles_np
from workbench.quant.rounding import F32, safe_inverse_np, seqsum_np
from workbench.quant.scale_search import make_qkx3_quants_np
from workbench.quant.scale_search_batch import make_qkx_quants_batch

NEEDS_IMATRIX = False
QK = 32
BLOCK = np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", (QK // 2,))])   # block_q4_1 (ggml-common.h)
BYTES = BLOCK.itemsize
NMAX = 15


def affine_ref_np(xb, nmax):
    """quantize_row_q4_1_ref / q5_1_ref levels: d = (max-min)/nmax, q = (int)((x-min)/d + 0.5)."""
    mn, mx = xb.min(-1), xb.max(-1)
    d = (mx - mn) / F32(nmax)
    q = np.trunc((xb - mn[..., None]) * safe_inverse_np(d)[..., None] + F32(0.5)).astype(np.int32)
    return d, mn, q


def affine_imatrix_np(x, xb, imatrix, nmax):
    """quantize_row_q4_1_impl / q5_1_impl: weighted make_qkx3_quants per block -> (d, m, q)."""
    sigma2 = seqsum_np(x * x) / F32(x.shape[1])
    w = imatrix.reshape(-1, QK)[None] * np.sqrt(sigma2[:, None, None] + xb * xb)
    d, the_min, q = make_qkx3_quants_np(xb.reshape(-1, QK), w.reshape(-1, QK), nmax, -0.9, 0.05, 36, False)
    return d.reshape(xb.shape[:2]), -the_min.reshape(xb.shape[:2]), q.reshape(xb.shape)


# ------------------------------------------------------------------------------- numpy reference
def quantize_ref(x: np.ndarray, imatrix=None) -> np.ndarray:
    rows = x.shape[0]
    xb = x.reshape(rows, -1, QK)
    if imatrix is None:
        d, m, q = affine_ref_np(xb, NMAX)
        q = np.minimum(NMAX, q)
    else:
        d, m, q = affine_imatrix_np(x, xb, imatrix, NMAX)
    y = np.zeros(xb.shape[:2], dtype=BLOCK)
    y["d"] = d.astype(np.float16)
    y["m"] = m.astype(np.float16)
    y["qs"] = pack_nibbles_np(q[..., :16], q[..., 16:])
    return y.view(np.uint8).reshape(rows, -1)


def dequantize_ref(blocks: np.ndarray, n_per_row: int) -> np.ndarray:
    y = np.ascontiguousarray(blocks).view(BLOCK)
    q = np.concatenate([y["qs"] & 0x0F, y["qs"] >> 4], axis=-1).astype(F32)
    d, m = y["d"].astype(F32)[..., None], y["m"].astype(F32)[..., None]
    return (d * q + m).reshape(blocks.shape[0], n_per_row)


# ------------------------------------------------------------------------------- numba kernels
@njit(cache=True, error_model="numpy")
def affine_row(row, qw, use_qw, nmax, L, d, m):
    """Levels (L, uint8 per element) and per-block d, m of one Q4_1/Q5_1 row. Shared with q5_1.

    With an imatrix all blocks of the row are searched side by side (batched make_qkx3_quants)."""
    nb = row.shape[0] // QK
    if use_qw:                                                      # quantize_row_q4_1_impl / q5_1_impl
        sum_x2 = F32(0.0)
        for j in range(row.shape[0]):
            sum_x2 += row[j] * row[j]
        sigma2 = sum_x2 / F32(row.shape[0])
        xt = np.empty((QK, nb), np.float32)
        wt = np.empty((QK, nb), np.float32)
        Lt = np.empty((QK, nb), np.uint8)
        the_min = np.empty(nb, np.float32)
        for ib in range(nb):
            for j in range(QK):
                v = row[ib * QK + j]
                xt[j, ib] = v
                wt[j, ib] = qw[ib * QK + j] * np.sqrt(sigma2 + v * v)
        make_qkx_quants_batch(nmax, xt, wt, Lt, d, the_min, -0.9, 0.05, 36, False)
        for ib in range(nb):
            m[ib] = -the_min[ib]
            for j in range(QK):
                L[ib * QK + j] = Lt[j, ib]
        return
    for ib in range(nb):                                            # quantize_row_q4_1_ref / q5_1_ref
        xb = row[ib * QK:(ib + 1) * QK]
        mn = np.float32(np.finfo(np.float32).max)
        mx = -mn
        for j in range(QK):
            if xb[j] < mn:
                mn = xb[j]
            if xb[j] > mx:
                mx = xb[j]
        d[ib] = (mx - mn) / F32(nmax)
        m[ib] = mn
        inv = F32(1.0) / d[ib] if d[ib] != 0 else F32(0.0)
        for j in range(QK):
            L[ib * QK + j] = np.uint8(np.int32((xb[j] - mn) * inv + F32(0.5)) & 0xFF)


@njit(cache=True, error_model="numpy")
def _ref_row(row, out):
    """quantize_row_q4_1_ref on one row, straight into the output bytes (the hot no-imatrix path)."""
    for ib in range(row.shape[0] // QK):
        xb = row[ib * QK:(ib + 1) * QK]
        mn = xb[0]
        mx = xb[0]
        for j in range(1, QK):                    # same result as ggml's FLT_MAX start (first extreme kept)
            if xb[j] < mn:
                mn = xb[j]
            if xb[j] > mx:
                mx = xb[j]
        d = (mx - mn) / F32(NMAX)
        inv = F32(1.0) / d if d != 0 else F32(0.0)
        o = ib * BYTES
        put_fp16(out, o, d)
        put_fp16(out, o + 2, mn)
        for j in range(16):
            q0 = min(NMAX, np.int32((xb[j] - mn) * inv + F32(0.5)))
            q1 = min(NMAX, np.int32((xb[j + 16] - mn) * inv + F32(0.5)))
            out[o + 4 + j] = q0 | (q1 << 4)


@njit(parallel=True, cache=True, error_model="numpy")
def _quantize_rows(x, qw, use_qw, out):
    nb = x.shape[1] // QK
    for r in prange(x.shape[0]):
        if not use_qw:
            _ref_row(x[r], out[r])
            continue
        L = np.empty(x.shape[1], np.uint8)
        d = np.empty(nb, np.float32)
        m = np.empty(nb, np.float32)
        affine_row(x[r], qw, use_qw, NMAX, L, d, m)
        for ib in range(nb):
            o = ib * BYTES
            put_fp16(out[r], o, d[ib])
            put_fp16(out[r], o + 2, m[ib])
            for j in range(16):
                out[r, o + 4 + j] = min(NMAX, L[ib * QK + j]) | (min(NMAX, L[ib * QK + j + 16]) << 4)


def _emit_block(builder, block, y):
    """y = d * q + m (dequantize_row_q4_1)."""
    lanes.emit_legacy(builder, block, y, qs_at=4, m_at=2)


_dequantize_row = lanes.row_kernel(_emit_block, QK, BYTES)


@njit(parallel=True, cache=True)
def _dequantize_rows(blocks, out):
    for r in prange(out.shape[0]):
        _dequantize_row(blocks, out, r)


def quantize(x: np.ndarray, imatrix=None) -> np.ndarray:
    out = np.zeros((x.shape[0], x.shape[1] // QK * BYTES), dtype=np.uint8)
    qw = imatrix if imatrix is not None else np.zeros(0, np.float32)
    _quantize_rows(x, qw, imatrix is not None, out)
    return out


def dequantize(blocks: np.ndarray, n_per_row: int) -> np.ndarray:
    out = np.empty((blocks.shape[0], n_per_row), dtype=np.float32)
    _dequantize_rows(blocks, out)
    return out
