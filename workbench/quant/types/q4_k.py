"""Q4_K: super-blocks of 256 = 8 groups of 32; 4-bit levels, per group a 6-bit scale and 6-bit min (packed
in 12 bytes, get_scale_min_k4), fp16 super-scales d and dmin: x ~ d*sc*q - dmin*m.

Without an imatrix: quantize_row_q4_K_ref (make_qkx2_quants(32, 15, -1, 0.1, 20) with weights
sqrt(mean x^2) + |x|; scales/mins linear against their maxima). With one: quantize_row_q4_K_impl
(make_qkx3_quants(32, 15, -0.9, 0.05, 36) with weights imatrix*sqrt(sigma2 + x^2), sigma2 = 2*mean(x^2),
then make_qp_quants(8, 63) for scales/mins). The group search is shared with Q5_K (nmax 31).
"""
import numpy as np
from numba import njit, prange

from workbench.gguf.constants import QK_K
from workbench.cpu import ir as lanes
from workbench.cpu.fp16 import put_fp16, round_fp16_np
from workbench.quant.rounding import F32, max0_np, nearest_int, nearest_int_np, seqsum_np
from workbench.quant.scale_search import make_qkx2_quants_np, make_qkx3_quants_np, make_qp_quants, make_qp_quants_np
from workbench.quant.scale_search_batch import make_qkx_quants_batch
from workbench.quant.types.q2_k import requantize_np

NEEDS_IMATRIX = False
BLOCK = np.dtype([("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", (12,)), ("qs", "u1", (QK_K // 2,))])  # block_q4_K
BYTES = BLOCK.itemsize
# make_qkx2_quants arguments of the no-imatrix path: nmax -> (rmin, rdelta, nstep)
REF_SEARCH = {15: (-1.0, 0.1, 20), 31: (-0.5, 0.1, 15)}


# ------------------------------------------------------------------------------- numpy reference
def pack_scale_min_np(ls, lm):
    """(S, 8) scales and mins (6 bits) -> (S, 12), the byte ops of quantize_row_q4_K_ref on uint8."""
    ls, lm = ls.astype(np.uint8), lm.astype(np.uint8)
    sc = np.zeros((ls.shape[0], 12), np.uint8)
    sc[:, 0:4] = ls[:, :4]
    sc[:, 4:8] = lm[:, :4]
    sc[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    sc[:, 0:4] |= (ls[:, 4:] >> 4) << 6
    sc[:, 4:8] |= (lm[:, 4:] >> 4) << 6
    return sc


def unpack_scale_min_np(sc):
    """get_scale_min_k4 for all 8 groups: (S, 12) -> scales (S, 8), mins (S, 8)."""
    d = np.concatenate([sc[:, 0:4] & 63, (sc[:, 8:12] & 0xF) | ((sc[:, 0:4] >> 6) << 4)], axis=1)
    m = np.concatenate([sc[:, 4:8] & 63, (sc[:, 8:12] >> 4) | ((sc[:, 4:8] >> 6) << 4)], axis=1)
    return d, m


def scales_and_levels_np(x, imatrix, nmax):
    """Everything but the packing of the levels, shared with Q5_K -> (d, dmin, sc (S, 12), L (S, 256))."""
    rows = x.shape[0]
    xs = x.reshape(-1, QK_K)
    x32 = xs.reshape(-1, 32)
    if imatrix is None:
        av_x = np.sqrt(seqsum_np(x32 * x32) / F32(32))
        rmin, rdelta, nstep = REF_SEARCH[nmax]
        scales, mins, L = make_qkx2_quants_np(x32, av_x[:, None] + np.abs(x32), nmax, rmin, rdelta, nstep, False)
        scales, mins = scales.reshape(-1, 8), mins.reshape(-1, 8)
        max_scale, max_min = max0_np(scales), max0_np(mins)
        with np.errstate(divide="ignore"):
            inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
            inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0))
        ls = np.minimum(63, nearest_int_np(inv_scale[:, None] * scales) & 0xFF)
        lm = np.minimum(63, nearest_int_np(inv_min[:, None] * mins) & 0xFF)
        d, dmin = max_scale / F32(63), max_min / F32(63)
    else:
        sigma2 = F32(2) * seqsum_np(xs * xs) / F32(QK_K)
        qw = np.broadcast_to(imatrix.reshape(1, -1, QK_K), (rows, x.shape[1] // QK_K, QK_K)).reshape(-1, QK_K)
        w = (qw * np.sqrt(sigma2[:, None] + xs * xs)).reshape(-1, 32)
        scales, mins, L = make_qkx3_quants_np(x32, w, nmax, -0.9, 0.05, 36, False)
        sw = seqsum_np(w).reshape(-1, 8)
        d, ls = make_qp_quants_np(scales.reshape(-1, 8), 63, sw)
        dmin, lm = make_qp_quants_np(mins.reshape(-1, 8), 63, sw)
        if nmax == 31:                                              # quantize_row_q5_K_impl clamps, q4_K's not
            ls, lm = np.minimum(63, ls), np.minimum(63, lm)
    sc = pack_scale_min_np(ls, lm)
    s, m = unpack_scale_min_np(sc)
    dl = (round_fp16_np(d)[:, None] * s.astype(F32)).reshape(-1)
    ml = (round_fp16_np(dmin)[:, None] * m.astype(F32)).reshape(-1)
    L = requantize_np(x32, L, dl, ml, 0, nmax).reshape(-1, QK_K)
    return d, dmin, sc, L


def quantize_ref(x: np.ndarray, imatrix=None) -> np.ndarray:
    d, dmin, sc, L = scales_and_levels_np(x, imatrix, 15)
    L = L.astype(np.uint8).reshape(-1, 4, 2, 32)                    # 64-chunks: first 32 low, next 32 high
    y = np.zeros(L.shape[0], dtype=BLOCK)
    y["d"], y["dmin"], y["scales"] = d.astype(np.float16), dmin.astype(np.float16), sc
    y["qs"] = (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(-1, 128)
    return y.view(np.uint8).reshape(x.shape[0], -1)


def dequantize_ref(blocks: np.ndarray, n_per_row: int) -> np.ndarray:
    y = np.ascontiguousarray(blocks).view(BLOCK).reshape(-1)
    s, m = unpack_scale_min_np(y["scales"])
    dl = y["d"].astype(F32)[:, None] * s.astype(F32)
    ml = y["dmin"].astype(F32)[:, None] * m.astype(F32)
    qs = y["qs"].reshape(-1, 4, 1, 32)
    q = ((qs >> np.array([0, 4], np.uint8)[:, None]) & 0xF).reshape(-1, 8, 32).astype(F32)
    return (dl[..., None] * q - ml[..., None]).reshape(blocks.shape[0], n_per_row)


# ------------------------------------------------------------------------------- numba kernels
@njit(cache=True, error_model="numpy")
def get_scale_min_k4(j, q):
    """Scale and min (6 bits each) of group j from the 12 packed bytes `q` (ggml's get_scale_min_k4)."""
    if j < 4:
        return np.int64(q[j]) & 63, np.int64(q[j + 4]) & 63
    d = (np.int64(q[j + 4]) & 0xF) | ((np.int64(q[j - 4]) >> 6) << 4)
    m = (np.int64(q[j + 4]) >> 4) | ((np.int64(q[j]) >> 6) << 4)
    return d, m


@njit(cache=True, error_model="numpy")
def search_row(row, qw, use_qw, nmax, xt, wt, Lt, scales, mins, sw):
    """The group searches of a whole row at once: xt/wt/Lt (32, 8*nb) hold group g = 8*i + j of super-block i
    in column g; scales/mins/sw (8*nb,) come back per group. Shared by Q4_K (nmax 15) and Q5_K (nmax 31)."""
    nb = row.shape[0] // QK_K
    for g in range(8 * nb):
        for l in range(32):
            xt[l, g] = row[32 * g + l]
    for i in range(nb):
        xs = row[i * QK_K:(i + 1) * QK_K]
        if use_qw:                                                  # quantize_row_q4_K_impl / q5_K_impl
            sum_x2 = F32(0.0)
            for l in range(QK_K):
                sum_x2 += xs[l] * xs[l]
            sigma2 = F32(2.0) * sum_x2 / F32(QK_K)
            for j in range(8):
                sw[8 * i + j] = F32(0.0)
                for l in range(32):
                    v = qw[i * QK_K + 32 * j + l] * np.sqrt(sigma2 + xs[32 * j + l] * xs[32 * j + l])
                    wt[l, 8 * i + j] = v
                    sw[8 * i + j] += v
        else:                                                       # quantize_row_q4_K_ref / q5_K_ref
            for j in range(8):
                sum_x2 = F32(0.0)
                for l in range(32):
                    sum_x2 += xs[32 * j + l] * xs[32 * j + l]
                av_x = np.sqrt(sum_x2 / F32(32.0))
                for l in range(32):
                    wt[l, 8 * i + j] = av_x + abs(xs[32 * j + l])
    if use_qw:
        make_qkx_quants_batch(nmax, xt, wt, Lt, scales, mins, -0.9, 0.05, 36, False)    # make_qkx3_quants
    elif nmax == 15:
        make_qkx_quants_batch(nmax, xt, wt, Lt, scales, mins, -1.0, 0.1, 20, False)     # make_qkx2_quants
    else:
        make_qkx_quants_batch(nmax, xt, wt, Lt, scales, mins, -0.5, 0.1, 15, False)


@njit(cache=True, error_model="numpy")
def scales_and_levels(i, use_qw, nmax, sc, L, Lt, scales, mins, sw, Ls, Lm):
    """Super-block i after search_row: packed scales into `sc` (12 bytes), levels into L -> (d, dmin)."""
    scales = scales[8 * i:8 * i + 8]
    mins = mins[8 * i:8 * i + 8]
    if use_qw:
        d = make_qp_quants(8, 63, scales, Ls, sw[8 * i:8 * i + 8])
        dmin = make_qp_quants(8, 63, mins, Lm, sw[8 * i:8 * i + 8])
        if nmax == 31:                                              # quantize_row_q5_K_impl clamps, q4_K's not
            for j in range(8):
                Ls[j] = min(63, Ls[j])
                Lm[j] = min(63, Lm[j])
    else:
        max_scale = F32(0.0)
        max_min = F32(0.0)
        for j in range(8):
            max_scale = max(max_scale, scales[j])
            max_min = max(max_min, mins[j])
        inv_scale = F32(63.0) / max_scale if max_scale > 0 else F32(0.0)
        inv_min = F32(63.0) / max_min if max_min > 0 else F32(0.0)
        for j in range(8):
            Ls[j] = min(63, nearest_int(inv_scale * scales[j]) & 0xFF)
            Lm[j] = min(63, nearest_int(inv_min * mins[j]) & 0xFF)
        d = max_scale / F32(63.0)
        dmin = max_min / F32(63.0)
    for j in range(8):
        for l in range(32):
            L[32 * j + l] = Lt[l, 8 * i + j]
    for j in range(8):                                              # pack 8 (scale, min) pairs in 12 bytes
        ls = np.int64(Ls[j])
        lm = np.int64(Lm[j])
        if j < 4:
            sc[j] = ls
            sc[j + 4] = lm
        else:
            sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
            sc[j - 4] = (sc[j - 4] | ((ls >> 4) << 6)) & 0xFF
            sc[j] = (sc[j] | ((lm >> 4) << 6)) & 0xFF
    return d, dmin


@njit(cache=True, error_model="numpy")
def row_scratch(n):
    """Per-row work arrays of search_row/scales_and_levels."""
    G = 8 * (n // QK_K)
    return (np.empty((32, G), np.float32), np.empty((32, G), np.float32), np.empty((32, G), np.uint8),
            np.empty(G, np.float32), np.empty(G, np.float32), np.empty(G, np.float32),
            np.empty(QK_K, np.uint8), np.empty(8, np.uint8), np.empty(8, np.uint8))


@njit(cache=True, error_model="numpy")
def requantize(xs, sc, dd, dm, nmax, L):
    """Levels from the stored scales (dd, dm are the fp16 super-scales read back)."""
    for j in range(8):
        s, m = get_scale_min_k4(j, sc)
        d = dd * F32(s)
        if d == 0:
            continue
        dmj = dm * F32(m)
        for ii in range(32):
            L[32 * j + ii] = max(0, min(nmax, nearest_int((xs[32 * j + ii] + dmj) / d)))


@njit(parallel=True, cache=True, error_model="numpy")
def _quantize_rows(x, qw, use_qw, out):
    nb = x.shape[1] // QK_K
    for r in prange(x.shape[0]):
        xt, wt, Lt, scales, mins, sw, L, Ls, Lm = row_scratch(x.shape[1])
        search_row(x[r], qw, use_qw, 15, xt, wt, Lt, scales, mins, sw)
        for i in range(nb):
            o = i * BYTES
            sc = out[r, o + 4:o + 16]
            d, dmin = scales_and_levels(i, use_qw, 15, sc, L, Lt, scales, mins, sw, Ls, Lm)
            dd = put_fp16(out[r], o, d)
            dm = put_fp16(out[r], o + 2, dmin)
            requantize(x[r, i * QK_K:(i + 1) * QK_K], sc, dd, dm, 15, L)
            for j in range(4):
                for l in range(32):
                    out[r, o + 16 + 32 * j + l] = L[64 * j + l] | (L[64 * j + 32 + l] << 4)


def emit_scale_min(builder, block, j, at=4):
    """get_scale_min_k4(j) of the 12 scale bytes at byte `at`, as two i32."""
    def byte(i):
        return lanes.byte_at(builder, block, at + i)
    I32 = lanes.I32
    if j < 4:
        return builder.and_(byte(j), I32(63)), builder.and_(byte(j + 4), I32(63))
    sc = builder.or_(builder.and_(byte(j + 4), I32(0xF)), builder.shl(builder.lshr(byte(j - 4), I32(6)), I32(4)))
    m = builder.or_(builder.lshr(byte(j + 4), I32(4)), builder.shl(builder.lshr(byte(j), I32(6)), I32(4)))
    return sc, m


def emit_k_block(builder, block, y, qs_at, qh_at=None):
    """Q4_K / Q5_K: 32 bytes per chunk c of 64 weights, low nibbles (group 2 c) then high nibbles (2 c + 1),
    Q5_K's fifth bits as bits 2 c / 2 c + 1 of the 32 qh bytes; y = (d * sc) * q - dmin * m."""
    d, dmin = lanes.fp16(builder, block, 0), lanes.fp16(builder, block, 2)
    qh = lanes.load_bytes(builder, block, qh_at, 32) if qh_at is not None else None
    for c in range(4):
        q = lanes.load_bytes(builder, block, qs_at + 32 * c, 32)
        for p, v in enumerate((lanes.vand(builder, q, 0xF), lanes.vshr(builder, q, 4))):
            if qh is not None:
                v = builder.or_(v, lanes.bit_planes(builder, qh, 2 * c + p))
            sc, m = emit_scale_min(builder, block, 2 * c + p)
            lanes.store_affine(builder, y, 64 * c + 32 * p, v, lanes.scale_f32(builder, d, sc),
                               lanes.scale_f32(builder, dmin, m), True)


def _emit_block(builder, block, y):
    emit_k_block(builder, block, y, qs_at=16)


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
