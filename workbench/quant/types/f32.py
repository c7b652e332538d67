"""F32: rows stored as they are (ggml_quantize_chunk's memcpy)."""
import numpy as np

NEEDS_IMATRIX = False


def quantize_ref(x: np.ndarray, imatrix=None) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint8).reshape(x.shape[0], -1).copy()


def dequantize_ref(blocks: np.ndarray, n_per_row: int) -> np.ndarray:
    return np.ascontiguousarray(blocks).view(np.float32).reshape(blocks.shape[0], n_per_row).copy()


quantize = quantize_ref      # nothing to accelerate: a copy
dequantize = dequantize_ref
