"""The C library's math functions, called from numba, for every transcendental on an exact path.

numpy picks its float kernels at run time by the host's SIMD level: np.exp / np.log of float32 have AVX2 and
AVX-512F versions, and on AVX-512 hosts np.power, np.log of float64 and others go to Intel's SVML. Those
versions differ in the last bit, so a numpy transcendental on an exact path makes the result depend on the
host (one ulp of RoPE's theta_scale moved every SmolLM2 logit, KL 5e-3 on an AVX-512 host).
llama.cpp calls libm (expf, logf, powf, log, exp ...). numba lowers math.exp / math.log / math.pow of a
float32 to libm's expf / logf / powf, and of a float64 to exp / log / pow: the very functions llama.cpp
calls, and the same on AVX2 and AVX-512 hosts (glibc chooses between its FMA and non-FMA builds only).

expf_array     expf of each element of a 1-D float32 array; logf_array likewise
log_softmax_64 log(softmax(x)) of a float64 vector, exp/log in libm, sums in order
powf, logf     scalars (ggml_rope_cache_init's theta_scale, ggml_rope_yarn_corr_dims)
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True)
def powf(a, b):
    """powf(a, b) on float32 (libm)."""
    return math.pow(np.float32(a), np.float32(b))


@njit(cache=True)
def logf(x):
    """logf(x) on float32 (libm)."""
    return math.log(np.float32(x))


@njit(cache=True)
def expf_array(x):
    """expf of every element of a 1-D float32 array (libm, as llama.cpp's sampling and perplexity loops)."""
    out = np.empty(x.shape[0], np.float32)
    for i in range(x.shape[0]):
        out[i] = math.exp(x[i])
    return out


@njit(cache=True)
def logf_array(x):
    """logf of every element of a 1-D float32 array (libm)."""
    out = np.empty(x.shape[0], np.float32)
    for i in range(x.shape[0]):
        out[i] = math.log(x[i])
    return out


@njit(cache=True)
def log_softmax_64(x):
    """x - max - log(sum(exp(x - max))) in float64, the sum taken in index order."""
    mx = -np.inf
    for v in x:
        mx = max(mx, v)
    s = 0.0
    for v in x:
        s += math.exp(v - mx)
    lse = mx + math.log(s)
    out = np.empty(x.shape[0], np.float64)
    for i in range(x.shape[0]):
        out[i] = x[i] - lse
    return out
