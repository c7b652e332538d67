"""IQ2_S: 2.5625 bpw; groups of 8 magnitudes on a 1024-point lattice in {1,3,5}^8, explicit signs.

Block layout (block_iq2_s, 82 bytes per 256 weights): d (fp16) | qs[32] (grid index low 8 bits, one per
group of 8) | signs[32] (one bit per weight) | qh[8] (2 high index bits per group, 4 groups per byte) |
scales[8] (4-bit scale per 16 weights, low nibble first).
Dequantized: y = d * (0.5 + s) * 0.25 * iq2s_grid[idx][j] * sign_j.

Quantization: ggml-quants.c ``quantize_row_iq2_s_impl`` (imatrix optional; without one the importance
is sigma2/4 + x^2 with sigma2 = 2*mean(x^2)).  Per 16 weights: signs stored as they are; 19 trial scales
(5 + 0.1*is)/max from max/5; groups that the winning trial left off the grid are re-snapped at the final
scale (each off-grid point has only its nearest grid points as candidates: nwant = 1).  Stored
super-block scale d*0.9875, 4-bit sub-block scales against d = max_scale/31.
"""
import numpy as np
from numba import njit, prange

from workbench.gguf.constants import QK_K
from workbench.cpu import ir as lanes
from workbench.cpu.fp16 import fp32_to_fp16_np, put_fp16
from workbench.quant.blocks import check_blocks, check_quantize_args, get_fp16_np, run_dequantize
from workbench.quant.grid_search import fit_odd, grid_subblocks_ref, snap_group
from workbench.quant.rounding import F32, nearest_int
from workbench.quant.scale_search import GROUP_MAX_EPS_IQ2_S
from workbench.quant.iq_grids import grid

BLOCK = QK_K
TYPE_SIZE = 82
NEEDS_IMATRIX = False
KMAXQ = 3


@njit(cache=True)
def quantize_superblock(xbl, qw, use_qw, pos, kmap, neighbours, o):
    """quantize_row_iq2_s_impl for one super-block; writes the 82 bytes to o."""
    weight = np.empty(16, np.float32)
    waux = np.empty(16, np.float32)
    xval = np.empty(16, np.float32)
    L = np.zeros(16, np.int64)
    Laux = np.zeros(16, np.int64)
    on_grid = np.ones(2, np.bool_)
    on_grid_aux = np.ones(2, np.bool_)
    scales = np.zeros(16, np.float32)
    o[:] = 0
    sumx2 = F32(0)
    for i in range(QK_K):
        sumx2 += xbl[i] * xbl[i]
    sigma2 = F32(2) * sumx2 / F32(QK_K)
    max_scale = F32(0)
    for ib in range(16):
        xb = xbl[16 * ib:16 * ib + 16]
        for i in range(16):
            if use_qw:
                weight[i] = qw[16 * ib + i] * np.sqrt(sigma2 + xb[i] * xb[i])
            else:
                weight[i] = F32(0.25) * sigma2 + xb[i] * xb[i]
        for i in range(16):
            waux[i] = np.sqrt(weight[i])
        signs = np.zeros(2, np.int64)
        for i in range(16):
            if xb[i] >= 0:
                xval[i] = xb[i]
            else:
                xval[i] = -xb[i]
                signs[i // 8] |= 1 << (i % 8)
        mx = xval[0]
        for i in range(1, 16):
            mx = max(mx, xval[i])
        L[:] = 0
        if mx < GROUP_MAX_EPS_IQ2_S:
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
                signs[k] = (~signs[k]) & 255
        for k in range(2):
            u = 0
            for i in range(8):
                u |= L[8 * k + i] << (2 * i)
            g = kmap[u]
            i8 = 2 * ib + k
            o[2 + i8] = g & 255
            o[66 + i8 // 4] |= (g >> 8) << (2 * (i8 % 4))
            o[34 + i8] = signs[k]
        scales[ib] = scale
        max_scale = max(max_scale, scale)
    if max_scale == 0:
        return
    d = max_scale / F32(31)
    put_fp16(o, 0, d * F32(0.9875))
    id = F32(1) / d
    for ib in range(16):
        l = max(0, min(15, nearest_int(F32(0.5) * (id * scales[ib] - F32(1)))))
        o[74 + ib // 2] |= l << (4 * (ib % 2))


@njit(cache=True, parallel=True)
def _quantize_kernel(x, qw, use_qw, pos, kmap, neighbours, out):
    rows, n = x.shape
    for r in prange(rows):
        for ibl in range(n // QK_K):
            quantize_superblock(x[r, ibl * QK_K:(ibl + 1) * QK_K], qw[ibl * QK_K:(ibl + 1) * QK_K], use_qw,
                                pos, kmap, neighbours, out[r, ibl * TYPE_SIZE:(ibl + 1) * TYPE_SIZE])


def quantize(x, imatrix=None):
    x, imatrix = check_quantize_args(x, imatrix, BLOCK, "IQ2_S")
    g = grid("IQ2_S")
    qw = imatrix if imatrix is not None else np.zeros(x.shape[1], np.float32)
    out = np.zeros((x.shape[0], x.shape[1] // BLOCK * TYPE_SIZE), np.uint8)
    _quantize_kernel(x, qw, imatrix is not None, g.pos, g.kmap, g.neighbours, out)
    return out


def quantize_ref(x, imatrix=None):
    """Numpy reference: the sub-block search vectorised over all sub-blocks (grid_search.grid_subblocks_ref),
    then the super-block scale and packing."""
    x, imatrix = check_quantize_args(x, imatrix, BLOCK, "IQ2_S")
    scale, gidx, signs, live = grid_subblocks_ref(
        x, imatrix, grid("IQ2_S"), bs=16, gs=8, kmax=KMAXQ, trials=range(-9, 10), step=0.1, parity=False,
        sigma_mult=2, noimx="sigma", eps=GROUP_MAX_EPS_IQ2_S, use_qp=False, resnap="off", on_grid_init=True)
    gidx = np.where(live[:, None], gidx, 0).reshape(-1, 32)  # (super-blocks, groups of 8)
    signs = np.where(live[:, None], signs, 0).reshape(-1, 32)
    scale = scale.reshape(-1, 16)
    max_scale = scale.max(axis=1)
    d = max_scale / np.float32(31)
    with np.errstate(divide="ignore", invalid="ignore"):
        l = np.clip(np.rint(np.float32(0.5) * ((np.float32(1) / d)[:, None] * scale - np.float32(1))), 0, 15)
    l = np.nan_to_num(l).astype(np.uint8)
    hi = (gidx >> 8).reshape(-1, 8, 4) << (2 * np.arange(4))
    qh = hi.sum(axis=2).astype(np.uint8)
    sc = l[:, 0::2] | (l[:, 1::2] << 4)
    dead = max_scale == 0
    sc[dead] = 0
    dh = np.where(dead, np.float32(0), d * np.float32(0.9875))
    blocks = np.concatenate([fp32_to_fp16_np(dh).view(np.uint8).reshape(-1, 2), (gidx & 255).astype(np.uint8),
                             signs.astype(np.uint8), qh, sc], axis=1)
    return blocks.reshape(x.shape[0], x.shape[1] // BLOCK * TYPE_SIZE)


def dequantize_ref(blocks, n_per_row):
    blocks = check_blocks(blocks, n_per_row, BLOCK, TYPE_SIZE, "IQ2_S").reshape(-1, TYPE_SIZE)
    d = get_fp16_np(blocks[:, :2])
    qh = blocks[:, 66:74].astype(np.uint16)  # (nb, ib32)
    hi = (qh[:, :, None] >> (2 * np.arange(4, dtype=np.uint16))) & 3  # (nb, ib32, group)
    idx = blocks[:, 2:34].reshape(-1, 8, 4).astype(np.uint16) | (hi << 8)
    sc = blocks[:, 74:82]
    db = d[:, None, None] * (np.float32(0.5) + np.stack([sc & 0xF, sc >> 4], axis=2).astype(np.float32)) \
        * np.float32(0.25)
    db = np.repeat(db, 2, axis=2)  # group l of a 32-block uses db[l // 2]
    neg = (blocks[:, 34:66].reshape(-1, 8, 4)[..., None] >> np.arange(8, dtype=np.uint8)) & 1
    vals = grid("IQ2_S").values[idx]
    y = db[..., None] * vals * np.where(neg == 1, np.float32(-1), np.float32(1))
    return y.astype(np.float32).reshape(-1, n_per_row)


def _emit_block(builder, block, y, values):
    """dequantize_row_iq2_s: grid index = qs byte | 2 bits of qh << 8, explicit sign bytes; scales as
    IQ2_XS; y = (db * grid value) * (+-1)."""
    I32 = lanes.I32
    d = lanes.fp16(builder, block, 0)
    for ib in range(8):
        sc = lanes.byte_at(builder, block, 74 + ib)
        qh = lanes.byte_at(builder, block, 66 + ib)
        db = [lanes.half_scale(builder, d, builder.and_(sc, I32(0xF)), 0.25),
              lanes.half_scale(builder, d, builder.lshr(sc, I32(4)), 0.25)]
        for l in range(4):
            gi = builder.or_(lanes.byte_at(builder, block, 2 + 4 * ib + l),
                             builder.shl(builder.and_(builder.lshr(qh, I32(2 * l)), I32(3)), I32(8)))
            lanes.emit_grid_group(builder, values, gi, 8, db[l // 2], y, 32 * ib + 8 * l,
                                  lanes.byte_at(builder, block, 34 + 4 * ib + l))


_dequantize_row = lanes.row_kernel(_emit_block, BLOCK, TYPE_SIZE, with_table=True)


@njit(parallel=True, cache=True)
def _dequantize_rows(blocks, out, values):
    for r in prange(out.shape[0]):
        _dequantize_row(blocks, out, r, values)


def dequantize(blocks, n_per_row):
    return run_dequantize(_dequantize_rows, blocks, n_per_row, BLOCK, TYPE_SIZE, "IQ2_S", grid("IQ2_S").values)
