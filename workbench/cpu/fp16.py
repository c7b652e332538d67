"""fp16 and bf16 as ggml converts them, the one place the package rounds to half precision.

ggml_compute_fp32_to_fp16 (ggml-impl.h: round to nearest even, NaN -> 0x7E00 with its sign, overflow -> inf),
ggml_compute_fp32_to_bf16, and the fp16 -> fp32 table every kernel reads halves through (exact: every half is
a float). Scalars for numba kernels, arrays (``*_np``) for the readable numpy specs; numpy's float16 cast rounds
to nearest even too, so both give the same bits (tests/test_fp16.py checks every half and random floats).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from workbench.cpu.ir import half_to_f32

# fp16 -> fp32 for all 65536 bit patterns (exact: every half is a float)
FP16_TO_FP32 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


@njit(cache=True, error_model="numpy", inline="always")
def f32_bits(f):
    """The uint32 bit pattern of a float32 (as an int64, to keep integer arithmetic from wrapping)."""
    return np.int64(np.float32(f).view(np.uint32))


@njit(cache=True, error_model="numpy", inline="always")
def f32_from_bits(b):
    return np.uint32(b).view(np.float32)


@njit(cache=True, error_model="numpy")
def fp32_to_fp16(f):
    """ggml_compute_fp32_to_fp16 (ggml-impl.h): round to nearest even, NaN -> 0x7E00, overflow -> inf."""
    base = (abs(np.float32(f)) * np.float32(2.0 ** 112)) * np.float32(2.0 ** -110)
    w = f32_bits(f)
    shl1_w = (w + w) & 0xFFFFFFFF
    sign = w & 0x80000000
    bias = shl1_w & 0xFF000000
    if bias < 0x71000000:
        bias = 0x71000000
    base = f32_from_bits((bias >> 1) + 0x07800000) + base
    bits = f32_bits(base)
    nonsign = ((bits >> 13) & 0x7C00) + (bits & 0x0FFF)
    if shl1_w > 0xFF000000:
        nonsign = 0x7E00
    return np.uint16((sign >> 16) | nonsign)


@njit(cache=True, error_model="numpy", inline="always")
def fp16_to_fp32(h):
    return FP16_TO_FP32[h]


@intrinsic
def fp16_to_fp32_vec(typingctx, bits):
    """FP16_TO_FP32[bits] (numpy's exact cast) for uint16 bits, as LLVM code that vectorizes.

    For per-element fp16 data (the F16 format): `fpext half` is one vcvtph2ps lane where the loop
    vectorizes. The hardware sets the quiet bit of a signaling NaN; numpy's cast (and the table) keeps
    the payload bits as they are, so exponent-31 patterns (inf/NaN) are rebuilt from the bits
    (sign << 16 | 0x7F800000 | mantissa << 13) and picked by a select: no branch, 32-bit lanes."""
    sig = types.float32(bits)

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        f = half_to_f32(builder, args[0])
        u = builder.zext(args[0], i32)
        special = builder.icmp_unsigned("==", builder.and_(u, i32(0x7C00)), i32(0x7C00))
        sign = builder.shl(builder.and_(u, i32(0x8000)), i32(16))
        mant = builder.shl(builder.and_(u, i32(0x3FF)), i32(13))
        rebuilt = builder.bitcast(builder.or_(builder.or_(sign, mant), i32(0x7F800000)), ir.FloatType())
        return builder.select(special, rebuilt, f)

    return sig, codegen


@njit(cache=True, error_model="numpy", inline="always")
def round_fp16(f):
    """GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(f)): the value a stored fp16 scale reads back as."""
    return FP16_TO_FP32[fp32_to_fp16(f)]


@njit(cache=True, error_model="numpy")
def fp32_to_bf16(f):
    """ggml_compute_fp32_to_bf16 (ggml-impl.h): NaN forced quiet, otherwise round to nearest even."""
    u = f32_bits(f)
    if (u & 0x7FFFFFFF) > 0x7F800000:
        return np.uint16(((u >> 16) | 64) & 0xFFFF)
    return np.uint16(((u + (0x7FFF + ((u >> 16) & 1))) >> 16) & 0xFFFF)


@njit(cache=True, error_model="numpy", inline="always")
def put_fp16(out, pos, f):
    """Store float32 `f` as little-endian fp16 bytes at out[pos:pos+2]; return the value read back."""
    h = fp32_to_fp16(f)
    out[pos] = h & 0xFF
    out[pos + 1] = h >> 8
    return FP16_TO_FP32[h]


@njit(cache=True, error_model="numpy", inline="always")
def get_fp16(blk, pos):
    return FP16_TO_FP32[np.int64(blk[pos]) | (np.int64(blk[pos + 1]) << 8)]


def fp32_to_fp16_np(a) -> np.ndarray:
    """GGML_FP32_TO_FP16 on an array (numpy's float16 cast also rounds to nearest even) -> uint16 bits."""
    with np.errstate(over="ignore"):
        return np.asarray(a, dtype=np.float32).astype(np.float16).view(np.uint16)


def round_fp16_np(a) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.asarray(a, dtype=np.float32).astype(np.float16).astype(np.float32)


@njit(parallel=True, cache=True, error_model="numpy")
def _round_fp16_rows(x, out):
    for t in prange(x.shape[0]):
        for i in range(x.shape[1]):
            out[t, i] = FP16_TO_FP32[fp32_to_fp16(x[t, i])]


def round_fp16_rows(x: np.ndarray) -> np.ndarray:
    """round_fp16_np of a float32 (T, K) batch, rows in parallel (the activations an F16 matmul sees)."""
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty_like(x)
    _round_fp16_rows(x.reshape(len(x), -1), out.reshape(len(x), -1))
    return out
