"""GPTQ's rounding on the grid of a ggml block, and the choice of a 32-weight block's scale by GPTQ's own loss
(workbench.quant.gptq runs the columns; see its docstring).

quantize_columns rounds a column of every row to the nearest value its block's scales allow (a * level + b,
workbench.quant.code_bits) and feeds the error forward. search_scale moves the fp16 d of a freshly quantized
32-weight block to the candidate within +-15% whose grid loses least under that rounding (block_losses). Both
find the nearest level by a binary search (_nearest_code), or on the uniform grids of the legacy, k-quant and Q8_0
types by floor(u * top) wherever that is sure (_nearest_step), which vector code can do. Each kernel has its
numpy spec beside it; the bytes do not depend on the host.
"""
from __future__ import annotations

from functools import cache

import numpy as np
from numba import njit, prange

from workbench.cpu.tile import rows_sub16
from workbench.quant.code_bits import CodeLayout, CodeLayoutError, code_layout, probe_blocks
from workbench.quant.formats import parse_type


LANES = 16    # rows the kernels below take side by side (rows_sub16)


# ------------------------------------------------------------------------------------ the nearest level

@njit(cache=True)
def _nearest_code(u, sorted_levels, order):
    """The code whose level is nearest to u (the lower one on a tie)."""
    lo, hi = 0, len(sorted_levels) - 1
    if u <= sorted_levels[0]:
        return order[0]
    if u >= sorted_levels[hi]:
        return order[hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if sorted_levels[mid] <= u:
            lo = mid
        else:
            hi = mid
    return order[lo] if u - sorted_levels[lo] <= sorted_levels[hi] - u else order[hi]


NEAR = 1e-6    # _nearest_step trusts y = u * top this far from an integer and from a midpoint


@njit(cache=True)
def _nearest_step(u, top):
    """On uniform levels (level i = i / top, i = 0..top, float64 quotients; see uniform_top): (index, sure) of the
    level nearest to u, the lower on a tie, from y = u * top alone: floor(y), plus one past the midpoint. The
    rounding of y and of the levels moves y by ~1e-14 of a step, so where y is NEAR or more from every integer and
    midpoint (or far outside [0, top]) the index is the one _nearest_code finds; elsewhere sure is False and the
    caller asks _nearest_code. Branch-free: a loop over many u becomes vector code."""
    y = u * top
    cf = np.floor(y)
    fr = y - cf
    idx = min(max(cf + (1.0 if fr > 0.5 else 0.0), 0.0), top)
    sure = y < -1.0 or y > top + 1.0 or (NEAR <= fr and fr <= 1.0 - NEAR and abs(fr - 0.5) >= NEAR)
    return idx, sure


def uniform_top(sorted_levels: np.ndarray) -> int:
    """top when the levels are exactly i / top for i = 0..top (the legacy, k-quant and Q8_0 grids), else 0 (IQ4_NL's
    table): which search the kernels below may use."""
    top = len(sorted_levels) - 1
    return top if np.array_equal(sorted_levels, np.arange(top + 1) / np.float64(top)) else 0


@njit(parallel=True, cache=True, error_model="numpy")
def quantize_columns(w, u, a, b, codes, levels, sorted_levels, order, j0, j1, s, e, err, top=0):
    """Columns j0..j1-1 (in processing order) of w (rows, n) float32: round each on its grid (a, b: float64
    (rows, n)), record the code, the scaled error err[:, j - s] = (w_j - q_j) / u[j, j], and update columns
    j+1..e-1 at once (the lazy block [s, e)). A row's columns depend on each other; LANES rows go side by side
    (columns j0..e-1 of them copied to x[k, lane]): on uniform levels (top = uniform_top(sorted_levels) > 0) the
    rounding is vector code where _nearest_step is sure, the binary search for the rest; the updates by rows_sub16."""
    rows = w.shape[0]
    m, nj = e - j0, j1 - j0
    ident = np.arange(len(sorted_levels))
    for c in prange((rows + LANES - 1) // LANES):
        r0 = c * LANES
        nr = min(rows, r0 + LANES) - r0
        x = np.zeros((m, LANES), np.float32)
        al = np.zeros((nj, LANES))
        bl = np.zeros((nj, LANES))
        cl = np.zeros((nj, LANES), np.int64)
        for i in range(nr):
            for k in range(m):
                x[k, i] = w[r0 + i, j0 + k]
            for k in range(nj):
                al[k, i] = a[r0 + i, j0 + k]
                bl[k, i] = b[r0 + i, j0 + k]
                cl[k, i] = codes[r0 + i, j0 + k]
        g = np.empty(LANES, np.float32)
        again = np.empty(LANES, np.bool_)
        ql = np.zeros((nj, LANES))                      # the level's place in sorted_levels (a float)
        for k in range(nj):
            j = j0 + k
            d = u[j, j]
            if top:
                for i in range(LANES):
                    ar = al[k, i]
                    q, sure = _nearest_step((x[k, i] - bl[k, i]) / (ar if ar != 0.0 else 1.0), top)
                    again[i] = not sure and ar != 0.0
                    ql[k, i] = q
                    g[i] = (x[k, i] - np.float32(ar * (q / top) + bl[k, i])) / d
            else:
                again[:] = True
            for i in range(LANES):
                if again[i]:
                    ar = al[k, i]
                    if ar != 0.0:
                        ql[k, i] = _nearest_code((x[k, i] - bl[k, i]) / ar, sorted_levels, ident)
                        lev = sorted_levels[np.int64(ql[k, i])]
                    else:
                        lev = levels[cl[k, i]]
                    g[i] = (x[k, i] - np.float32(ar * lev + bl[k, i])) / d
            for i in range(nr):
                err[r0 + i, j - s] = g[i]
            rows_sub16(x, (k + 1) * LANES, g, 0, u, j * u.shape[1] + j + 1, e - j - 1)
        for i in range(nr):
            for k in range(m):
                w[r0 + i, j0 + k] = x[k, i]
            for k in range(nj):
                if al[k, i] != 0.0:                     # a zero scale keeps the block's code
                    codes[r0 + i, j0 + k] = order[np.int64(ql[k, i])]


def quantize_columns_ref(w, u, a, b, codes, levels, sorted_levels, order, j0, j1, s, e, err):
    """numpy spec of quantize_columns (all rows at once)."""
    for j in range(j0, j1):
        x = w[:, j]
        live = a[:, j] != 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            target = np.where(live, (x - b[:, j]) / np.where(live, a[:, j], 1.0), 0.0)
        hi = np.clip(np.searchsorted(sorted_levels, target, side="right"), 1, len(sorted_levels) - 1)
        lo = hi - 1
        pick = np.where(target - sorted_levels[lo] <= sorted_levels[hi] - target, lo, hi)
        codes[:, j] = np.where(live, order[pick], codes[:, j])
        q = (a[:, j] * levels[codes[:, j]] + b[:, j]).astype(np.float32)
        g = (x - q) / u[j, j]
        err[:, j - s] = g
        w[:, j + 1:e] -= g[:, None] * u[j, j + 1:e][None, :]


# ------------------------------------------------------------------------------------ the block's scale

# where each 32-weight type keeps the fp16 d that multiplies all its weights (ggml-common.h: block_q4_0 ...).
# The 256-weight k-quants and IQ4_XS are left out: their own searches leave little to gain on the super-block's d
# (Q4_K, Q5_K, Q6_K: 1 row of 128 changed on a correlated test matrix), and on SmolLM2 IQ4_XS with the search on its
# super-block d (bench/bench_gptq.py) the Chinese KLD went from 0.969 to 0.999 of rtn+imatrix's, English unchanged
D_OFFSET = {"Q4_0": 0, "Q4_1": 0, "Q5_0": 0, "Q5_1": 0, "Q8_0": 0, "IQ4_NL": 0}
SCALE_STEPS = 12                                   # candidate scales each side of the format's own ...
SCALE_SPAN = 0.15                                  # ... spread over +-15% of it


@cache
def scale_field(type_) -> tuple[int, bool] | None:
    """(byte offset of the block's fp16 d, whether b scales with it) for a type whose every weight is
    d * (a per-weight factor) * level + b, b either proportional to d or independent of it (a separate min),
    checked on the format's probe blocks: doubling d doubles every a; None for the other types."""
    t = parse_type(type_)
    off = D_OFFSET.get(t.name)
    if off is None:
        return None
    layout = code_layout(t)
    blocks = probe_blocks(t)
    a, b = layout.affine(blocks, t.block_size)
    twice = blocks.copy()
    d = twice[:, off:off + 2].copy().view(np.float16)
    twice[:, off:off + 2] = (d * np.float16(2)).view(np.uint8)
    a2, b2 = layout.affine(twice, t.block_size)
    if not np.allclose(a2, 2 * a, rtol=1e-6, atol=0):
        raise CodeLayoutError(f"{t.name}: bytes {off}..{off + 1} are not the scale d of every weight")
    if np.allclose(b2, 2 * b, rtol=1e-6, atol=0):
        return off, True
    if np.allclose(b2, b, rtol=1e-6, atol=0):
        return off, False
    raise CodeLayoutError(f"{t.name}: b is neither proportional to d nor independent of it")


@njit(parallel=True, cache=True, error_model="numpy")
def block_losses(w, u, j0, j1, a, b, ratio, scale_b, sorted_levels, loss, top=0):
    """loss[k, r] = GPTQ's objective for columns j0..j1-1 of row r, sum of g_j^2, when they are rounded one at a
    time to the nearest level of candidate grid k, a[r, j] * ratio[k, r] * level + b[r, j] (* ratio[k, r] when
    scale_b), with error feedback inside the block (as quantize_columns rounds them). LANES rows go side by side
    (x[m, lane]: the rounding, where the levels are uniform, top = uniform_top(sorted_levels) > 0, and the feedback
    are vector code over the rows; the lanes past the last row compute on zeros and are not stored)."""
    K, rows = ratio.shape
    n = j1 - j0
    ident = np.arange(len(sorted_levels))
    for c in prange((rows + LANES - 1) // LANES):
        r0 = c * LANES
        nr = min(rows, r0 + LANES) - r0
        wl = np.zeros((n, LANES), np.float32)           # the block's weights, a and b, row-interleaved
        al = np.zeros((n, LANES))
        bl = np.zeros((n, LANES))
        for i in range(nr):
            for j in range(n):
                wl[j, i] = w[r0 + i, j0 + j]
                al[j, i] = a[r0 + i, j]
                bl[j, i] = b[r0 + i, j]
        x = np.empty((n, LANES), np.float32)
        g = np.empty(LANES, np.float32)
        again = np.empty(LANES, np.bool_)
        s = np.empty(LANES)
        f = np.ones(LANES)
        fb = np.ones(LANES)
        for k in range(K):
            for i in range(nr):
                f[i] = ratio[k, r0 + i]
                fb[i] = f[i] if scale_b else 1.0
            x[:] = wl
            s[:] = 0.0
            for j in range(n):
                d = u[j0 + j, j0 + j]
                if top:                                 # vector code; the lanes it is not sure of, again below
                    for i in range(LANES):
                        aj, bj = al[j, i] * f[i], bl[j, i] * fb[i]
                        q, sure = _nearest_step((x[j, i] - bj) / (aj if aj != 0.0 else 1.0), top)
                        again[i] = not sure and aj != 0.0
                        g[i] = (x[j, i] - np.float32(aj * (q / top if aj != 0.0 else 0.0) + bj)) / d
                else:
                    again[:] = True
                for i in range(LANES):
                    if again[i]:
                        aj, bj = al[j, i] * f[i], bl[j, i] * fb[i]
                        lev = sorted_levels[_nearest_code((x[j, i] - bj) / aj, sorted_levels, ident)] \
                            if aj != 0.0 else 0.0
                        g[i] = (x[j, i] - np.float32(aj * lev + bj)) / d
                for i in range(LANES):
                    s[i] += np.float64(g[i]) * g[i]
                rows_sub16(x, (j + 1) * LANES, g, 0, u, (j0 + j) * u.shape[1] + j0 + j + 1, n - j - 1)
            for i in range(nr):
                loss[k, r0 + i] = s[i]


def block_losses_ref(w, u, j0, j1, a, b, ratio, scale_b, sorted_levels, loss):
    """numpy spec of block_losses (every row and candidate at once)."""
    n = j1 - j0
    x = np.broadcast_to(w[:, j0:j1], ratio.shape + (n,)).astype(np.float32)
    loss[:] = 0.0
    for j in range(n):
        A, B = a[:, j] * ratio, b[:, j] * (ratio if scale_b else 1.0)
        live = A != 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(live, (x[..., j] - B) / np.where(live, A, 1.0), 0.0)
        hi = np.clip(np.searchsorted(sorted_levels, t, side="right"), 1, len(sorted_levels) - 1)
        lo = hi - 1
        lev = np.where(live, sorted_levels[np.where(t - sorted_levels[lo] <= sorted_levels[hi] - t, lo, hi)], 0.0)
        g = (x[..., j] - (A * lev + B).astype(np.float32)) / u[j0 + j, j0 + j]
        loss += g.astype(np.float64) ** 2
        x[..., j + 1:] -= g[..., None] * u[j0 + j, j0 + j + 1:j1]


def search_scale(blk: np.ndarray, a: np.ndarray, b: np.ndarray, layout: CodeLayout, w: np.ndarray, u: np.ndarray,
                 j0: int, j1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """blk (one block per row, as the format's quantizer chose it for w[:, j0:j1]; a type with a scale_field) and
    its grid (a, b) -> the same with each row's fp16 d replaced by the candidate (d itself, or d times
    1 +- k/SCALE_STEPS * SCALE_SPAN, rounded to fp16) whose grid gives the least block_losses; the rows whose d
    moved have their grid read again from their bytes (the codes do not move). The format's scale search assumes
    plain rounding; under GPTQ the columns are rounded with feedback, and another scale of the same grid may then
    lose less."""
    off, scale_b = scale_field(layout.type)
    sorted_levels = layout.levels[layout.order]
    d = blk[:, off:off + 2].copy().view(np.float16)[:, 0].astype(np.float64)
    steps = np.arange(-SCALE_STEPS, SCALE_STEPS + 1)
    f = np.concatenate([[1.0], 1.0 + SCALE_SPAN * steps[steps != 0] / SCALE_STEPS])   # own scale first: wins ties
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        dk = (d[None, :] * f[:, None]).astype(np.float16).astype(np.float64)
        ratio = np.where(np.isfinite(dk) & (d != 0.0), dk / np.where(d != 0.0, d, 1.0), 1.0)
    loss = np.empty(ratio.shape)
    block_losses(w, u, j0, j1, a, b, ratio, scale_b, sorted_levels, loss, uniform_top(sorted_levels))
    best = np.argmin(loss, axis=0)
    out, a, b = blk.copy(), a.copy(), b.copy()
    pick = ratio[best, np.arange(len(d))] != 1.0
    out[pick, off:off + 2] = dk[best, np.arange(len(d))][pick].astype(np.float16).view(np.uint8).reshape(-1, 2)
    if pick.any():
        a[pick], b[pick] = layout.affine(out[pick], j1 - j0)
    return out, a, b
