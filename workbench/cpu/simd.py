"""Scalar emulation of ggml-cpu's AVX2/FMA building blocks, so that our sums round exactly like llama.cpp's.

Why bother: SmolLM2 quantizes every activation to Q8 (rint(x * 127 / amax)) ~100k times per token. If our
float sums differ from llama.cpp's in the last bit, a few of those roundings flip, and the flips spread
through the 30 layers: a 3e-7 change of the attention scale alone moves the logits by KL ~4e-3. Matching the
order of operations of the SIMD code (lanes, fused multiply-adds, horizontal sums) removes the flips.

fma32(a, b, c)  _mm256_fmadd_ps on one lane: a*b + c rounded once (the product of two floats is exact in
                double; the double sum is rounded to float: a double rounding only when the double result
                lands exactly on a float midpoint, ~2^-29 of the cases)
hsum8(a)        hsum_float_8 (arch/x86/quants.c) and tinyBLAS's hsum: ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7))
expf(x)         ggml_v_expf (vec.h), the AVX2 exp used by softmax and SiLU (not libm's expf)

v_expf(x, out)  expf on arrays, written so that LLVM vectorizes it (hardware fma only: see fmaf)
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_R = np.float32(float.fromhex("0x1.8p23"))
_LOG2E = np.float32(float.fromhex("0x1.715476p+0"))
_LN2_HI = np.float32(float.fromhex("0x1.62e4p-1"))
_LN2_LO = np.float32(float.fromhex("0x1.7f7d1cp-20"))
_C5 = np.float32(float.fromhex("0x1.0e4020p-7"))
_C4 = np.float32(float.fromhex("0x1.573e2ep-5"))
_C3 = np.float32(float.fromhex("0x1.555e66p-3"))
_C2 = np.float32(float.fromhex("0x1.fffdb6p-2"))
_C1 = np.float32(float.fromhex("0x1.ffffecp-1"))


@njit(cache=True, inline="always")
def fma32(a, b, c):
    return np.float32(np.float64(a) * np.float64(b) + np.float64(c))


@njit(cache=True, inline="always")
def hsum8(a):
    return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))


@njit(cache=True)
def expf(x):
    """ggml_v_expf, one lane: 2^n * (1 + j(b)) with n = round(x / ln 2), b = x - n ln 2 (two-step)."""
    z = fma32(x, _LOG2E, _R)
    n = z - _R                                          # round(x * log2(e)) as a float
    b = fma32(-n, _LN2_LO, fma32(-n, _LN2_HI, x))
    u = b * b
    j = fma32(fma32(fma32(_C5, b, _C4), u, fma32(_C3, b, _C2)), u, _C1 * b)
    if not abs(n) > 126:                                 # also true for nan
        k = np.float32(np.ldexp(np.float32(1.0), int(n)))   # bits of z << 23 plus bits of 1.0
        return fma32(j, k, k)
    if abs(n) > 192:                                     # s1 * s1: overflow to inf or underflow to 0
        return np.float32(np.inf) if n > 0 else np.float32(0.0)
    # 2^n split in two factors that are each representable: s1 = 2^(+-125 or 127), s2 = 2^n / s1
    if n <= 0:
        s1 = np.float32(np.ldexp(np.float32(1.0), -125))
        s2 = np.float32(np.ldexp(np.float32(1.0), int(n) + 125))
    else:
        s1 = np.float32(np.ldexp(np.float32(1.0), 127))
        s2 = np.float32(np.ldexp(np.float32(1.0), int(n) - 127))
    return fma32(s2, j, s2) * s1


@njit(cache=True, inline="always")
def silu(x):
    """ggml_v_silu: x / (1 + expf(-x))."""
    return x / (np.float32(1.0) + expf(np.float32(0.0) - x))


@intrinsic
def fmaf(typingctx, a, b, c):
    """a * b + c rounded once (llvm.fma.f32) on float32: the fused form of fma32 that LLVM vectorizes into
    vfmadd. Only as fast as fma32 where the CPU has fma (otherwise LLVM calls libm's fmaf)."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, sig, args):
        f32 = ir.FloatType()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32] * 3), "llvm.fma.f32")
        return builder.call(fn, args)

    return sig, codegen


@njit(cache=True)
def v_expf(x, out):
    """out[i] = expf(x[i]) for 1-D float32 arrays, bit for bit: ggml_v_expf's fast path as loops LLVM
    vectorizes, the 2^n factor built from the bits of z as the SIMD code does; the elements with |n| > 126
    (x below ~-87 or above ~88) then take expf's scaled path one by one."""
    n = x.shape[0]
    z = np.empty(n, np.float32)
    for i in range(n):
        xi = x[i]
        zi = fmaf(xi, _LOG2E, _R)
        m = zi - _R                                  # round(x * log2(e)) as a float
        b = fmaf(-m, _LN2_LO, fmaf(-m, _LN2_HI, xi))
        u = b * b
        out[i] = fmaf(fmaf(fmaf(_C5, b, _C4), u, fmaf(_C3, b, _C2)), u, _C1 * b)     # j(b)
        z[i] = zi
    k = np.empty(n, np.int32)
    zb = z.view(np.int32)
    for i in range(n):
        k[i] = (zb[i] << 23) + np.int32(0x3F800000)  # the bits of 2^n
    kf = k.view(np.float32)
    slow = False
    for i in range(n):
        slow |= abs(z[i] - _R) > np.float32(126.0)
        out[i] = fmaf(out[i], kf[i], kf[i])
    if slow:
        for i in range(n):
            if abs(z[i] - _R) > np.float32(126.0):
                out[i] = expf(x[i])
