"""The grid searches of the i-quants (ggml-quants.c): nearest table entry, nearest grid neighbour, sign
handling and the sub-block search that IQ2_XXS/IQ2_XS/IQ2_S/IQ3_XXS/IQ3_S share, plus IQ1's ternary snapping.

Everything here is exact float32 arithmetic as ggml's C code does it (SSE, no FMA contraction, no
reordering of sums). The numba helpers are plain ``@njit`` functions that the format kernels call; the numpy
helpers (``*_np``, ``*_ref``) serve the readable references, vectorised over all sub-blocks.

Typing pitfall in numba: ``int64 op float32`` promotes to float64 (numpy rules), so every constant and
every integer that meets a float32 in a kernel is converted with ``F32(...)`` first.
"""
import numpy as np
from numba import njit

from workbench.gguf.constants import QK_K
from workbench.quant.rounding import F32, nearest_int, seq_sum
from workbench.quant.scale_search import FLT_MAX, make_qp_quants_np


# ----------------------------------------------------------------------------- nearest table entry
def best_index_int8_np(values, x):
    """Vectorised ggml best_index_int8: index of the nearest entry of the sorted table ``values``.

    Ties go to the upper neighbour (C: ``x - val[mu-1] < val[mu] - x ? mu-1 : mu``), the ends clamp.
    """
    v = values.astype(np.float32)
    x = np.asarray(x, dtype=np.float32)
    mu = np.clip(np.searchsorted(v, x, side="right"), 1, len(v) - 1)  # first value > x
    lo = v[mu - 1]
    hi = v[mu]
    idx = np.where(x - lo < hi - x, mu - 1, mu)
    idx = np.where(x <= v[0], 0, idx)
    idx = np.where(x >= v[-1], len(v) - 1, idx)
    return idx.astype(np.uint8)


@njit(cache=True)
def best_index_int8(n, values, x):
    """ggml best_index_int8: binary search in the sorted int8 table ``values`` (x is float32)."""
    if x <= F32(values[0]):
        return 0
    if x >= F32(values[n - 1]):
        return n - 1
    ml = 0
    mu = n - 1
    while mu - ml > 1:
        mav = (ml + mu) // 2
        if x < F32(values[mav]):
            mu = mav
        else:
            ml = mav
    if x - F32(values[mu - 1]) < F32(values[mu]) - x:
        return mu - 1
    return mu


# ----------------------------------------------------------------------------- grid neighbours (numba)
@njit(cache=True)
def grid_find_best_neighbour(neighbours, start, pos, xval, weight, scale, L):
    """iq2_find_best_neighbour / iq3_find_best_neighbour: among the listed neighbours (count at
    neighbours[start]) the grid point minimising sum w*(scale*q - x)^2 (first one on ties); writes its
    levels (q-1)/2 to L and returns its index.  xval, weight, L: views of the n coordinates."""
    n = pos.shape[1]
    best_d2 = FLT_MAX
    grid_index = -1
    for j in range(1, int(neighbours[start]) + 1):
        g = int(neighbours[start + j])
        d2 = F32(0)
        for i in range(n):
            diff = scale * F32(pos[g, i]) - xval[i]
            d2 += weight[i] * diff * diff
        if d2 < best_d2:
            best_d2 = d2
            grid_index = g
    for i in range(n):
        L[i] = (pos[grid_index, i] - 1) // 2
    return grid_index


# ----------------------------------------------------------------------------- IQ2/IQ3 block helpers
@njit(cache=True)
def signs_and_magnitudes(xb, weight, xval, block_signs):
    """xval = |x| and one 7-bit sign mask per group of 8 (quantize_row_iq2_xxs_impl and friends).

    The 8th sign is implied (even number of minus signs), so a group with an odd count flips the sign
    of its least important element (smallest w*x^2, the first one on ties) and quantizes it as -|x|.
    """
    for k in range(xb.shape[0] // 8):
        nflip = 0
        s = 0
        for i in range(8):
            if xb[8 * k + i] >= 0:
                xval[8 * k + i] = xb[8 * k + i]
            else:
                xval[8 * k + i] = -xb[8 * k + i]
                nflip += 1
                s |= 1 << i
        if nflip % 2:
            imin = 0
            mn = weight[8 * k] * xb[8 * k] * xb[8 * k]
            for i in range(1, 8):
                ax = weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i]
                if ax < mn:
                    mn = ax
                    imin = i
            xval[8 * k + imin] = -xval[8 * k + imin]
            s ^= 1 << imin
        block_signs[k] = s & 127


@njit(cache=True)
def snap_group(xval, waux, off, id, scale, kmax, pos, kmap, neighbours, L):
    """Levels l = clamp(nearest_int((id*x - 1)/2), 0, kmax-1) for the group of n = pos.shape[1] values at
    ``off``; when the packed point is off the grid, the best listed neighbour at ``scale`` replaces them.
    Fills L[off:off+n]; returns the grid index, negated minus one (-g-1) when it was off the grid."""
    n = pos.shape[1]
    bits = 2 if n == 8 else 3
    u = 0
    for i in range(n):
        l = nearest_int(F32(0.5) * (id * xval[off + i] - F32(1)))
        l = max(0, min(kmax - 1, l))
        L[off + i] = l
        u |= l << (bits * i)
    g = kmap[u]
    if g >= 0:
        return g
    g = grid_find_best_neighbour(neighbours, -g - 1, pos, xval[off:off + n], waux[off:off + n], scale,
                                 L[off:off + n])
    return -g - 1


@njit(cache=True)
def fit_odd(weight, xval, L, n):
    """sumqx = sum w*x*q, sumq2 = sum w*q*q with q = 2L+1 (sequential float32 sums)."""
    sumqx = F32(0)
    sumq2 = F32(0)
    for i in range(n):
        w = weight[i]
        q = F32(2 * L[i] + 1)
        sumqx += w * xval[i] * q
        sumq2 += w * q * q
    return sumqx, sumq2


# ----------------------------------------------------------------------------- numpy references (grid)
def grid_lookup_np(levels, bits, g):
    """Levels (N, ng, n) -> grid index (N, ng) (kmap of the packed point, negative off the grid), on-grid flags,
    and for the off-grid groups (rows r, cols c) their listed neighbours cand (k, m) with the valid mask."""
    n = levels.shape[-1]
    u = (levels << (bits * np.arange(n))).sum(axis=-1)
    gi = g.kmap[u].astype(np.int64)
    on = gi >= 0
    r, c = np.nonzero(~on)
    if not len(r):
        return gi, on, r, c, None, None
    start = -gi[r, c] - 1
    cnt = g.neighbours[start].astype(np.int64)
    j = np.arange(1, cnt.max() + 1)
    cand = g.neighbours[np.minimum(start[:, None] + j, len(g.neighbours) - 1)].astype(np.int64)
    return gi, on, r, c, cand, j[None, :] <= cnt[:, None]


def snap_groups_np(levels, xval, waux, scale, g, bits):
    """Vectorised snap_group: levels (N, ng, n) -> grid index (N, ng), levels replaced by the best listed
    neighbour where the point is off the grid, on-grid flags (N, ng)."""
    n = levels.shape[-1]
    gi, on, r, c, cand, valid = grid_lookup_np(levels, bits, g)
    if len(r):
        sc = np.broadcast_to(np.asarray(scale, np.float32), xval.shape[:1])[r]
        d2 = np.zeros(cand.shape, np.float32)
        for i in range(n):
            diff = sc[:, None] * g.pos[cand, i].astype(np.float32) - xval[r, c, i][:, None]
            d2 += waux[r, c, i][:, None] * diff * diff
        d2 = np.where(valid, d2, np.inf)
        best = cand[np.arange(len(r)), np.argmin(d2, axis=1)]  # first minimum, as 'd2 < best_d2'
        gi[r, c] = best
        levels[r, c] = (g.pos[best].astype(np.int64) - 1) // 2
    return gi, on


def _levels_np(id, xg, kmax):
    """clamp(nearest_int(0.5*(id*x - 1)), 0, kmax-1); NaN/inf (dead sub-blocks) become harmless."""
    v = np.nan_to_num(np.float32(0.5) * (id[:, None, None] * xg - np.float32(1)), nan=0.0, posinf=kmax,
                      neginf=0.0)
    return np.clip(np.rint(v), 0, kmax - 1).astype(np.int64)


def grid_subblocks_ref(x, imatrix, g, *, bs, gs, kmax, trials, step, parity, sigma_mult, noimx, eps,
                       use_qp, resnap, on_grid_init):
    """Numpy reference of the sub-block search shared by quantize_row_iq2_xxs/iq2_xs/iq2_s/iq3_xxs/
    iq3_s_impl, vectorised over all sub-blocks of x (rows, n).  Returns scale (nsb,), grid indices
    (nsb, bs/gs), sign masks (nsb, bs/8) with the super-block grouping (rows*n/256, 256/bs).

    bs/gs: sub-block and group sizes; kmax: levels 0..kmax-1; trials: is range, id = (2kmax-1 + is*step)/m;
    parity: 7 sign bits + even parity (flip the least important element); sigma_mult: sigma2 = mult*mean(x^2);
    noimx: importance without imatrix ('x2' or 'sigma': sigma2/4 + x^2); eps: skip threshold on max
    (None: skip only max == 0); use_qp: start from make_qp_quants (IQ2_XXS); resnap: 'all' (IQ2_XXS: always
    re-snap every group), 'off' (only groups off the grid), 'all_if_off' (IQ3_S); on_grid_init: IQ3_S starts
    with every group flagged off the grid."""
    bits = 2 if gs == 8 else 3
    xs = x.reshape(-1, QK_K)
    sigma2 = np.float32(sigma_mult) * seq_sum(xs * xs) / np.float32(QK_K)
    xb = x.reshape(-1, bs)
    nsb = QK_K // bs
    s2 = np.repeat(sigma2, nsb)[:, None]
    if imatrix is not None:
        weight = np.tile(imatrix.reshape(-1, bs), (x.shape[0], 1)) * np.sqrt(s2 + xb * xb)
    elif noimx == "sigma":
        weight = np.float32(0.25) * s2 + xb * xb
    else:
        weight = xb * xb
    waux = np.sqrt(weight)
    # signs, one mask per 8 weights
    neg = xb < 0
    xval = np.abs(xb)
    nb8 = bs // 8
    bitsv = 1 << np.arange(8)
    signs = (neg.reshape(-1, nb8, 8) * bitsv).sum(axis=-1)
    if parity:
        odd = neg.reshape(-1, nb8, 8).sum(axis=-1) % 2 == 1
        imin = np.argmin((weight * xb * xb).reshape(-1, nb8, 8), axis=-1)
        r, k = np.nonzero(odd)
        pos8 = k * 8 + imin[r, k]
        xval[r, pos8] = -xval[r, pos8]
        signs[r, k] ^= 1 << imin[r, k]
        signs &= 127
    mx = xval.max(axis=1)
    live = (mx >= eps) if eps is not None else (mx != 0)
    ng = bs // gs
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if use_qp:
            scale, _ = make_qp_quants_np(xval, kmax + 1, weight)
            denom = scale * np.float32(kmax)
            live &= denom > 0
        else:
            scale = mx / np.float32(2 * kmax - 1)
            denom = mx
        best = np.zeros(len(xb), np.float32)
        L = np.zeros((len(xb), ng, gs), np.int64)
        on_grid = np.full((len(xb), ng), on_grid_init)
        xg, wg = xval.reshape(-1, ng, gs), waux.reshape(-1, ng, gs)
        for is_ in trials:
            id = (np.float32(2 * kmax - 1) + np.float32(is_) * np.float32(step)) / denom
            lv = _levels_np(id, xg, kmax)
            _, on = snap_groups_np(lv, xg, wg, np.float32(1) / id, g, bits)
            q = (2 * lv + 1).reshape(len(xb), bs).astype(np.float32)
            sumqx, sumq2 = seq_sum(weight * xval * q), seq_sum(weight * q * q)
            better = live & (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
            scale = np.where(better, sumqx / sumq2, scale)
            best = np.where(better, scale * sumqx, best)
            L = np.where(better[:, None, None], lv, L)
            on_grid = np.where(better[:, None], on, on_grid)
        if resnap == "all":
            todo = live & (scale > 0)
            which = np.ones_like(on_grid)
        else:
            todo = live & ~on_grid.all(axis=1) & (scale > 0)
            which = ~on_grid if resnap == "off" else np.ones_like(on_grid)
        id = np.float32(1) / scale
        lv = _levels_np(id, xg, kmax)
        snap_groups_np(lv, xg, wg, scale, g, bits)
        sel = todo[:, None] & which
        L = np.where(sel[:, :, None], lv, L)
        q = (2 * L + 1).reshape(len(xb), bs).astype(np.float32)
        sumqx, sumq2 = seq_sum(weight * xval * q), seq_sum(weight * q * q)
        scale = np.where(todo & (sumq2 > 0), sumqx / sumq2, scale)
    flip = live & (scale < 0)
    scale = np.where(flip, -scale, scale)
    signs = np.where(flip[:, None], ~signs & (127 if parity else 255), signs)
    scale = np.where(live, scale, np.float32(0)).astype(np.float32)
    gidx = g.kmap[(L << (bits * np.arange(gs))).sum(axis=-1)].astype(np.int64)
    return scale, gidx, signs, live


def ternary_snap_np(L, xg, wg, scale, xx, g):
    """Vectorised iq1 snapping: levels L (N, ng, 8) in 0..2 -> grid index (N, ng) and on-grid flags; off-grid
    groups take the listed neighbour minimising sum w*(scale*xx[level] - x)^2 (iq1_find_best_neighbour2).
    xx: (N, ng, 3) shifted level values per group."""
    gi, on, r, c, cand, valid = grid_lookup_np(L, 2, g)
    if len(r):
        d2 = np.zeros(cand.shape, np.float32)
        for i in range(8):
            q = np.take_along_axis(xx[r, c], (g.pos[cand, i].astype(np.int64) - 1) // 2, axis=1)
            diff = scale[r][:, None] * q - xg[r, c, i][:, None]
            d2 += wg[r, c, i][:, None] * diff * diff
        d2 = np.where(valid, d2, np.inf)
        best = cand[np.arange(len(r)), np.argmin(d2, axis=1)]
        gi[r, c] = best
    return gi, on
