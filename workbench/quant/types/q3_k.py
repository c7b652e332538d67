"""Q3_K: super-blocks of 256 = 16 groups of 16; 3-bit levels (2 low bits in qs, the high bit in hmask),
signed 6-bit group scales packed in 12 bytes, one fp16 super-scale d: x ~ d*sc*(q-4).

Without an imatrix: quantize_row_q3_K_ref (make_q3_quants(16, 4) per group, scales quantized against the
signed largest one). With one: quantize_row_q3_K_impl (make_qx_quants(16, 4) with weights
imatrix*sqrt(sigma2 + x^2), sigma2 = 2*mean(x^2); the scales by make_qx_quants(16, 32) weighted by sum(w)).
"""
import numpy as np
from numba import njit, prange

from workbench.gguf.constants import QK_K
from workbench.cpu import ir as lanes
from workbench.cpu.fp16 import put_fp16, round_fp16_np
from workbench.quant.rounding import F32, nearest_int, nearest_int_np, seqsum_np, signed_absmax_np
from workbench.quant.scale_search import make_q3_quants, make_q3_quants_np, make_qx_quants, make_qx_quants_np
from workbench.quant.scale_search_batch import make_qx_quants_batch
from workbench.quant.types.q2_k import pack_2bit, pack_2bit_np, requantize_np, unpack_2bit_np

NEEDS_IMATRIX = False
BLOCK = np.dtype([("hmask", "u1", (32,)), ("qs", "u1", (64,)), ("scales", "u1", (12,)), ("d", "<f2")])  # block_q3_K
BYTES = BLOCK.itemsize


def pack_scales_np(ls):
    """(S, 16) 6-bit values -> (S, 12): low nibbles in bytes 0..7, the 2 high bits of j in byte 8 + j%4."""
    ls = ls.astype(np.uint8)
    low = (ls[:, :8] & 0xF) | ((ls[:, 8:] & 0xF) << 4)
    hi = (ls >> 4).reshape(-1, 4, 4)                                # [j // 4, j % 4]
    high = hi[:, 0] | (hi[:, 1] << 2) | (hi[:, 2] << 4) | (hi[:, 3] << 6)
    return np.concatenate([low, high], axis=1)


def unpack_scales_np(sc):
    """(S, 12) -> (S, 16) signed scales (value - 32)."""
    low = np.concatenate([sc[:, :8] & 0xF, sc[:, :8] >> 4], axis=1)
    high = (sc[:, None, 8:] >> np.array([0, 2, 4, 6], np.uint8)[None, :, None]) & 3   # [j // 4, j % 4]
    return (low | (high.reshape(-1, 16) << 4)).astype(np.int32) - 32


# ------------------------------------------------------------------------------- numpy reference
def quantize_ref(x: np.ndarray, imatrix=None) -> np.ndarray:
    rows = x.shape[0]
    xs = x.reshape(-1, QK_K)
    x16 = xs.reshape(-1, 16)
    if imatrix is None:
        scales, L = make_q3_quants_np(x16, 4)
        scales = scales.reshape(-1, 16)
        max_scale = signed_absmax_np(scales)                       # signed, NaN never wins
        with np.errstate(divide="ignore", invalid="ignore"):
            iscale = F32(-32) / max_scale
            l = nearest_int_np(iscale[:, None] * scales)
        l = ((l + 128) & 0xFF) - 128                                # stored in an int8_t before clamping
        ls = np.where((max_scale != 0)[:, None], np.clip(l, -32, 31) + 32, 0)
        d = np.where(max_scale != 0, F32(1) / iscale, F32(0))
    else:
        sigma2 = F32(2) * seqsum_np(xs * xs) / F32(QK_K)
        qw = np.broadcast_to(imatrix.reshape(1, -1, QK_K), (rows, x.shape[1] // QK_K, QK_K)).reshape(-1, QK_K)
        w = (qw * np.sqrt(sigma2[:, None] + xs * xs)).reshape(-1, 16)
        scales, L = make_qx_quants_np(x16, 4, w)
        d, ls = make_qx_quants_np(scales.reshape(-1, 16), 32, seqsum_np(w).reshape(-1, 16))
    packed = pack_scales_np(ls)
    dl = (round_fp16_np(d)[:, None] * unpack_scales_np(packed).astype(F32)).reshape(-1)
    L = (requantize_np(x16, L - 4, dl, np.zeros_like(dl), -4, 3) + 4).reshape(-1, QK_K)
    high = (L > 3).reshape(-1, 8, 32)                               # bit j//32 of hmask[j % 32]
    y = np.zeros(xs.shape[0], dtype=BLOCK)
    y["hmask"] = (high.astype(np.uint8) << np.arange(8, dtype=np.uint8)[None, :, None]).sum(1, dtype=np.uint8)
    y["qs"] = pack_2bit_np(np.where(L > 3, L - 4, L))
    y["scales"] = packed
    y["d"] = d.astype(np.float16)
    return y.view(np.uint8).reshape(rows, -1)


def dequantize_ref(blocks: np.ndarray, n_per_row: int) -> np.ndarray:
    y = np.ascontiguousarray(blocks).view(BLOCK).reshape(-1)
    dl = y["d"].astype(F32)[:, None] * unpack_scales_np(y["scales"]).astype(F32)             # (S, 16)
    high = (y["hmask"][:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1      # (S, 8, 32)
    q = unpack_2bit_np(y["qs"]).astype(np.int32) - 4 * (1 - high.reshape(-1, QK_K).astype(np.int32))
    return (dl[..., None] * q.reshape(-1, 16, 16).astype(F32)).reshape(blocks.shape[0], n_per_row)


# ------------------------------------------------------------------------------- numba kernels
@njit(cache=True, error_model="numpy")
def get_scale(sc, j):
    """Signed 6-bit scale j of the 12-byte packing."""
    low = (np.int64(sc[j]) & 0xF) if j < 8 else (np.int64(sc[j - 8]) >> 4)
    return (low | (((np.int64(sc[8 + j % 4]) >> (2 * (j // 4))) & 3) << 4)) - 32


@njit(cache=True, error_model="numpy")
def _search_row_imatrix(row, qw, xt, wt, Lt, scales, sw):
    """quantize_row_q3_K_impl's group searches, all groups of 16 of the row side by side (column 16*i + j)."""
    nb = row.shape[0] // QK_K
    for i in range(nb):
        sumx2 = F32(0.0)
        for j in range(QK_K):
            sumx2 += row[i * QK_K + j] * row[i * QK_K + j]
        sigma2 = F32(2.0) * sumx2 / F32(QK_K)
        for g in range(16 * i, 16 * i + 16):
            sw[g] = F32(0.0)
            for l in range(16):
                v = row[16 * g + l]
                xt[l, g] = v
                wt[l, g] = qw[16 * g + l] * np.sqrt(sigma2 + v * v)
                sw[g] += wt[l, g]
    make_qx_quants_batch(4, xt, wt, Lt, scales)


@njit(cache=True, error_model="numpy")
def _quantize_superblock(xs, use_qw, out, o, L, scales, sw, Ls):
    """One super-block; with an imatrix, L/scales/sw come from _search_row_imatrix."""
    sc = out[o + 96:o + 108]
    for j in range(12):
        sc[j] = 0
    if use_qw:                                                      # quantize_row_q3_K_impl
        d = make_qx_quants(16, 32, scales, Ls, sw)
    else:                                                           # quantize_row_q3_K_ref
        amax = F32(0.0)
        max_scale = F32(0.0)
        for j in range(16):
            scales[j] = make_q3_quants(16, 4, xs[16 * j:16 * j + 16], L[16 * j:16 * j + 16])
            if abs(scales[j]) > amax:
                amax = abs(scales[j])
                max_scale = scales[j]
        d = F32(0.0)
        for j in range(16):
            Ls[j] = 0
        if max_scale != 0:
            iscale = F32(-32.0) / max_scale
            for j in range(16):
                l = ((nearest_int(iscale * scales[j]) + 128) & 0xFF) - 128      # int8_t l = nearest_int(...)
                Ls[j] = max(-32, min(31, l)) + 32
            d = F32(1.0) / iscale
    for j in range(16):
        l = np.int64(Ls[j])
        if j < 8:
            sc[j] = l & 0xF
        else:
            sc[j - 8] |= (l & 0xF) << 4
        sc[j % 4 + 8] |= (l >> 4) << (2 * (j // 4))
    dd = put_fp16(out, o + 108, d)
    for j in range(16):                                             # levels from the stored scales
        dl = dd * F32(get_scale(sc, j))
        if dl == 0:
            continue
        for ii in range(16):
            L[16 * j + ii] = max(-4, min(3, nearest_int(xs[16 * j + ii] / dl))) + 4
    for m in range(32):
        out[o + m] = 0
    for j in range(QK_K):                                           # high bit of L[j] -> hmask[j%32] bit j//32
        if L[j] > 3:
            out[o + j % 32] |= 1 << (j // 32)
            L[j] -= 4
    pack_2bit(out, o + 32, L)


@njit(parallel=True, cache=True, error_model="numpy")
def _quantize_rows(x, qw, use_qw, out):
    nb = x.shape[1] // QK_K
    for r in prange(x.shape[0]):
        G = 16 * nb
        L = np.empty(QK_K, np.int8)
        scales = np.empty(G, np.float32)
        sw = np.empty(G, np.float32)
        Ls = np.empty(16, np.int8)
        Lt = np.empty((16, G), np.uint8)
        if use_qw:
            _search_row_imatrix(x[r], qw, np.empty((16, G), np.float32), np.empty((16, G), np.float32), Lt,
                                scales, sw)
        for i in range(nb):
            if use_qw:
                for j in range(16):
                    for l in range(16):
                        L[16 * j + l] = Lt[l, 16 * i + j]
            _quantize_superblock(x[r, i * QK_K:(i + 1) * QK_K], use_qw, out[r], i * BYTES, L,
                                 scales[16 * i:16 * i + 16], sw[16 * i:16 * i + 16], Ls)


def _scale(builder, block, i):
    """The 6-bit scale of group i minus 32 (ggml's aux[] unpacking of the 12 scale bytes at 96)."""
    def byte(j):
        return lanes.byte_at(builder, block, 96 + j)
    low = builder.and_(byte(i), lanes.I32(0xF)) if i < 8 else builder.lshr(byte(i - 8), lanes.I32(4))
    high = builder.and_(builder.lshr(byte(8 + i % 4), lanes.I32(2 * (i // 4))), lanes.I32(3))
    return builder.sub(builder.or_(low, builder.shl(high, lanes.I32(4))), lanes.I32(32))


def _emit_block(builder, block, y):
    """dequantize_row_q3_K: as Q2_K's layout, level = ((q >> 2 k) & 3) - 4 unless bit 4 h + k of the
    hmask byte is set; y = (d * scale) * level."""
    d = lanes.fp16(builder, block, 108)
    hm = lanes.load_bytes(builder, block, 0, 32)
    for h in range(2):
        q = lanes.load_bytes(builder, block, 32 + 32 * h, 32)
        for k in range(4):
            low = lanes.vand(builder, lanes.vshr(builder, q, 2 * k), 3)
            v = lanes.vsub(builder, builder.or_(low, lanes.bit_planes(builder, hm, 4 * h + k, 2)), 4)
            for p in range(2):
                dl = lanes.scale_f32(builder, d, _scale(builder, block, 8 * h + 2 * k + p))
                lanes.store_affine(builder, y, 128 * h + 32 * k + 16 * p, lanes.half(builder, v, p), dl)


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
