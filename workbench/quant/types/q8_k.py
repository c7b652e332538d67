"""Q8_K: super-blocks of 256, a float32 scale d = max/-127 (signed largest |x|), 256 int8 and 16 int16
sums of 16 (quantize_row_q8_K_ref). The activation format of k-quant dot products; not in
ggml_quantize_chunk, so the imatrix is ignored.
"""
import numpy as np
from numba import njit, prange

from workbench.gguf.constants import QK_K
from workbench.cpu.fp16 import f32_bits, f32_from_bits
from workbench.quant.rounding import F32, nearest_int, nearest_int_np

NEEDS_IMATRIX = False
BLOCK = np.dtype([("d", "<f4"), ("qs", "i1", (QK_K,)), ("bsums", "<i2", (QK_K // 16,))])   # block_q8_K
BYTES = BLOCK.itemsize


def quantize_ref(x: np.ndarray, imatrix=None) -> np.ndarray:
    xs = x.reshape(-1, QK_K)
    mx = np.take_along_axis(xs, np.abs(xs).argmax(1)[:, None], 1)[:, 0]
    zero = mx == 0
    iscale = F32(-127) / np.where(zero, F32(1), mx)
    q = np.minimum(127, nearest_int_np(iscale[:, None] * xs))
    q[zero] = 0
    y = np.zeros(xs.shape[0], dtype=BLOCK)
    y["d"] = np.where(zero, F32(0), F32(1) / iscale)
    y["qs"] = q
    y["bsums"] = q.reshape(-1, 16, 16).sum(-1)
    return y.view(np.uint8).reshape(x.shape[0], -1)


def dequantize_ref(blocks: np.ndarray, n_per_row: int) -> np.ndarray:
    y = np.ascontiguousarray(blocks).view(BLOCK).reshape(-1)
    return (y["d"][:, None] * y["qs"].astype(F32)).reshape(blocks.shape[0], n_per_row)


@njit(parallel=True, cache=True, error_model="numpy")
def _quantize_rows(x, out):
    for r in prange(x.shape[0]):
        for i in range(x.shape[1] // QK_K):
            xs = x[r, i * QK_K:(i + 1) * QK_K]
            o = i * BYTES
            amax = F32(0.0)
            mx = F32(0.0)
            for j in range(QK_K):
                if abs(xs[j]) > amax:
                    amax = abs(xs[j])
                    mx = xs[j]
            if amax == 0:
                continue                                            # d = 0, qs = 0 (out starts zeroed)
            iscale = F32(-127.0) / mx
            for j in range(QK_K // 16):
                total = 0
                for ii in range(16):
                    v = min(127, nearest_int(iscale * xs[16 * j + ii]))
                    out[r, o + 4 + 16 * j + ii] = v & 0xFF
                    total += v
                out[r, o + 260 + 2 * j] = total & 0xFF
                out[r, o + 261 + 2 * j] = (total >> 8) & 0xFF
            bits = f32_bits(F32(1.0) / iscale)
            for k in range(4):
                out[r, o + k] = (bits >> (8 * k)) & 0xFF


@njit(parallel=True, cache=True, error_model="numpy")
def _dequantize_rows(blocks, out):
    for r in prange(blocks.shape[0]):
        for i in range(out.shape[1] // QK_K):
            o = i * BYTES
            bits = np.uint32(0)
            for k in range(4):
                bits |= np.uint32(blocks[r, o + k]) << np.uint32(8 * k)
            d = f32_from_bits(bits)
            for j in range(QK_K):
                out[r, i * QK_K + j] = d * F32(np.int8(blocks[r, o + 4 + j]))


def quantize(x: np.ndarray, imatrix=None) -> np.ndarray:
    out = np.zeros((x.shape[0], x.shape[1] // QK_K * BYTES), dtype=np.uint8)
    _quantize_rows(x, out)
    return out


def dequantize(blocks: np.ndarray, n_per_row: int) -> np.ndarray:
    out = np.empty((blocks.shape[0], n_per_row), dtype=np.float32)
    _dequantize_rows(blocks, out)
    return out
