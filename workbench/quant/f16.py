"""F16: IEEE half per element, ggml_fp32_to_fp16_row (round to nearest even, GGML_FP32_TO_FP16)."""
import numpy as np
from numba import njit, prange

from .common import fp16_to_fp32_vec, fp32_to_fp16, fp32_to_fp16_np

NEEDS_IMATRIX = False


def quantize_ref(x: np.ndarray, imatrix=None) -> np.ndarray:
    return fp32_to_fp16_np(x).view(np.uint8).reshape(x.shape[0], -1)


def dequantize_ref(blocks: np.ndarray, n_per_row: int) -> np.ndarray:
    return np.ascontiguousarray(blocks).view(np.float16).astype(np.float32).reshape(blocks.shape[0], n_per_row)


@njit(parallel=True, cache=True, error_model="numpy")
def _quantize_rows(x, out):
    for r in prange(x.shape[0]):
        for j in range(x.shape[1]):
            out[r, j] = fp32_to_fp16(x[r, j])


@njit(parallel=True, cache=True, error_model="numpy")
def _dequantize_rows(h, out):
    """Rows in parallel; the row loop vectorizes (vcvtph2ps, see fp16_to_fp32_vec)."""
    for r in prange(h.shape[0]):
        hrow = h[r]
        orow = out[r]
        for j in range(hrow.shape[0]):
            orow[j] = fp16_to_fp32_vec(hrow[j])


def quantize(x: np.ndarray, imatrix=None) -> np.ndarray:
    out = np.empty(x.shape, dtype=np.uint16)
    _quantize_rows(x, out)
    return out.view(np.uint8)


def dequantize(blocks: np.ndarray, n_per_row: int) -> np.ndarray:
    out = np.empty((blocks.shape[0], n_per_row), dtype=np.float32)
    _dequantize_rows(blocks.view(np.uint16), out)
    return out
