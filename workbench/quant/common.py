"""Shared scalar helpers of the block formats: fp16/bf16 bits, ggml's rounding, block (un)packing.

Everything here follows ggml bit for bit, so the arithmetic is float32 throughout: in numba kernels every
constant is wrapped in ``np.float32`` (a bare Python float would promote the expression to float64) and
fastmath is never enabled (it would reassociate the sums that ggml accumulates left to right).

Two flavours of each helper: a numba ``@njit`` scalar one (used inside the per-block kernels) and a numpy
array one (``*_np``, used by the readable references that work on all blocks at once).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from workbench.cpu.fp16 import (  # noqa: F401 (used by the format modules through this one, for now)
    FP16_TO_FP32, f32_bits, f32_from_bits, fp32_to_fp16, fp16_to_fp32, fp16_to_fp32_vec, round_fp16, fp32_to_bf16, put_fp16, get_fp16, fp32_to_fp16_np, round_fp16_np)

QK_K = 256                        # super-block size of the k-quants
GROUP_MAX_EPS = np.float32(1e-15)  # ggml-quants.c: below this a group counts as all zero

# ----------------------------------------------------------------------------------------- numba scalars
@njit(cache=True, error_model="numpy", inline="always")
def nearest_int(fval):
    """ggml's nearest_int: add 1.5*2^23 in float32 and read the mantissa (round half to even).

    Done with the same bit trick (not np.rint) so that out-of-range values give the same garbage as ggml.
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
    """Left-to-right float32 sum, as ggml's `acc += term` loops (np.sum is pairwise: different bits)."""
    return np.cumsum(np.asarray(terms, dtype=np.float32), axis=axis, dtype=np.float32).take(-1, axis=axis)


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


# =====================================================================================================
# The scale searches of ggml-quants.c. Numba versions work on one group (1-D views, L written in place;
# the hot make_qx/make_qkx searches also exist batched, SIMD across groups, in batched.py); numpy versions
# (`*_np`) on a batch of groups at once: x, w of shape (B, n) -> (scale (B,), L (B, n)).
# Sums run left to right over the group, as in C; weights are always explicit (ggml's NULL-weight paths
# use w = x*x, which callers pass in). float(int) casts are exact for these small integers.
# =====================================================================================================
F32 = np.float32


@njit(cache=True, error_model="numpy")
def make_qx_quants(n, nmax, x, L, w):
    """make_qx_quants with rmse_type 1: symmetric scale, L in [0, 2*nmax); search 19 scales near -nmax/max."""
    amax = F32(0.0)
    mx = F32(0.0)
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            mx = x[i]
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return F32(0.0)
    lo = F32(-nmax)
    hi = F32(nmax - 1)
    iscale = F32(-nmax) / mx
    sumlx = F32(0.0)
    suml2 = F32(0.0)
    for i in range(n):
        l = level(iscale * x[i], lo, hi)
        L[i] = np.int64(l) + nmax
        sumlx += w[i] * x[i] * l
        suml2 += w[i] * l * l
    scale = sumlx / suml2 if suml2 != 0 else F32(0.0)
    best = scale * sumlx
    for itry in range(-9, 10):
        if itry == 0:
            continue
        iscale = -(F32(nmax) + F32(0.1) * F32(itry)) / mx
        sumlx = F32(0.0)
        suml2 = F32(0.0)
        for i in range(n):
            l = level(iscale * x[i], lo, hi)
            sumlx += w[i] * x[i] * l
            suml2 += w[i] * l * l
        if suml2 > 0 and sumlx * sumlx > best * suml2:
            for i in range(n):
                L[i] = nmax + np.int64(level(iscale * x[i], lo, hi))
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


def make_qx_quants_np(x, nmax, w):
    B, n = x.shape
    mx = signed_absmax_np(x)                              # first element of largest |x|, sign kept
    zero = np.abs(mx) < GROUP_MAX_EPS
    mx = np.where(zero, F32(1.0), mx)

    def levels(iscale):                                   # (B, n) int in [-nmax, nmax)
        return np.clip(nearest_int_np(iscale[:, None] * x), -nmax, nmax - 1)

    def sums(lf):
        sumlx = np.zeros(B, F32)
        suml2 = np.zeros(B, F32)
        for i in range(n):
            sumlx += w[:, i] * x[:, i] * lf[:, i]
            suml2 += w[:, i] * lf[:, i] * lf[:, i]
        return sumlx, suml2

    with np.errstate(divide="ignore", invalid="ignore"):
        l = levels(F32(-nmax) / mx)
        L = l + nmax
        sumlx, suml2 = sums(l.astype(F32))
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0.0)).astype(F32)
        best = scale * sumlx
        for itry in [i for i in range(-9, 10) if i != 0]:
            l = levels(-(F32(nmax) + F32(0.1) * F32(itry)) / mx)
            sumlx, suml2 = sums(l.astype(F32))
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            L = np.where(better[:, None], l + nmax, L)
            scale = np.where(better, sumlx / suml2, scale).astype(F32)
            best = np.where(better, scale * sumlx, best).astype(F32)
    L[zero] = 0
    return np.where(zero, F32(0.0), scale), L


@njit(cache=True, error_model="numpy")
def make_q3_quants(n, nmax, x, L):
    """make_q3_quants with do_rmse (weights x*x): then up to 5 coordinate-descent passes on single levels."""
    amax = F32(0.0)
    mx = F32(0.0)
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            mx = x[i]
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return F32(0.0)
    iscale = F32(-nmax) / mx
    sumlx = F32(0.0)
    suml2 = F32(0.0)
    for i in range(n):
        l = level(iscale * x[i], F32(-nmax), F32(nmax - 1))
        L[i] = np.int64(l)
        w = x[i] * x[i]
        sumlx += w * x[i] * l
        suml2 += w * l * l
    for itry in range(5):
        n_changed = 0
        for i in range(n):
            w = x[i] * x[i]
            slx = sumlx - w * x[i] * F32(L[i])
            if slx > 0:
                sl2 = suml2 - w * F32(L[i]) * F32(L[i])
                new_l = max(-nmax, min(nmax - 1, nearest_int(x[i] * sl2 / slx)))
                if new_l != L[i]:
                    slx += w * x[i] * F32(new_l)
                    sl2 += w * F32(new_l) * F32(new_l)
                    if sl2 > 0 and slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    for i in range(n):
        L[i] += nmax
    return sumlx / suml2 if suml2 > 0 else F32(0.0)


def make_q3_quants_np(x, nmax):
    """Batch make_q3_quants. Every group runs all 5 passes: a pass that changes nothing changes nothing again."""
    B, n = x.shape
    mx = signed_absmax_np(x)
    zero = np.abs(mx) < GROUP_MAX_EPS
    mx = np.where(zero, F32(1.0), mx)
    w = x * x
    L = np.clip(nearest_int_np((F32(-nmax) / mx)[:, None] * x), -nmax, nmax - 1)
    sumlx = np.zeros(B, F32)
    suml2 = np.zeros(B, F32)
    for i in range(n):
        sumlx += w[:, i] * x[:, i] * L[:, i].astype(F32)
        suml2 += w[:, i] * L[:, i].astype(F32) * L[:, i].astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(5):
            for i in range(n):
                wi, xi, li = w[:, i], x[:, i], L[:, i].astype(F32)
                slx = sumlx - wi * xi * li
                sl2 = suml2 - wi * li * li
                new_l = np.clip(nearest_int_np(xi * sl2 / slx), -nmax, nmax - 1)
                nl = new_l.astype(F32)
                slx2 = slx + wi * xi * nl
                sl22 = sl2 + wi * nl * nl
                take = ((slx > 0) & (new_l != L[:, i]) & (sl22 > 0)
                        & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22))
                L[:, i] = np.where(take, new_l, L[:, i])
                sumlx = np.where(take, slx2, sumlx)
                suml2 = np.where(take, sl22, suml2)
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0.0)).astype(F32)
    L = L + nmax
    L[zero] = 0
    return np.where(zero, F32(0.0), scale), L




def make_qkx2_quants_np(x, w, nmax, rmin, rdelta, nstep, use_mad):
    """Batch make_qkx2_quants/make_qkx3_quants -> (scale (B,), the_min (B,), L (B, n))."""
    B, n = x.shape
    mn = np.minimum(x.min(axis=1), F32(0.0))
    mx = x.max(axis=1)
    sum_w = w[:, 0].copy()
    sum_x = sum_w * x[:, 0]
    for i in range(1, n):
        sum_w += w[:, i]
        sum_x += w[:, i] * x[:, i]
    flat = mx <= mn
    span = np.where(flat, F32(1.0), mx - mn)

    def error(scale, mn, L):
        err = np.zeros(B, F32)
        for i in range(n):
            diff = scale * L[:, i].astype(F32) + mn - x[:, i]
            err += w[:, i] * (np.abs(diff) if use_mad else diff * diff)
        return err

    def levels(iscale, mn):
        return np.clip(nearest_int_np(iscale[:, None] * (x - mn[:, None])), 0, nmax)

    iscale = F32(nmax) / span
    scale = F32(1.0) / iscale
    L = levels(iscale, mn)
    L[flat] = 0
    if nstep < 1:
        return np.where(flat, F32(0.0), scale).astype(F32), (-mn).astype(F32), L
    best_error = error(scale, mn, L)
    with np.errstate(divide="ignore", invalid="ignore"):
        for step in range(nstep + 1):
            span = np.where(flat, F32(1.0), mx - mn)          # as in ggml, the current best min is used
            Laux = levels((F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / span, mn)
            sum_l = np.zeros(B, F32)
            sum_l2 = np.zeros(B, F32)
            sum_xl = np.zeros(B, F32)
            for i in range(n):
                lf = Laux[:, i].astype(F32)
                sum_l += w[:, i] * lf
                sum_l2 += w[:, i] * lf * lf
                sum_xl += w[:, i] * lf * x[:, i]
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            clamp = this_min > 0
            this_min = np.where(clamp, F32(0.0), this_min)
            this_scale = np.where(clamp, sum_xl / sum_l2, this_scale)
            cur_error = error(this_scale, this_min, Laux)
            better = (D > 0) & (cur_error < best_error)
            L = np.where(better[:, None], Laux, L)
            best_error = np.where(better, cur_error, best_error)
            scale = np.where(better, this_scale, scale)
            mn = np.where(better, this_min, mn)
    L[flat] = 0
    return np.where(flat, F32(0.0), scale).astype(F32), (-mn).astype(F32), L


make_qkx3_quants_np = make_qkx2_quants_np


@njit(cache=True, error_model="numpy")
def make_qp_quants(n, nmax, x, L, w):
    """make_qp_quants: scale for non-negative values (the sub-block scales/mins), L in [0, nmax].

    ggml stores L as uint8, so the (never expected) negative levels wrap: emulated with & 0xFF."""
    mx = F32(0.0)
    for i in range(n):
        mx = max(mx, x[i])
    if mx < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return F32(0.0)
    iscale = F32(nmax) / mx
    for i in range(n):
        L[i] = nearest_int(iscale * x[i]) & 0xFF
    scale = F32(1.0) / iscale
    best_mse = F32(0.0)
    for i in range(n):
        diff = x[i] - scale * F32(L[i])
        best_mse += w[i] * diff * diff
    for itry in range(-4, 5):
        if itry == 0:
            continue
        iscale_is = (F32(0.1) * F32(itry) + F32(nmax)) / mx
        scale_is = F32(1.0) / iscale_is
        mse = F32(0.0)
        for i in range(n):
            l = min(nmax, nearest_int(iscale_is * x[i]))
            diff = x[i] - scale_is * F32(l)
            mse += w[i] * diff * diff
        if mse < best_mse:
            best_mse = mse
            iscale = iscale_is
    sumlx = F32(0.0)
    suml2 = F32(0.0)
    for i in range(n):
        L[i] = min(nmax, nearest_int(iscale * x[i])) & 0xFF
        sumlx += w[i] * x[i] * F32(L[i])
        suml2 += w[i] * F32(L[i]) * F32(L[i])
    for itry in range(5):
        n_changed = 0
        for i in range(n):
            slx = sumlx - w[i] * x[i] * F32(L[i])
            sl2 = suml2 - w[i] * F32(L[i]) * F32(L[i])
            if slx > 0 and sl2 > 0:
                new_l = min(nmax, nearest_int(x[i] * sl2 / slx))
                if new_l != L[i]:
                    slx += w[i] * x[i] * F32(new_l)
                    sl2 += w[i] * F32(new_l) * F32(new_l)
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l & 0xFF
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    return sumlx / suml2 if suml2 > 0 else F32(0.0)


def make_qp_quants_np(x, nmax, w):
    """Batch make_qp_quants -> (scale (B,), L (B, n) in 0..255)."""
    B, n = x.shape
    mx = np.maximum(x.max(axis=1), F32(0.0))
    zero = mx < GROUP_MAX_EPS
    mx = np.where(zero, F32(1.0), mx)

    def wsum(terms):                      # left-to-right sum over the group
        acc = np.zeros(B, F32)
        for i in range(n):
            acc += terms(i)
        return acc

    iscale = F32(nmax) / mx
    L = (nearest_int_np(iscale[:, None] * x) & 0xFF).astype(F32)
    scale = F32(1.0) / iscale
    best_mse = wsum(lambda i: w[:, i] * (x[:, i] - scale * L[:, i]) * (x[:, i] - scale * L[:, i]))
    for itry in (-4, -3, -2, -1, 1, 2, 3, 4):
        iscale_is = (F32(0.1) * F32(itry) + F32(nmax)) / mx
        scale_is = F32(1.0) / iscale_is
        lf = np.minimum(nmax, nearest_int_np(iscale_is[:, None] * x)).astype(F32)
        mse = wsum(lambda i: w[:, i] * (x[:, i] - scale_is * lf[:, i]) * (x[:, i] - scale_is * lf[:, i]))
        better = mse < best_mse
        best_mse = np.where(better, mse, best_mse)
        iscale = np.where(better, iscale_is, iscale)
    L = np.minimum(nmax, nearest_int_np(iscale[:, None] * x)) & 0xFF
    sumlx = wsum(lambda i: w[:, i] * x[:, i] * L[:, i].astype(F32))
    suml2 = wsum(lambda i: w[:, i] * L[:, i].astype(F32) * L[:, i].astype(F32))
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(5):
            for i in range(n):
                wi, xi, li = w[:, i], x[:, i], L[:, i].astype(F32)
                slx = sumlx - wi * xi * li
                sl2 = suml2 - wi * li * li
                new_l = np.minimum(nmax, nearest_int_np(xi * sl2 / slx))
                nl = new_l.astype(F32)
                slx2 = slx + wi * xi * nl
                sl22 = sl2 + wi * nl * nl
                take = ((slx > 0) & (sl2 > 0) & (new_l != L[:, i])
                        & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22))
                L[:, i] = np.where(take, new_l & 0xFF, L[:, i])
                sumlx = np.where(take, slx2, sumlx)
                suml2 = np.where(take, sl22, suml2)
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0.0)).astype(F32)
    L[zero] = 0
    return np.where(zero, F32(0.0), scale), L
