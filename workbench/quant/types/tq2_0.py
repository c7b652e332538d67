"""TQ2_0: ternary (-1, 0, 1) weights stored as 2-bit codes, 2.0625 bpw.

Block layout (block_tq2_0, 66 bytes per 256 weights): qs[64] | d (fp16).
d = max|x|; code t = lroundf(x/d) + 1 in {0, 1, 2}; byte j + m of each 32-byte group holds the codes of
weights m + 32*n (n = 0..3) in bits 2n..2n+1 (ggml-quants.c quantize_row_tq2_0_ref).  The importance
matrix is ignored (quantize_tq2_0).
"""
import numpy as np
from numba import njit, prange

from workbench.gguf.constants import QK_K
from workbench.cpu import ir as lanes
from workbench.cpu.fp16 import fp32_to_fp16_np, put_fp16
from workbench.quant.blocks import check_blocks, check_quantize_args, get_fp16_np, run_dequantize
from workbench.quant.rounding import F32, lroundf
from workbench.quant.types.tq1_0 import ternary_levels

BLOCK = QK_K
TYPE_SIZE = 66
NEEDS_IMATRIX = False


def quantize_ref(x, imatrix=None):
    x, _ = check_quantize_args(x, imatrix, BLOCK, "TQ2_0")
    rows = x.shape[0]
    d, t = ternary_levels(x.reshape(-1, QK_K))
    t = t.reshape(-1, 2, 4, 32).astype(np.uint8)  # (nb, group of 128, n, m)
    qs = t[:, :, 0] | (t[:, :, 1] << 2) | (t[:, :, 2] << 4) | (t[:, :, 3] << 6)
    blocks = np.concatenate([qs.reshape(-1, 64), fp32_to_fp16_np(d).view(np.uint8).reshape(-1, 2)], axis=1)
    return blocks.reshape(rows, x.shape[1] // BLOCK * TYPE_SIZE)


def dequantize_ref(blocks, n_per_row):
    blocks = check_blocks(blocks, n_per_row, BLOCK, TYPE_SIZE, "TQ2_0").reshape(-1, TYPE_SIZE)
    d = get_fp16_np(blocks[:, 64:66])
    qs = blocks[:, :64].reshape(-1, 2, 1, 32)
    t = ((qs >> (2 * np.arange(4, dtype=np.uint8))[:, None]) & 3).astype(np.int8) - 1  # (nb, 2, 4, 32)
    return (t.reshape(-1, QK_K).astype(np.float32) * d[:, None]).reshape(-1, n_per_row)


def _emit_block(builder, block, y):
    """dequantize_row_tq2_0: weight 128 j + 32 s + l is ((qs[32 j + l] >> 2 s) & 3) - 1, times d."""
    d = lanes.fp16(builder, block, 64)
    for j in range(2):
        q = lanes.load_bytes(builder, block, 32 * j, 32)
        for s in range(4):
            t = lanes.vsub(builder, lanes.vand(builder, lanes.vshr(builder, q, 2 * s), 3), 1)
            lanes.store_affine(builder, y, 128 * j + 32 * s, t, d)


_dequantize_row = lanes.row_kernel(_emit_block, QK_K, TYPE_SIZE)


@njit(parallel=True, cache=True)
def _dequantize_rows(blocks, out):
    for r in prange(out.shape[0]):
        _dequantize_row(blocks, out, r)


def dequantize(blocks, n_per_row):
    return run_dequantize(_dequantize_rows, blocks, n_per_row, BLOCK, TYPE_SIZE, "TQ2_0")


@njit(cache=True, parallel=True)
def _quantize_kernel(x, out):
    rows, n = x.shape
    for r in prange(rows):
        for ib in range(n // QK_K):
            xb = x[r, ib * QK_K:(ib + 1) * QK_K]
            o = out[r, ib * TYPE_SIZE:(ib + 1) * TYPE_SIZE]
            amax = F32(0)
            for j in range(QK_K):
                amax = max(amax, abs(xb[j]))
            id = F32(1) / amax if amax != 0 else F32(0)
            put_fp16(o, 64, amax)
            for g in range(2):
                for m in range(32):
                    q = 0
                    for k in range(4):
                        q |= (lroundf(xb[128 * g + m + 32 * k] * id) + 1) << (2 * k)
                    o[32 * g + m] = q


def quantize(x, imatrix=None):
    x, _ = check_quantize_args(x, imatrix, BLOCK, "TQ2_0")
    out = np.zeros((x.shape[0], x.shape[1] // BLOCK * TYPE_SIZE), np.uint8)
    _quantize_kernel(x, out)
    return out
