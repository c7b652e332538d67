"""IQ3_XXS: 3.0625 bpw; groups of 4 magnitudes on a 256-point lattice in {1,3,...,15}^4, signs per 8.

Block layout (block_iq3_xxs, 98 bytes per 256 weights): d (fp16) | 64 grid-index bytes (8 per 32
weights) | 8 uint32 (four 7-bit sign masks | 4-bit scale << 28, one word per 32 weights).
Dequantized: y = d * (0.5 + s) * 0.5 * iq3xxs_grid[idx][j] * sign_j.

Quantization: ggml-quants.c ``quantize_row_iq3_xxs_impl(256, ...)`` (imatrix optional: without one the
importance is x^2; with one qw * sqrt(sigma2 + x^2), sigma2 = 2*mean(x^2)).  Per 32 weights: signs as
IQ2_XXS (parity per group of 8); 31 trial scales (15 + 0.2*is)/max starting from max/15, each group of
4 snapped to the grid (neighbour lists for off-grid points), best weighted least-squares fit kept;
off-grid groups re-snapped at the final scale.  The stored super-block scale is d*1.0125 (ggml's
"fudge factor"), the 4-bit sub-block scales are computed against d = max_scale/31 itself.
"""
import numpy as np
from numba import njit, prange

from workbench.gguf.constants import QK_K
from workbench.cpu import ir as lanes
from workbench.cpu.fp16 import fp32_to_fp16_np, put_fp16
from workbench.quant.blocks import check_blocks, check_quantize_args, get_fp16_np, run_dequantize
from workbench.quant.grid_search import fit_odd, grid_subblocks_ref, signs_and_magnitudes, snap_group
from workbench.quant.rounding import F32, nearest_int
from workbench.quant.scale_search import GROUP_MAX_EPS_IQ3_XXS
from workbench.quant.iq_grids import KSIGNS_IQ2XS, grid

BLOCK = QK_K
TYPE_SIZE = 98
NEEDS_IMATRIX = False
KMAXQ = 8


@njit(cache=True)
def quantize_superblock(xbl, qw, use_qw, pos, kmap, neighbours, o):
    """quantize_row_iq3_xxs_impl(256, ...) for one super-block; writes the 98 bytes to o."""
    weight = np.empty(32, np.float32)
    waux = np.empty(32, np.float32)
    xval = np.empty(32, np.float32)
    L = np.zeros(32, np.int64)
    Laux = np.zeros(32, np.int64)
    on_grid = np.ones(8, np.bool_)
    on_grid_aux = np.ones(8, np.bool_)
    block_signs = np.zeros(4, np.int64)
    scales = np.zeros(8, np.float32)
    signs_words = np.zeros(8, np.int64)
    o[:] = 0
    sumx2 = F32(0)
    for i in range(QK_K):
        sumx2 += xbl[i] * xbl[i]
    sigma2 = F32(2) * sumx2 / F32(QK_K)
    max_scale = F32(0)
    for ib in range(8):
        xb = xbl[32 * ib:32 * ib + 32]
        for i in range(32):
            if use_qw:
                weight[i] = qw[32 * ib + i] * np.sqrt(sigma2 + xb[i] * xb[i])
            else:
                weight[i] = xb[i] * xb[i]
        for i in range(32):
            waux[i] = np.sqrt(weight[i])
        signs_and_magnitudes(xb, weight, xval, block_signs)
        mx = xval[0]
        for i in range(1, 32):
            mx = max(mx, xval[i])
        L[:] = 0
        if mx < GROUP_MAX_EPS_IQ3_XXS:
            scales[ib] = 0
            continue
        best = F32(0)
        scale = mx / F32(2 * KMAXQ - 1)
        on_grid[:] = True
        for is_ in range(-15, 16):
            id = (F32(2 * KMAXQ - 1) + F32(is_) * F32(0.2)) / mx
            this_scale = F32(1) / id
            for k in range(8):
                on_grid_aux[k] = snap_group(xval, waux, 4 * k, id, this_scale, KMAXQ, pos, kmap, neighbours,
                                            Laux) >= 0
            sumqx, sumq2 = fit_odd(weight, xval, Laux, 32)
            if sumq2 > 0 and sumqx * sumqx > best * sumq2:
                scale = sumqx / sumq2
                best = scale * sumqx
                L[:] = Laux
                on_grid[:] = on_grid_aux
        if (not np.all(on_grid)) and scale > 0:
            id = F32(1) / scale
            for k in range(8):
                if not on_grid[k]:
                    snap_group(xval, waux, 4 * k, id, scale, KMAXQ, pos, kmap, neighbours, L)
            sumqx, sumq2 = fit_odd(weight, xval, L, 32)
            if sumq2 > 0:
                scale = sumqx / sumq2
        if scale < 0:  # never happens in practice; ggml flips only the first 4 masks
            scale = -scale
            for k in range(4):
                block_signs[k] = (~block_signs[k]) & 127
        for k in range(8):
            u = 0
            for i in range(4):
                u |= L[4 * k + i] << (3 * i)
            o[2 + 8 * ib + k] = kmap[u]
        signs_words[ib] = block_signs[0] | (block_signs[1] << 7) | (block_signs[2] << 14) | (block_signs[3] << 21)
        scales[ib] = scale
        max_scale = max(max_scale, scale)
    if max_scale == 0:
        o[:] = 0
        return
    d = max_scale / F32(31)
    put_fp16(o, 0, d * F32(1.0125))
    id = F32(1) / d
    for ib in range(8):
        l = max(0, min(15, nearest_int(F32(0.5) * (id * scales[ib] - F32(1)))))
        w = signs_words[ib] | (l << 28)
        for b in range(4):
            o[66 + 4 * ib + b] = (w >> (8 * b)) & 0xFF


@njit(cache=True, parallel=True)
def _quantize_kernel(x, qw, use_qw, pos, kmap, neighbours, out):
    rows, n = x.shape
    for r in prange(rows):
        for ibl in range(n // QK_K):
            quantize_superblock(x[r, ibl * QK_K:(ibl + 1) * QK_K], qw[ibl * QK_K:(ibl + 1) * QK_K], use_qw,
                                pos, kmap, neighbours, out[r, ibl * TYPE_SIZE:(ibl + 1) * TYPE_SIZE])


def quantize(x, imatrix=None):
    x, imatrix = check_quantize_args(x, imatrix, BLOCK, "IQ3_XXS")
    g = grid("IQ3_XXS")
    qw = imatrix if imatrix is not None else np.zeros(x.shape[1], np.float32)
    out = np.zeros((x.shape[0], x.shape[1] // BLOCK * TYPE_SIZE), np.uint8)
    _quantize_kernel(x, qw, imatrix is not None, g.pos, g.kmap, g.neighbours, out)
    return out


def quantize_ref(x, imatrix=None):
    """Numpy reference: the sub-block search vectorised over all sub-blocks (grid_search.grid_subblocks_ref),
    then the super-block scale and packing."""
    x, imatrix = check_quantize_args(x, imatrix, BLOCK, "IQ3_XXS")
    scale, gidx, signs, live = grid_subblocks_ref(
        x, imatrix, grid("IQ3_XXS"), bs=32, gs=4, kmax=KMAXQ, trials=range(-15, 16), step=0.2, parity=True,
        sigma_mult=2, noimx="x2", eps=GROUP_MAX_EPS_IQ3_XXS, use_qp=False, resnap="off", on_grid_init=True)
    qs = np.where(live[:, None], gidx, 0).astype(np.uint8).reshape(-1, 64)
    sw = np.where(live, (signs.astype(np.uint32) << (7 * np.arange(4, dtype=np.uint32))).sum(axis=1), 0)
    scale = scale.reshape(-1, 8)
    max_scale = scale.max(axis=1)
    d = max_scale / np.float32(31)
    with np.errstate(divide="ignore", invalid="ignore"):
        l = np.clip(np.rint(np.float32(0.5) * ((np.float32(1) / d)[:, None] * scale - np.float32(1))), 0, 15)
    l = np.nan_to_num(l).astype(np.uint32)
    words = (sw.reshape(-1, 8) | (l << 28)).astype("<u4")
    dead = max_scale == 0
    qs[dead] = 0
    words[dead] = 0
    dh = np.where(dead, np.float32(0), d * np.float32(1.0125))
    blocks = np.concatenate([fp32_to_fp16_np(dh).view(np.uint8).reshape(-1, 2), qs, words.view(np.uint8)], axis=1)
    return blocks.reshape(x.shape[0], x.shape[1] // BLOCK * TYPE_SIZE)


def dequantize_ref(blocks, n_per_row):
    blocks = check_blocks(blocks, n_per_row, BLOCK, TYPE_SIZE, "IQ3_XXS").reshape(-1, TYPE_SIZE)
    d = get_fp16_np(blocks[:, :2])
    idx = blocks[:, 2:66].reshape(-1, 8, 4, 2)  # (nb, ib32, group of 8, half)
    aux = blocks[:, 66:98].copy().view("<u4")  # (nb, ib32)
    db = d[:, None] * (np.float32(0.5) + (aux >> 28).astype(np.float32)) * np.float32(0.5)
    signs = KSIGNS_IQ2XS[(aux[:, :, None] >> (7 * np.arange(4, dtype=np.uint32))) & 127]  # (nb, 8, 4)
    neg = (signs[..., None] >> np.arange(8, dtype=np.uint8)) & 1  # (nb, 8, 4, 8)
    vals = grid("IQ3_XXS").values[idx].reshape(-1, 8, 4, 8)
    y = db[:, :, None, None] * vals * np.where(neg == 1, np.float32(-1), np.float32(1))
    return y.astype(np.float32).reshape(-1, n_per_row)


def _emit_block(builder, block, y, values):
    """dequantize_row_iq3_xxs: per 32 weights 8 grid indices (4 values each) and a word (7-bit sign indices
    x4, scale << 28); y = (db * grid value) * (+-1), db = d * (0.5 + scale) * 0.5."""
    I32 = lanes.I32
    d = lanes.fp16(builder, block, 0)
    for ib in range(8):
        aux = lanes.load(builder, block, 66 + 4 * ib, I32)
        db = lanes.half_scale(builder, d, builder.lshr(aux, I32(28)), 0.5)
        for l in range(4):
            signs = lanes.ksigns(builder, builder.and_(builder.lshr(aux, I32(7 * l)), I32(127)))
            for h in range(2):
                lanes.emit_grid_group(builder, values, lanes.byte_at(builder, block, 2 + 8 * ib + 2 * l + h), 4,
                                      db, y, 32 * ib + 8 * l + 4 * h, signs, 4 * h)


_dequantize_row = lanes.row_kernel(_emit_block, BLOCK, TYPE_SIZE, with_table=True)


@njit(parallel=True, cache=True)
def _dequantize_rows(blocks, out, values):
    for r in prange(out.shape[0]):
        _dequantize_row(blocks, out, r, values)


def dequantize(blocks, n_per_row):
    return run_dequantize(_dequantize_rows, blocks, n_per_row, BLOCK, TYPE_SIZE, "IQ3_XXS", grid("IQ3_XXS").values)
