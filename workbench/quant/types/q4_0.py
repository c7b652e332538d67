"""Q4_0: blocks of 32, fp16 scale d and 4-bit levels q in 0..15, x ~ d*(q-8).

Without an imatrix: quantize_row_q4_0_ref (d = max/-8 from the signed largest |x|, truncation after +8.5).
With one: quantize_row_q4_0_impl, a weighted search make_qx_quants(32, 8) with
weight = imatrix * sqrt(sigma2 + x^2), sigma2 = mean of x^2 over the whole row.
"""
import numpy as np
from numba import njit, prange

from workbench.cpu import ir as lanes
from workbench.cpu.fp16 import put_fp16
from workbench.quant.blocks import pack_nibbles_np
from workbench.quant.rounding import F32, safe_inverse_np, seqsum_np
from workbench.quant.scale_search import make_qx_quants_np
from workbench.quant.scale_search_batch import make_qx_quants_batch

NEEDS_IMATRIX = False
QK = 32
BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])   # block_q4_0 (ggml-common.h)
BYTES = BLOCK.itemsize


# ------------------------------------------------------------------------------- numpy reference
def quantize_ref(x: np.ndarray, imatrix=None) -> np.ndarray:
    rows, n = x.shape
    xb = x.reshape(rows, -1, QK)                                    # (rows, n_blocks, 32)
    if imatrix is None:
        mx = np.take_along_axis(xb, np.abs(xb).argmax(-1)[..., None], -1)[..., 0]   # signed max |x|
        d = mx / F32(-8)
        q = np.minimum(15, np.trunc(xb * safe_inverse_np(d)[..., None] + F32(8.5)).astype(np.int8))
    else:
        sigma2 = seqsum_np(x * x) / F32(n)                          # (rows,)
        w = imatrix.reshape(-1, QK)[None] * np.sqrt(sigma2[:, None, None] + xb * xb)
        d, q = make_qx_quants_np(xb.reshape(-1, QK), 8, w.reshape(-1, QK))
        d, q = d.reshape(xb.shape[:2]), q.reshape(xb.shape)
    y = np.zeros(xb.shape[:2], dtype=BLOCK)
    y["d"] = d.astype(np.float16)
    y["qs"] = pack_nibbles_np(q[..., :16], q[..., 16:])
    return y.view(np.uint8).reshape(rows, -1)


def dequantize_ref(blocks: np.ndarray, n_per_row: int) -> np.ndarray:
    y = np.ascontiguousarray(blocks).view(BLOCK)
    q = np.concatenate([y["qs"] & 0x0F, y["qs"] >> 4], axis=-1).astype(np.int8) - 8
    return (y["d"].astype(F32)[..., None] * q.astype(F32)).reshape(blocks.shape[0], n_per_row)


# ------------------------------------------------------------------------------- numba kernels
@njit(cache=True, error_model="numpy")
def _put_block(out, o, d, L):
    put_fp16(out, o, d)
    for j in range(16):
        out[o + 2 + j] = (L[j] & 0x0F) | ((L[j + 16] & 0x0F) << 4)


@njit(parallel=True, cache=True, error_model="numpy")
def _quantize_rows(x, out):
    """quantize_row_q4_0_ref, straight into the bytes."""
    nb = x.shape[1] // QK
    for r in prange(x.shape[0]):
        row = x[r]
        for ib in range(nb):
            xb = row[ib * QK:(ib + 1) * QK]
            amax = F32(0.0)
            mx = F32(0.0)
            for j in range(QK):
                if amax < abs(xb[j]):
                    amax = abs(xb[j])
                    mx = xb[j]
            dd = mx / F32(-8.0)
            inv = F32(1.0) / dd if dd != 0 else F32(0.0)
            o = ib * BYTES
            put_fp16(out[r], o, dd)
            for j in range(16):
                q0 = min(15, np.int32(xb[j] * inv + F32(8.5)))
                q1 = min(15, np.int32(xb[j + 16] * inv + F32(8.5)))
                out[r, o + 2 + j] = q0 | (q1 << 4)


BATCH = 64      # blocks searched side by side: a row's own, or those of several rows when rows are short


@njit(parallel=True, cache=True, error_model="numpy")
def _quantize_rows_imatrix(x, qw, out):
    """quantize_row_q4_0_impl: the blocks of max(1, BATCH // blocks per row) rows go side by side through
    make_qx_quants_batch (its groups are independent: a block's bytes do not depend on its neighbours), so a
    matrix of one block per row (GPTQ quantizes one 32-column block of every row at a time) is a batch too."""
    rows, n = x.shape
    nb = n // QK
    per = max(1, BATCH // nb)
    for c in prange((rows + per - 1) // per):
        r0 = c * per
        nr = min(rows, r0 + per) - r0
        xt = np.empty((QK, nr * nb), np.float32)
        wt = np.empty((QK, nr * nb), np.float32)
        Lt = np.empty((QK, nr * nb), np.uint8)
        d = np.empty(nr * nb, np.float32)
        for rr in range(nr):
            row = x[r0 + rr]
            sum_x2 = F32(0.0)
            for j in range(n):
                sum_x2 += row[j] * row[j]
            sigma2 = sum_x2 / F32(n)
            for ib in range(nb):
                for j in range(QK):
                    v = row[ib * QK + j]
                    xt[j, rr * nb + ib] = v
                    wt[j, rr * nb + ib] = qw[ib * QK + j] * np.sqrt(sigma2 + v * v)
        make_qx_quants_batch(8, xt, wt, Lt, d)
        L = np.empty(QK, np.int8)
        for rr in range(nr):
            for ib in range(nb):
                for j in range(QK):
                    L[j] = Lt[j, rr * nb + ib]
                _put_block(out[r0 + rr], ib * BYTES, d[rr * nb + ib], L)


def _emit_block(builder, block, y):
    """y = d * (q - 8): low nibbles are weights 0..15, high nibbles 16..31."""
    d = lanes.fp16(builder, block, 0)
    q = lanes.load_bytes(builder, block, 2, QK // 2)
    lanes.store_affine(builder, y, 0, lanes.vsub(builder, lanes.vand(builder, q, 0x0F), 8), d)
    lanes.store_affine(builder, y, QK // 2, lanes.vsub(builder, lanes.vshr(builder, q, 4), 8), d)


_dequantize_row = lanes.row_kernel(_emit_block, QK, BYTES)


@njit(parallel=True, cache=True)
def _dequantize_rows(blocks, out):
    for r in prange(out.shape[0]):
        _dequantize_row(blocks, out, r)


def quantize(x: np.ndarray, imatrix=None) -> np.ndarray:
    out = np.zeros((x.shape[0], x.shape[1] // QK * BYTES), dtype=np.uint8)
    if imatrix is None:
        _quantize_rows(x, out)
    else:
        _quantize_rows_imatrix(x, imatrix, out)
    return out


def dequantize(blocks: np.ndarray, n_per_row: int) -> np.ndarray:
    out = np.empty((blocks.shape[0], n_per_row), dtype=np.float32)
    _dequantize_rows(blocks, out)
    return out
