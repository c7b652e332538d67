"""Q5_0: blocks of 32, fp16 scale d, 5-bit levels q in 0..31 (low nibbles in qs, 5th bits in qh), x ~ d*(q-16).

Without an imatrix: quantize_row_q5_0_ref (d = max/-16, truncation after +16.5).
With one: quantize_row_q5_0_impl, make_qx_quants(32, 16) with weight = imatrix * sqrt(sigma2 + x^2).
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
BLOCK = np.dtype([("d", "<f2"), ("qh", "<u4"), ("qs", "u1", (QK // 2,))])   # block_q5_0 (ggml-common.h)
BYTES = BLOCK.itemsize


def pack_high_bits_np(q):
    """Bit j of qh = bit 4 of level j (j = 0..31): the qh word of Q5_0/Q5_1."""
    bits = ((q.astype(np.uint32) >> 4) & 1) << np.arange(QK, dtype=np.uint32)
    return np.bitwise_or.reduce(bits, axis=-1)


def unpack_levels_np(y):
    """(qs, qh) -> 5-bit levels (..., 32) as int32."""
    low = np.concatenate([y["qs"] & 0x0F, y["qs"] >> 4], axis=-1).astype(np.int32)
    high = (y["qh"][..., None] >> np.arange(QK, dtype=np.uint32)) & 1
    return low | (high.astype(np.int32) << 4)


# ------------------------------------------------------------------------------- numpy reference
def quantize_ref(x: np.ndarray, imatrix=None) -> np.ndarray:
    rows, n = x.shape
    xb = x.reshape(rows, -1, QK)
    if imatrix is None:
        mx = np.take_along_axis(xb, np.abs(xb).argmax(-1)[..., None], -1)[..., 0]
        d = mx / F32(-16)
        q = np.minimum(31, np.trunc(xb * safe_inverse_np(d)[..., None] + F32(16.5)).astype(np.int8))
    else:
        sigma2 = seqsum_np(x * x) / F32(n)
        w = imatrix.reshape(-1, QK)[None] * np.sqrt(sigma2[:, None, None] + xb * xb)
        d, q = make_qx_quants_np(xb.reshape(-1, QK), 16, w.reshape(-1, QK))
        d, q = d.reshape(xb.shape[:2]), q.reshape(xb.shape)
    y = np.zeros(xb.shape[:2], dtype=BLOCK)
    y["d"] = d.astype(np.float16)
    y["qh"] = pack_high_bits_np(q)
    y["qs"] = pack_nibbles_np(q[..., :16], q[..., 16:])
    return y.view(np.uint8).reshape(rows, -1)


def dequantize_ref(blocks: np.ndarray, n_per_row: int) -> np.ndarray:
    y = np.ascontiguousarray(blocks).view(BLOCK)
    q = (unpack_levels_np(y) - 16).astype(F32)
    return (y["d"].astype(F32)[..., None] * q).reshape(blocks.shape[0], n_per_row)


# ------------------------------------------------------------------------------- numba kernels
@njit(cache=True, error_model="numpy")
def put_5bit(out, o, L):
    """Write qh (4 bytes, bit j = bit 4 of L[j]) at out[o:o+4] and the nibbles at out[o+4:o+20]."""
    qh = 0
    for j in range(16):
        out[o + 4 + j] = (L[j] & 0x0F) | ((L[j + 16] & 0x0F) << 4)
        qh |= ((np.int64(L[j]) >> 4) & 1) << j
        qh |= ((np.int64(L[j + 16]) >> 4) & 1) << (j + 16)
    for k in range(4):
        out[o + k] = (qh >> (8 * k)) & 0xFF


@njit(parallel=True, cache=True, error_model="numpy")
def _quantize_rows(x, qw, use_qw, out):
    n = x.shape[1]
    nb = n // QK
    for r in prange(x.shape[0]):
        row = x[r]
        L = np.empty(n, np.int8)
        d = np.empty(nb, np.float32)
        if use_qw:                                  # quantize_row_q5_0_impl: all blocks searched side by side
            sum_x2 = F32(0.0)
            for j in range(n):
                sum_x2 += row[j] * row[j]
            sigma2 = sum_x2 / F32(n)
            xt = np.empty((QK, nb), np.float32)
            wt = np.empty((QK, nb), np.float32)
            Lt = np.empty((QK, nb), np.uint8)
            for ib in range(nb):
                for j in range(QK):
                    v = row[ib * QK + j]
                    xt[j, ib] = v
                    wt[j, ib] = qw[ib * QK + j] * np.sqrt(sigma2 + v * v)
            make_qx_quants_batch(16, xt, wt, Lt, d)
            for ib in range(nb):
                for j in range(QK):
                    L[ib * QK + j] = Lt[j, ib]
        else:                                       # quantize_row_q5_0_ref
            for ib in range(nb):
                amax = F32(0.0)
                mx = F32(0.0)
                for j in range(QK):
                    v = row[ib * QK + j]
                    if amax < abs(v):
                        amax = abs(v)
                        mx = v
                d[ib] = mx / F32(-16.0)
                inv = F32(1.0) / d[ib] if d[ib] != 0 else F32(0.0)
                for j in range(QK):
                    L[ib * QK + j] = min(31, np.int8(row[ib * QK + j] * inv + F32(16.5)))
        for ib in range(nb):
            put_fp16(out[r], ib * BYTES, d[ib])
            put_5bit(out[r], ib * BYTES + 2, L[ib * QK:(ib + 1) * QK])


def _emit_block(builder, block, y):
    """y = d * (q - 16), q = nibble | fifth bit << 4 (dequantize_row_q5_0)."""
    lanes.emit_legacy(builder, block, y, qs_at=6, qh_at=2, bias=16)


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
