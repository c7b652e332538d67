"""Q2_K: super-blocks of 256 = 16 groups of 16; 2-bit levels, per group a 4-bit scale and a 4-bit min,
fp16 super-scales d and dmin: x ~ d*sc*q - dmin*m.

Without an imatrix: quantize_row_q2_K_ref (make_qkx2_quants(16, 3) with weights |x|, mean-absolute error;
group scales/mins quantized linearly against their maxima). With one: quantize_row_q2_K_impl
(make_qkx3_quants with weights imatrix*sqrt(sigma2 + x^2), then make_qp_quants for the 4-bit scales/mins).
Both end by re-deriving every level from the stored (rounded) scales.
"""
import numpy as np
from numba import njit, prange

from workbench.gguf.constants import QK_K
from workbench.cpu import ir as lanes
from workbench.cpu.fp16 import put_fp16, round_fp16_np
from workbench.quant.rounding import F32, max0_np, nearest_int, nearest_int_np, seqsum_np
from workbench.quant.scale_search import make_qkx2_quants_np, make_qkx3_quants_np, make_qp_quants, make_qp_quants_np
from workbench.quant.scale_search_batch import make_qkx_quants_batch

NEEDS_IMATRIX = False
BLOCK = np.dtype([("scales", "u1", (16,)), ("qs", "u1", (64,)), ("d", "<f2"), ("dmin", "<f2")])  # block_q2_K
BYTES = BLOCK.itemsize


def pack_2bit_np(L):
    """(S, 256) levels 0..3 -> (S, 64): byte 32*h + l holds L[128h + l + 32k] in bits 2k (k = 0..3)."""
    L = L.astype(np.uint8).reshape(-1, 2, 4, 32)
    return (L[:, :, 0] | (L[:, :, 1] << 2) | (L[:, :, 2] << 4) | (L[:, :, 3] << 6)).reshape(-1, 64)


def unpack_2bit_np(qs):
    return ((qs.reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8)[:, None]) & 3).reshape(-1, QK_K)


def requantize_np(x16, L, dl, ml, lo, hi):
    """Levels from the stored scales: clamp(nearest_int((x + ml)/dl)), groups with dl == 0 keep L."""
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.clip(nearest_int_np((x16 + ml[:, None]) / dl[:, None]), lo, hi)
    return np.where((dl != 0)[:, None], q, L)


# ------------------------------------------------------------------------------- numpy reference
def quantize_ref(x: np.ndarray, imatrix=None) -> np.ndarray:
    rows = x.shape[0]
    xs = x.reshape(-1, QK_K)                                        # (S, 256) super-blocks
    x16 = xs.reshape(-1, 16)                                        # (16 S, 16) groups
    if imatrix is None:
        scales, mins, L = make_qkx2_quants_np(x16, np.abs(x16), 3, -0.5, 0.1, 15, True)
        scales, mins = scales.reshape(-1, 16), mins.reshape(-1, 16)
        max_scale, max_min = max0_np(scales), max0_np(mins)
        with np.errstate(divide="ignore", invalid="ignore"):
            ls = np.where((max_scale > 0)[:, None], nearest_int_np((F32(15) / max_scale)[:, None] * scales), 0)
            lm = np.where((max_min > 0)[:, None], nearest_int_np((F32(15) / max_min)[:, None] * mins), 0)
        d = np.where(max_scale > 0, max_scale / F32(15), F32(0))
        dmin = np.where(max_min > 0, max_min / F32(15), F32(0))
    else:
        sigma2 = seqsum_np(xs * xs) / F32(QK_K)
        qw = np.broadcast_to(imatrix.reshape(1, -1, QK_K), (rows, x.shape[1] // QK_K, QK_K)).reshape(-1, QK_K)
        w = (qw * np.sqrt(sigma2[:, None] + xs * xs)).reshape(-1, 16)
        scales, mins, L = make_qkx3_quants_np(x16, w, 3, -0.9, 0.05, 36, False)
        sw = seqsum_np(w).reshape(-1, 16)
        d, ls = make_qp_quants_np(scales.reshape(-1, 16), 15, sw)
        dmin, lm = make_qp_quants_np(mins.reshape(-1, 16), 15, sw)
    sc = (ls | (lm << 4)) & 0xFF
    dl = (round_fp16_np(d)[:, None] * (sc & 0xF).astype(F32)).reshape(-1)
    ml = (round_fp16_np(dmin)[:, None] * (sc >> 4).astype(F32)).reshape(-1)
    L = requantize_np(x16, L, dl, ml, 0, 3).reshape(-1, QK_K)
    y = np.zeros(xs.shape[0], dtype=BLOCK)
    y["scales"] = sc
    y["qs"] = pack_2bit_np(L)
    y["d"] = d.astype(np.float16)
    y["dmin"] = dmin.astype(np.float16)
    return y.view(np.uint8).reshape(rows, -1)


def dequantize_ref(blocks: np.ndarray, n_per_row: int) -> np.ndarray:
    y = np.ascontiguousarray(blocks).view(BLOCK).reshape(-1)
    dl = y["d"].astype(F32)[:, None] * (y["scales"] & 0xF).astype(F32)      # (S, 16)
    ml = y["dmin"].astype(F32)[:, None] * (y["scales"] >> 4).astype(F32)
    q = unpack_2bit_np(y["qs"]).reshape(-1, 16, 16).astype(F32)
    return (dl[..., None] * q - ml[..., None]).reshape(blocks.shape[0], n_per_row)


# ------------------------------------------------------------------------------- numba kernels
@njit(cache=True, error_model="numpy")
def pack_2bit(out, o, L):
    for j in range(0, QK_K, 128):
        for l in range(32):
            out[o + j // 4 + l] = L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6)


@njit(cache=True, error_model="numpy")
def _search_row(row, qw, use_qw, xt, wt, Lt, scales, mins, sw):
    """All groups of 16 of a row side by side (column 16*i + j = group j of super-block i)."""
    nb = row.shape[0] // QK_K
    for g in range(16 * nb):
        for l in range(16):
            xt[l, g] = row[16 * g + l]
    if use_qw:                                                      # quantize_row_q2_K_impl
        for i in range(nb):
            sumx2 = F32(0.0)
            for j in range(QK_K):
                sumx2 += row[i * QK_K + j] * row[i * QK_K + j]
            sigma2 = sumx2 / F32(QK_K)
            for g in range(16 * i, 16 * i + 16):
                sw[g] = F32(0.0)
                for l in range(16):
                    v = qw[16 * g + l] * np.sqrt(sigma2 + xt[l, g] * xt[l, g])
                    wt[l, g] = v
                    sw[g] += v
        make_qkx_quants_batch(3, xt, wt, Lt, scales, mins, -0.9, 0.05, 36, False)   # make_qkx3_quants
    else:                                                           # quantize_row_q2_K_ref
        for g in range(16 * nb):
            for l in range(16):
                wt[l, g] = abs(xt[l, g])
        make_qkx_quants_batch(3, xt, wt, Lt, scales, mins, -0.5, 0.1, 15, True)     # make_qkx2_quants


@njit(cache=True, error_model="numpy")
def _finish_superblock(xs, use_qw, out, o, L, Lt, i, scales, mins, sw, Ls, Lm):
    """Super-block i after the search: 4-bit scales/mins, fp16 d/dmin, levels from the stored scales."""
    for j in range(16):
        for l in range(16):
            L[16 * j + l] = Lt[l, 16 * i + j]
    scales = scales[16 * i:16 * i + 16]
    mins = mins[16 * i:16 * i + 16]
    sc = out[o:o + 16]
    if use_qw:
        dm = make_qp_quants(16, 15, scales, Ls, sw[16 * i:16 * i + 16])
        mm = make_qp_quants(16, 15, mins, Lm, sw[16 * i:16 * i + 16])
        for j in range(16):
            sc[j] = (Ls[j] | (Lm[j] << 4)) & 0xFF
    else:
        max_scale = F32(0.0)
        max_min = F32(0.0)
        for j in range(16):
            max_scale = max(max_scale, scales[j])
            max_min = max(max_min, mins[j])
        for j in range(16):
            sc[j] = 0
        dm = F32(0.0)
        mm = F32(0.0)
        if max_scale > 0:
            iscale = F32(15.0) / max_scale
            for j in range(16):
                sc[j] = nearest_int(iscale * scales[j]) & 0xFF
            dm = max_scale / F32(15.0)
        if max_min > 0:
            iscale = F32(15.0) / max_min
            for j in range(16):
                sc[j] = (sc[j] | (nearest_int(iscale * mins[j]) << 4)) & 0xFF
            mm = max_min / F32(15.0)
    dm = put_fp16(out, o + 80, dm)
    mm = put_fp16(out, o + 82, mm)
    for j in range(16):                                             # levels from the stored scales
        d = dm * F32(sc[j] & 0xF)
        if d == 0:
            continue
        m = mm * F32(sc[j] >> 4)
        for ii in range(16):
            L[16 * j + ii] = max(0, min(3, nearest_int((xs[16 * j + ii] + m) / d)))
    pack_2bit(out, o + 16, L)


@njit(parallel=True, cache=True, error_model="numpy")
def _quantize_rows(x, qw, use_qw, out):
    nb = x.shape[1] // QK_K
    G = 16 * nb
    for r in prange(x.shape[0]):
        xt = np.empty((16, G), np.float32)
        wt = np.empty((16, G), np.float32)
        Lt = np.empty((16, G), np.uint8)
        scales = np.empty(G, np.float32)
        mins = np.empty(G, np.float32)
        sw = np.empty(G, np.float32)
        L = np.empty(QK_K, np.uint8)
        Ls = np.empty(16, np.uint8)
        Lm = np.empty(16, np.uint8)
        _search_row(x[r], qw, use_qw, xt, wt, Lt, scales, mins, sw)
        for i in range(nb):
            _finish_superblock(x[r, i * QK_K:(i + 1) * QK_K], use_qw, out[r], i * BYTES, L, Lt, i,
                               scales, mins, sw, Ls, Lm)


def _emit_block(builder, block, y):
    """dequantize_row_q2_K: 32 bytes per half h, at shift 2 k: weights 128 h + 32 k + l, group 8 h + 2 k
    for l < 16 and 8 h + 2 k + 1 above; y = (d * (sc & 15)) * q - dmin * (sc >> 4)."""
    d, dmin = lanes.fp16(builder, block, 80), lanes.fp16(builder, block, 82)
    for h in range(2):
        q = lanes.load_bytes(builder, block, 16 + 32 * h, 32)
        for k in range(4):
            v = lanes.vand(builder, lanes.vshr(builder, q, 2 * k), 3)
            for p in range(2):
                sc = lanes.byte_at(builder, block, 8 * h + 2 * k + p)
                dl = lanes.scale_f32(builder, d, builder.and_(sc, sc.type(0xF)))
                ml = lanes.scale_f32(builder, dmin, builder.lshr(sc, sc.type(4)))
                lanes.store_affine(builder, y, 128 * h + 32 * k + 16 * p, lanes.half(builder, v, p), dl, ml, True)


_dequantize_row = lanes.row_kernel(_emit_block, QK_K, BYTES)


@njit(parallel=True, cache=True)
def _dequantize_rows(blocks, out):
    for r in prange(out.shape[0]):
        _dequantize_row(blocks, out, r)


def quantize(x: np.ndarray, imatrix=None) -> np.ndarray:
    out = np.zeros((x.shape[0], x.shape[1] // QK_K * BYTES), dtype=np.uint8)
    qw = imatrix if imatrix is not None else np.zeros(0, np.float32)
    _quantize_rows(x, qw, imatrix is not None, out)
    return out


def dequantize(blocks: np.ndarray, n_per_row: int) -> np.ndarray:
    out = np.empty((blocks.shape[0], n_per_row), dtype=np.float32)
    _dequantize_rows(blocks, out)
    return out
