"""The scale searches of ggml-quants.c: make_qx_quants, make_q3_quants, make_qkx2/qkx3_quants, make_qp_quants.

Numba versions work on one group (1-D views, L written in place; the hot make_qx/make_qkx searches also exist
batched, SIMD across groups, in scale_search_batch.py); numpy versions (``*_np``) on a batch of groups at once:
x, w of shape (B, n) -> (scale (B,), L (B, n)). Sums run left to right over the group, as in C; weights are
always explicit (ggml's NULL-weight paths use w = x*x, which callers pass in). float(int) casts are exact for
these small integers. The GROUP_MAX_EPS thresholds of ggml-quants.c live here too.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from workbench.quant.rounding import F32, level, nearest_int, nearest_int_np, signed_absmax_np

# ggml-quants.c: GROUP_MAX_EPS* (a group whose |x| max is below this gets all-zero quants)
GROUP_MAX_EPS = F32(1e-15)
GROUP_MAX_EPS_IQ3_XXS = F32(1e-8)
GROUP_MAX_EPS_IQ2_S = F32(1e-8)
GROUP_MAX_EPS_IQ1_M = F32(1e-7)
GROUP_MAX_EPS_IQ1_S = F32(1e-12)
FLT_MAX = F32(np.finfo(np.float32).max)



@njit(cache=True, error_model="numpy", inline="always")
def signed_absmax(n, x):
    """ggml's `if (ax > amax) { amax = ax; max = x[i]; }` loop from 0: (largest |x|, that x with its sign)."""
    amax = F32(0.0)
    mx = F32(0.0)
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            mx = x[i]
    return amax, mx


@njit(cache=True, error_model="numpy")
def make_qx_quants(n, nmax, x, L, w):
    """make_qx_quants with rmse_type 1: symmetric scale, L in [0, 2*nmax); search 19 scales near -nmax/max."""
    amax, mx = signed_absmax(n, x)
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
    amax, mx = signed_absmax(n, x)
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
    """make_qp_quants: weighted fit of x >= 0 by scale*L, L in [0, nmax] (the sub-block scales/mins of the
    k-quants, IQ2_XXS's starting scale); fills L, returns scale.

    Search the 9 inverse scales (nmax + 0.1*is)/max, then up to 5 rounds of coordinate descent on L.
    ggml's L is uint8_t: IQ2_XXS feeds it one negative x (its parity-flipped element), whose negative level
    wraps to 256 - |l| when stored and is then read back wrapped. ``L`` must be a uint8 array and every store
    is masked with 0xFF to reproduce that; the sums after the scale search use the int l, as ggml's do.
    """
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
        l = min(nmax, nearest_int(iscale * x[i]))
        L[i] = l & 0xFF                          # stored wrapped, but the sums below use the int l
        sumlx += w[i] * x[i] * F32(l)
        suml2 += w[i] * F32(l) * F32(l)
    for itry in range(5):
        n_changed = 0
        for i in range(n):
            li = F32(np.int64(L[i]))
            slx = sumlx - w[i] * x[i] * li
            sl2 = suml2 - w[i] * li * li
            if slx > 0 and sl2 > 0:
                new_l = min(nmax, nearest_int(x[i] * sl2 / slx))
                if new_l != np.int64(L[i]):
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
    """Batch make_qp_quants -> (scale (B,), L (B, n) in 0..255), including the uint8 store of the levels.

    Every group runs all 5 descent passes: a pass that changes nothing changes nothing again."""
    B, n = x.shape
    x = x.astype(F32)
    mx = np.maximum(x.max(axis=1), F32(0.0))
    zero = mx < GROUP_MAX_EPS
    mx = np.where(zero, F32(1.0), mx)

    def wsum(terms):                      # left-to-right sum over the group
        acc = np.zeros(B, F32)
        for i in range(n):
            acc += terms(i)
        return acc

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
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
        lv = np.minimum(nmax, nearest_int_np(iscale[:, None] * x))
        L = lv & 0xFF
        lf = lv.astype(F32)                   # the sums use the int l, not the wrapped byte
        sumlx = wsum(lambda i: w[:, i] * x[:, i] * lf[:, i])
        suml2 = wsum(lambda i: w[:, i] * lf[:, i] * lf[:, i])
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
