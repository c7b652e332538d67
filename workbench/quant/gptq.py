"""Error-compensating quantization (GPTQ, Frantar et al. 2022) into ggml's own block formats.

For a weight W (rows, n) whose inputs have second moment H = sum_t x_t x_t^T (n, n), GPTQ quantizes the n input
columns one at a time and spreads each column's rounding error over the columns not yet quantized, weighted by
the inverse Hessian, so that the layer's output error ||(W - Q) X|| stays small rather than each weight's own:

    U = upper Cholesky factor of (H + damp * mean(diag H) * I)^-1          (H^-1 = U^T U)
    for each column j:   q_j = round(w_j);  e_j = (w_j - q_j) / U[j, j];  w_k -= e_j * U[j, k]  for k > j

(the "lazy batch" form: updates inside a block of `block_size` columns at once, the rest of the matrix once per
block). What is new here is the rounding: each column is rounded on the grid of the ggml block it belongs to.
When the first column of a block comes up, the block's scales are chosen by the format's own quantizer (its scale
search and importance weighting, on the weights as the error feedback has left them), and from then on each
column of the block is rounded to the nearest value those scales allow (workbench.quant.code_bits gives every
weight's value as a * level[code] + b); for the 32-weight types the block's fp16 scale is first moved to the
one, of the format's own and 24 others within +-15%, that gives the least GPTQ loss over the block's columns
(workbench.quant.gptq_grid). The result is an ordinary block of the type: llama.cpp reads it as any other. With
act_order the columns go by decreasing H[j, j]; the blocks' scales are then fixed up front from the original
weights (GPTQ's static groups), since a block's columns no longer come up together.

Every floating-point operation runs in a fixed order (numba kernels without fastmath, rows in parallel, each
element's sums in one sequence), so the same inputs give the same bytes on every host; no BLAS or LAPACK call
(whose kernels and summation order depend on the CPU) is on this path. Each kernel has its numpy spec beside it.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from workbench.cpu.tile import MR, NR, gram, tile
from workbench.gguf.constants import GGMLType
from workbench.quant import quantize
from workbench.quant.code_bits import CodeLayout, code_layout
from workbench.quant.gptq_grid import quantize_columns, scale_field, search_scale, uniform_top
from workbench.quant.formats import parse_type


class GPTQError(ValueError):
    """GPTQ cannot run on these inputs (dead input columns, an H that is not positive definite, bad shapes)."""


# ------------------------------------------------------------------------------------ the Hessian

HESS_ROWS = 32      # the rows of H one thread owns; H[i, j] is accumulated for j >= i - i % HESS_ROWS
T_CHUNK = 128       # tokens per pass over a row block (its packed panels stay in cache)


@njit(parallel=True, cache=True)
def _hess_tiles(h, xp, n):
    """h[i, j] += x[t, i] * x[t, j] for t in order, with x packed as xp[j // NR, t, j % NR] (float64)."""
    T = xp.shape[1]
    nib = (n + HESS_ROWS - 1) // HESS_ROWS
    ldp = T * NR
    for pp in prange((nib + 1) // 2):                   # row blocks paired top with bottom: equal work
        for side in range(2):
            ib = np.int64(pp) if side == 0 else nib - 1 - np.int64(pp)
            if side == 1 and ib == pp:
                continue
            i0 = ib * HESS_ROWS
            for t0 in range(0, T, T_CHUNK):
                nt = min(T, t0 + T_CHUNK) - t0
                for j0 in range(i0, n, NR):
                    for r0 in range(i0, min(n, i0 + HESS_ROWS), MR):
                        ai = r0 // NR * ldp + t0 * NR + r0 % NR
                        bi = j0 // NR * ldp + t0 * NR
                        gram(h, r0 * n + j0, n, xp, ai, NR, 1, xp, bi, NR, nt, min(MR, n - r0), min(NR, n - j0))


def accumulate_hessian(h, x):
    """h[i, j] += x[t, i] * x[t, j] for every token t in order, float64, for j >= i - i % HESS_ROWS (the upper
    triangle and a few elements below it, never read). The products of float32 values are exact in float64
    (so a fused multiply-add rounds as the product and the sum do); the sums run token by token
    (workbench.cpu.tile.gram: a tile of h in registers while the tokens stream by)."""
    n = h.shape[0]
    T = x.shape[0]
    nb = (n + NR - 1) // NR
    xp = np.zeros((nb * NR, T))                    # panels of NR columns, token-major inside
    xp[:n] = np.asarray(x, np.float32).T
    _hess_tiles(h, np.ascontiguousarray(xp.reshape(nb, NR, T).transpose(0, 2, 1)), n)


def accumulate_hessian_ref(h, x):
    """numpy spec of accumulate_hessian: the same products, added token by token."""
    x = x.astype(np.float64)
    for t in range(len(x)):
        for i in range(h.shape[0]):
            i0 = i - i % HESS_ROWS
            h[i, i0:] += x[t, i] * x[t, i0:]


@njit(parallel=True, cache=True)
def mirror_upper(h):
    """In place: h[j, i] = h[i, j] for i < j (the lower triangle from the upper), in 32 x 32 blocks."""
    n = h.shape[0]
    nb = (n + 31) // 32
    for bi in prange(nb):
        for bj in range(bi, nb):
            for i in range(bi * 32, min(n, bi * 32 + 32)):
                for j in range(max(i + 1, bj * 32), min(n, bj * 32 + 32)):
                    h[j, i] = h[i, j]


def symmetric(h_upper: np.ndarray) -> np.ndarray:
    """The full matrix from its upper triangle (a copy)."""
    h = np.array(h_upper, np.float64, order="C")
    mirror_upper(h)
    return h


# ------------------------------------------------------------------------------------ U = chol(H^-1), upper

PANEL = 32


@njit(parallel=True, cache=True)
def _cholesky_upper(a):
    """In place: a (upper triangle read) -> R upper with a = R^T R, by row panels of PANEL; each element's
    updates are applied in k order, as the unblocked algorithm does (the trailing rows by MR x NR tiles).
    Returns False if a is not positive definite."""
    n = a.shape[0]
    for k0 in range(0, n, PANEL):
        k1 = min(n, k0 + PANEL)
        for k in range(k0, k1):                         # the panel's rows, one after another
            d = a[k, k]
            if not d > 0.0:
                return False
            d = np.sqrt(d)
            a[k, k] = d
            for j in range(k + 1, n):
                a[k, j] /= d
            for i in range(k + 1, k1):
                f = a[k, i]
                for j in range(i, n):
                    a[i, j] -= f * a[k, j]
        nb = (n - k1 + MR - 1) // MR                   # the trailing rows: a[i, j] -= a[k, i] * a[k, j], k in order
        for pp in prange((nb + 1) // 2):
            for side in range(2):
                ib = np.int64(pp) if side == 0 else nb - 1 - np.int64(pp)
                if side == 1 and ib == pp:
                    continue
                i0 = k1 + ib * MR
                for j0 in range(i0, n, NR):
                    tile(a, i0 * n + j0, n, a, k0 * n + i0, n, 1, a, k0 * n + j0, n, k1 - k0, min(MR, n - i0),
                         min(NR, n - j0), True)
    for i in range(n):
        for j in range(i):
            a[i, j] = 0.0
    return True


def cholesky_upper_ref(a: np.ndarray) -> np.ndarray | None:
    """numpy spec of _cholesky_upper (unblocked: the same operations per element, in the same order)."""
    a = a.copy()
    n = len(a)
    for k in range(n):
        if not a[k, k] > 0.0:
            return None
        a[k, k] = np.sqrt(a[k, k])
        a[k, k + 1:] /= a[k, k]
        for i in range(k + 1, n):
            a[i, i:] -= a[k, i] * a[k, i:]
    return np.triu(a)


INV_K = 256    # rows of x below a block taken per pass (the slab of r and x stays in cache)


@njit(parallel=True, cache=True)
def _upper_inverse_rows(r, x):
    """x = r^-1 for upper-triangular r (x zero on entry), by blocks of PANEL rows from the bottom:
    x[i] = (e_i - sum over k = n-1 down to i+1 of r[i, k] x[k]) / r[i, i]. A block first takes the rows below it
    (MR x NR tiles, k descending), then its own rows from its last one up; columns in parallel. Terms with
    x[k, j] = 0 (j < k) are skipped where a whole tile has them (they change at most the sign of a zero)."""
    n = r.shape[0]
    for i1 in range(n, 0, -PANEL):
        i0 = max(0, i1 - PANEL)
        for i in range(i0, i1):
            x[i, i] = 1.0
        n_tiles = (n - i0 + NR - 1) // NR
        for kb in range(n, i1, -INV_K):                # the rows below, INV_K of them at a time, k descending
            ka = max(i1, kb - INV_K)
            for jt in prange(max(0, (ka - i0) // NR), n_tiles):   # x[k, j] = 0 for j < k: tiles left of ka add 0
                j0 = i0 + jt * NR
                for r0 in range(i0, i1, MR):
                    tile(x, r0 * n + j0, n, r, r0 * n + kb - 1, -1, n, x, (kb - 1) * n + j0, -n, kb - ka,
                         min(MR, i1 - r0), min(NR, n - j0), True)
        for jt in prange(n_tiles):
            j0 = i0 + jt * NR
            j1 = min(n, j0 + NR)
            for i in range(i1 - 1, i0 - 1, -1):
                for k in range(i1 - 1, i, -1):
                    f = r[i, k]
                    for j in range(j0, j1):
                        x[i, j] -= f * x[k, j]
                for j in range(j0, j1):
                    x[i, j] /= r[i, i]
    for i in range(n):
        for j in range(i):
            x[i, j] = 0.0


def upper_inverse_ref(r: np.ndarray) -> np.ndarray:
    """numpy spec of _upper_inverse_rows."""
    n = len(r)
    x = np.zeros_like(r)
    for i in range(n - 1, -1, -1):
        x[i, i] = 1.0
        for k in range(n - 1, i, -1):
            x[i, i:] -= r[i, k] * x[k, i:]
        x[i, i:] /= r[i, i]
    return x


SHRINK = 3.0   # default weight of diag H added to H (see damped); chosen with bench/bench_gptq.py


def damped(h: np.ndarray, damp: float, shrink: float = 0.0) -> np.ndarray:
    """H + shrink * Diag(H) + damp * mean(diag H) * I, float64. damp is GPTQ's dampening (`damp_percent`).
    shrink pulls H toward its diagonal: H's off-diagonal part, the correlations between input columns, is
    estimated from a few thousand tokens of one text and partly belongs to that text; error feedback that
    trusts it fully moves the rounding error into directions that text rarely uses and other texts do.
    shrink = 0 is plain GPTQ; as it grows GPTQ tends to rounding with diag H as the importance (rtn + imatrix)."""
    h = np.array(h, np.float64)
    h[np.diag_indices(len(h))] += _damping(h, damp, shrink)
    return h


def _damping(h: np.ndarray, damp: float, shrink: float) -> np.ndarray:
    """What damped adds to H's diagonal: shrink * diag H + damp * mean(diag H)."""
    d = np.diag(h).astype(np.float64)
    return shrink * d + damp * np.mean(d)


def inverse_cholesky(h: np.ndarray, damp: float = 0.01, shrink: float = 0.0) -> np.ndarray:
    """U (float64, upper) with U^T U = damped(H)^-1, without forming the inverse: the upper
    factor of the reversed matrix, Hr = Ur^T Ur, gives H = R R^T with R = J Ur^T J upper, so U = R^-1 =
    J Ur^-T J."""
    hr = np.array(h[::-1, ::-1], np.float64, order="C")            # damped(h, damp, shrink), reversed
    hr[np.diag_indices(len(hr))] += _damping(h, damp, shrink)[::-1]
    if not _cholesky_upper(hr):
        raise GPTQError("H + shrink * Diag(H) + damp * mean(diag H) * I is not positive definite: use a larger "
                        "damp or more calibration tokens")
    inv = np.zeros_like(hr)
    _upper_inverse_rows(hr, inv)
    out = np.empty_like(inv)
    _anti_transpose(inv, out)
    return out


@njit(parallel=True, cache=True)
def _anti_transpose(a, out):
    """out[i, j] = a[n-1-j, n-1-i] (J a^T J), in 32 x 32 blocks."""
    n = a.shape[0]
    nb = (n + 31) // 32
    for bi in prange(nb):
        for bj in range(nb):
            for i in range(bi * 32, min(n, bi * 32 + 32)):
                for j in range(bj * 32, min(n, bj * 32 + 32)):
                    out[i, j] = a[n - 1 - j, n - 1 - i]


LAZY_COLS = 256    # columns of u one task's rows sweep at a time


@njit(parallel=True, cache=True)
def lazy_update(w, err, u, s, e):
    """w[:, e:] -= err @ u[s:e, e:], each element's terms added in k order (MR x NR tiles; 16 rows a task,
    LAZY_COLS columns at a time so the slab of u stays in cache)."""
    rows, n = w.shape
    ld_err = err.shape[1]
    for rb in prange((rows + 15) // 16):
        for c0 in range(e, n, LAZY_COLS):
            for r0 in range(rb * 16, min(rows, rb * 16 + 16), MR):
                for j0 in range(c0, min(n, c0 + LAZY_COLS), NR):
                    tile(w, r0 * n + j0, n, err, r0 * ld_err, 1, ld_err, u, s * n + j0, n, e - s,
                         min(MR, rows - r0), min(NR, n - j0), True)


def lazy_update_ref(w, err, u, s, e):
    """numpy spec of lazy_update."""
    for k in range(e - s):
        w[:, e:] -= err[:, k:k + 1] * u[s + k, e:][None, :]


# ------------------------------------------------------------------------------------ one tensor

def check_hessian(h: np.ndarray, n: int, name: str = "weight") -> None:
    """Shape, finiteness and dead columns (never activated by the calibration text: GPTQ has nothing to
    compensate with there and H is singular), before any work."""
    if h.shape != (n, n):
        raise GPTQError(f"{name}: H has shape {h.shape}, the weight has {n} input columns")
    if not np.isfinite(h).all():
        raise GPTQError(f"{name}: H contains NaN or Inf")
    dead = np.nonzero(np.diag(h) <= 0)[0]
    if len(dead):
        raise GPTQError(f"{name}: {len(dead)} of {n} input columns were never activated by the calibration "
                        f"text (H is singular; first: column {dead[0]}): use a longer or more varied text")


def _grids(layout: CodeLayout, blocks: np.ndarray, n: int):
    a, b = layout.affine(blocks, n)
    return a, b, layout.codes(blocks, n)


def run_columns(work, u, a, b, codes, levels, order, step: int, unit: int, block_start) -> None:
    """GPTQ's loop over the (permuted) columns of `work`: lazy blocks of `step` columns, and grid units of `unit`
    columns; block_start(j0, j0 + unit) fills a, b (and the codes kept where a == 0) of a unit from the weights
    as they are just before its first column is rounded on levels[code] (sorted by `order`). Columns past the
    lazy block have not had that block's updates yet (as in AutoGPTQ, whose groups may outrun its blocks);
    lazy_step keeps every unit starting on a lazy block's boundary. Every column's updates reach each later
    column one by one in column order (float32 multiply, then subtract), inside a lazy block or through
    lazy_update's tiles alike, so with the units on boundaries the result does not depend on step."""
    rows, n = work.shape
    sorted_levels = levels[order]
    top = uniform_top(sorted_levels)
    err = np.empty((rows, step), np.float32)
    for s in range(0, n, step):
        e = min(n, s + step)
        j0 = s
        while j0 < e:
            j1 = min(e, (j0 // unit + 1) * unit)
            if j0 % unit == 0:
                block_start(j0, min(n, j0 + unit))
            quantize_columns(work, u, a, b, codes, levels, sorted_levels, order, j0, j1, s, e, err, top)
            j0 = j1
        if e < n:
            lazy_update(work, err, u, s, e)


def lazy_step(block_size: int, unit: int) -> int:
    """GPTQ's lazy block (block_size columns) fitted to grid units of `unit` columns: a divisor of the unit when
    smaller (a 256-column k-quant super-block in lazy blocks of 128), else whole units."""
    block_size = max(1, int(block_size))
    if block_size < unit and unit % block_size == 0:
        return block_size
    return max(unit, -(-block_size // unit) * unit)


def check_settings(damp: float, shrink: float) -> None:
    """damp and shrink (see damped) must be finite numbers >= 0."""
    for name, v in (("damp", damp), ("shrink", shrink)):
        if not (0.0 <= v and np.isfinite(v)):
            raise GPTQError(f"{name}={v}: must be a finite number >= 0")


def prepare(h: np.ndarray, damp: float = 0.01, act_order: bool = False,
            shrink: float = SHRINK) -> tuple[np.ndarray, np.ndarray]:
    """(perm, U): the column order and the inverse Cholesky factor of the permuted, damped H, float32. Matrices
    that read the same input (q, k, v) share one."""
    check_settings(damp, shrink)
    if act_order:
        perm = np.argsort(-np.diag(h), kind="stable")
        h = h[np.ix_(perm, perm)]
    else:
        perm = np.arange(len(h))
    return perm, inverse_cholesky(h, damp, shrink).astype(np.float32)


def gptq_quantize(w: np.ndarray, h: np.ndarray, type_, *, imatrix: np.ndarray | None = None, damp: float = 0.01,
                  act_order: bool = False, block_size: int = 128, name: str = "weight", shrink: float = SHRINK,
                  prepared: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Quantize w (rows, n) float32 to ggml `type_` blocks (uint8 (rows, row_bytes)) with GPTQ error feedback
    under H (n, n). imatrix: the importance the format's scale search weights by (default diag H, i.e. what
    llama-imatrix would collect from the same text). block_size: GPTQ's lazy-update block (columns), fitted
    to the type's blocks by lazy_step (a speed setting: the bytes do not depend on it). shrink: see damped.
    prepared: `prepare(h, damp, act_order, shrink)` when several matrices share h."""
    t: GGMLType = parse_type(type_)
    layout = code_layout(t)
    w = np.asarray(w)
    if w.dtype != np.float32 or w.ndim != 2:
        raise GPTQError(f"{name}: expected float32 (rows, n_per_row), got {w.dtype} {w.shape}")
    rows, n = w.shape
    bs = t.block_size
    if n % bs:
        raise GPTQError(f"{name}: rows of {n} are not a multiple of the {t.name} block size {bs}")
    check_hessian(h, n, name)
    imp = (np.diag(h) / max(np.diag(h).max(), 1e-30)).astype(np.float32) if imatrix is None else \
        np.ascontiguousarray(imatrix, np.float32)
    perm, u = prepared if prepared is not None else prepare(h, damp, act_order, shrink)
    natural = bool(np.array_equal(perm, np.arange(n)))
    work = np.array(w, np.float32, order="C") if natural else np.ascontiguousarray(w[:, perm])
    a = np.zeros((rows, n))
    b = np.zeros((rows, n))
    codes = np.zeros((rows, n), np.uint16)
    out = np.empty((rows, t.row_bytes(n)), np.uint8)
    levels, order = layout.levels, layout.order.astype(np.int64)
    if act_order:                                       # static grids: every block's scales from the original w
        out[:] = quantize(np.ascontiguousarray(w), t, imatrix=imp)
        ga, gb, gc = _grids(layout, out, n)
        a[:], b[:], codes[:] = ga[:, perm], gb[:, perm], gc[:, perm]
        step = max(1, block_size)
        unit = step                                     # no block starts: a lazy block in one call
    else:
        step, unit = lazy_step(block_size, bs), bs

    def block_start(j0, j1):                            # a block starts: its scales from the current weights
        if not act_order:
            blk = quantize(np.ascontiguousarray(work[:, j0:j1]), t, imatrix=imp[j0:j1])
            ga, gb, codes[:, j0:j1] = _grids(layout, blk, bs)
            if scale_field(t) is not None:
                blk, ga, gb = search_scale(blk, ga, gb, layout, work, u, j0, j1)
            out[:, j0 // bs * t.type_size:(j0 // bs + 1) * t.type_size] = blk
            a[:, j0:j1], b[:, j0:j1] = ga, gb

    run_columns(work, u, a, b, codes, levels, order, step, unit, block_start)
    if not natural:
        final = np.empty_like(codes)
        final[:, perm] = codes
        codes = final
    return layout.with_codes(out, codes, n)
