"""Block plumbing shared by the format modules: argument checks, structured block views, packing, and the
dequantize driver. No arithmetic that decides bits lives here.
"""
from __future__ import annotations

import numpy as np

from workbench.cpu.fp16 import FP16_TO_FP32
from workbench.quant import QuantInputError  # the package's ValueError subclass for bad arguments


# ----------------------------------------------------------------------------- argument checks
def check_quantize_args(x, imatrix, block, name, needs_imatrix=False):
    """Validate and normalise ``quantize(x, imatrix)`` arguments; returns (x, imatrix)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise QuantInputError(f"{name}: x must be 2-D (rows, n_per_row), got shape {x.shape}")
    if x.shape[1] % block:
        raise QuantInputError(f"{name}: n_per_row={x.shape[1]} is not a multiple of the block size {block}")
    if imatrix is None:
        if needs_imatrix:
            raise QuantInputError(f"{name}: this format needs an importance matrix (imatrix is None); "
                                  "ggml_quantize_requires_imatrix")
        return x, None
    imatrix = np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1)
    if imatrix.shape[0] != x.shape[1]:
        raise QuantInputError(f"{name}: imatrix has {imatrix.shape[0]} entries, n_per_row is {x.shape[1]}")
    return x, imatrix


def check_blocks(blocks, n_per_row, block, type_size, name):
    blocks = np.ascontiguousarray(blocks, dtype=np.uint8)
    if blocks.ndim == 1:
        blocks = blocks.reshape(1, -1)
    if n_per_row % block:
        raise QuantInputError(f"{name}: n_per_row={n_per_row} is not a multiple of the block size {block}")
    row_bytes = n_per_row // block * type_size
    if blocks.ndim != 2 or blocks.shape[1] != row_bytes:
        raise QuantInputError(f"{name}: blocks must be (rows, {row_bytes}) uint8 for n_per_row={n_per_row}, "
                              f"got shape {blocks.shape}")
    return blocks


def run_dequantize(rows_kernel, blocks, n_per_row, block, type_size, name, *args):
    """A format module's dequantize: validated blocks (check_blocks) through rows_kernel(blocks, out, *args)
    into a new float32 (rows, n_per_row)."""
    blocks = check_blocks(blocks, n_per_row, block, type_size, name)
    out = np.empty((blocks.shape[0], n_per_row), np.float32)
    rows_kernel(blocks, out, *args)
    return out


# ----------------------------------------------------------------------------- bytes and block views
def get_fp16_np(b) -> np.ndarray:
    """(..., 2) uint8 little-endian fp16 -> float32 (the array version of cpu.fp16.get_fp16)."""
    b = np.asarray(b, dtype=np.uint8)
    return FP16_TO_FP32[b[..., 0].astype(np.int64) | (b[..., 1].astype(np.int64) << 8)]


def pack_nibbles_np(lo, hi) -> np.ndarray:
    """Two arrays of 4-bit values -> bytes lo | hi << 4."""
    return (np.asarray(lo, np.uint8) & 0x0F) | ((np.asarray(hi, np.uint8) & 0x0F) << 4)


def blocks_view(blocks: np.ndarray, dtype: np.dtype, n_per_row: int, block_size: int) -> np.ndarray:
    """(rows, row_bytes) uint8 -> structured array (rows, n_blocks) of the block layout `dtype`."""
    rows = blocks.shape[0]
    return np.ascontiguousarray(blocks).view(dtype).reshape(rows, n_per_row // block_size)


def new_blocks(rows: int, n_blocks: int, dtype: np.dtype) -> np.ndarray:
    return np.zeros((rows, n_blocks), dtype=dtype)


def to_bytes(struct_blocks: np.ndarray) -> np.ndarray:
    """Structured (rows, n_blocks) -> uint8 (rows, row_bytes)."""
    rows = struct_blocks.shape[0]
    return np.ascontiguousarray(struct_blocks).view(np.uint8).reshape(rows, -1)
