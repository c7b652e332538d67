"""F16: IEEE half per element, ggml_fp32_to_fp16_row (round to nearest even, GGML_FP32_TO_FP16)."""
import numpy as np
from numba import njit, prange

from workbench.cpu import ir as lanes
from workbench.cpu.fp16 import fp16_to_fp32_vec, fp32_to_fp16, fp32_to_fp16_np

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


_dequantize_run = lanes.row_kernel(lanes.emit_f16_run, 32, 64)


@njit(parallel=True, cache=True, error_model="numpy")
def _dequantize_rows(blocks, out):
    """Runs of 32 in vector code, the rest of the row (n % 32 values) one by one."""
    n = out.shape[1]
    for r in prange(out.shape[0]):
        _dequantize_run(blocks, out, r)
        for j in range(n - n % 32, n):
            out[r, j] = fp16_to_fp32_vec(np.uint16(np.int64(blocks[r, 2 * j]) | (np.int64(blocks[r, 2 * j + 1]) << 8)))


def quantize(x: np.ndarray, imatrix=None) -> np.ndarray:
    out = np.empty(x.shape, dtype=np.uint16)
    _quantize_rows(x, out)
    return out.view(np.uint8)


def dequantize(blocks: np.ndarray, n_per_row: int) -> np.ndarray:
    out = np.empty((blocks.shape[0], n_per_row), dtype=np.float32)
    _dequantize_rows(blocks, out)
    return out
