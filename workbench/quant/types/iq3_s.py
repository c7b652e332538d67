"""IQ3_S: 3.4375 bpw; groups of 4 magnitudes on a 512-point lattice in {1,3,...,15}^4, explicit signs.

Block layout (block_iq3_s, 110 bytes per 256 weights): d (fp16) | qs[64] (grid index low 8 bits) |
qh[8] (bit k of qh[ib] = bit 8 of group k's index in 32-weight block ib) | signs[32] (one bit per weight)
| scales[4] (two 4-bit scales per byte: blocks 2i and 2i+1).
Dequantized: y = d * (1 + 2*s) * iq3s_grid[idx][j] * sign_j.

Quantization: ggml-quants.c ``quantize_row_iq3_s_impl(32, ...)`` via ``quantize_iq3_s`` (imatrix
optional; importance x^2 or qw * sqrt(sigma2 + x^2), sigma2 = 2*mean(x^2)).  Unlike IQ3_XXS the signs
are stored as they are (no parity trick), the 19 trial scales are (15 + 0.2*is)/max for is = -9..9,
and unless the winning trial had every group on the grid, all 8 groups are re-snapped at the final
scale.  Quirk kept for bit-exactness: an all-zero 32-weight block writes no qs/signs and ggml does not
advance past them, so the following blocks' qs/signs land one slot early (its qh and scale bits stay
in place); the last slots stay zero.  Stored super-block scale d*1.033, sub-block scales 4-bit against d = max_scale/31.
"""
import numpy as np
from numba import njit, prange

from workbench.gguf.constants import QK_K
from workbench.cpu import ir as lanes
from workbench.cpu.fp16 import fp32_to_fp16_np, put_fp16
from workbench.quant.blocks import check_blocks, check_quantize_args, get_fp16_np, run_dequantize
from workbench.quant.grid_search import fit_odd, grid_subblocks_ref, snap_group
from workbench.quant.rounding import F32, nearest_int
from workbench.quant.iq_grids import grid

BLOCK = QK_K
TYPE_SIZE = 110
NEEDS_IMATRIX = False
KMAXQ = 8


@njit(cache=True)
def quantize_superblock(xbl, qw, use_qw, pos, kmap, neighbours, o):
    """quantize_row_iq3_s_impl(32, ...) for one super-block; writes the 110 bytes to o."""
    weight = np.empty(32, np.float32)
    waux = np.empty(32, np.float32)
    xval = np.empty(32, np.float32)
    L = np.zeros(32, np.int64)
    Laux = np.zeros(32, np.int64)
    on_grid = np.zeros(8, np.bool_)
    on_grid_aux = np.zeros(8, np.bool_)
    scales = np.zeros(8, np.float32)
    o[:] = 0
    sumx2 = F32(0)
    for i in range(QK_K):
        sumx2 += xbl[i] * xbl[i]
    sigma2 = F32(2) * sumx2 / F32(QK_K)
    max_scale = F32(0)
    nq = 0  # ggml advances its qs/signs pointers only past sub-blocks that were not all zero
    for ib in range(8):
        xb = xbl[32 * ib:32 * ib + 32]
        for i in range(32):
            if use_qw:
                weight[i] = qw[32 * ib + i] * np.sqrt(sigma2 + xb[i] * xb[i])
            else:
                weight[i] = xb[i] * xb[i]
        for i in range(32):
            waux[i] = np.sqrt(weight[i])
        signs = np.zeros(4, np.int64)
        for i in range(32):
            if xb[i] >= 0:
                xval[i] = xb[i]
            else:
                xval[i] = -xb[i]
                signs[i // 8] |= 1 << (i % 8)
        mx = xval[0]
        for i in range(1, 32):
            mx = max(mx, xval[i])
        L[:] = 0
        if mx == 0:
            scales[ib] = 0
            continue
        best = F32(0)
        scale = mx / F32(2 * KMAXQ - 1)
        on_grid[:] = False
        for is_ in range(-9, 10):
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
            for k in range(8):  # every group, on the grid or not (ggml comments the skip out)
                snap_group(xval, waux, 4 * k, id, scale, KMAXQ, pos, kmap, neighbours, L)
            sumqx, sumq2 = fit_odd(weight, xval, L, 32)
            if sumq2 > 0:
                scale = sumqx / sumq2
        if scale < 0:
            scale = -scale
            for k in range(4):
                signs[k] = (~signs[k]) & 255
        for k in range(8):
            u = 0
            for i in range(4):
                u |= L[4 * k + i] << (3 * i)
            g = kmap[u]
            o[2 + 8 * nq + k] = g & 255
            o[66 + ib] |= (g >> 8) << k
        for k in range(4):
            o[74 + 4 * nq + k] = signs[k]
        nq += 1
        scales[ib] = scale
        max_scale = max(max_scale, scale)
    if max_scale == 0:
        return
    d = max_scale / F32(31)
    put_fp16(o, 0, d * F32(1.033))
    id = F32(1) / d
    for ib in range(0, 8, 2):
        l1 = max(0, min(15, nearest_int(F32(0.5) * (id * scales[ib] - F32(1)))))
        l2 = max(0, min(15, nearest_int(F32(0.5) * (id * scales[ib + 1] - F32(1)))))
        o[106 + ib // 2] = l1 | (l2 << 4)


@njit(cache=True, parallel=True)
def _quantize_kernel(x, qw, use_qw, pos, kmap, neighbours, out):
    rows, n = x.shape
    for r in prange(rows):
        for ibl in range(n // QK_K):
            quantize_superblock(x[r, ibl * QK_K:(ibl + 1) * QK_K], qw[ibl * QK_K:(ibl + 1) * QK_K], use_qw,
                                pos, kmap, neighbours, out[r, ibl * TYPE_SIZE:(ibl + 1) * TYPE_SIZE])


def quantize(x, imatrix=None):
    x, imatrix = check_quantize_args(x, imatrix, BLOCK, "IQ3_S")
    g = grid("IQ3_S")
    qw = imatrix if imatrix is not None else np.zeros(x.shape[1], np.float32)
    out = np.zeros((x.shape[0], x.shape[1] // BLOCK * TYPE_SIZE), np.uint8)
    _quantize_kernel(x, qw, imatrix is not None, g.pos, g.kmap, g.neighbours, out)
    return out


def quantize_ref(x, imatrix=None):
    """Numpy reference: the sub-block search vectorised over all sub-blocks (grid_search.grid_subblocks_ref),
    then the super-block scale and packing (with ggml's slot shift after all-zero sub-blocks)."""
    x, imatrix = check_quantize_args(x, imatrix, BLOCK, "IQ3_S")
    scale, gidx, signs, live = grid_subblocks_ref(
        x, imatrix, grid("IQ3_S"), bs=32, gs=4, kmax=KMAXQ, trials=range(-9, 10), step=0.2, parity=False,
        sigma_mult=2, noimx="x2", eps=None, use_qp=False, resnap="all_if_off", on_grid_init=False)
    nsb = len(scale) // 8
    live = live.reshape(nsb, 8)
    gidx = np.where(live[:, :, None], gidx.reshape(nsb, 8, 8), 0)
    signs = signs.reshape(nsb, 8, 4)
    qs = np.zeros((nsb, 8, 8), np.uint8)
    sg = np.zeros((nsb, 8, 4), np.uint8)
    slot = np.cumsum(live, axis=1) - 1  # live sub-block -> its qs/signs slot
    b, ib = np.nonzero(live)
    qs[b, slot[b, ib]] = gidx[b, ib] & 255
    sg[b, slot[b, ib]] = signs[b, ib]
    qh = ((gidx >> 8) << np.arange(8)).sum(axis=2).astype(np.uint8)
    scale = scale.reshape(nsb, 8)
    max_scale = scale.max(axis=1)
    d = max_scale / np.float32(31)
    with np.errstate(divide="ignore", invalid="ignore"):
        l = np.clip(np.rint(np.float32(0.5) * ((np.float32(1) / d)[:, None] * scale - np.float32(1))), 0, 15)
    l = np.nan_to_num(l).astype(np.uint8)
    sc = l[:, 0::2] | (l[:, 1::2] << 4)
    dead = max_scale == 0
    sc[dead] = 0
    dh = np.where(dead, np.float32(0), d * np.float32(1.033))
    blocks = np.concatenate([fp32_to_fp16_np(dh).view(np.uint8).reshape(-1, 2), qs.reshape(nsb, 64), qh,
                             sg.reshape(nsb, 32), sc], axis=1)
    return blocks.reshape(x.shape[0], x.shape[1] // BLOCK * TYPE_SIZE)


def dequantize_ref(blocks, n_per_row):
    blocks = check_blocks(blocks, n_per_row, BLOCK, TYPE_SIZE, "IQ3_S").reshape(-1, TYPE_SIZE)
    d = get_fp16_np(blocks[:, :2])
    qh = blocks[:, 66:74].astype(np.uint16)  # (nb, ib32)
    hi = (qh[:, :, None] >> np.arange(8, dtype=np.uint16)) & 1  # (nb, ib32, group of 4)
    idx = blocks[:, 2:66].reshape(-1, 8, 8).astype(np.uint16) | (hi << 8)
    sc = blocks[:, 106:110]
    s = np.stack([sc & 0xF, sc >> 4], axis=2).reshape(-1, 8).astype(np.int32)  # (nb, ib32)
    db = d[:, None] * (1 + 2 * s).astype(np.float32)
    neg = (blocks[:, 74:106, None] >> np.arange(8, dtype=np.uint8)) & 1  # (nb, 32 bytes, 8)
    vals = grid("IQ3_S").values[idx].reshape(-1, 8, 32)
    y = db[:, :, None] * vals * np.where(neg.reshape(-1, 8, 32) == 1, np.float32(-1), np.float32(1))
    return y.astype(np.float32).reshape(-1, n_per_row)


def _emit_block(builder, block, y, values):
    """dequantize_row_iq3_s: sub-block ib of 32 weights, db = d * (1 + 2 * scale); group g of 4 reads grid
    row qs[8 ib + g] | (bit g of qh[ib]) << 8; the sign of weight w is bit w of the 4 sign bytes of ib;
    y = (db * grid value) * (+-1)."""
    I32 = lanes.I32
    d = lanes.fp16(builder, block, 0)
    for ib in range(8):
        s = builder.and_(builder.lshr(lanes.byte_at(builder, block, 106 + ib // 2), I32(4 * (ib % 2))), I32(0xF))
        db = lanes.scale_f32(builder, d, builder.add(builder.shl(s, I32(1)), I32(1)))
        qh = lanes.byte_at(builder, block, 66 + ib)
        signs = lanes.load(builder, block, 74 + 4 * ib, I32)
        for g in range(8):
            gi = builder.or_(lanes.byte_at(builder, block, 2 + 8 * ib + g),
                             builder.shl(builder.and_(builder.lshr(qh, I32(g)), I32(1)), I32(8)))
            lanes.emit_grid_group(builder, values, gi, 4, db, y, 32 * ib + 4 * g, signs, 4 * g)


_dequantize_row = lanes.row_kernel(_emit_block, BLOCK, TYPE_SIZE, with_table=True)


@njit(parallel=True, cache=True)
def _dequantize_rows(blocks, out, values):
    for r in prange(out.shape[0]):
        _dequantize_row(blocks, out, r, values)


def dequantize(blocks, n_per_row):
    return run_dequantize(_dequantize_rows, blocks, n_per_row, BLOCK, TYPE_SIZE, "IQ3_S", grid("IQ3_S").values)
