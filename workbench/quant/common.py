"""Shared scalar helpers of the block formats: fp16/bf16 bits, ggml's rounding, block (un)packing.

Everything here follows ggml bit for bit, so the arithmetic is float32 throughout: in numba kernels every
constant is wrapped in ``np.float32`` (a bare Python float would promote the expression to float64) and
fastmath is never enabled (it would reassociate the sums that ggml accumulates left to right).

Two flavours of each helper: a numba ``@njit`` scalar one (used inside the per-block kernels) and a numpy
array one (``*_np``, used by the readable references that work on all blocks at once).
"""
from __future__ import annotations

import numpy as np
from numba import njit

QK_K = 256                        # super-block size of the k-quants
GROUP_MAX_EPS = np.float32(1e-15)  # ggml-quants.c: below this a group counts as all zero

# fp16 -> fp32 for all 65536 bit patterns (exact: every half is a float)
FP16_TO_FP32 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


# ----------------------------------------------------------------------------------------- numba scalars
@njit(cache=True, inline="always")
def f32_bits(f):
    """The uint32 bit pattern of a float32 (as an int64, to keep integer arithmetic from wrapping)."""
    return np.int64(np.float32(f).view(np.uint32))


@njit(cache=True, inline="always")
def f32_from_bits(b):
    return np.uint32(b).view(np.float32)


@njit(cache=True)
def fp32_to_fp16(f):
    """ggml_compute_fp32_to_fp16 (ggml-impl.h): round to nearest even, NaN -> 0x7E00, overflow -> inf."""
    base = (abs(np.float32(f)) * np.float32(2.0 ** 112)) * np.float32(2.0 ** -110)
    w = f32_bits(f)
    shl1_w = (w + w) & 0xFFFFFFFF
    sign = w & 0x80000000
    bias = shl1_w & 0xFF000000
    if bias < 0x71000000:
        bias = 0x71000000
    base = f32_from_bits((bias >> 1) + 0x07800000) + base
    bits = f32_bits(base)
    nonsign = ((bits >> 13) & 0x7C00) + (bits & 0x0FFF)
    if shl1_w > 0xFF000000:
        nonsign = 0x7E00
    return np.uint16((sign >> 16) | nonsign)


@njit(cache=True, inline="always")
def fp16_to_fp32(h):
    return FP16_TO_FP32[h]


@njit(cache=True, inline="always")
def round_fp16(f):
    """GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(f)): the value a stored fp16 scale reads back as."""
    return FP16_TO_FP32[fp32_to_fp16(f)]


@njit(cache=True)
def fp32_to_bf16(f):
    """ggml_compute_fp32_to_bf16 (ggml-impl.h): NaN forced quiet, otherwise round to nearest even."""
    u = f32_bits(f)
    if (u & 0x7FFFFFFF) > 0x7F800000:
        return np.uint16(((u >> 16) | 64) & 0xFFFF)
    return np.uint16(((u + (0x7FFF + ((u >> 16) & 1))) >> 16) & 0xFFFF)


@njit(cache=True, inline="always")
def nearest_int(fval):
    """ggml's nearest_int: add 1.5*2^23 in float32 and read the mantissa (round half to even).

    Done with the same bit trick (not np.rint) so that out-of-range values give the same garbage as ggml.
    """
    val = np.float32(fval) + np.float32(12582912.0)
    return (f32_bits(val) & 0x007FFFFF) - 0x00400000


@njit(cache=True, inline="always")
def roundf(v):
    """C roundf: round half away from zero (used by Q8_0/Q8_1)."""
    t = np.float32(np.trunc(v))
    if abs(v - t) >= np.float32(0.5):
        t += np.float32(1.0) if v > 0 else np.float32(-1.0)
    return t


@njit(cache=True, inline="always")
def put_fp16(out, pos, f):
    """Store float32 `f` as little-endian fp16 bytes at out[pos:pos+2]; return the value read back."""
    h = fp32_to_fp16(f)
    out[pos] = h & 0xFF
    out[pos + 1] = h >> 8
    return FP16_TO_FP32[h]


@njit(cache=True, inline="always")
def get_fp16(blk, pos):
    return FP16_TO_FP32[np.int64(blk[pos]) | (np.int64(blk[pos + 1]) << 8)]


# ------------------------------------------------------------------------------------------- numpy arrays
def fp32_to_fp16_np(a) -> np.ndarray:
    """GGML_FP32_TO_FP16 on an array (numpy's float16 cast also rounds to nearest even) -> uint16 bits."""
    with np.errstate(over="ignore"):
        return np.asarray(a, dtype=np.float32).astype(np.float16).view(np.uint16)


def round_fp16_np(a) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.asarray(a, dtype=np.float32).astype(np.float16).astype(np.float32)


def nearest_int_np(fval) -> np.ndarray:
    """Array version of ggml's nearest_int (same float32 bit trick) -> int32."""
    val = np.asarray(fval, dtype=np.float32) + np.float32(12582912.0)
    return (val.view(np.int32) & 0x007FFFFF) - 0x00400000


def roundf_np(v) -> np.ndarray:
    """C roundf on an array: half away from zero."""
    v = np.asarray(v, dtype=np.float32)
    t = np.trunc(v)
    return t + np.where(np.abs(v - t) >= np.float32(0.5), np.sign(v), np.float32(0)).astype(np.float32)


def safe_inverse_np(d) -> np.ndarray:
    """`d ? 1.0f/d : 0.0f` elementwise, in float32."""
    d = np.asarray(d, dtype=np.float32)
    with np.errstate(divide="ignore"):
        return np.where(d != 0, np.float32(1.0) / d, np.float32(0.0)).astype(np.float32)


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
