"""ggml's rounding of float32 to integers, and the small numpy reductions the readable references share.

nearest_int (ggml-quants.c), C's roundf and lroundf, and the clamped `level` the scale searches round with.
Everything follows ggml bit for bit, so the arithmetic is float32 throughout: in numba kernels every constant
is wrapped in ``F32`` (a bare Python float, or an int meeting a float32, would promote the expression to
float64) and fastmath is never enabled (it would reassociate the sums that ggml accumulates left to right).

Two flavours of each helper: a numba ``@njit`` scalar one (used inside the per-block kernels) and a numpy
array one (``*_np``, used by the readable references that work on all blocks at once).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from workbench.cpu.fp16 import f32_bits

F32 = np.float32


# ----------------------------------------------------------------------------------------- numba scalars
@njit(cache=True, error_model="numpy", inline="always")
def nearest_int(fval):
    """ggml's nearest_int: add 1.5*2^23 in float32 and read the mantissa (round half to even).

    Done with the same bit trick (not np.rint) so that out-of-range values give the same garbage as ggml
    (it asserts |fval| <= 4194303 in debug builds only): degenerate blocks give ggml's release-build bytes.
    """
    val = np.float32(fval) + np.float32(12582912.0)
    return (f32_bits(val) & 0x007FFFFF) - 0x00400000


@njit(cache=True, error_model="numpy", inline="always")
def level(v, lo, hi):
    """MAX(lo, MIN(hi, nearest_int(v))) as a float32, for the hot search loops.

    For |v| <= 4194303 nearest_int is exactly round-half-to-even (np.rint, fast); beyond that and for
    inf/NaN (a scale that overflowed on subnormal inputs) ggml's bit trick gives a defined garbage value,
    reproduced with nearest_int. `+ 0` turns rint's -0.0 into the +0.0 of (float)0.
    """
    if abs(v) <= np.float32(4194303.0):
        r = np.rint(v)
    else:
        r = np.float32(nearest_int(v))
    return min(max(r, lo), hi) + np.float32(0.0)


@njit(cache=True, error_model="numpy", inline="always")
def roundf(v):
    """C roundf: round half away from zero (used by Q8_0/Q8_1)."""
    t = np.float32(np.trunc(v))
    if abs(v - t) >= np.float32(0.5):
        t += np.float32(1.0) if v > 0 else np.float32(-1.0)
    return t


@njit(cache=True)
def lroundf(v):
    """C lroundf: round half away from zero to an integer (TQ1_0/TQ2_0; float64, where |v| + 0.5 is exact)."""
    a = np.floor(abs(float(v)) + 0.5)
    return int(a) if v >= 0 else -int(a)


# ------------------------------------------------------------------------------------------- numpy arrays
def nearest_int_np(fval) -> np.ndarray:
    """Array version of ggml's nearest_int (same float32 bit trick) -> int32."""
    val = np.asarray(fval, dtype=np.float32) + np.float32(12582912.0)
    return (val.view(np.int32) & 0x007FFFFF) - 0x00400000


def roundf_np(v) -> np.ndarray:
    """C roundf on an array: half away from zero."""
    v = np.asarray(v, dtype=np.float32)
    t = np.trunc(v)
    return t + np.where(np.abs(v - t) >= np.float32(0.5), np.sign(v), np.float32(0)).astype(np.float32)


def lroundf_np(v) -> np.ndarray:
    """C lroundf: round half away from zero (done in float64, where |v| + 0.5 is exact) -> int32."""
    v = np.asarray(v, dtype=np.float64)
    return (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int32)


def safe_inverse_np(d) -> np.ndarray:
    """`d ? 1.0f/d : 0.0f` elementwise, in float32."""
    d = np.asarray(d, dtype=np.float32)
    with np.errstate(divide="ignore"):
        return np.where(d != 0, np.float32(1.0) / d, np.float32(0.0)).astype(np.float32)


def signed_absmax_np(v) -> np.ndarray:
    """Per row, the first value of largest |v| as ggml's `if (fabsf(v) > amax)` loop from amax = 0 finds it:
    NaN never wins and an all-zero row gives 0."""
    a = np.abs(v)
    a = np.where(np.isnan(a), np.float32(0), a)
    idx = a.argmax(axis=-1)
    best = np.take_along_axis(v, idx[..., None], -1)[..., 0]
    return np.where(np.take_along_axis(a, idx[..., None], -1)[..., 0] > 0, best, np.float32(0)).astype(np.float32)


def max0_np(v) -> np.ndarray:
    """Per row, ggml's `if (v > m) m = v` from m = 0: the largest value, NaN ignored, at least 0."""
    return np.maximum(np.where(np.isnan(v), np.float32(0), v).max(axis=-1), np.float32(0)).astype(np.float32)


def seqsum_np(terms, axis=-1) -> np.ndarray:
    """Left-to-right float32 sum, as ggml's `acc += term` loops (np.sum is pairwise: different bits).

    Starts from the first term (an all -0.0 row sums to -0.0); seq_sum starts from +0.0 as `float acc = 0`."""
    return np.cumsum(np.asarray(terms, dtype=np.float32), axis=axis, dtype=np.float32).take(-1, axis=axis)


def seq_sum(terms):
    """Sum over the last axis in C order from `float acc = 0` (float32, left to right), vectorised over the
    other axes."""
    acc = np.zeros(terms.shape[:-1], np.float32)
    for j in range(terms.shape[-1]):
        acc += terms[..., j]
    return acc
