"""IQ2_XS: 2.3125 bpw; as IQ2_XXS but a 512-point lattice, 9-bit index + 7 sign bits per group of 8 and a
4-bit scale per 16 weights.

Block layout (block_iq2_xs, 74 bytes per 256 weights): d (fp16) | qs[32] (uint16: grid index | signs << 9)
| scales[8] (two 4-bit scales per byte, low nibble first).
Dequantized: y = d * (0.5 + s) * 0.25 * iq2xs_grid[idx][j] * sign_j.

Quantization: ggml-quants.c ``quantize_row_iq2_xs_impl`` (imatrix required).  Per 16 weights (two
groups of 8): signs as IQ2_XXS; 19 trial scales (5 + 0.1*is)/max, is = -9..9, starting from max/5,
keeping the best weighted least-squares fit and remembering which groups were on the grid; groups that
ended off the grid are re-snapped at the final scale, which is then refitted.  Sub-block scales are
4-bit relative to d = max_scale/31.
"""
import numpy as np
from numba import njit, prange

from workbench.gguf.constants import QK_K
from workbench.cpu import ir as lanes
from workbench.cpu.fp16 import fp32_to_fp16_np, put_fp16
from workbench.quant.blocks import check_blocks, check_quantize_args, get_fp16_np, run_dequantize
from workbench.quant.grid_search import fit_odd, grid_subblocks_ref, signs_and_magnitudes, snap_group
from workbench.quant.rounding import F32, nearest_int
from workbench.quant.scale_search import GROUP_MAX_EPS
from workbench.quant.iq_grids import KSIGNS_IQ2XS, grid

BLOCK = QK_K
TYPE_SIZE = 74
NEEDS_IMATRIX = True
KMAXQ = 3


@njit(cache=True)
def quantize_superblock(xbl, qw, pos, kmap, neighbours, o):
    """quantize_row_iq2_xs_impl for one super-block; writes the 74 bytes to o."""
    weight = np.empty(16, np.float32)
    waux = np.empty(16, np.float32)
    xval = np.empty(16, np.float32)
    L = np.zeros(16, np.int64)
    Laux = np.zeros(16, np.int64)
    on_grid = np.ones(2, np.bool_)
    on_grid_aux = np.ones(2, np.bool_)
    block_signs = np.zeros(2, np.int64)
    scales = np.zeros(16, np.float32)
    q2 = np.zeros(32, np.int64)
    sumx2 = F32(0)
    for i in range(QK_K):
        sumx2 += xbl[i] * xbl[i]
    sigma2 = sumx2 / F32(QK_K)
    max_scale = F32(0)
    for ib in range(16):
        xb = xbl[16 * ib:16 * ib + 16]
        for i in range(16):
            weight[i] = qw[16 * ib + i] * np.sqrt(sigma2 + xb[i] * xb[i])
        for i in range(16):
            waux[i] = np.sqrt(weight[i])
        signs_and_magnitudes(xb, weight, xval, block_signs)
        mx = xval[0]
        for i in range(1, 16):
            mx = max(mx, xval[i])
        L[:] = 0
        if mx < GROUP_MAX_EPS:
            scales[ib] = 0
            continue
        best = F32(0)
        scale = mx / F32(2 * KMAXQ - 1)
        on_grid[:] = True
        for is_ in range(-9, 10):
            id = (F32(2 * KMAXQ - 1) + F32(is_) * F32(0.1)) / mx
            this_scale = F32(1) / id
            for k in range(2):
                on_grid_aux[k] = snap_group(xval, waux, 8 * k, id, this_scale, KMAXQ, pos, kmap, neighbours,
                                            Laux) >= 0
            sumqx, sumq2 = fit_odd(weight, xval, Laux, 16)
            if sumq2 > 0 and sumqx * sumqx > best * sumq2:
                scale = sumqx / sumq2
                best = scale * sumqx
                L[:] = Laux
                on_grid[:] = on_grid_aux
        if (not (on_grid[0] and on_grid[1])) and scale > 0:
            id = F32(1) / scale
            for k in range(2):
                if not on_grid[k]:
                    snap_group(xval, waux, 8 * k, id, scale, KMAXQ, pos, kmap, neighbours, L)
            sumqx, sumq2 = fit_odd(weight, xval, L, 16)
            if sumq2 > 0:
                scale = sumqx / sumq2
        if scale < 0:
            scale = -scale
            for k in range(2):
                block_signs[k] = (~block_signs[k]) & 127
        for k in range(2):
            u = 0
            for i in range(8):
                u |= L[8 * k + i] << (2 * i)
            q2[2 * ib + k] = kmap[u] | (block_signs[k] << 9)  # every final point is on the grid
        scales[ib] = scale
        max_scale = max(max_scale, scale)
    o[:] = 0
    if max_scale == 0:
        return
    d = max_scale / F32(31)
    put_fp16(o, 0, d)
    id = F32(1) / d
    for ib in range(16):
        l = max(0, min(15, nearest_int(F32(0.5) * (id * scales[ib] - F32(1)))))
        o[66 + ib // 2] |= l << (4 * (ib % 2))
    for w in range(32):
        o[2 + 2 * w] = q2[w] & 0xFF
        o[3 + 2 * w] = q2[w] >> 8


@njit(cache=True, parallel=True)
def _quantize_kernel(x, qw, pos, kmap, neighbours, out):
    rows, n = x.shape
    for r in prange(rows):
        for ibl in range(n // QK_K):
            quantize_superblock(x[r, ibl * QK_K:(ibl + 1) * QK_K], qw[ibl * QK_K:(ibl + 1) * QK_K],
                                pos, kmap, neighbours, out[r, ibl * TYPE_SIZE:(ibl + 1) * TYPE_SIZE])


def quantize(x, imatrix=None):
    x, imatrix = check_quantize_args(x, imatrix, BLOCK, "IQ2_XS", NEEDS_IMATRIX)
    g = grid("IQ2_XS")
    out = np.zeros((x.shape[0], x.shape[1] // BLOCK * TYPE_SIZE), np.uint8)
    _quantize_kernel(x, imatrix, g.pos, g.kmap, g.neighbours, out)
    return out


def quantize_ref(x, imatrix=None):
    """Numpy reference: the sub-block search vectorised over all sub-blocks (grid_search.grid_subblocks_ref),
    then the super-block scale and packing."""
    x, imatrix = check_quantize_args(x, imatrix, BLOCK, "IQ2_XS", NEEDS_IMATRIX)
    scale, gidx, signs, live = grid_subblocks_ref(
        x, imatrix, grid("IQ2_XS"), bs=16, gs=8, kmax=KMAXQ, trials=range(-9, 10), step=0.1, parity=True,
        sigma_mult=1, noimx=None, eps=GROUP_MAX_EPS, use_qp=False, resnap="off", on_grid_init=True)
    scale = scale.reshape(-1, 16)  # (super-blocks, sub-blocks of 16)
    max_scale = scale.max(axis=1)
    d = max_scale / np.float32(31)
    with np.errstate(divide="ignore", invalid="ignore"):
        l = np.clip(np.rint(np.float32(0.5) * ((np.float32(1) / d)[:, None] * scale - np.float32(1))), 0, 15)
    l = np.nan_to_num(l).astype(np.uint8)
    q2 = np.where(live[:, None], gidx | (signs << 9), 0).astype("<u2").reshape(-1, 32)
    sc = l[:, 0::2] | (l[:, 1::2] << 4)
    dead = max_scale == 0
    q2[dead] = 0
    sc[dead] = 0
    dh = np.where(dead, np.float32(0), d)
    blocks = np.concatenate([fp32_to_fp16_np(dh).view(np.uint8).reshape(-1, 2), q2.view(np.uint8), sc], axis=1)
    return blocks.reshape(x.shape[0], x.shape[1] // BLOCK * TYPE_SIZE)


def dequantize_ref(blocks, n_per_row):
    blocks = check_blocks(blocks, n_per_row, BLOCK, TYPE_SIZE, "IQ2_XS").reshape(-1, TYPE_SIZE)
    d = get_fp16_np(blocks[:, :2])
    qs = blocks[:, 2:66].copy().view("<u2").reshape(-1, 8, 4)  # (nb, ib32, group)
    sc = blocks[:, 66:74]
    db = d[:, None, None] * (np.float32(0.5) + np.stack([sc & 0xF, sc >> 4], axis=2).astype(np.float32)) \
        * np.float32(0.25)  # (nb, ib32, half)
    db = np.repeat(db, 2, axis=2)  # group l uses db[l // 2]
    signs = KSIGNS_IQ2XS[qs >> 9]
    neg = (signs[..., None] >> np.arange(8, dtype=np.uint8)) & 1
    vals = grid("IQ2_XS").values[qs & 511]
    y = db[..., None] * vals * np.where(neg == 1, np.float32(-1), np.float32(1))
    return y.astype(np.float32).reshape(-1, n_per_row)


def _emit_block(builder, block, y, values):
    """dequantize_row_iq2_xs: per group of 8 a uint16 (grid index 9 bits, sign index 7 bits); the 4-bit
    scales of groups 0-1 / 2-3 of each 32 in scales[ib]; y = (db * grid value) * (+-1)."""
    I32 = lanes.I32
    d = lanes.fp16(builder, block, 0)
    for ib in range(8):
        sc = lanes.byte_at(builder, block, 66 + ib)
        db = [lanes.half_scale(builder, d, builder.and_(sc, I32(0xF)), 0.25),
              lanes.half_scale(builder, d, builder.lshr(sc, I32(4)), 0.25)]
        for l in range(4):
            q = builder.zext(lanes.load(builder, block, 2 + 2 * (4 * ib + l), lanes.I16), I32)
            signs = lanes.ksigns(builder, builder.lshr(q, I32(9)))
            lanes.emit_grid_group(builder, values, builder.and_(q, I32(511)), 8, db[l // 2], y, 32 * ib + 8 * l,
                                  signs)


_dequantize_row = lanes.row_kernel(_emit_block, BLOCK, TYPE_SIZE, with_table=True)


@njit(parallel=True, cache=True)
def _dequantize_rows(blocks, out, values):
    for r in prange(out.shape[0]):
        _dequantize_row(blocks, out, r, values)


def dequantize(blocks, n_per_row):
    return run_dequantize(_dequantize_rows, blocks, n_per_row, BLOCK, TYPE_SIZE, "IQ2_XS", grid("IQ2_XS").values)
