"""What the host CPU can do, asked once: the one place every kernel family looks up its path.

ggml picks its code at compile time (#if defined(__AVX2__), __F16C__, __FMA__); we pick at run time, once per
process: each answer is computed on first use and cached (functools.cache).

has_avx2      numba compiles for a CPU with AVX2 (pshufb, vpmaddubsw: ggml's integer dot products)
has_f16c      ... with F16C (vcvtph2ps: fp16 -> fp32 in hardware)
hardware_fma  fastmath 'contract' gives a fused multiply-add (the vectorized kernels rely on it; without it
              the readable spec kernels, with their emulated fma, run instead)

Both ISA answers are those of numba's target: the host, unless NUMBA_CPU_NAME names another CPU (then False).
"""
from __future__ import annotations

import functools

import llvmlite.binding as ll
import numpy as np
from numba import njit
from numba.core import config

from workbench.gguf.constants import GGMLType


def host_feature(name: str) -> bool:
    """Does numba compile for a CPU with the LLVM target feature `name` (the host, unless NUMBA_CPU_NAME
    names another target: then no feature is assumed)?"""
    if config.CPU_NAME not in (None, "host"):
        return False
    return bool(ll.get_host_cpu_features().get(name, False))


@functools.cache
def has_avx2() -> bool:
    """Does numba compile for a CPU with AVX2 (the host, unless NUMBA_CPU_NAME names another target)?"""
    return host_feature("avx2")


@functools.cache
def has_avx512f() -> bool:
    """Does numba compile for a CPU with AVX-512 F (512-bit vectors: the wider F16 batch tiles)?"""
    return host_feature("avx512f")


@functools.cache
def has_f16c() -> bool:
    """Does numba compile for a CPU that converts fp16 in hardware (x86 F16C: vcvtph2ps)?"""
    return host_feature("f16c")


@njit(cache=True, fastmath={"contract"})
def contracted(a, b, c):
    """a * b + c compiled with fastmath 'contract': one fma where the hardware has one."""
    return a * b + c


@functools.cache
def hardware_fma() -> bool:
    """Does 'contract' give a fused multiply-add here? (1 + 2^-12)^2 - (1 + 2^-11) is 2^-24 only when fused."""
    a = np.float32(1 + 2.0 ** -12)
    return bool(contracted(a, a, np.float32(-(1 + 2.0 ** -11))) == np.float32(2.0 ** -24))


def each_token(kernels, rows, wtype_name, K, x, out) -> bool:
    """out (T, N) = the one-token kernel of `wtype_name` for each token of x (T, K) float32 C-contiguous, the host's
    variant of kernels[wtype_name] = (kernel with AVX2's instructions, portable kernel); False (nothing written)
    when there is none for that type or K is not a whole number of its blocks."""
    pair = kernels.get(wtype_name)
    if pair is None or K % GGMLType[wtype_name].block_size:
        return False
    kernel = pair[0] if has_avx2() else pair[1]
    for t in range(x.shape[0]):
        kernel(rows, K, x[t], out[t])
    return True
