"""IQ1_M: 1.75 bpw; IQ1_S's ternary grid with 16-weight sub-blocks and a shift sign per group of 8.

Block layout (block_iq1_m, 56 bytes per 256 weights): qs[32] (grid index low 8 bits per group of 8) |
qh[16] (per 16 weights: for each of its 2 groups, 3 high index bits and the shift sign, 0x08 / 0x80) |
scales[8] = four uint16: 3-bit sub-block scales (4 per word) and, in the top nibbles of the four
words, the fp16 super-block scale.
Dequantized: y = d * (2*s + 1) * (iq1s_grid[idx][j] + (shift ? -1/8 : +1/8)).

Quantization: ggml-quants.c ``quantize_row_iq1_m_impl`` (imatrix optional; importance x^2 without).
As IQ1_S, but every 16 weights pick their ternary split and one of four shift combinations (+,+ / +,- /
-,+ / -,-: one shift per half) from prefix sums kept per half; then the 3-bit scales are fixed against
max_scale/15 and the super-block scale is refitted by least squares over all groups (including empty
sub-blocks, which decode as grid point 0) and stored times 1.1125.
"""
import numpy as np
from numba import njit, prange

from workbench.gguf.constants import QK_K
from workbench.cpu import ir as lanes
from workbench.quant.types.iq1_s import snap_ternary
from workbench.cpu.fp16 import fp32_to_fp16, fp32_to_fp16_np
from workbench.quant.blocks import check_blocks, check_quantize_args, run_dequantize
from workbench.quant.grid_search import ternary_snap_np
from workbench.quant.rounding import F32, nearest_int, seq_sum
from workbench.quant.scale_search import FLT_MAX, GROUP_MAX_EPS_IQ1_M
from workbench.quant.iq_grids import IQ1M_DELTA, grid

BLOCK = QK_K
TYPE_SIZE = 56
NEEDS_IMATRIX = False
X_P = np.array([-1 + IQ1M_DELTA, IQ1M_DELTA, 1 + IQ1M_DELTA], dtype=np.float32)
X_M = np.array([-1 - IQ1M_DELTA, -IQ1M_DELTA, 1 - IQ1M_DELTA], dtype=np.float32)
MASKS = np.array([0x00, 0x80, 0x08, 0x88], dtype=np.int64)  # qh shift bits for best_k 0..3


@njit(cache=True)
def _levels(best_k, k):
    """Shifted levels of group k (0: first half, 1: second half) for shift combination best_k."""
    if k == 0:
        return X_P if best_k < 2 else X_M
    return X_P if best_k % 2 == 0 else X_M


@njit(cache=True)
def _weights(xb, qw, use_qw, sigma2, weight):
    for i in range(16):
        if use_qw:
            weight[i] = qw[i] * np.sqrt(sigma2 + xb[i] * xb[i])
        else:
            weight[i] = xb[i] * xb[i]


@njit(cache=True)
def quantize_superblock(xbl, qw, use_qw, pos, kmap, neighbours, o):
    """quantize_row_iq1_m_impl for one super-block; writes the 56 bytes to o."""
    weight = np.empty(16, np.float32)
    px = np.zeros((2, 17), np.float32)
    pw = np.zeros((2, 17), np.float32)
    L = np.zeros(16, np.int64)
    index = np.zeros(2, np.int64)
    scales = np.zeros(16, np.float32)
    shifts = np.zeros(16, np.int64)
    sumqx = np.zeros(4, np.float32)
    sumq2 = np.zeros(4, np.float32)
    qx_p = np.zeros(2, np.float32)
    qx_m = np.zeros(2, np.float32)
    q2_p = np.zeros(2, np.float32)
    q2_m = np.zeros(2, np.float32)
    o[:] = 0
    sumx2 = F32(0)
    for i in range(QK_K):
        sumx2 += xbl[i] * xbl[i]
    sigma2 = F32(2) * sumx2 / F32(QK_K)
    p2 = X_P[2]
    m2 = X_M[2]
    cp1 = X_P[0] * X_P[0] - X_P[1] * X_P[1]
    cp2 = X_P[1] * X_P[1] - X_P[2] * X_P[2]
    cm1 = X_M[0] * X_M[0] - X_M[1] * X_M[1]
    cm2 = X_M[1] * X_M[1] - X_M[2] * X_M[2]
    max_scale = F32(0)
    for ib in range(16):
        xb = xbl[16 * ib:16 * ib + 16]
        _weights(xb, qw[16 * ib:16 * ib + 16], use_qw, sigma2, weight)
        mx = abs(xb[0])
        for i in range(1, 16):
            mx = max(mx, abs(xb[i]))
        if mx < GROUP_MAX_EPS_IQ1_M:
            scales[ib] = 0
            shifts[ib] = 0
            continue
        idx = np.argsort(xb, kind="mergesort")  # stable, like glibc's merge-sort qsort
        # prefix sums of w*x and w in sorted order, kept separately for the two halves of the block
        for j in range(16):
            i = idx[j]
            h = 0 if i < 8 else 1
            px[h, j + 1] = px[h, j] + weight[i] * xb[i]
            px[1 - h, j + 1] = px[1 - h, j]
            pw[h, j + 1] = pw[h, j] + weight[i]
            pw[1 - h, j + 1] = pw[1 - h, j]
        best_score = -FLT_MAX
        scale = mx
        besti1 = -1
        besti2 = -1
        best_k = -1
        for i1 in range(17):
            for i2 in range(i1, 17):
                for h in range(2):
                    sx = px[h, i1] + px[h, i2]
                    qx_p[h] = px[h, 16] * p2 - sx
                    qx_m[h] = px[h, 16] * m2 - sx
                    q2_p[h] = pw[h, 16] * p2 * p2 + pw[h, i1] * cp1 + pw[h, i2] * cp2
                    q2_m[h] = pw[h, 16] * m2 * m2 + pw[h, i1] * cm1 + pw[h, i2] * cm2
                sumqx[0] = qx_p[0] + qx_p[1]
                sumqx[1] = qx_p[0] + qx_m[1]
                sumqx[2] = qx_m[0] + qx_p[1]
                sumqx[3] = qx_m[0] + qx_m[1]
                sumq2[0] = q2_p[0] + q2_p[1]
                sumq2[1] = q2_p[0] + q2_m[1]
                sumq2[2] = q2_m[0] + q2_p[1]
                sumq2[3] = q2_m[0] + q2_m[1]
                for k in range(4):
                    if sumq2[k] > 0 and sumqx[k] * sumqx[k] > best_score * sumq2[k]:
                        scale = sumqx[k] / sumq2[k]
                        best_score = scale * sumqx[k]
                        besti1 = i1
                        besti2 = i2
                        best_k = k
        if besti1 < 0 or besti2 < 0 or best_k < 0:
            scales[ib] = 0
            shifts[ib] = 0
            continue
        for j in range(16):
            L[idx[j]] = 0 if j < besti1 else (1 if j < besti2 else 2)
        if scale < 0:
            for j in range(16):
                L[j] = 2 - L[j]
            scale = -scale
            best_k = 3 - best_k
        all_on_grid = True
        for k in range(2):
            g = snap_ternary(L, 8 * k, xb, weight, scale, _levels(best_k, k), pos, kmap, neighbours)
            if g < 0:
                all_on_grid = False
                g = -g - 1
            index[k] = g
        if not all_on_grid:
            sqx = F32(0)
            sq2 = F32(0)
            for k in range(2):
                xx = _levels(best_k, k)
                for j in range(8):
                    w = weight[8 * k + j]
                    q = xx[(pos[index[k], j] - 1) // 2]
                    sqx += w * q * xb[8 * k + j]
                    sq2 += w * q * q
            if sqx > 0 and sq2 > 0:
                scale = sqx / sq2
        o[2 * ib] = index[0] & 255
        o[2 * ib + 1] = index[1] & 255
        o[32 + ib] = (index[0] >> 8) | ((index[1] >> 8) << 4)
        scales[ib] = scale
        shifts[ib] = best_k
        max_scale = max(max_scale, scale)
    if max_scale == 0:
        return
    sc = np.zeros(4, np.int64)
    d = max_scale / F32(15)
    id = F32(1) / d
    sqx = F32(0)
    sq2 = F32(0)
    for ib in range(16):
        l = max(0, min(7, nearest_int(F32(0.5) * (id * scales[ib] - F32(1)))))
        sc[ib // 4] |= l << (3 * (ib % 4))
        o[32 + ib] |= MASKS[shifts[ib]]
        xb = xbl[16 * ib:16 * ib + 16]
        _weights(xb, qw[16 * ib:16 * ib + 16], use_qw, sigma2, weight)
        for k in range(2):
            xx = _levels(shifts[ib], k)
            g = int(o[2 * ib + k]) + ((int(o[32 + ib]) << (8 - 4 * k)) & 0x700)
            for j in range(8):
                w = weight[8 * k + j]
                q = xx[(pos[g, j] - 1) // 2] * F32(2 * l + 1)
                sqx += w * q * xb[8 * k + j]
                sq2 += w * q * q
    if sq2 > 0:
        d = sqx / sq2
    s = fp32_to_fp16(d * F32(1.1125))
    sc[0] |= (s & 0x000F) << 12
    sc[1] |= (s & 0x00F0) << 8
    sc[2] |= (s & 0x0F00) << 4
    sc[3] |= s & 0xF000
    for w in range(4):
        o[48 + 2 * w] = sc[w] & 0xFF
        o[49 + 2 * w] = sc[w] >> 8


@njit(cache=True, parallel=True)
def _quantize_kernel(x, qw, use_qw, pos, kmap, neighbours, out):
    rows, n = x.shape
    for r in prange(rows):
        for ibl in range(n // QK_K):
            quantize_superblock(x[r, ibl * QK_K:(ibl + 1) * QK_K], qw[ibl * QK_K:(ibl + 1) * QK_K], use_qw,
                                pos, kmap, neighbours, out[r, ibl * TYPE_SIZE:(ibl + 1) * TYPE_SIZE])


def quantize(x, imatrix=None):
    x, imatrix = check_quantize_args(x, imatrix, BLOCK, "IQ1_M")
    g = grid("IQ1_M")
    qw = imatrix if imatrix is not None else np.zeros(x.shape[1], np.float32)
    out = np.zeros((x.shape[0], x.shape[1] // BLOCK * TYPE_SIZE), np.uint8)
    _quantize_kernel(x, qw, imatrix is not None, g.pos, g.kmap, g.neighbours, out)
    return out


def _group_levels(best_k):
    """(N,) shift combination -> (N, 2, 3) level values of the two groups of 8."""
    first = np.where((best_k < 2)[:, None], X_P, X_M)
    second = np.where((best_k % 2 == 0)[:, None], X_P, X_M)
    return np.stack([first, second], axis=1)


def quantize_ref(x, imatrix=None):
    """Numpy reference, vectorised over all 16-weight blocks: the split search runs candidate by candidate in
    ggml's order (i1, i2, then the four shift combinations), then the super-block refit of d."""
    x, imatrix = check_quantize_args(x, imatrix, BLOCK, "IQ1_M")
    g = grid("IQ1_M")
    xs = x.reshape(-1, QK_K)
    nsb = len(xs)
    sigma2 = np.float32(2) * seq_sum(xs * xs) / np.float32(QK_K)
    xb = x.reshape(-1, 16)
    N = len(xb)
    if imatrix is not None:
        weight = np.tile(imatrix.reshape(-1, 16), (x.shape[0], 1)) * np.sqrt(np.repeat(sigma2, 16)[:, None] + xb * xb)
    else:
        weight = xb * xb
    mx = np.abs(xb).max(axis=1)
    live = mx >= GROUP_MAX_EPS_IQ1_M
    idx = np.argsort(xb, axis=1, kind="stable")  # glibc qsort is a stable merge sort
    wx = np.take_along_axis(weight * xb, idx, axis=1)
    ws = np.take_along_axis(weight, idx, axis=1)
    half = idx >= 8
    zero = np.zeros((N, 1), np.float32)
    # prefix sums per half (adding an exact 0.0 for the other half's elements leaves a sum unchanged)
    px = [np.concatenate([zero, np.cumsum(np.where(half == h, wx, 0), axis=1, dtype=np.float32)], 1) for h in (0, 1)]
    pw = [np.concatenate([zero, np.cumsum(np.where(half == h, ws, 0), axis=1, dtype=np.float32)], 1) for h in (0, 1)]
    p2, m2 = X_P[2], X_M[2]
    cp1, cp2 = X_P[0] * X_P[0] - X_P[1] * X_P[1], X_P[1] * X_P[1] - X_P[2] * X_P[2]
    cm1, cm2 = X_M[0] * X_M[0] - X_M[1] * X_M[1], X_M[1] * X_M[1] - X_M[2] * X_M[2]
    best = np.full(N, -FLT_MAX, np.float32)
    scale = mx.copy()
    bi1 = np.full(N, -1)
    bi2 = np.full(N, -1)
    best_k = np.full(N, -1)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for i1 in range(17):
            for i2 in range(i1, 17):
                qxp, qxm, q2p, q2m = [], [], [], []
                for h in (0, 1):
                    sx = px[h][:, i1] + px[h][:, i2]
                    qxp.append(px[h][:, 16] * p2 - sx)
                    qxm.append(px[h][:, 16] * m2 - sx)
                    q2p.append(pw[h][:, 16] * p2 * p2 + pw[h][:, i1] * cp1 + pw[h][:, i2] * cp2)
                    q2m.append(pw[h][:, 16] * m2 * m2 + pw[h][:, i1] * cm1 + pw[h][:, i2] * cm2)
                combos = ((qxp[0] + qxp[1], q2p[0] + q2p[1]), (qxp[0] + qxm[1], q2p[0] + q2m[1]),
                          (qxm[0] + qxp[1], q2m[0] + q2p[1]), (qxm[0] + qxm[1], q2m[0] + q2m[1]))
                for k, (sqx, sq2) in enumerate(combos):
                    better = (sq2 > 0) & (sqx * sqx > best * sq2)
                    scale = np.where(better, sqx / sq2, scale)
                    best = np.where(better, scale * sqx, best)
                    bi1 = np.where(better, i1, bi1)
                    bi2 = np.where(better, i2, bi2)
                    best_k = np.where(better, k, best_k)
    live &= (bi1 >= 0) & (bi2 >= 0) & (best_k >= 0)
    rank = np.empty_like(idx)
    np.put_along_axis(rank, idx, np.arange(16)[None, :].repeat(N, 0), axis=1)
    L = np.where(rank < bi1[:, None], 0, np.where(rank < bi2[:, None], 1, 2))
    neg = scale < 0
    L = np.where(neg[:, None], 2 - L, L)
    scale = np.where(neg, -scale, scale)
    best_k = np.where(neg, 3 - best_k, best_k)
    xx = _group_levels(best_k)  # (N, 2, 3)
    gidx, on = ternary_snap_np(L.reshape(N, 2, 8), xb.reshape(N, 2, 8), weight.reshape(N, 2, 8), scale, xx, g)
    lv = (g.pos[gidx].astype(np.int64) - 1) // 2  # (N, 2, 8)
    q = np.take_along_axis(xx, lv, axis=2).reshape(N, 16)
    sqx, sq2 = seq_sum(weight * q * xb), seq_sum(weight * q * q)
    with np.errstate(invalid="ignore", divide="ignore"):
        refit = ~on.all(axis=1) & (sqx > 0) & (sq2 > 0)
        scale = np.where(refit, sqx / sq2, scale)
    scale = np.where(live, scale, np.float32(0)).reshape(nsb, 16)
    gidx = np.where(live[:, None], gidx, 0)  # (N, 2)
    best_k = np.where(live, best_k, 0)
    qs = (gidx & 255).astype(np.uint8).reshape(nsb, 32)
    qh = ((gidx[:, 0] >> 8) | ((gidx[:, 1] >> 8) << 4)).reshape(nsb, 16)
    # super-block: 3-bit scales against max_scale/15, then d refitted over all 256 weights in C order
    max_scale = scale.max(axis=1)
    alive = max_scale > 0
    d = max_scale / np.float32(15)
    with np.errstate(divide="ignore", invalid="ignore"):
        l = np.clip(np.rint(np.float32(0.5) * ((np.float32(1) / d)[:, None] * scale - np.float32(1))), 0, 7)
    l = np.nan_to_num(l).astype(np.int64)  # (nsb, 16)
    sc = (l.reshape(nsb, 4, 4) << (3 * np.arange(4))).sum(axis=2)
    qh = np.where(alive[:, None], qh | MASKS[best_k.reshape(nsb, 16)], qh)
    lv = (g.pos[gidx].astype(np.int64) - 1) // 2  # empty sub-blocks decode as grid point 0
    q = np.take_along_axis(_group_levels(best_k), lv, axis=2).reshape(nsb, 16, 16)
    q = q * (2 * l + 1).astype(np.float32)[:, :, None]
    xw, ww = xb.reshape(nsb, 16, 16), weight.reshape(nsb, 16, 16)
    sqx = seq_sum((ww * q * xw).reshape(nsb, 256))
    sq2 = seq_sum((ww * q * q).reshape(nsb, 256))
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(sq2 > 0, sqx / sq2, d)
    s = fp32_to_fp16_np(d * np.float32(1.1125)).astype(np.int64)
    top = np.stack([(s & 0x000F) << 12, (s & 0x00F0) << 8, (s & 0x0F00) << 4, s & 0xF000], axis=1)
    sc = np.where(alive[:, None], sc | top, 0).astype("<u2")
    blocks = np.concatenate([qs, qh.astype(np.uint8), sc.view(np.uint8)], axis=1)
    return blocks.reshape(x.shape[0], x.shape[1] // BLOCK * TYPE_SIZE)


def dequantize_ref(blocks, n_per_row):
    blocks = check_blocks(blocks, n_per_row, BLOCK, TYPE_SIZE, "IQ1_M").reshape(-1, TYPE_SIZE)
    sc = blocks[:, 48:56].copy().view("<u2").astype(np.int32)  # (nb, 4)
    d16 = ((sc[:, 0] >> 12) | ((sc[:, 1] >> 8) & 0x00F0) | ((sc[:, 2] >> 4) & 0x0F00) | (sc[:, 3] & 0xF000))
    d = d16.astype(np.uint16).view(np.float16).astype(np.float32)
    sb = np.arange(16)
    s = (sc[:, sb // 4] >> (3 * (sb % 4))) & 7  # (nb, 16 sub-blocks)
    dl = d[:, None] * (2 * s + 1).astype(np.float32)
    qh = blocks[:, 32:48].astype(np.int32)  # (nb, 16)
    k = np.arange(2)
    idx = blocks[:, :32].reshape(-1, 16, 2).astype(np.int32) | (((qh[:, :, None] >> (4 * k)) & 7) << 8)
    delta = np.where(qh[:, :, None] & (0x08 << (4 * k)), -IQ1M_DELTA, IQ1M_DELTA).astype(np.float32)
    vals = grid("IQ1_M").values[idx]  # (nb, 16, 2, 8)
    y = dl[:, :, None, None] * (vals + delta[..., None])
    return y.astype(np.float32).reshape(-1, n_per_row)


def _emit_block(builder, block, y, values):
    """dequantize_row_iq1_m: d is spread over the top nibbles of the 4 scale words; per 16 weights a 3-bit
    scale, per 8 a grid index (qs byte | 3 bits of qh << 8) and a delta sign; y = dl * (value + delta)."""
    I32, F32 = lanes.I32, lanes.F32
    sc = [builder.zext(lanes.load(builder, block, 48 + 2 * k, lanes.I16), I32) for k in range(4)]
    d16 = I32(0)                                        # nibble k of d is the top nibble of word k
    for k in range(4):
        d16 = builder.or_(d16, builder.and_(builder.lshr(sc[k], I32(12 - 4 * k)), I32(0xF << (4 * k))))
    d = lanes.half_to_f32(builder, builder.trunc(d16, lanes.I16))
    plus, minus = F32(float(IQ1M_DELTA)), F32(float(-IQ1M_DELTA))
    for sb in range(16):
        s = builder.and_(builder.lshr(sc[sb // 4], I32(3 * (sb % 4))), I32(7))
        dl = lanes.scale_f32(builder, d, builder.add(builder.shl(s, I32(1)), I32(1)))
        qh = lanes.byte_at(builder, block, 32 + sb)
        for k in range(2):
            gi = builder.or_(lanes.byte_at(builder, block, 2 * sb + k),
                             builder.shl(builder.and_(builder.lshr(qh, I32(4 * k)), I32(7)), I32(8)))
            neg = builder.icmp_unsigned("!=", builder.and_(qh, I32(0x08 << (4 * k))), I32(0))
            lanes.emit_grid_group(builder, values, gi, 8, dl, y, 16 * sb + 8 * k,
                                  delta=builder.select(neg, minus, plus))


_dequantize_row = lanes.row_kernel(_emit_block, BLOCK, TYPE_SIZE, with_table=True)


@njit(parallel=True, cache=True)
def _dequantize_rows(blocks, out, values):
    for r in prange(out.shape[0]):
        _dequantize_row(blocks, out, r, values)


def dequantize(blocks, n_per_row):
    return run_dequantize(_dequantize_rows, blocks, n_per_row, BLOCK, TYPE_SIZE, "IQ1_M", grid("IQ1_M").values)
