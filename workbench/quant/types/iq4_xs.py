"""IQ4_XS: IQ4_NL's non-linear 4-bit levels in 256-weight super-blocks with 6-bit sub-block scales.

Block layout (block_iq4_xs, 136 bytes): d (fp16) | scales_h (uint16, 2 high bits per sub-block) |
scales_l[4] (4 low bits per sub-block) | qs[128] (as IQ4_NL, per 32 weights).

Quantization: ggml-quants.c ``quantize_row_iq4_nl_impl(QK_K, 32, ..., ntry=7)`` via ``quantize_iq4_xs``.
Each sub-block of 32 finds its best scale exactly as IQ4_NL (see iq4_nl.py; sigma2 for the importance
weights is taken over the whole super-block); then d = -max_scale/32 where max_scale is the sub-block
scale of largest magnitude, each sub-block scale becomes l = clamp(nearest_int(scale/d), -32, 31) and
the indices are re-derived from d*l.  ``quantize_row_iq4_xs_ref`` is the same function in ggml.
"""
import numpy as np
from numba import njit, prange

from workbench.gguf.constants import KVALUES_IQ4NL, QK_K
from workbench.cpu import ir as lanes
from workbench.quant.types.iq4_nl import NTRY, block_scales_ref, iq4_superblock, pack_nibbles
from workbench.cpu.fp16 import fp32_to_fp16_np, put_fp16
from workbench.quant.blocks import check_blocks, check_quantize_args, get_fp16_np, run_dequantize
from workbench.quant.grid_search import best_index_int8_np

BLOCK = QK_K
TYPE_SIZE = 136
NEEDS_IMATRIX = False


@njit(cache=True, parallel=True)
def _quantize_kernel(x, qw, use_qw, out):
    rows, n = x.shape
    for r in prange(rows):
        L = np.zeros(QK_K, np.uint8)
        ls = np.zeros(8, np.int64)
        for ibl in range(n // QK_K):
            sl = slice(ibl * QK_K, (ibl + 1) * QK_K)
            d = iq4_superblock(x[r, sl], qw[sl], use_qw, NTRY, KVALUES_IQ4NL, L, ls)
            o = out[r]
            p = ibl * TYPE_SIZE
            put_fp16(o, p, d)
            sh = 0
            for ib in range(8):
                sh |= (ls[ib] >> 4) << (2 * ib)
                o[p + 4 + ib // 2] |= (ls[ib] & 0xF) << (4 * (ib % 2))
            o[p + 2] = sh & 0xFF
            o[p + 3] = sh >> 8
            pack_nibbles(L, o, p + 8)


def quantize(x, imatrix=None):
    x, imatrix = check_quantize_args(x, imatrix, BLOCK, "IQ4_XS")
    out = np.zeros((x.shape[0], x.shape[1] // BLOCK * TYPE_SIZE), np.uint8)
    qw = imatrix if imatrix is not None else np.zeros(x.shape[1], np.float32)
    _quantize_kernel(x, qw, imatrix is not None, out)
    return out


def quantize_ref(x, imatrix=None):
    x, imatrix = check_quantize_args(x, imatrix, BLOCK, "IQ4_XS")
    rows, n = x.shape
    xs = x.reshape(-1, QK_K)  # super-blocks
    qw = None if imatrix is None else np.tile(imatrix.reshape(-1, QK_K), (rows, 1))
    scales = block_scales_ref(xs, qw)  # (ns, 8) float32
    # max_scale: the signed scale of largest magnitude (first one on ties, C's strict '>')
    max_scale = np.take_along_axis(scales, np.argmax(np.abs(scales), axis=1)[:, None], 1)[:, 0]
    d = -max_scale / np.float32(32)
    with np.errstate(divide="ignore", invalid="ignore"):
        id = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
        l = np.clip(np.rint(id[:, None] * scales), -32, 31).astype(np.int32)  # nearest_int
        dl = d[:, None] * l.astype(np.float32)
        idl = np.where(dl != 0, np.float32(1) / dl, np.float32(0)).astype(np.float32)
    L = best_index_int8_np(KVALUES_IQ4NL, idl[:, :, None] * xs.reshape(-1, 8, 32))  # (ns, 8, 32)
    ls = (l + 32).astype(np.uint16)
    scales_h = np.zeros(len(xs), np.uint16)
    for ib in range(8):
        scales_h |= (ls[:, ib] >> 4) << (2 * ib)
    lo = (ls & 0xF).astype(np.uint8)
    scales_l = lo[:, 0::2] | (lo[:, 1::2] << 4)
    qs = (L[:, :, :16] | (L[:, :, 16:] << 4)).reshape(-1, 128)
    blocks = np.concatenate([fp32_to_fp16_np(d).view(np.uint8).reshape(-1, 2),
                             scales_h.view(np.uint8).reshape(-1, 2), scales_l, qs], axis=1)
    return blocks.reshape(rows, x.shape[1] // BLOCK * TYPE_SIZE)


def dequantize_ref(blocks, n_per_row):
    blocks = check_blocks(blocks, n_per_row, BLOCK, TYPE_SIZE, "IQ4_XS").reshape(-1, TYPE_SIZE)
    d = get_fp16_np(blocks[:, :2])
    scales_h = blocks[:, 2:4].copy().view(np.uint16)[:, 0].astype(np.int32)
    scales_l = blocks[:, 4:8].astype(np.int32)
    ib = np.arange(8)
    ls = ((scales_l[:, ib // 2] >> (4 * (ib % 2))) & 0xF) | (((scales_h[:, None] >> (2 * ib)) & 3) << 4)
    dl = d[:, None] * (ls - 32).astype(np.float32)  # (nb, 8)
    qs = blocks[:, 8:].reshape(-1, 8, 16)
    L = np.concatenate([qs & 0xF, qs >> 4], axis=2)  # (nb, 8, 32)
    y = dl[:, :, None] * KVALUES_IQ4NL[L].astype(np.float32)
    return y.reshape(-1, n_per_row)


def _emit_block(builder, block, y):
    """dequantize_row_iq4_xs: sub-block ib of 32 has the 6-bit scale ls (4 bits of scales_l, 2 of the
    uint16 scales_h), y = (d * (ls - 32)) * kvalues[nibble]."""
    I32 = lanes.I32
    d = lanes.fp16(builder, block, 0)
    scales_h = builder.zext(lanes.load(builder, block, 2, lanes.I16), I32)
    for ib in range(8):
        low = builder.and_(builder.lshr(lanes.byte_at(builder, block, 4 + ib // 2), I32(4 * (ib % 2))), I32(0xF))
        high = builder.and_(builder.lshr(scales_h, I32(2 * ib)), I32(3))
        dl = lanes.scale_f32(builder, d, builder.sub(builder.or_(low, builder.shl(high, I32(4))), I32(32)))
        q = lanes.load_bytes(builder, block, 8 + 16 * ib, 16)
        for k, idx in enumerate((lanes.vand(builder, q, 0xF), lanes.vshr(builder, q, 4))):
            lanes.store_affine(builder, y, 32 * ib + 16 * k, lanes.lookup16(builder, idx, KVALUES_IQ4NL), dl)


_dequantize_row = lanes.row_kernel(_emit_block, BLOCK, TYPE_SIZE)


@njit(parallel=True, cache=True)
def _dequantize_rows(blocks, out):
    for r in prange(out.shape[0]):
        _dequantize_row(blocks, out, r)


def dequantize(blocks, n_per_row):
    return run_dequantize(_dequantize_rows, blocks, n_per_row, BLOCK, TYPE_SIZE, "IQ4_XS")
