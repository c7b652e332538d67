"""IQ4_NL: 32 weights -> fp16 scale + 16 bytes of 4-bit indices into the non-linear table kvalues_iq4nl.

Block layout (block_iq4_nl, 18 bytes): d (fp16) | qs[16]; qs[j] = L[j] | L[j+16] << 4.

Quantization follows ggml-quants.c ``quantize_row_iq4_nl_impl`` as called by ``quantize_iq4_nl``
(``ggml_quantize_chunk``'s path: ntry = 7).  Per block of 32:
  * weights w_j = x_j^2, or with an importance matrix w_j = qw_j * sqrt(sigma2 + x_j^2) where sigma2 is
    2/N * sum(x^2) over the (super-)block;
  * first guess d = max/127 (max = the signed value of largest |x|), then try the 15 scales
    id = (itry - 127)/max, itry in -7..7, keeping the weighted least-squares d = sumqx/sumq2 with the
    largest sumqx^2/sumq2;
  * the stored indices are re-derived from the final (float32, not fp16-rounded) d.
ggml's ``quantize_row_iq4_nl_ref`` (ntry = -1) is a different, cheaper search that ggml_quantize_chunk
never uses; it is not reproduced here.

The same super-block routine serves IQ4_XS (256 weights, 8 sub-blocks with 6-bit scales): see iq4_xs.py.
"""
import numpy as np
from numba import njit, prange

from workbench.gguf.constants import KVALUES_IQ4NL
from workbench.cpu import ir as lanes
from workbench.cpu.fp16 import fp32_to_fp16_np, put_fp16
from workbench.quant.blocks import check_blocks, check_quantize_args, get_fp16_np, run_dequantize
from workbench.quant.grid_search import best_index_int8, best_index_int8_np
from workbench.quant.rounding import F32, nearest_int
from workbench.quant.scale_search import GROUP_MAX_EPS

BLOCK = 32
TYPE_SIZE = 18
NEEDS_IMATRIX = False
NTRY = 7  # quantize_iq4_nl / quantize_iq4_xs pass ntry = 7


# ----------------------------------------------------------------------------- numba kernel
@njit(cache=True)
def iq4_superblock(x, qw, use_qw, ntry, values, L, ls):
    """quantize_row_iq4_nl_impl on one super-block ``x`` (32 or 256 float32, block_size 32).

    Fills L (indices, len(x)) and, for several sub-blocks, ls (6-bit scales + 32); returns the float32
    that ggml stores as the fp16 super-block scale.
    """
    sbs = x.shape[0]
    nb = sbs // 32
    sigma2 = F32(0)
    for j in range(sbs):
        sigma2 += x[j] * x[j]
    sigma2 *= F32(2) / F32(sbs)
    weight = np.empty(32, np.float32)
    scales = np.zeros(nb, np.float32)
    max_scale = F32(0)
    amax_scale = F32(0)
    v0 = F32(values[0])
    for ib in range(nb):
        xb = x[ib * 32:(ib + 1) * 32]
        for j in range(32):
            if use_qw:
                weight[j] = qw[ib * 32 + j] * np.sqrt(sigma2 + xb[j] * xb[j])
            else:
                weight[j] = xb[j] * xb[j]
        amax = F32(0)
        mx = F32(0)
        for j in range(32):
            ax = abs(xb[j])
            if ax > amax:
                amax = ax
                mx = xb[j]
        if amax < GROUP_MAX_EPS:
            scales[ib] = 0
            continue
        d = -mx / v0 if ntry > 0 else mx / v0
        id = F32(1) / d
        sumqx = F32(0)
        sumq2 = F32(0)
        for j in range(32):
            l = best_index_int8(16, values, id * xb[j])
            L[ib * 32 + j] = l
            q = F32(values[l])
            w = weight[j]
            sumqx += w * q * xb[j]
            sumq2 += w * q * q
        d = sumqx / sumq2 if sumq2 > 0 else F32(0)
        best = d * sumqx
        for itry in range(-ntry, ntry + 1):
            id = (F32(itry) + v0) / mx
            sumqx = F32(0)
            sumq2 = F32(0)
            for j in range(32):
                q = F32(values[best_index_int8(16, values, id * xb[j])])
                w = weight[j]
                sumqx += w * q * xb[j]
                sumq2 += w * q * q
            if sumq2 > 0 and sumqx * sumqx > best * sumq2:
                d = sumqx / sumq2
                best = d * sumqx
        scales[ib] = d
        if abs(d) > amax_scale:
            amax_scale = abs(d)
            max_scale = d
    if nb > 1:  # IQ4_XS: 6-bit signed sub-block scales relative to d = -max_scale/32
        d = -max_scale / F32(32)
        id = F32(1) / d if d != 0 else F32(0)
        for ib in range(nb):
            l = min(31, max(-32, nearest_int(id * scales[ib])))
            dl = d * F32(l)
            idl = F32(1) / dl if dl != 0 else F32(0)
            for j in range(32):
                L[ib * 32 + j] = best_index_int8(16, values, idl * x[ib * 32 + j])
            ls[ib] = l + 32
        return d
    if ntry > 0:
        id = F32(1) / scales[0] if scales[0] != 0 else F32(0)
        for j in range(sbs):
            L[j] = best_index_int8(16, values, id * x[j])
    return scales[0]


@njit(cache=True)
def pack_nibbles(L, out, pos):
    """qs[16*i + j] = L[32*i + j] | L[32*i + 16 + j] << 4"""
    for i in range(L.shape[0] // 32):
        for j in range(16):
            out[pos + 16 * i + j] = L[32 * i + j] | (L[32 * i + 16 + j] << 4)


@njit(cache=True, parallel=True)
def _quantize_kernel(x, qw, use_qw, out):
    rows, n = x.shape
    for r in prange(rows):
        L = np.zeros(32, np.uint8)
        ls = np.zeros(1, np.int64)
        for ib in range(n // 32):
            d = iq4_superblock(x[r, ib * 32:(ib + 1) * 32], qw[ib * 32:(ib + 1) * 32], use_qw, NTRY,
                               KVALUES_IQ4NL, L, ls)
            put_fp16(out[r], ib * TYPE_SIZE, d)
            pack_nibbles(L, out[r], ib * TYPE_SIZE + 2)


def quantize(x, imatrix=None):
    x, imatrix = check_quantize_args(x, imatrix, BLOCK, "IQ4_NL")
    out = np.zeros((x.shape[0], x.shape[1] // BLOCK * TYPE_SIZE), np.uint8)
    qw = imatrix if imatrix is not None else np.zeros(x.shape[1], np.float32)
    _quantize_kernel(x, qw, imatrix is not None, out)
    return out


# ----------------------------------------------------------------------------- numpy reference
def _weighted_fit(xb, w, q):
    """Sequential (C order) float32 sums sumqx = sum w*q*x, sumq2 = sum w*q*q over the last axis."""
    sumqx = np.zeros(xb.shape[:-1], np.float32)
    sumq2 = np.zeros(xb.shape[:-1], np.float32)
    for j in range(xb.shape[-1]):
        sumqx += w[..., j] * q[..., j] * xb[..., j]
        sumq2 += w[..., j] * q[..., j] * q[..., j]
    return sumqx, sumq2


def block_scales_ref(x, qw, ntry=NTRY):
    """Per 32-block best scales of quantize_row_iq4_nl_impl for super-blocks x: (ns, sbs) -> (ns, sbs/32).

    qw: None or the importance weights, same shape as x.
    """
    values = KVALUES_IQ4NL
    vf = values.astype(np.float32)
    ns, sbs = x.shape
    sigma2 = np.zeros(ns, np.float32)
    for j in range(sbs):
        sigma2 += x[:, j] * x[:, j]
    sigma2 *= np.float32(2) / np.float32(sbs)
    xb = x.reshape(ns, sbs // 32, 32)
    if qw is not None:
        w = qw.reshape(ns, sbs // 32, 32) * np.sqrt(sigma2[:, None, None] + xb * xb)
    else:
        w = xb * xb
    iam = np.argmax(np.abs(xb), axis=-1)  # first index of the largest |x|, as the C loop's strict '>'
    mx = np.take_along_axis(xb, iam[..., None], -1)[..., 0]
    ok = np.abs(mx) >= GROUP_MAX_EPS
    mxs = np.where(ok, mx, np.float32(1))
    with np.errstate(divide="ignore", invalid="ignore"):
        d = -mxs / vf[0] if ntry > 0 else mxs / vf[0]
        q = vf[best_index_int8_np(values, (np.float32(1) / d)[..., None] * xb)]
        sumqx, sumq2 = _weighted_fit(xb, w, q)
        d = np.where(sumq2 > 0, sumqx / sumq2, np.float32(0))
        best = d * sumqx
        for itry in range(-ntry, ntry + 1):
            id = (np.float32(itry) + vf[0]) / mxs
            q = vf[best_index_int8_np(values, id[..., None] * xb)]
            sumqx, sumq2 = _weighted_fit(xb, w, q)
            better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
            d = np.where(better, sumqx / sumq2, d)
            best = np.where(better, d * sumqx, best)
    return np.where(ok, d, np.float32(0)).astype(np.float32)


def quantize_ref(x, imatrix=None):
    x, imatrix = check_quantize_args(x, imatrix, BLOCK, "IQ4_NL")
    rows, n = x.shape
    xs = x.reshape(-1, 32)
    qw = None if imatrix is None else np.tile(imatrix.reshape(-1, 32), (rows, 1))
    d = block_scales_ref(xs, qw)[:, 0]
    with np.errstate(divide="ignore"):
        id = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    L = best_index_int8_np(KVALUES_IQ4NL, id[:, None] * xs)
    qs = L[:, :16] | (L[:, 16:] << 4)
    blocks = np.concatenate([fp32_to_fp16_np(d).view(np.uint8).reshape(-1, 2), qs], axis=1)
    return blocks.reshape(rows, x.shape[1] // BLOCK * TYPE_SIZE)


def dequantize_ref(blocks, n_per_row):
    blocks = check_blocks(blocks, n_per_row, BLOCK, TYPE_SIZE, "IQ4_NL").reshape(-1, TYPE_SIZE)
    d = get_fp16_np(blocks[:, :2])
    qs = blocks[:, 2:]
    L = np.concatenate([qs & 0xF, qs >> 4], axis=1)
    y = d[:, None] * KVALUES_IQ4NL[L].astype(np.float32)
    return y.reshape(-1, n_per_row)


def _emit_block(builder, block, y):
    """dequantize_row_iq4_nl: y = d * kvalues[nibble], low nibbles weights 0..15, high 16..31."""
    d = lanes.fp16(builder, block, 0)
    q = lanes.load_bytes(builder, block, 2, 16)
    for k, idx in enumerate((lanes.vand(builder, q, 0xF), lanes.vshr(builder, q, 4))):
        lanes.store_affine(builder, y, 16 * k, lanes.lookup16(builder, idx, KVALUES_IQ4NL), d)


_dequantize_row = lanes.row_kernel(_emit_block, BLOCK, TYPE_SIZE)


@njit(parallel=True, cache=True)
def _dequantize_rows(blocks, out):
    for r in prange(out.shape[0]):
        _dequantize_row(blocks, out, r)


def dequantize(blocks, n_per_row):
    return run_dequantize(_dequantize_rows, blocks, n_per_row, BLOCK, TYPE_SIZE, "IQ4_NL")
