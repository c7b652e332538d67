"""Q8_0: blocks of 32, one fp16 scale d = amax/127 and 32 int8 (quantize_row_q8_0_ref).

ggml ignores the importance matrix for Q8_0 (quantize_q8_0), and rounds with roundf (half away from zero).
"""
import numpy as np
from numba import njit, prange

from workbench.cpu import ir as lanes
from workbench.cpu.fp16 import fp32_to_fp16_np, put_fp16
from workbench.quant.rounding import roundf, roundf_np, safe_inverse_np

NEEDS_IMATRIX = False
QK = 32
BLOCK = np.dtype([("d", "<f2"), ("qs", "i1", (QK,))])   # block_q8_0 (ggml-common.h)


# ------------------------------------------------------------------------------- numpy reference
def quantize_ref(x: np.ndarray, imatrix=None) -> np.ndarray:
    rows = x.shape[0]
    xb = x.reshape(rows, -1, QK)                                  # (rows, n_blocks, 32)
    d = np.abs(xb).max(axis=-1) / np.float32(127)                 # amax / ((1 << 7) - 1)
    q = roundf_np(xb * safe_inverse_np(d)[..., None])
    y = np.zeros(xb.shape[:2], dtype=BLOCK)
    y["d"] = fp32_to_fp16_np(d).view(np.float16)
    y["qs"] = q.astype(np.int8)
    return y.view(np.uint8).reshape(rows, -1)


def dequantize_ref(blocks: np.ndarray, n_per_row: int) -> np.ndarray:
    y = np.ascontiguousarray(blocks).view(BLOCK)                  # (rows, n_blocks)
    d = y["d"].astype(np.float32)[..., None]
    return (y["qs"].astype(np.float32) * d).reshape(blocks.shape[0], n_per_row)


# ------------------------------------------------------------------------------- numba kernels
@njit(parallel=True, cache=True, error_model="numpy")
def _quantize_rows(x, out):
    nb = x.shape[1] // QK
    for r in prange(x.shape[0]):
        for ib in range(nb):
            xb = x[r, ib * QK:(ib + 1) * QK]
            o = ib * 34
            amax = np.float32(0.0)
            for j in range(QK):
                amax = max(amax, abs(xb[j]))
            d = amax / np.float32(127.0)
            inv = np.float32(1.0) / d if d != 0 else np.float32(0.0)
            put_fp16(out[r], o, d)
            for j in range(QK):
                out[r, o + 2 + j] = np.uint8(np.int64(roundf(xb[j] * inv)) & 0xFF)


def _emit_block(builder, block, y):
    """y = q * d (dequantize_row_q8_0)."""
    lanes.store_affine(builder, y, 0, lanes.load_bytes(builder, block, 2, QK), lanes.fp16(builder, block, 0))


_dequantize_row = lanes.row_kernel(_emit_block, QK, 34)


@njit(parallel=True, cache=True)
def _dequantize_rows(blocks, out):
    for r in prange(out.shape[0]):
        _dequantize_row(blocks, out, r)


def quantize(x: np.ndarray, imatrix=None) -> np.ndarray:
    out = np.empty((x.shape[0], x.shape[1] // QK * 34), dtype=np.uint8)
    _quantize_rows(x, out)
    return out


def dequantize(blocks: np.ndarray, n_per_row: int) -> np.ndarray:
    out = np.empty((blocks.shape[0], n_per_row), dtype=np.float32)
    _dequantize_rows(blocks, out)
    return out
