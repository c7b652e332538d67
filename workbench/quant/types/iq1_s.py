"""IQ1_S: 1.5625 bpw; groups of 8 ternary values (-1, 0, 1) on a 2048-point grid, shifted by +-1/8.

Block layout (block_iq1_s, 50 bytes per 256 weights): d (fp16) | qs[32] (grid index low 8 bits, one per
group of 8) | qh[8] (uint16 per 32 weights: 3 high index bits per group | 3-bit scale << 12 | sign of
the shift << 15).
Dequantized: y = d * (2*s + 1) * (iq1s_grid[idx][j] + (shift ? -1/8 : +1/8)).

Quantization: ggml-quants.c ``quantize_row_iq1_s_impl`` (imatrix required).  Per 32 weights the best
ternary assignment is found exactly: sort x (a stable sort: glibc's qsort is a merge sort), and for
every pair of split points (i1 <= i2) score the levels x_p = (-1, 0, 1) + 1/8 and x_m = (-1, 0, 1) - 1/8
with prefix sums of w*x and w, keeping the best weighted least-squares fit.  Groups of 8 that land off
the grid move to the listed neighbour of least weighted squared error at that scale
(iq1_find_best_neighbour2), and the scale is refitted.  Sub-block scales: 3 bits against
d = max_scale/15; the stored super-block scale is d*1.125.
"""
import numpy as np
from numba import njit, prange

from workbench.gguf.constants import QK_K
from workbench.cpu import ir as lanes
from workbench.cpu.fp16 import fp32_to_fp16_np, put_fp16
from workbench.quant.blocks import check_blocks, check_quantize_args, get_fp16_np, run_dequantize
from workbench.quant.grid_search import ternary_snap_np
from workbench.quant.rounding import F32, nearest_int, seq_sum
from workbench.quant.scale_search import FLT_MAX, GROUP_MAX_EPS_IQ1_S
from workbench.quant.iq_grids import IQ1S_DELTA, grid

BLOCK = QK_K
TYPE_SIZE = 50
NEEDS_IMATRIX = True
X_P = np.array([-1 + IQ1S_DELTA, IQ1S_DELTA, 1 + IQ1S_DELTA], dtype=np.float32)
X_M = np.array([-1 - IQ1S_DELTA, -IQ1S_DELTA, 1 - IQ1S_DELTA], dtype=np.float32)


@njit(cache=True)
def find_best_neighbour2(neighbours, start, pos, xval, weight, scale, xx, L):
    """iq1_find_best_neighbour2: the listed grid point minimising sum w*(scale*xx[level] - x)^2 (first on
    ties); writes its levels to L (a view of 8) and returns its index."""
    best = FLT_MAX
    grid_index = -1
    for j in range(1, int(neighbours[start]) + 1):
        g = int(neighbours[start + j])
        d2 = F32(0)
        for i in range(8):
            q = xx[(pos[g, i] - 1) // 2]
            diff = scale * q - xval[i]
            d2 += weight[i] * diff * diff
        if d2 < best:
            best = d2
            grid_index = g
    for i in range(8):
        L[i] = (pos[grid_index, i] - 1) // 2
    return grid_index


@njit(cache=True)
def snap_ternary(L, off, xb, weight, scale, xx, pos, kmap, neighbours):
    """Grid index of the 8 levels L[off:off+8]; -(index+1) when they were off the grid (then replaced)."""
    u = 0
    for j in range(8):
        u |= L[off + j] << (2 * j)
    g = kmap[u]
    if g >= 0:
        return g
    g = find_best_neighbour2(neighbours, -g - 1, pos, xb[off:off + 8], weight[off:off + 8], scale, xx,
                             L[off:off + 8])
    return -g - 1


@njit(cache=True)
def quantize_superblock(xbl, qw, pos, kmap, neighbours, o):
    """quantize_row_iq1_s_impl for one super-block; writes the 50 bytes to o."""
    weight = np.empty(32, np.float32)
    sumx = np.zeros(33, np.float32)
    sumw = np.zeros(33, np.float32)
    L = np.zeros(32, np.int64)
    index = np.zeros(4, np.int64)
    scales = np.zeros(8, np.float32)
    shifts = np.zeros(8, np.int64)
    qh = np.zeros(8, np.int64)
    o[:] = 0
    sumx2 = F32(0)
    for i in range(QK_K):
        sumx2 += xbl[i] * xbl[i]
    sigma2 = F32(2) * sumx2 / F32(QK_K)
    max_scale = F32(0)
    for ib in range(8):
        xb = xbl[32 * ib:32 * ib + 32]
        for i in range(32):
            weight[i] = qw[32 * ib + i] * np.sqrt(sigma2 + xb[i] * xb[i])
        mx = abs(xb[0])
        for i in range(1, 32):
            mx = max(mx, abs(xb[i]))
        if mx < GROUP_MAX_EPS_IQ1_S:
            scales[ib] = 0
            shifts[ib] = 1
            continue
        idx = np.argsort(xb, kind="mergesort")  # stable, like glibc's merge-sort qsort
        for j in range(32):
            i = idx[j]
            sumx[j + 1] = sumx[j] + weight[i] * xb[i]
            sumw[j + 1] = sumw[j] + weight[i]
        best_score = -FLT_MAX
        scale = mx
        besti1 = -1
        besti2 = -1
        best_shift = 0
        for i1 in range(33):
            for i2 in range(i1, 33):
                for shift in (1, -1):
                    xx = X_P if shift == 1 else X_M
                    sumqx = (sumx[i1] - sumx[0]) * xx[0] + (sumx[i2] - sumx[i1]) * xx[1] \
                        + (sumx[32] - sumx[i2]) * xx[2]
                    sumq2 = (sumw[i1] - sumw[0]) * xx[0] * xx[0] + (sumw[i2] - sumw[i1]) * xx[1] * xx[1] \
                        + (sumw[32] - sumw[i2]) * xx[2] * xx[2]
                    if sumq2 > 0 and sumqx * sumqx > best_score * sumq2:
                        scale = sumqx / sumq2
                        best_score = scale * sumqx
                        besti1 = i1
                        besti2 = i2
                        best_shift = shift
        if besti1 < 0 or besti2 < 0 or best_shift == 0:
            scales[ib] = 0
            shifts[ib] = 1
            continue
        for j in range(32):
            L[idx[j]] = 0 if j < besti1 else (1 if j < besti2 else 2)
        if scale < 0:
            for j in range(32):
                L[j] = 2 - L[j]
            scale = -scale
            best_shift = -best_shift
        xx = X_P if best_shift == 1 else X_M
        all_on_grid = True
        for k in range(4):
            g = snap_ternary(L, 8 * k, xb, weight, scale, xx, pos, kmap, neighbours)
            if g < 0:
                all_on_grid = False
                g = -g - 1
            index[k] = g
        if not all_on_grid:
            sumqx = F32(0)
            sumq2 = F32(0)
            for k in range(4):
                for j in range(8):
                    w = weight[8 * k + j]
                    q = xx[(pos[index[k], j] - 1) // 2]
                    sumqx += w * q * xb[8 * k + j]
                    sumq2 += w * q * q
            if sumqx > 0 and sumq2 > 0:
                scale = sumqx / sumq2
        h = 0
        for k in range(4):
            o[2 + 4 * ib + k] = index[k] & 255
            h |= (index[k] >> 8) << (3 * k)
        qh[ib] = h
        scales[ib] = scale
        shifts[ib] = best_shift
        max_scale = max(max_scale, scale)
    if max_scale > 0:
        d = max_scale / F32(15)
        put_fp16(o, 0, d * F32(1.125))
        id = F32(1) / d
        for ib in range(8):
            l = max(0, min(7, nearest_int(F32(0.5) * (id * scales[ib] - F32(1)))))
            if shifts[ib] == -1:
                l |= 8
            qh[ib] |= l << 12
    for ib in range(8):
        o[34 + 2 * ib] = qh[ib] & 0xFF
        o[35 + 2 * ib] = qh[ib] >> 8


@njit(cache=True, parallel=True)
def _quantize_kernel(x, qw, pos, kmap, neighbours, out):
    rows, n = x.shape
    for r in prange(rows):
        for ibl in range(n // QK_K):
            quantize_superblock(x[r, ibl * QK_K:(ibl + 1) * QK_K], qw[ibl * QK_K:(ibl + 1) * QK_K],
                                pos, kmap, neighbours, out[r, ibl * TYPE_SIZE:(ibl + 1) * TYPE_SIZE])


def quantize(x, imatrix=None):
    x, imatrix = check_quantize_args(x, imatrix, BLOCK, "IQ1_S", NEEDS_IMATRIX)
    g = grid("IQ1_S")
    out = np.zeros((x.shape[0], x.shape[1] // BLOCK * TYPE_SIZE), np.uint8)
    _quantize_kernel(x, imatrix, g.pos, g.kmap, g.neighbours, out)
    return out


def quantize_ref(x, imatrix=None):
    """Numpy reference, vectorised over all 32-weight blocks: the split search runs candidate by candidate in
    ggml's order (i1, i2, then +shift before -shift) so that ties and rounding resolve as in C."""
    x, imatrix = check_quantize_args(x, imatrix, BLOCK, "IQ1_S", NEEDS_IMATRIX)
    g = grid("IQ1_S")
    xs = x.reshape(-1, QK_K)
    sigma2 = np.float32(2) * seq_sum(xs * xs) / np.float32(QK_K)
    xb = x.reshape(-1, 32)
    N = len(xb)
    weight = np.tile(imatrix.reshape(-1, 32), (x.shape[0], 1)) * np.sqrt(np.repeat(sigma2, 8)[:, None] + xb * xb)
    mx = np.abs(xb).max(axis=1)
    live = mx >= GROUP_MAX_EPS_IQ1_S
    idx = np.argsort(xb, axis=1, kind="stable")  # glibc qsort is a stable merge sort
    wx = np.take_along_axis(weight * xb, idx, axis=1)
    ws = np.take_along_axis(weight, idx, axis=1)
    zero = np.zeros((N, 1), np.float32)
    sumx = np.concatenate([zero, np.cumsum(wx, axis=1, dtype=np.float32)], axis=1)  # sequential prefix sums
    sumw = np.concatenate([zero, np.cumsum(ws, axis=1, dtype=np.float32)], axis=1)
    best = np.full(N, -FLT_MAX, np.float32)
    scale = mx.copy()
    bi1 = np.full(N, -1)
    bi2 = np.full(N, -1)
    shift = np.zeros(N, np.int64)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for i1 in range(33):
            for i2 in range(i1, 33):
                for sh, xx in ((1, X_P), (-1, X_M)):
                    sqx = (sumx[:, i1] - sumx[:, 0]) * xx[0] + (sumx[:, i2] - sumx[:, i1]) * xx[1] \
                        + (sumx[:, 32] - sumx[:, i2]) * xx[2]
                    sq2 = (sumw[:, i1] - sumw[:, 0]) * xx[0] * xx[0] + (sumw[:, i2] - sumw[:, i1]) * xx[1] * xx[1] \
                        + (sumw[:, 32] - sumw[:, i2]) * xx[2] * xx[2]
                    better = (sq2 > 0) & (sqx * sqx > best * sq2)
                    scale = np.where(better, sqx / sq2, scale)
                    best = np.where(better, scale * sqx, best)
                    bi1 = np.where(better, i1, bi1)
                    bi2 = np.where(better, i2, bi2)
                    shift = np.where(better, sh, shift)
    live &= (bi1 >= 0) & (bi2 >= 0) & (shift != 0)
    rank = np.empty_like(idx)
    np.put_along_axis(rank, idx, np.arange(32)[None, :].repeat(N, 0), axis=1)  # sorted position of each x
    L = np.where(rank < bi1[:, None], 0, np.where(rank < bi2[:, None], 1, 2))
    neg = scale < 0
    L = np.where(neg[:, None], 2 - L, L)
    scale = np.where(neg, -scale, scale)
    shift = np.where(neg, -shift, shift)
    xx = np.where((shift == 1)[:, None], X_P, X_M)  # (N, 3)
    xxg = np.repeat(xx[:, None, :], 4, axis=1)
    gidx, on = ternary_snap_np(L.reshape(N, 4, 8), xb.reshape(N, 4, 8), weight.reshape(N, 4, 8), scale, xxg, g)
    q = np.take_along_axis(xx, ((g.pos[gidx].astype(np.int64) - 1) // 2).reshape(N, 32), axis=1)
    sqx, sq2 = seq_sum(weight * q * xb), seq_sum(weight * q * q)
    with np.errstate(invalid="ignore", divide="ignore"):
        refit = ~on.all(axis=1) & (sqx > 0) & (sq2 > 0)
        scale = np.where(refit, sqx / sq2, scale)
    scale = np.where(live, scale, np.float32(0))
    gidx = np.where(live[:, None], gidx, 0)
    shift = np.where(live, shift, 1)
    qh = ((gidx >> 8) << (3 * np.arange(4))).sum(axis=1).reshape(-1, 8)
    scale = scale.reshape(-1, 8)
    max_scale = scale.max(axis=1)
    d = max_scale / np.float32(15)
    with np.errstate(divide="ignore", invalid="ignore"):
        l = np.clip(np.rint(np.float32(0.5) * ((np.float32(1) / d)[:, None] * scale - np.float32(1))), 0, 7)
    l = np.nan_to_num(l).astype(np.int64) | np.where(shift.reshape(-1, 8) == -1, 8, 0)
    alive = (max_scale > 0)[:, None]
    qh = np.where(alive, qh | (l << 12), qh).astype("<u2")
    dh = np.where(max_scale > 0, d * np.float32(1.125), np.float32(0))
    blocks = np.concatenate([fp32_to_fp16_np(dh).view(np.uint8).reshape(-1, 2),
                             (gidx & 255).astype(np.uint8).reshape(-1, 32), qh.view(np.uint8)], axis=1)
    return blocks.reshape(x.shape[0], x.shape[1] // BLOCK * TYPE_SIZE)


def dequantize_ref(blocks, n_per_row):
    blocks = check_blocks(blocks, n_per_row, BLOCK, TYPE_SIZE, "IQ1_S").reshape(-1, TYPE_SIZE)
    d = get_fp16_np(blocks[:, :2])
    qh = blocks[:, 34:50].copy().view("<u2").astype(np.int32)  # (nb, ib32)
    dl = d[:, None] * (2 * ((qh >> 12) & 7) + 1).astype(np.float32)
    delta = np.where(qh & 0x8000, -IQ1S_DELTA, IQ1S_DELTA).astype(np.float32)
    idx = blocks[:, 2:34].reshape(-1, 8, 4).astype(np.int32) | (((qh[:, :, None] >> (3 * np.arange(4))) & 7) << 8)
    vals = grid("IQ1_S").values[idx]  # (nb, 8, 4, 8)
    y = dl[:, :, None, None] * (vals + delta[:, :, None, None])
    return y.astype(np.float32).reshape(-1, n_per_row)


def _emit_block(builder, block, y, values):
    """dequantize_row_iq1_s: per 32 weights a uint16 qh (3 high index bits per group of 8, scale << 12,
    shift sign << 15); y = dl * (grid value + delta), dl = d * (2 * scale + 1), delta = -+IQ1S_DELTA."""
    I32, F32 = lanes.I32, lanes.F32
    d = lanes.fp16(builder, block, 0)
    plus, minus = F32(float(np.float32(IQ1S_DELTA))), F32(float(-np.float32(IQ1S_DELTA)))
    for ib in range(8):
        qh = builder.zext(lanes.load(builder, block, 34 + 2 * ib, lanes.I16), I32)
        s = builder.and_(builder.lshr(qh, I32(12)), I32(7))
        dl = lanes.scale_f32(builder, d, builder.add(builder.shl(s, I32(1)), I32(1)))
        neg = builder.icmp_unsigned("!=", builder.and_(qh, I32(0x8000)), I32(0))
        delta = builder.select(neg, minus, plus)
        for g in range(4):
            gi = builder.or_(lanes.byte_at(builder, block, 2 + 4 * ib + g),
                             builder.shl(builder.and_(builder.lshr(qh, I32(3 * g)), I32(7)), I32(8)))
            lanes.emit_grid_group(builder, values, gi, 8, dl, y, 32 * ib + 8 * g, delta=delta)


_dequantize_row = lanes.row_kernel(_emit_block, BLOCK, TYPE_SIZE, with_table=True)


@njit(parallel=True, cache=True)
def _dequantize_rows(blocks, out, values):
    for r in prange(out.shape[0]):
        _dequantize_row(blocks, out, r, values)


def dequantize(blocks, n_per_row):
    return run_dequantize(_dequantize_rows, blocks, n_per_row, BLOCK, TYPE_SIZE, "IQ1_S", grid("IQ1_S").values)
