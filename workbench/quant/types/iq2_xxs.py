"""IQ2_XXS: 2.0625 bpw; groups of 8 magnitudes snapped to a 256-point lattice in {1,3,5}^8 (E8-like).

Block layout (block_iq2_xxs, 66 bytes per 256 weights): d (fp16) | 8 x (two uint32 per 32 weights):
  word 0: four 8-bit grid indices (one per group of 8);
  word 1: four 7-bit sign masks (the 8th sign makes the count of minus signs even) | 4-bit scale << 28.
Dequantized: y = d * (0.5 + s) * 0.25 * iq2xxs_grid[idx][j] * sign_j.

Quantization: ggml-quants.c ``quantize_row_iq2_xxs_impl`` (imatrix required).  Per 32 weights:
  * importance w = qw * sqrt(sigma2 + x^2), sigma2 = mean(x^2) over the super-block; signs are taken
    out (xval = |x|), and when a group of 8 has an odd number of negatives the least important one
    (smallest w*x^2) is flipped so the parity rule holds;
  * start scale from make_qp_quants(nmax 4), then 13 trial scales (5 + 0.1*is)/eff_max: levels
    l = nearest_int((x*id - 1)/2) clamped to 0..2, snapped to the grid via the precomputed neighbour
    lists when off-grid, keeping the best weighted least-squares fit;
  * the final levels come from the best scale; 4-bit scales relative to d = max_scale/31.
"""
import numpy as np
from numba import njit, prange

from workbench.gguf.constants import QK_K
from workbench.cpu import ir as lanes
from workbench.cpu.fp16 import fp32_to_fp16_np, put_fp16
from workbench.quant.blocks import check_blocks, check_quantize_args, get_fp16_np, run_dequantize
from workbench.quant.grid_search import fit_odd, grid_subblocks_ref, signs_and_magnitudes, snap_group
from workbench.quant.rounding import F32, nearest_int
from workbench.quant.scale_search import GROUP_MAX_EPS, make_qp_quants
from workbench.quant.iq_grids import KSIGNS_IQ2XS, grid

BLOCK = QK_K
TYPE_SIZE = 66
NEEDS_IMATRIX = True
KMAXQ = 3


@njit(cache=True)
def snap_groups(xval, waux, id, scale, kmax, pos, kmap, neighbours, L, gidx):
    """snap_group for the 4 groups of 8 of a 32-weight block."""
    for k in range(4):
        g = snap_group(xval, waux, 8 * k, id, scale, kmax, pos, kmap, neighbours, L)
        gidx[k] = g if g >= 0 else -g - 1


@njit(cache=True)
def quantize_superblock(xbl, qw, pos, kmap, neighbours, o):
    """quantize_row_iq2_xxs_impl for one super-block; writes the 66 bytes to o."""
    weight = np.empty(32, np.float32)
    waux = np.empty(32, np.float32)
    xval = np.empty(32, np.float32)
    L = np.zeros(32, np.int64)
    Laux = np.zeros(32, np.int64)
    Lqp = np.zeros(32, np.uint8)  # make_qp_quants' levels (unused; uint8 like ggml's, see there)
    gidx = np.zeros(4, np.int64)
    block_signs = np.zeros(4, np.int64)
    scales = np.zeros(8, np.float32)
    q2 = np.zeros(16, np.uint32)
    sumx2 = F32(0)
    for i in range(QK_K):
        sumx2 += xbl[i] * xbl[i]
    sigma2 = sumx2 / F32(QK_K)
    max_scale = F32(0)
    for ib in range(8):
        xb = xbl[32 * ib:32 * ib + 32]
        for i in range(32):
            weight[i] = qw[32 * ib + i] * np.sqrt(sigma2 + xb[i] * xb[i])
        for i in range(32):
            waux[i] = np.sqrt(weight[i])
        signs_and_magnitudes(xb, weight, xval, block_signs)
        mx = xval[0]
        for i in range(1, 32):
            mx = max(mx, xval[i])
        if mx < GROUP_MAX_EPS:
            scales[ib] = 0
            continue
        scale = make_qp_quants(32, KMAXQ + 1, xval, Lqp, weight)
        eff_max = scale * F32(KMAXQ)
        if eff_max <= 0:
            scales[ib] = 0
            continue
        best = F32(0)
        for is_ in range(-6, 7):
            id = (F32(2 * KMAXQ - 1) + F32(is_) * F32(0.1)) / eff_max
            this_scale = F32(1) / id
            snap_groups(xval, waux, id, this_scale, KMAXQ, pos, kmap, neighbours, Laux, gidx)
            sumqx, sumq2 = fit_odd(weight, xval, Laux, 32)
            if sumq2 > 0 and sumqx * sumqx > best * sumq2:
                scale = sumqx / sumq2
                best = scale * sumqx
        if scale > 0:
            snap_groups(xval, waux, F32(1) / scale, scale, KMAXQ, pos, kmap, neighbours, L, gidx)
            sumqx, sumq2 = fit_odd(weight, xval, L, 32)
            if sumq2 > 0:
                scale = sumqx / sumq2
        if scale < 0:  # "should never happen" in ggml: flip the scale and the signs
            scale = -scale
            for k in range(4):
                block_signs[k] = (~block_signs[k]) & 127
        for k in range(4):
            q2[2 * ib] |= np.uint32(gidx[k] << (8 * k))
            q2[2 * ib + 1] |= np.uint32(block_signs[k] << (7 * k))
        scales[ib] = scale
        max_scale = max(max_scale, scale)
    o[:] = 0
    if max_scale == 0:
        return
    d = max_scale / F32(31)
    put_fp16(o, 0, d)
    id = F32(1) / d
    for ib in range(8):
        l = max(0, min(15, nearest_int(F32(0.5) * (id * scales[ib] - F32(1)))))
        q2[2 * ib + 1] |= np.uint32(l << 28)
    for w in range(16):
        for b in range(4):
            o[2 + 4 * w + b] = (q2[w] >> np.uint32(8 * b)) & np.uint32(0xFF)


@njit(cache=True, parallel=True)
def _quantize_kernel(x, qw, pos, kmap, neighbours, out):
    rows, n = x.shape
    for r in prange(rows):
        for ibl in range(n // QK_K):
            quantize_superblock(x[r, ibl * QK_K:(ibl + 1) * QK_K], qw[ibl * QK_K:(ibl + 1) * QK_K],
                                pos, kmap, neighbours, out[r, ibl * TYPE_SIZE:(ibl + 1) * TYPE_SIZE])


def quantize(x, imatrix=None):
    x, imatrix = check_quantize_args(x, imatrix, BLOCK, "IQ2_XXS", NEEDS_IMATRIX)
    g = grid("IQ2_XXS")
    out = np.zeros((x.shape[0], x.shape[1] // BLOCK * TYPE_SIZE), np.uint8)
    _quantize_kernel(x, imatrix, g.pos, g.kmap, g.neighbours, out)
    return out


def quantize_ref(x, imatrix=None):
    """Numpy reference: the sub-block search vectorised over all sub-blocks (grid_search.grid_subblocks_ref),
    then the super-block scale and packing."""
    x, imatrix = check_quantize_args(x, imatrix, BLOCK, "IQ2_XXS", NEEDS_IMATRIX)
    scale, gidx, signs, live = grid_subblocks_ref(
        x, imatrix, grid("IQ2_XXS"), bs=32, gs=8, kmax=KMAXQ, trials=range(-6, 7), step=0.1, parity=True,
        sigma_mult=1, noimx=None, eps=GROUP_MAX_EPS, use_qp=True, resnap="all", on_grid_init=True)
    scale = scale.reshape(-1, 8)  # (super-blocks, sub-blocks)
    max_scale = scale.max(axis=1)
    d = max_scale / np.float32(31)
    with np.errstate(divide="ignore", invalid="ignore"):
        l = np.clip(np.rint(np.float32(0.5) * ((np.float32(1) / d)[:, None] * scale - np.float32(1))), 0, 15)
    l = np.nan_to_num(l).astype(np.uint32)
    w0 = np.where(live, (gidx.astype(np.uint32) << (8 * np.arange(4, dtype=np.uint32))).sum(axis=1), 0)
    w1 = np.where(live, (signs.astype(np.uint32) << (7 * np.arange(4, dtype=np.uint32))).sum(axis=1), 0)
    words = np.stack([w0.reshape(-1, 8), w1.reshape(-1, 8) | (l << 28)], axis=2).astype("<u4")  # (nsb, 8, 2)
    words[max_scale == 0] = 0
    dh = np.where(max_scale == 0, np.float32(0), d)
    blocks = np.concatenate([fp32_to_fp16_np(dh).view(np.uint8).reshape(-1, 2), words.view(np.uint8).reshape(-1, 64)], 1)
    return blocks.reshape(x.shape[0], x.shape[1] // BLOCK * TYPE_SIZE)


def dequantize_ref(blocks, n_per_row):
    blocks = check_blocks(blocks, n_per_row, BLOCK, TYPE_SIZE, "IQ2_XXS").reshape(-1, TYPE_SIZE)
    d = get_fp16_np(blocks[:, :2])
    aux = blocks[:, 2:].copy().view("<u4").reshape(-1, 8, 2)  # (nb, ib32, word)
    idx = blocks[:, 2:].reshape(-1, 8, 8)[:, :, :4]  # grid index bytes of word 0
    db = d[:, None] * (np.float32(0.5) + (aux[:, :, 1] >> 28).astype(np.float32)) * np.float32(0.25)
    signs = KSIGNS_IQ2XS[(aux[:, :, 1:2] >> (7 * np.arange(4, dtype=np.uint32))) & 127]  # (nb, 8, 4)
    neg = (signs[..., None] >> np.arange(8, dtype=np.uint8)) & 1  # (nb, 8, 4, 8)
    vals = grid("IQ2_XXS").values[idx]  # (nb, 8, 4, 8)
    y = db[:, :, None, None] * vals * np.where(neg == 1, np.float32(-1), np.float32(1))
    return y.astype(np.float32).reshape(-1, n_per_row)


def _emit_block(builder, block, y, values):
    """dequantize_row_iq2_xxs: per 32 weights two words, 4 grid indices (bytes) and (7-bit sign indices x4,
    scale << 28); y = (db * grid value) * (+-1), db = d * (0.5 + scale) * 0.25."""
    I32 = lanes.I32
    d = lanes.fp16(builder, block, 0)
    for ib in range(8):
        aux1 = lanes.load(builder, block, 2 + 8 * ib + 4, I32)
        db = lanes.half_scale(builder, d, builder.lshr(aux1, I32(28)), 0.25)
        for l in range(4):
            signs = lanes.ksigns(builder, builder.and_(builder.lshr(aux1, I32(7 * l)), I32(127)))
            lanes.emit_grid_group(builder, values, lanes.byte_at(builder, block, 2 + 8 * ib + l), 8, db, y,
                                  32 * ib + 8 * l, signs)


_dequantize_row = lanes.row_kernel(_emit_block, BLOCK, TYPE_SIZE, with_table=True)


@njit(parallel=True, cache=True)
def _dequantize_rows(blocks, out, values):
    for r in prange(out.shape[0]):
        _dequantize_row(blocks, out, r, values)


def dequantize(blocks, n_per_row):
    return run_dequantize(_dequantize_rows, blocks, n_per_row, BLOCK, TYPE_SIZE, "IQ2_XXS", grid("IQ2_XXS").values)
