"""Q5_K: Q4_K with 5-bit levels (the 5th bits in qh): super-blocks of 256 = 8 groups of 32, 6-bit group
scales/mins, fp16 d and dmin: x ~ d*sc*q - dmin*m.

quantize_row_q5_K_ref: make_qkx2_quants(32, 31, -0.5, 0.1, 15); quantize_row_q5_K_impl: as Q4_K's with
nmax 31. The group search and the scale packing are Q4_K's (q4_k.scales_and_levels).
"""
import numpy as np
from numba import njit, prange

from workbench.gguf.constants import QK_K
from workbench.cpu import ir as lanes
from workbench.cpu.fp16 import put_fp16
from workbench.quant.rounding import F32
from workbench.quant.types.q4_k import (emit_k_block, requantize, row_scratch, scales_and_levels, scales_and_levels_np,
                   search_row, unpack_scale_min_np)

NEEDS_IMATRIX = False
BLOCK = np.dtype([("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", (12,)), ("qh", "u1", (QK_K // 8,)),
                  ("qs", "u1", (QK_K // 2,))])                     # block_q5_K (ggml-common.h)
BYTES = BLOCK.itemsize


# ------------------------------------------------------------------------------- numpy reference
def quantize_ref(x: np.ndarray, imatrix=None) -> np.ndarray:
    d, dmin, sc, L = scales_and_levels_np(x, imatrix, 31)
    L = L.astype(np.uint8).reshape(-1, 4, 2, 32)                    # [64-chunk, low/high half, l]
    high = (L >> 4).reshape(-1, 8, 32)                              # group g's 5th bit -> qh bit g
    y = np.zeros(L.shape[0], dtype=BLOCK)
    y["d"], y["dmin"], y["scales"] = d.astype(np.float16), dmin.astype(np.float16), sc
    y["qh"] = (high << np.arange(8, dtype=np.uint8)[None, :, None]).sum(1, dtype=np.uint8)
    y["qs"] = ((L[:, :, 0] & 0xF) | ((L[:, :, 1] & 0xF) << 4)).reshape(-1, 128)
    return y.view(np.uint8).reshape(x.shape[0], -1)


def dequantize_ref(blocks: np.ndarray, n_per_row: int) -> np.ndarray:
    y = np.ascontiguousarray(blocks).view(BLOCK).reshape(-1)
    s, m = unpack_scale_min_np(y["scales"])
    dl = y["d"].astype(F32)[:, None] * s.astype(F32)
    ml = y["dmin"].astype(F32)[:, None] * m.astype(F32)
    low = (y["qs"].reshape(-1, 4, 1, 32) >> np.array([0, 4], np.uint8)[:, None]) & 0xF
    high = (y["qh"][:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
    q = (low.reshape(-1, 8, 32) | (high << 4)).astype(F32)
    return (dl[..., None] * q - ml[..., None]).reshape(blocks.shape[0], n_per_row)


# ------------------------------------------------------------------------------- numba kernels
@njit(parallel=True, cache=True, error_model="numpy")
def _quantize_rows(x, qw, use_qw, out):
    nb = x.shape[1] // QK_K
    for r in prange(x.shape[0]):
        xt, wt, Lt, scales, mins, sw, L, Ls, Lm = row_scratch(x.shape[1])
        search_row(x[r], qw, use_qw, 31, xt, wt, Lt, scales, mins, sw)
        for i in range(nb):
            o = i * BYTES
            sc = out[r, o + 4:o + 16]
            d, dmin = scales_and_levels(i, use_qw, 31, sc, L, Lt, scales, mins, sw, Ls, Lm)
            dd = put_fp16(out[r], o, d)
            dm = put_fp16(out[r], o + 2, dmin)
            requantize(x[r, i * QK_K:(i + 1) * QK_K], sc, dd, dm, 31, L)
            for k in range(4):                    # chunk k of 64: low half -> qh bit 2k, high half -> bit 2k+1
                for j in range(32):
                    l1 = np.int64(L[64 * k + j])
                    l2 = np.int64(L[64 * k + 32 + j])
                    if l1 > 15:
                        l1 -= 16
                        out[r, o + 16 + j] |= 1 << (2 * k)
                    if l2 > 15:
                        l2 -= 16
                        out[r, o + 16 + j] |= 2 << (2 * k)
                    out[r, o + 48 + 32 * k + j] = l1 | (l2 << 4)


def _emit_block(builder, block, y):
    emit_k_block(builder, block, y, qs_at=48, qh_at=16)


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
