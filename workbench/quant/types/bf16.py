"""BF16: the top half of the float32 bits, rounded to nearest even (ggml_compute_fp32_to_bf16)."""
import numpy as np
from numba import njit, prange

from workbench.cpu import ir as lanes
from workbench.cpu.fp16 import fp32_to_bf16

NEEDS_IMATRIX = False


def quantize_ref(x: np.ndarray, imatrix=None) -> np.ndarray:
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + (0x7FFF + ((u >> 16) & 1))) >> 16
    quiet_nan = (u >> 16) | 64                      # NaN: keep the payload's top bits, force quiet
    bits = np.where((u & 0x7FFFFFFF) > 0x7F800000, quiet_nan, rounded).astype(np.uint16)
    return bits.view(np.uint8).reshape(x.shape[0], -1)


def dequantize_ref(blocks: np.ndarray, n_per_row: int) -> np.ndarray:
    bits = np.ascontiguousarray(blocks).view(np.uint16).astype(np.uint32) << 16
    return bits.view(np.float32).reshape(blocks.shape[0], n_per_row)


@njit(parallel=True, cache=True, error_model="numpy")
def _quantize_rows(x, out):
    for r in prange(x.shape[0]):
        for j in range(x.shape[1]):
            out[r, j] = fp32_to_bf16(x[r, j])


_dequantize_run = lanes.row_kernel(lanes.emit_bf16_run, 32, 64)


@njit(parallel=True, cache=True, error_model="numpy")
def _dequantize_rows(blocks, out):
    """Runs of 32 in vector code, the rest of the row (n % 32 values) one by one (out viewed as uint32)."""
    n = out.shape[1]
    for r in prange(out.shape[0]):
        _dequantize_run(blocks, out, r)
        for j in range(n - n % 32, n):
            out[r, j] = (np.uint32(blocks[r, 2 * j]) << 16) | (np.uint32(blocks[r, 2 * j + 1]) << 24)


def quantize(x: np.ndarray, imatrix=None) -> np.ndarray:
    out = np.empty(x.shape, dtype=np.uint16)
    _quantize_rows(x, out)
    return out.view(np.uint8)


def dequantize(blocks: np.ndarray, n_per_row: int) -> np.ndarray:
    out = np.empty((blocks.shape[0], n_per_row), dtype=np.uint32)
    _dequantize_rows(blocks, out)
    return out.view(np.float32)
