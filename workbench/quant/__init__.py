"""GGUF block formats: quantize / dequantize rows bit-exactly like ggml (``ggml_quantize_chunk``).

Public API::

    quantize(x, type, imatrix=None)      # float32 (rows, n_per_row) -> uint8 (rows, row_bytes)
    dequantize(blocks, type, n_per_row)  # uint8 (rows, row_bytes)   -> float32 (rows, n_per_row)
    format_table()                       # pandas DataFrame, one row per ggml type

``type`` is a :class:`GGMLType` or its name ("q4_k"). A 1-D ``x`` is treated as one row.

One module per format, found BY NAME: ``workbench/quant/types/<type.name.lower()>.py``. Each exposes

* ``quantize(x, imatrix)``: x float32 (rows, n_per_row) C-contiguous, imatrix float32 (n_per_row,) or None
  -> uint8 (rows, row_bytes). The numba kernel; rows in parallel (prange), no Python loop over blocks.
* ``dequantize(blocks, n_per_row)``: uint8 (rows, row_bytes) -> float32 (rows, n_per_row).
* ``quantize_ref`` / ``dequantize_ref``: the readable numpy references, same signatures, same bytes.
* ``NEEDS_IMATRIX``: True where ggml refuses to quantize without an importance matrix.

Inputs are validated here, once, so the format modules can assume well-formed arrays.
"""
from __future__ import annotations

import numpy as np

from workbench.gguf.constants import GGMLType
from workbench.quant.formats import UnknownTypeError, format_module, format_table, needs_imatrix, parse_type

__all__ = ["quantize", "dequantize", "format_table", "needs_imatrix", "QuantInputError", "UnknownTypeError",
           "GGMLType"]


class QuantInputError(ValueError):
    """Bad input to quantize/dequantize: wrong dtype/shape, non-finite values, missing imatrix..."""


def _check_row_length(t: GGMLType, n_per_row: int) -> None:
    if n_per_row <= 0 or n_per_row % t.block_size:
        raise QuantInputError(
            f"n_per_row: {t.name} needs rows that are a multiple of its block size {t.block_size}, got {n_per_row}")


def quantize(x, type, imatrix=None) -> np.ndarray:
    """Quantize float32 rows `x` (rows, n_per_row) to `type`, as ggml_quantize_chunk(type, x, imatrix)."""
    t = parse_type(type)
    mod = format_module(t)
    if not hasattr(mod, "quantize"):
        raise UnknownTypeError(f"type: {t.name} has no quantize (dequantize only)")
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise QuantInputError(f"x: expected float32, got {x.dtype}")
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise QuantInputError(f"x: expected 2-D (rows, n_per_row), got shape {x.shape}")
    _check_row_length(t, x.shape[1])
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise QuantInputError(f"x: non-finite value {x[tuple(bad)]} at row {bad[0]}, column {bad[1]}")
    if imatrix is not None:
        imatrix = np.asarray(imatrix)
        if imatrix.dtype != np.float32:
            imatrix = imatrix.astype(np.float32)  # ggml takes float*; accept float64 importance data
        if imatrix.shape != (x.shape[1],):
            raise QuantInputError(f"imatrix: expected shape ({x.shape[1]},) (one weight per column), "
                                  f"got {imatrix.shape}")
        if not np.isfinite(imatrix).all():
            raise QuantInputError("imatrix: contains NaN or Inf")
        imatrix = np.ascontiguousarray(imatrix)
    elif getattr(mod, "NEEDS_IMATRIX", False):
        raise QuantInputError(f"imatrix: {t.name} cannot be quantized without an importance matrix "
                              "(ggml_quantize_requires_imatrix)")
    return mod.quantize(np.ascontiguousarray(x), imatrix)


# type as passed (GGMLType, name or id) -> (block size, bytes per block, the module's dequantize). parse_type and
# the module lookup (importlib.util.find_spec) cost more than a small kernel, so each type is resolved once.
_DEQUANTIZERS: dict = {}


def dequantize(blocks, type, n_per_row: int) -> np.ndarray:
    """Dequantize uint8 rows (rows, row_bytes) of `type` back to float32 (rows, n_per_row)."""
    try:
        block_size, type_size, fn = _DEQUANTIZERS[type]
    except (KeyError, TypeError):                       # first call for this type (or an unhashable one)
        return _dequantize_checked(blocks, type, n_per_row)
    # fast path: a C-contiguous 2-D uint8 array of the right width, as the checks below would pass it on
    if (blocks.__class__ is np.ndarray and blocks.dtype == np.uint8 and blocks.ndim == 2
            and n_per_row.__class__ is int and n_per_row > 0 and n_per_row % block_size == 0
            and blocks.shape[1] == n_per_row // block_size * type_size and blocks.flags.c_contiguous):
        return fn(blocks, n_per_row)
    return _dequantize_checked(blocks, type, n_per_row)


def _dequantize_checked(blocks, type, n_per_row) -> np.ndarray:
    t = parse_type(type)
    mod = format_module(t)
    n_per_row = int(n_per_row)
    _check_row_length(t, n_per_row)
    blocks = np.asarray(blocks)
    if blocks.dtype != np.uint8:
        raise QuantInputError(f"blocks: expected uint8, got {blocks.dtype}")
    if blocks.ndim == 1:
        blocks = blocks[None, :]
    row_bytes = t.row_bytes(n_per_row)
    if blocks.ndim != 2 or blocks.shape[1] != row_bytes:
        raise QuantInputError(f"blocks: {t.name} rows of {n_per_row} take {row_bytes} bytes, "
                              f"got shape {blocks.shape}")
    try:
        _DEQUANTIZERS[type] = (t.block_size, t.type_size, mod.dequantize)
    except TypeError:
        pass
    return mod.dequantize(np.ascontiguousarray(blocks), n_per_row)
