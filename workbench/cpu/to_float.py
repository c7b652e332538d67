"""Row decoders for the quantized matmul: one quantized row -> (w, mins).

Every ggml block format dequantizes to `y = d_sub * q + min_sub` over sub-blocks of S values. The matmul
wants the two parts apart, because llama.cpp's `ggml_vec_dot_*` applies the scale to the integer dot
product and the min to the (pre-computed) sum of the activation block:

    w[i]        = d_sub * q[i]      float32, the scaled integer part (K values)
    mins[i//S]  = min_sub           float32, the additive part per sub-block (0 for symmetric formats)

The arithmetic order (d * sc first, then * q) follows ggml's `dequantize_row_*` in ggml/src/ggml-quants.c,
so w[i] + mins[i//S] equals llama.cpp's dequantized value bit for bit.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from workbench.gguf import GGMLType

# sub-block size S of the min term, for the formats that have one (others: S = block size, mins = 0)
MIN_SUBBLOCK = {GGMLType.Q4_1: 32, GGMLType.Q5_1: 32, GGMLType.Q2_K: 16, GGMLType.Q4_K: 32, GGMLType.Q5_K: 32}

NATIVE_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0,
                GGMLType.Q5_1, GGMLType.Q8_0, GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K,
                GGMLType.Q6_K)

_POW2 = np.array([2.0 ** (e - 25) for e in range(32)], dtype=np.float32)  # exact: python floats

_F32, _F16, _BF16 = int(GGMLType.F32), int(GGMLType.F16), int(GGMLType.BF16)
_Q4_0, _Q4_1, _Q5_0, _Q5_1, _Q8_0 = (int(GGMLType.Q4_0), int(GGMLType.Q4_1), int(GGMLType.Q5_0),
                                     int(GGMLType.Q5_1), int(GGMLType.Q8_0))
_Q2_K, _Q3_K, _Q4_K, _Q5_K, _Q6_K = (int(GGMLType.Q2_K), int(GGMLType.Q3_K), int(GGMLType.Q4_K),
                                     int(GGMLType.Q5_K), int(GGMLType.Q6_K))


@njit(cache=True, inline="always")
def f16(b, o):
    """IEEE half at bytes b[o], b[o+1] (little-endian) -> float32 (ggml's GGML_FP16_TO_FP32)."""
    h = np.int64(b[o]) | (np.int64(b[o + 1]) << 8)
    e = (h >> 10) & 31
    m = h & 1023
    if e == 0:
        v = np.float32(m) * np.float32(5.960464477539063e-08)        # subnormal: m * 2^-24
    elif e == 31:
        v = np.float32(np.inf) if m == 0 else np.float32(np.nan)
    else:
        v = np.float32(1024 + m) * _POW2[e]                         # (1024 + m) * 2^(e - 25)
    return -v if h >> 15 else v


@njit(cache=True, inline="always")
def _i8(x):
    return np.int64(x) - 256 if x > 127 else np.int64(x)


@njit(cache=True)
def decode_row(tid, row, K, w, mins):
    """Fill w (K,) and mins (K // S,) from one row of raw bytes of ggml type `tid`."""
    if tid == _F32:
        w[:] = row[:4 * K].view(np.float32)
    elif tid == _F16:
        for i in range(K):
            w[i] = f16(row, 2 * i)
    elif tid == _BF16:
        bits = w.view(np.uint32)
        for i in range(K):
            bits[i] = (np.uint32(row[2 * i]) << np.uint32(16)) | (np.uint32(row[2 * i + 1]) << np.uint32(24))
    elif tid == _Q4_0 or tid == _Q4_1:       # block: d, [m], qs[16]; x = d*q (- 8) (+ m)
        bs = 18 if tid == _Q4_0 else 20
        off = np.int32(8 if tid == _Q4_0 else 0)
        for b in range(K // 32):
            o = b * bs
            d = f16(row, o)
            if tid == _Q4_1:
                mins[b] = f16(row, o + 2)
            q0 = o + bs - 16
            for j in range(16):
                w[32 * b + j] = d * np.float32(np.int32(row[q0 + j] & 15) - off)
            for j in range(16):
                w[32 * b + j + 16] = d * np.float32(np.int32(row[q0 + j] >> 4) - off)
    elif tid == _Q5_0 or tid == _Q5_1:       # block: d, [m], qh (u32), qs[16]; 5th bit from qh
        bs = 22 if tid == _Q5_0 else 24
        off = 16 if tid == _Q5_0 else 0
        for b in range(K // 32):
            o = b * bs
            d = f16(row, o)
            if tid == _Q5_1:
                mins[b] = f16(row, o + 2)
            p = o + bs - 20
            qh = np.int64(row[p]) | (np.int64(row[p + 1]) << 8) | (np.int64(row[p + 2]) << 16) | (np.int64(row[p + 3]) << 24)
            for j in range(16):
                q = np.int64(row[p + 4 + j])
                h0 = ((qh >> j) << 4) & 0x10
                h1 = (qh >> (j + 12)) & 0x10
                w[32 * b + j] = d * np.float32(((q & 15) | h0) - off)
                w[32 * b + j + 16] = d * np.float32(((q >> 4) | h1) - off)
    elif tid == _Q8_0:                       # block: d, qs[32] int8
        for b in range(K // 32):
            o = b * 34
            d = f16(row, o)
            for j in range(32):
                w[32 * b + j] = d * np.float32(np.int8(row[o + 2 + j]))
    elif tid == _Q2_K:
        _decode_q2_k(row, K, w, mins)
    elif tid == _Q3_K:
        _decode_q3_k(row, K, w)
    elif tid == _Q4_K or tid == _Q5_K:
        _decode_q45_k(tid == _Q5_K, row, K, w, mins)
    elif tid == _Q6_K:
        _decode_q6_k(row, K, w)


@njit(cache=True)
def _decode_q2_k(row, K, w, mins):
    """block_q2_K (84 B): scales[16] (4-bit scale | 4-bit min), qs[64] (2 bits), d, dmin."""
    for b in range(K // 256):
        o = b * 84
        d = f16(row, o + 80)
        dmin = f16(row, o + 82)
        is_ = 0
        for n in range(2):
            q0 = o + 16 + 32 * n
            for j in range(4):
                shift = 2 * j
                for half in range(2):
                    sc = row[o + is_]
                    dl = d * np.float32(sc & 15)
                    base = 256 * b + 128 * n + 32 * j + 16 * half
                    mins[base // 16] = -(dmin * np.float32(sc >> 4))
                    for l in range(16):
                        w[base + l] = dl * np.float32((row[q0 + 16 * half + l] >> shift) & 3)
                    is_ += 1


@njit(cache=True)
def _decode_q3_k(row, K, w):
    """block_q3_K (110 B): hmask[32] (3rd bit, set = no -4), qs[64] (2 bits), scales[12] (6-bit, -32), d."""
    for b in range(K // 256):
        o = b * 110
        d = f16(row, o + 108)
        m = 1
        is_ = 0
        for n in range(2):
            q0 = o + 32 + 32 * n
            for j in range(4):
                shift = 2 * j
                for half in range(2):
                    i = is_   # 6-bit scale i: low 4 bits from scales[i % 8], high 2 bits from scales[8 + i % 4]
                    lo = (np.int64(row[o + 96 + i % 8]) >> (4 * (i // 8))) & 15
                    hi = (np.int64(row[o + 96 + 8 + i % 4]) >> (2 * (i // 4))) & 3
                    dl = d * np.float32((lo | (hi << 4)) - 32)
                    base = 256 * b + 128 * n + 32 * j + 16 * half
                    for l in range(16):
                        q = (np.int64(row[q0 + 16 * half + l]) >> shift) & 3
                        if not (row[o + 16 * half + l] & m):
                            q -= 4
                        w[base + l] = dl * np.float32(q)
                    is_ += 1
                m <<= 1


@njit(cache=True, inline="always")
def _scale_min_k4(j, row, s):
    """ggml's get_scale_min_k4: 6-bit scale and min number j of a Q4_K/Q5_K super-block."""
    if j < 4:
        return np.int64(row[s + j]) & 63, np.int64(row[s + j + 4]) & 63
    sc = (np.int64(row[s + j + 4]) & 15) | ((np.int64(row[s + j - 4]) >> 6) << 4)
    mn = (np.int64(row[s + j + 4]) >> 4) | ((np.int64(row[s + j]) >> 6) << 4)
    return sc, mn


@njit(cache=True)
def _decode_q45_k(is_q5, row, K, w, mins):
    """block_q4_K (144 B): d, dmin, scales[12], qs[128]; block_q5_K (176 B) adds qh[32] before qs."""
    bs = 176 if is_q5 else 144
    for b in range(K // 256):
        o = b * bs
        d = f16(row, o)
        dmin = f16(row, o + 2)
        qs = o + (48 if is_q5 else 16)
        for j in range(4):
            sc1, m1 = _scale_min_k4(2 * j, row, o + 4)
            sc2, m2 = _scale_min_k4(2 * j + 1, row, o + 4)
            d1 = d * np.float32(sc1)
            d2 = d * np.float32(sc2)
            mins[8 * b + 2 * j] = -(dmin * np.float32(m1))
            mins[8 * b + 2 * j + 1] = -(dmin * np.float32(m2))
            base = 256 * b + 64 * j
            for l in range(32):
                q = np.int64(row[qs + 32 * j + l])
                lo = q & 15
                hi = q >> 4
                if is_q5:
                    h = np.int64(row[o + 16 + l])
                    lo += 16 if (h >> (2 * j)) & 1 else 0
                    hi += 16 if (h >> (2 * j + 1)) & 1 else 0
                w[base + l] = d1 * np.float32(lo)
                w[base + 32 + l] = d2 * np.float32(hi)


@njit(cache=True)
def _decode_q6_k(row, K, w):
    """block_q6_K (210 B): ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] int8, d; q - 32."""
    for b in range(K // 256):
        o = b * 210
        d = f16(row, o + 208)
        for n in range(2):
            ql = o + 64 * n
            qh = o + 128 + 32 * n
            sc = o + 192 + 8 * n
            base = 256 * b + 128 * n
            for l in range(32):
                is_ = l // 16
                h = np.int64(row[qh + l])
                a = np.int64(row[ql + l])
                c = np.int64(row[ql + l + 32])
                q1 = ((a & 15) | ((h & 3) << 4)) - 32
                q2 = ((c & 15) | (((h >> 2) & 3) << 4)) - 32
                q3 = ((a >> 4) | (((h >> 4) & 3) << 4)) - 32
                q4 = ((c >> 4) | (((h >> 6) & 3) << 4)) - 32
                w[base + l] = (d * np.float32(_i8(row[sc + is_]))) * np.float32(q1)
                w[base + l + 32] = (d * np.float32(_i8(row[sc + is_ + 2]))) * np.float32(q2)
                w[base + l + 64] = (d * np.float32(_i8(row[sc + is_ + 4]))) * np.float32(q3)
                w[base + l + 96] = (d * np.float32(_i8(row[sc + is_ + 6]))) * np.float32(q4)
