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

from .common import get_fp16
from .iq_common import QK_K, check_blocks, check_quantize_args, f32, fp16_bits, fp16_from_bytes, store_fp16

BLOCK = QK_K
TYPE_SIZE = 54
NEEDS_IMATRIX = False

POW3 = np.array([1, 3, 9, 27, 81, 243], dtype=np.uint8)


# ----------------------------------------------------------------------------- numpy reference
def lroundf_np(v):
    """C lroundf: round half away from zero (done in float64, where |v| + 0.5 is exact)."""
    v = np.asarray(v, dtype=np.float64)
    return (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int32)


def _ternary(x):
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
    d, t = _ternary(x.reshape(-1, QK_K))
    qs0 = _pack_trits(t[:, :160].reshape(-1, 5, 32).transpose(0, 2, 1), 1)
    qs1 = _pack_trits(t[:, 160:240].reshape(-1, 5, 16).transpose(0, 2, 1), 1)
    qh = _pack_trits(t[:, 240:].reshape(-1, 4, 4).transpose(0, 2, 1), 3)
    blocks = np.concatenate([qs0, qs1, qh, fp16_bits(d).view(np.uint8).reshape(-1, 2)], axis=1)
    return blocks.reshape(rows, x.shape[1] // BLOCK * TYPE_SIZE)


def dequantize_ref(blocks, n_per_row):
    """dequantize_row_tq1_0: trit n of byte q is ((uint8)(q * 3^n) * 3) >> 8."""
    blocks = check_blocks(blocks, n_per_row, BLOCK, TYPE_SIZE, "TQ1_0").reshape(-1, TYPE_SIZE)
    d = fp16_from_bytes(blocks[:, 52:54])

    def trits(q, n):  # (nb, k) bytes -> (nb, n*k) values in {-1, 0, 1}, digit-major
        p = (q[:, None, :].astype(np.uint16) * POW3[:n, None]) & 0xFF
        return ((p * 3) >> 8).astype(np.int16).reshape(len(q), n * q.shape[1]) - 1

    t = np.concatenate([trits(blocks[:, :32], 5), trits(blocks[:, 32:48], 5), trits(blocks[:, 48:52], 4)], 1)
    return (t.astype(np.float32) * d[:, None]).reshape(-1, n_per_row)


@njit(cache=True, error_model="numpy", inline="always")
def _trits(q, p3, y, d, n):
    """y[l] = (trit of weight p3 in byte q[l]) * d for l < n: ((uint8)(q * p3) * 3) >> 8, minus 1."""
    for l in range(n):
        p = np.uint16(np.uint8(np.uint16(q[l]) * p3))
        y[l] = np.float32(np.int16((p * np.uint16(3)) >> np.uint16(8)) - np.int16(1)) * d


@njit(cache=True, parallel=True, error_model="numpy")
def _dequantize_rows(blocks, out, n4):
    """dequantize_row_tq1_0 (digit-major order as dequantize_ref). n4 = 4 at run time: the digit loops
    run over 32 / 16 / 4 bytes, counts LLVM must not know in advance to vectorize rather than unroll."""
    for r in prange(blocks.shape[0]):
        brow = blocks[r]
        orow = out[r]
        for i in range(orow.shape[0] // QK_K):
            o = i * TYPE_SIZE
            y = orow[i * QK_K:(i + 1) * QK_K]
            d = get_fp16(brow, o + 52)
            for n in range(5):
                p3 = np.uint16(POW3[n])
                _trits(brow[o:o + 8 * n4], p3, y[8 * n4 * n:8 * n4 * (n + 1)], d, 8 * n4)
                _trits(brow[o + 8 * n4:o + 12 * n4], p3, y[160 + 4 * n4 * n:160 + 4 * n4 * (n + 1)], d, 4 * n4)
            for n in range(4):
                _trits(brow[o + 48:o + 48 + n4], np.uint16(POW3[n]), y[240 + n4 * n:240 + n4 * (n + 1)], d, n4)


def dequantize(blocks, n_per_row):
    blocks = check_blocks(blocks, n_per_row, BLOCK, TYPE_SIZE, "TQ1_0")
    out = np.empty((blocks.shape[0], n_per_row), np.float32)
    _dequantize_rows(blocks, out, 4)
    return out


# ----------------------------------------------------------------------------- numba kernel
@njit(cache=True)
def _lroundf(v):
    a = np.floor(abs(float(v)) + 0.5)
    return int(a) if v >= 0 else -int(a)


@njit(cache=True, parallel=True)
def _quantize_kernel(x, out):
    rows, n = x.shape
    for r in prange(rows):
        for ib in range(n // QK_K):
            xb = x[r, ib * QK_K:(ib + 1) * QK_K]
            o = out[r, ib * TYPE_SIZE:(ib + 1) * TYPE_SIZE]
            amax = f32(0)
            for j in range(QK_K):
                amax = max(amax, abs(xb[j]))
            id = f32(1) / amax if amax != 0 else f32(0)
            store_fp16(o, 52, amax)
            # (first weight, byte count, stride between a byte's trits, trits per byte, output offset)
            for start, nbytes, stride, ntrit, opos in ((0, 32, 32, 5, 0), (160, 16, 16, 5, 32), (240, 4, 4, 4, 48)):
                for m in range(nbytes):
                    q = 0
                    for k in range(ntrit):
                        q = q * 3 + _lroundf(xb[start + m + k * stride] * id) + 1
                    if ntrit == 4:
                        q *= 3
                    o[opos + m] = (q * 256 + 242) // 243


def quantize(x, imatrix=None):
    x, _ = check_quantize_args(x, imatrix, BLOCK, "TQ1_0")
    out = np.zeros((x.shape[0], x.shape[1] // BLOCK * TYPE_SIZE), np.uint8)
    _quantize_kernel(x, out)
    return out
