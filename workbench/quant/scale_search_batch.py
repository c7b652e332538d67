"""Batched numba versions of the two hot scale searches: make_qx_quants and make_qkx2/qkx3_quants.

Same arithmetic as the one-group versions in scale_search.py, but G groups are searched side by side with
the data transposed to (n, G): the loop over groups is innermost, so LLVM turns it into SIMD while every group
still accumulates its sums left to right over its own elements (bit-exact with ggml). This is what lets the
k-quant kernels keep up with ggml's constant-propagated, partly vectorized C.

Conventions: xt, wt float32 (n, G); levels come back in Lt uint8 (n, G); per-group results are (G,) arrays.
Only |v| <= nmax + 1 reaches `level` here (see rounding.level).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from workbench.quant.rounding import F32, level
from workbench.quant.scale_search import GROUP_MAX_EPS


@njit(cache=True, error_model="numpy")
def _qx_pass(xt, wt, iscale, lo, hi, sumlx, suml2):
    n, G = xt.shape
    for g in range(G):
        sumlx[g] = F32(0.0)
        suml2[g] = F32(0.0)
    for i in range(n):
        for g in range(G):
            l = level(iscale[g] * xt[i, g], lo, hi)
            sumlx[g] += wt[i, g] * xt[i, g] * l
            suml2[g] += wt[i, g] * l * l


@njit(cache=True, error_model="numpy")
def make_qx_quants_batch(nmax, xt, wt, Lt, scale):
    """make_qx_quants(n, nmax, x, L, 1, w) for each column g of xt/wt -> scale[g], Lt[:, g]."""
    n, G = xt.shape
    lo = F32(-nmax)
    hi = F32(nmax - 1)
    mx = np.zeros(G, np.float32)
    amax = np.zeros(G, np.float32)
    for i in range(n):
        for g in range(G):
            ax = abs(xt[i, g])
            if ax > amax[g]:
                amax[g] = ax
                mx[g] = xt[i, g]
    for g in range(G):
        if amax[g] < GROUP_MAX_EPS:
            mx[g] = F32(1.0)                      # placeholder; the group is zeroed at the end
    iscale = np.empty(G, np.float32)
    best_iscale = np.empty(G, np.float32)
    sumlx = np.empty(G, np.float32)
    suml2 = np.empty(G, np.float32)
    best = np.empty(G, np.float32)
    for g in range(G):
        iscale[g] = F32(-nmax) / mx[g]
        best_iscale[g] = iscale[g]
    _qx_pass(xt, wt, iscale, lo, hi, sumlx, suml2)
    for g in range(G):
        scale[g] = sumlx[g] / suml2[g] if suml2[g] != 0 else F32(0.0)
        best[g] = scale[g] * sumlx[g]
    for itry in range(-9, 10):
        if itry == 0:
            continue
        for g in range(G):
            iscale[g] = -(F32(nmax) + F32(0.1) * F32(itry)) / mx[g]
        _qx_pass(xt, wt, iscale, lo, hi, sumlx, suml2)
        for g in range(G):
            if suml2[g] > 0 and sumlx[g] * sumlx[g] > best[g] * suml2[g]:
                best_iscale[g] = iscale[g]        # ggml re-derives L here; doing it once at the end is the same
                scale[g] = sumlx[g] / suml2[g]
                best[g] = scale[g] * sumlx[g]
    for i in range(n):
        for g in range(G):
            Lt[i, g] = nmax + np.int64(level(best_iscale[g] * xt[i, g], lo, hi))
    for g in range(G):
        if amax[g] < GROUP_MAX_EPS:
            scale[g] = F32(0.0)
            for i in range(n):
                Lt[i, g] = 0


@njit(cache=True, error_model="numpy")
def make_qkx_quants_batch(nmax, xt, wt, Lt, scale, the_min, rmin, rdelta, nstep, use_mad):
    """make_qkx2_quants / make_qkx3_quants (explicit weights) for each column g -> scale, the_min, Lt."""
    n, G = xt.shape
    zero = F32(0.0)
    top = F32(nmax)
    mn = np.empty(G, np.float32)
    mx = np.empty(G, np.float32)
    sum_w = np.empty(G, np.float32)
    sum_x = np.empty(G, np.float32)
    for g in range(G):
        mn[g] = xt[0, g]
        mx[g] = xt[0, g]
        sum_w[g] = wt[0, g]
        sum_x[g] = wt[0, g] * xt[0, g]
    for i in range(1, n):
        for g in range(G):
            mn[g] = min(mn[g], xt[i, g])
            mx[g] = max(mx[g], xt[i, g])
            sum_w[g] += wt[i, g]
            sum_x[g] += wt[i, g] * xt[i, g]
    flat = np.empty(G, np.bool_)
    iscale = np.empty(G, np.float32)
    best_error = np.zeros(G, np.float32)
    for g in range(G):
        mn[g] = min(mn[g], F32(0.0))
        flat[g] = mx[g] <= mn[g]
        if flat[g]:
            mx[g] = mn[g] + F32(1.0)              # placeholder span; the group is zeroed at the end
        iscale[g] = F32(nmax) / (mx[g] - mn[g])
        scale[g] = F32(1.0) / iscale[g]
    for i in range(n):
        for g in range(G):
            l = level(iscale[g] * (xt[i, g] - mn[g]), zero, top)
            Lt[i, g] = np.int64(l)
            diff = scale[g] * l + mn[g] - xt[i, g]
            best_error[g] += wt[i, g] * (abs(diff) if use_mad else diff * diff)
    Laux = np.empty((n, G), np.float32)
    sum_l = np.empty(G, np.float32)
    sum_l2 = np.empty(G, np.float32)
    sum_xl = np.empty(G, np.float32)
    this_scale = np.empty(G, np.float32)
    this_min = np.empty(G, np.float32)
    cur_error = np.empty(G, np.float32)
    better = np.empty(G, np.bool_)
    for step in range(nstep + 1 if nstep >= 1 else 0):   # ggml returns the first guess when nstep < 1
        for g in range(G):
            iscale[g] = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / (mx[g] - mn[g])
            sum_l[g] = F32(0.0)
            sum_l2[g] = F32(0.0)
            sum_xl[g] = F32(0.0)
            cur_error[g] = F32(0.0)
        for i in range(n):
            for g in range(G):
                l = level(iscale[g] * (xt[i, g] - mn[g]), zero, top)
                Laux[i, g] = l
                sum_l[g] += wt[i, g] * l
                sum_l2[g] += wt[i, g] * l * l
                sum_xl[g] += wt[i, g] * l * xt[i, g]
        for g in range(G):
            D = sum_w[g] * sum_l2[g] - sum_l[g] * sum_l[g]
            ts = (sum_w[g] * sum_xl[g] - sum_x[g] * sum_l[g]) / D
            tm = (sum_l2[g] * sum_x[g] - sum_l[g] * sum_xl[g]) / D
            if tm > 0:
                tm = F32(0.0)
                ts = sum_xl[g] / sum_l2[g]
            this_scale[g] = ts
            this_min[g] = tm
            better[g] = D > 0 and not flat[g]
        for i in range(n):
            for g in range(G):
                diff = this_scale[g] * Laux[i, g] + this_min[g] - xt[i, g]
                cur_error[g] += wt[i, g] * (abs(diff) if use_mad else diff * diff)
        for g in range(G):
            better[g] = better[g] and cur_error[g] < best_error[g]
            if better[g]:
                best_error[g] = cur_error[g]
                scale[g] = this_scale[g]
                mn[g] = this_min[g]
        for i in range(n):
            for g in range(G):
                if better[g]:
                    Lt[i, g] = np.int64(Laux[i, g])
    for g in range(G):
        the_min[g] = -mn[g]
        if flat[g]:
            scale[g] = F32(0.0)
            for i in range(n):
                Lt[i, g] = 0

