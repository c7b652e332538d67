"""Q6_K: super-blocks of 256 = 16 groups of 16; 6-bit levels (low nibble in ql, 2 high bits in qh), signed
8-bit group scales, one fp16 super-scale d: x ~ d*sc*(q-32).

quantize_row_q6_K_ref: make_qx_quants(16, 32) with weights x^2; quantize_row_q6_K_impl: the same with the
raw imatrix values as weights (no sigma2 term). Group scales are quantized against the signed largest one
(-128/max); an all-zero super-block is stored as zeros.
"""
import numpy as np
from numba import njit, prange

from workbench.gguf.constants import QK_K
from workbench.cpu import ir as lanes
from workbench.cpu.fp16 import put_fp16, round_fp16_np
from workbench.quant.rounding import F32, nearest_int, nearest_int_np, signed_absmax_np
from workbench.quant.scale_search import GROUP_MAX_EPS, make_qx_quants_np
from workbench.quant.scale_search_batch import make_qx_quants_batch
from workbench.quant.types.q2_k import requantize_np

NEEDS_IMATRIX = False
BLOCK = np.dtype([("ql", "u1", (QK_K // 2,)), ("qh", "u1", (QK_K // 4,)), ("scales", "i1", (QK_K // 16,)),
                  ("d", "<f2")])                                    # block_q6_K (ggml-common.h)
BYTES = BLOCK.itemsize


# ------------------------------------------------------------------------------- numpy reference
def quantize_ref(x: np.ndarray, imatrix=None) -> np.ndarray:
    rows = x.shape[0]
    x16 = x.reshape(-1, 16)
    if imatrix is None:
        w = x16 * x16
    else:
        w = np.broadcast_to(imatrix.reshape(1, -1), x.shape).reshape(-1, 16)
    scales, L = make_qx_quants_np(x16, 32, w)
    scales = scales.reshape(-1, 16)
    max_scale = signed_absmax_np(scales)
    zero = np.abs(max_scale) < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F32(-128) / np.where(zero, F32(1), max_scale)
    d = F32(1) / iscale
    sc = (np.minimum(127, nearest_int_np(iscale[:, None] * scales)) & 0xFF).astype(np.uint8).view(np.int8)
    dl = (round_fp16_np(d)[:, None] * sc.astype(F32)).reshape(-1)
    L = (requantize_np(x16, L - 32, dl, np.zeros_like(dl), -32, 31) + 32).astype(np.uint8)
    L = L.reshape(-1, 2, 4, 32)                                     # [half of 128, quarter, l]
    y = np.zeros(L.shape[0], dtype=BLOCK)
    y["ql"] = np.concatenate([(L[:, :, 0] & 0xF) | ((L[:, :, 2] & 0xF) << 4),
                              (L[:, :, 1] & 0xF) | ((L[:, :, 3] & 0xF) << 4)], axis=2).reshape(-1, 128)
    y["qh"] = ((L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4)
               | ((L[:, :, 3] >> 4) << 6)).reshape(-1, 64)
    y["scales"] = sc
    y["d"] = d.astype(np.float16)
    y[zero] = np.zeros(1, dtype=BLOCK)
    return y.view(np.uint8).reshape(rows, -1)


def dequantize_ref(blocks: np.ndarray, n_per_row: int) -> np.ndarray:
    y = np.ascontiguousarray(blocks).view(BLOCK).reshape(-1)
    dl = y["d"].astype(F32)[:, None] * y["scales"].astype(F32)      # (S, 16)
    ql = y["ql"].reshape(-1, 2, 2, 32)                              # [half, byte group, l]
    low = np.stack([ql[:, :, 0] & 0xF, ql[:, :, 1] & 0xF, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
    high = (y["qh"].reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8)[:, None]) & 3
    q = (low | (high << 4)).astype(np.int32) - 32                   # (S, 2, 4, 32)
    return (dl.reshape(-1, 16, 1) * q.reshape(-1, 16, 16).astype(F32)).reshape(blocks.shape[0], n_per_row)


# ------------------------------------------------------------------------------- numba kernels
@njit(cache=True, error_model="numpy")
def _quantize_superblock(xs, qw, use_qw, out, o, L, xt, wt, Lt, scales):
    for g in range(16):                                             # groups side by side: (16 elems, 16 groups)
        for i in range(16):
            xt[i, g] = xs[16 * g + i]
            wt[i, g] = qw[16 * g + i] if use_qw else xs[16 * g + i] * xs[16 * g + i]
    make_qx_quants_batch(32, xt, wt, Lt, scales)
    max_scale = F32(0.0)
    max_abs_scale = F32(0.0)
    for ib in range(16):
        for i in range(16):
            L[16 * ib + i] = Lt[i, ib]
        if abs(scales[ib]) > max_abs_scale:
            max_abs_scale = abs(scales[ib])
            max_scale = scales[ib]
    if max_abs_scale < GROUP_MAX_EPS:
        return                                                      # block stays all zero
    iscale = F32(-128.0) / max_scale
    dd = put_fp16(out, o + 208, F32(1.0) / iscale)
    for ib in range(16):
        out[o + 192 + ib] = min(127, nearest_int(iscale * scales[ib])) & 0xFF
    for j in range(16):
        d = dd * F32(np.int8(out[o + 192 + j]))
        if d == 0:
            continue
        for ii in range(16):
            L[16 * j + ii] = max(-32, min(31, nearest_int(xs[16 * j + ii] / d))) + 32
    for h in range(2):
        for l in range(32):
            j = 128 * h
            out[o + 64 * h + l] = (L[j + l] & 0xF) | ((L[j + l + 64] & 0xF) << 4)
            out[o + 64 * h + l + 32] = (L[j + l + 32] & 0xF) | ((L[j + l + 96] & 0xF) << 4)
            out[o + 128 + 32 * h + l] = ((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2)
                                         | ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6))


@njit(parallel=True, cache=True, error_model="numpy")
def _quantize_rows(x, qw, use_qw, out):
    nb = x.shape[1] // QK_K
    for r in prange(x.shape[0]):
        L = np.empty(QK_K, np.uint8)
        xt = np.empty((16, 16), np.float32)
        wt = np.empty((16, 16), np.float32)
        Lt = np.empty((16, 16), np.uint8)
        scales = np.empty(16, np.float32)
        for i in range(nb):
            _quantize_superblock(x[r, i * QK_K:(i + 1) * QK_K], qw[i * QK_K:(i + 1) * QK_K] if use_qw else qw,
                                 use_qw, out[r], i * BYTES, L, xt, wt, Lt, scales)


def _emit_block(builder, block, y):
    """dequantize_row_q6_K: per half h, ql bytes 64 h (+32) and qh bytes 128 + 32 h give four 32-weight
    runs k (low / high nibble | 2 qh bits << 4, minus 32); lanes l < 16 take int8 scale 8 h + 2 k, the rest
    8 h + 2 k + 1; y = (d * scale) * q."""
    d = lanes.fp16(builder, block, 208)
    for h in range(2):
        qa = lanes.load_bytes(builder, block, 64 * h, 32)
        qb = lanes.load_bytes(builder, block, 64 * h + 32, 32)
        qh = lanes.load_bytes(builder, block, 128 + 32 * h, 32)
        low = (lanes.vand(builder, qa, 0xF), lanes.vand(builder, qb, 0xF), lanes.vshr(builder, qa, 4),
               lanes.vshr(builder, qb, 4))
        for k in range(4):
            high = lanes.vshl(builder, lanes.vand(builder, lanes.vshr(builder, qh, 2 * k), 3), 4)
            v = lanes.vsub(builder, builder.or_(low[k], high), 32)
            for p in range(2):
                sc = builder.sext(lanes.load(builder, block, 192 + 8 * h + 2 * k + p, lanes.I8), lanes.I32)
                lanes.store_affine(builder, y, 128 * h + 32 * k + 16 * p, lanes.half(builder, v, p),
                                   lanes.scale_f32(builder, d, sc))


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
