"""Q5_1: blocks of 32, fp16 scale d and offset m, 5-bit levels q in 0..31, x ~ d*q + m.

Without an imatrix: quantize_row_q5_1_ref (d = (max-min)/31, no clamp: (uint8_t)(x' + 0.5f)).
With one: quantize_row_q5_1_impl, make_qkx3_quants(32, 31, -0.9, 0.05, 36) (shared with Q4_1).
"""
import numpy as np
from numba import njit, prange

from workbench.cpu import ir as lanes
from workbench.cpu.fp16 import put_fp16
from workbench.quant.blocks import pack_nibbles_np
from workbench.quant.rounding import F32
from workbench.quant.types.q4_1 import affine_imatrix_np, affine_ref_np, affine_row
from workbench.quant.types.q5_0 import pack_high_bits_np, put_5bit, unpack_levels_np

NEEDS_IMATRIX = False
QK = 32
BLOCK = np.dtype([("d", "<f2"), ("m", "<f2"), ("qh", "<u4"), ("qs", "u1", (QK // 2,))])  # block_q5_1
BYTES = BLOCK.itemsize
NMAX = 31


# ------------------------------------------------------------------------------- numpy reference
def quantize_ref(x: np.ndarray, imatrix=None) -> np.ndarray:
    rows = x.shape[0]
    xb = x.reshape(rows, -1, QK)
    if imatrix is None:
        d, m, q = affine_ref_np(xb, NMAX)
        q = q & 0xFF                                  # the uint8 cast; bits above 4 are dropped on packing
    else:
        d, m, q = affine_imatrix_np(x, xb, imatrix, NMAX)
    y = np.zeros(xb.shape[:2], dtype=BLOCK)
    y["d"] = d.astype(np.float16)
    y["m"] = m.astype(np.float16)
    y["qh"] = pack_high_bits_np(q)
    y["qs"] = pack_nibbles_np(q[..., :16], q[..., 16:])
    return y.view(np.uint8).reshape(rows, -1)


def dequantize_ref(blocks: np.ndarray, n_per_row: int) -> np.ndarray:
    y = np.ascontiguousarray(blocks).view(BLOCK)
    q = unpack_levels_np(y).astype(F32)
    d, m = y["d"].astype(F32)[..., None], y["m"].astype(F32)[..., None]
    return (d * q + m).reshape(blocks.shape[0], n_per_row)


# ------------------------------------------------------------------------------- numba kernels
@njit(cache=True, error_model="numpy")
def _ref_row(row, out):
    """quantize_row_q5_1_ref on one row, straight into the output bytes (the hot no-imatrix path)."""
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
        qh = 0
        for j in range(16):
            q0 = np.int64((xb[j] - mn) * inv + F32(0.5)) & 0xFF          # (uint8_t), no clamp in ggml
            q1 = np.int64((xb[j + 16] - mn) * inv + F32(0.5)) & 0xFF
            out[o + 8 + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4)
            qh |= (((q0 >> 4) & 1) << j) | (((q1 >> 4) & 1) << (j + 16))
        for k in range(4):
            out[o + 4 + k] = (qh >> (8 * k)) & 0xFF


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
            put_5bit(out[r], o + 4, L[ib * QK:(ib + 1) * QK])


def _emit_block(builder, block, y):
    """y = d * q + m, q = nibble | fifth bit << 4 (dequantize_row_q5_1)."""
    lanes.emit_legacy(builder, block, y, qs_at=8, qh_at=4, m_at=2)


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
