"""TQ1_0: ternary (-1, 0, 1) weights at 1.6875 bpw, for BitNet b1.58 / TriLM models.

Block layout (block_tq1_0, 54 bytes per 256 weights): qs[48] | qh[4] | d (fp16).
d = max|x|; each weight becomes t = lroundf(x/d) + 1 in {0, 1, 2}.  Five trits are packed base 3 into one
byte (first trit most significant) and the byte is rescaled by ceil(q * 256 / 243) so that the decoder
can pull trit n out as ((uint8)(q * 3^n) * 3) >> 8.  Grouping (ggml-quants.c quantize_row_tq1_0_ref):
  qs[0:32]  hold weights m + 32*n   (n = 0..4) of the first 160,
  qs[32:48] hold weights m + 16*n   of the next 80,
  qh[0:4]   hold weights j + 4*m    (m = 0..3) of the last 16, as 4 trits shifted up by one trit.
The importance matrix is ignored (quantize_tq1_0).
"""
import numpy as np
from numba import njit, prange

from workbench.gguf.constants import QK_K
from workbench.cpu import ir as lanes
from workbench.cpu.fp16 import fp32_to_fp16_np, put_fp16
from workbench.quant.blocks import check_blocks, check_quantize_args, get_fp16_np, run_dequantize
from workbench.quant.rounding import F32, lroundf, lroundf_np

BLOCK = QK_K
TYPE_SIZE = 54
NEEDS_IMATRIX = False

POW3 = np.array([1, 3, 9, 27, 81, 243], dtype=np.uint8)


# ----------------------------------------------------------------------------- numpy reference
def ternary_levels(x):
    """(nb, 256) float32 -> d (nb,) float32 and trits (nb, 256) in {0, 1, 2}."""
    d = np.max(np.abs(x), axis=1)
    with np.errstate(divide="ignore"):
        id = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    return d, lroundf_np(x * id[:, None]) + 1


def _pack_trits(t, pow_first):
    """t: (nb, k, n) trits -> (nb, k) bytes: base-3 number of the k-th digits, rescaled by ceil(*256/243)."""
    q = np.zeros(t.shape[:2], np.int32)
    for n in range(t.shape[2]):
        q = q * 3 + t[:, :, n]
    q = q * pow_first  # qh: shift the first value to the most significant of 5 trits
    return ((q * 256 + 242) // 243).astype(np.uint8)


def quantize_ref(x, imatrix=None):
    x, _ = check_quantize_args(x, imatrix, BLOCK, "TQ1_0")
    rows = x.shape[0]
    d, t = ternary_levels(x.reshape(-1, QK_K))
    qs0 = _pack_trits(t[:, :160].reshape(-1, 5, 32).transpose(0, 2, 1), 1)
    qs1 = _pack_trits(t[:, 160:240].reshape(-1, 5, 16).transpose(0, 2, 1), 1)
    qh = _pack_trits(t[:, 240:].reshape(-1, 4, 4).transpose(0, 2, 1), 3)
    blocks = np.concatenate([qs0, qs1, qh, fp32_to_fp16_np(d).view(np.uint8).reshape(-1, 2)], axis=1)
    return blocks.reshape(rows, x.shape[1] // BLOCK * TYPE_SIZE)


def dequantize_ref(blocks, n_per_row):
    """dequantize_row_tq1_0: trit n of byte q is ((uint8)(q * 3^n) * 3) >> 8."""
    blocks = check_blocks(blocks, n_per_row, BLOCK, TYPE_SIZE, "TQ1_0").reshape(-1, TYPE_SIZE)
    d = get_fp16_np(blocks[:, 52:54])

    def trits(q, n):  # (nb, k) bytes -> (nb, n*k) values in {-1, 0, 1}, digit-major
        p = (q[:, None, :].astype(np.uint16) * POW3[:n, None]) & 0xFF
        return ((p * 3) >> 8).astype(np.int16).reshape(len(q), n * q.shape[1]) - 1

    t = np.concatenate([trits(blocks[:, :32], 5), trits(blocks[:, 32:48], 5), trits(blocks[:, 48:52], 4)], 1)
    return (t.astype(np.float32) * d[:, None]).reshape(-1, n_per_row)


def _emit_trits(builder, q, p3, y, at, d):
    """y[at + l] = (trit of ((uint8)(q[l] * p3) * 3) >> 8) - 1, times d, for the lanes l of q (p3 one power
    of 3 or one per lane), in 16-bit lanes: the uint8 product is the low byte of the 16-bit one."""
    n = q.type.count
    v16 = lanes.ir.VectorType(lanes.I16, n)
    p = lanes.const_vec(lanes.I16, p3) if isinstance(p3, list) else lanes.splat(builder, lanes.I16(p3), n)
    t = lanes.vand(builder, builder.mul(builder.zext(q, v16), p), 0xFF)
    t = lanes.vshr(builder, builder.mul(t, lanes.splat(builder, lanes.I16(3), n)), 8)
    lanes.store_affine(builder, y, at, lanes.vsub(builder, builder.trunc(t, q.type), 1), d)


def _emit_block(builder, block, y):
    """dequantize_row_tq1_0, digit-major: bytes 0..31 give weights 32 n + l, bytes 32..47 weights
    160 + 16 n + l (n = 0..4), the 4 qh bytes weights 240 + 4 n + j (n = 0..3)."""
    d = lanes.fp16(builder, block, 52)
    a = lanes.load_bytes(builder, block, 0, 32)
    b = lanes.load_bytes(builder, block, 32, 16)
    for n in range(5):
        _emit_trits(builder, a, int(POW3[n]), y, 32 * n, d)
        _emit_trits(builder, b, int(POW3[n]), y, 160 + 16 * n, d)
    qh = lanes.load_bytes(builder, block, 48, 4)
    qh16 = builder.shuffle_vector(qh, lanes.ir.Constant(qh.type, lanes.ir.Undefined),
                                  lanes.const_vec(lanes.I32, [j for _ in range(4) for j in range(4)]))
    _emit_trits(builder, qh16, [int(POW3[n]) for n in range(4) for _ in range(4)], y, 240, d)


_dequantize_row = lanes.row_kernel(_emit_block, QK_K, TYPE_SIZE)


@njit(parallel=True, cache=True)
def _dequantize_rows(blocks, out):
    for r in prange(out.shape[0]):
        _dequantize_row(blocks, out, r)


def dequantize(blocks, n_per_row):
    return run_dequantize(_dequantize_rows, blocks, n_per_row, BLOCK, TYPE_SIZE, "TQ1_0")


# ----------------------------------------------------------------------------- numba kernel
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
            put_fp16(o, 52, amax)
            # (first weight, byte count, stride between a byte's trits, trits per byte, output offset)
            for start, nbytes, stride, ntrit, opos in ((0, 32, 32, 5, 0), (160, 16, 16, 5, 32), (240, 4, 4, 4, 48)):
                for m in range(nbytes):
                    q = 0
                    for k in range(ntrit):
                        q = q * 3 + lroundf(xb[start + m + k * stride] * id) + 1
                    if ntrit == 4:
                        q *= 3
                    o[opos + m] = (q * 256 + 242) // 243


def quantize(x, imatrix=None):
    x, _ = check_quantize_args(x, imatrix, BLOCK, "TQ1_0")
    out = np.zeros((x.shape[0], x.shape[1] // BLOCK * TYPE_SIZE), np.uint8)
    _quantize_kernel(x, out)
    return out
