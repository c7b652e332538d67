"""Q8_1: blocks of 32, fp16 scale d = amax/127, fp16 s = d * sum(q), 32 int8 (quantize_row_q8_1_ref).

An activation format (the partner of Q4_1/Q5_1 in dot products); ggml_quantize_chunk has no Q8_1 case, so
this follows quantize_row_q8_1_ref and ignores the imatrix.
"""
import numpy as np
from numba import njit, prange

from workbench.cpu.fp16 import get_fp16, put_fp16
from workbench.quant.rounding import F32, roundf, roundf_np, safe_inverse_np

NEEDS_IMATRIX = False
QK = 32
BLOCK = np.dtype([("d", "<f2"), ("s", "<f2"), ("qs", "i1", (QK,))])   # block_q8_1 (ggml-common.h)
BYTES = BLOCK.itemsize


def quantize_ref(x: np.ndarray, imatrix=None) -> np.ndarray:
    rows = x.shape[0]
    xb = x.reshape(rows, -1, QK)
    d = np.abs(xb).max(axis=-1) / F32(127)
    q = roundf_np(xb * safe_inverse_np(d)[..., None]).astype(np.int8)
    y = np.zeros(xb.shape[:2], dtype=BLOCK)
    y["d"] = d.astype(np.float16)
    y["s"] = (q.astype(np.int32).sum(-1).astype(F32) * d).astype(np.float16)   # sum*d in float32
    y["qs"] = q
    return y.view(np.uint8).reshape(rows, -1)


def dequantize_ref(blocks: np.ndarray, n_per_row: int) -> np.ndarray:
    y = np.ascontiguousarray(blocks).view(BLOCK)
    return (y["qs"].astype(F32) * y["d"].astype(F32)[..., None]).reshape(blocks.shape[0], n_per_row)


@njit(parallel=True, cache=True, error_model="numpy")
def _quantize_rows(x, out):
    for r in prange(x.shape[0]):
        for ib in range(x.shape[1] // QK):
            xb = x[r, ib * QK:(ib + 1) * QK]
            o = ib * BYTES
            amax = F32(0.0)
            for j in range(QK):
                amax = max(amax, abs(xb[j]))
            d = amax / F32(127.0)
            inv = F32(1.0) / d if d != 0 else F32(0.0)
            total = 0
            for j in range(QK):
                q = np.int64(roundf(xb[j] * inv))
                total += q
                out[r, o + 4 + j] = np.uint8(q & 0xFF)
            put_fp16(out[r], o, d)
            put_fp16(out[r], o + 2, F32(total) * d)


@njit(parallel=True, cache=True, error_model="numpy")
def _dequantize_rows(blocks, out, qk):
    """qk = QK at run time so the block loop vectorizes (see q8_0._dequantize_rows)."""
    for r in prange(blocks.shape[0]):
        for ib in range(out.shape[1] // qk):
            o = ib * BYTES
            d = get_fp16(blocks[r], o)
            for j in range(qk):
                out[r, ib * qk + j] = F32(np.int8(blocks[r, o + 4 + j])) * d


def quantize(x: np.ndarray, imatrix=None) -> np.ndarray:
    out = np.empty((x.shape[0], x.shape[1] // QK * BYTES), dtype=np.uint8)
    _quantize_rows(x, out)
    return out


def dequantize(blocks: np.ndarray, n_per_row: int) -> np.ndarray:
    out = np.empty((blocks.shape[0], n_per_row), dtype=np.float32)
    _dequantize_rows(blocks, out, QK)
    return out
