"""The non-matmul ops of the llama graph, as ggml-cpu computes them (ggml/src/ggml-cpu/ops.cpp, vec.h).

rms_norm   ggml_compute_forward_rms_norm_f32: sum of squares in double, scale = 1/sqrtf(mean + eps)
rope       ggml_compute_forward_rope_flt, mode NORM (adjacent pairs), with ggml_rope_cache_init/rope_yarn
softmax    ggml_compute_forward_soft_max_f32: max, ggml_v_expf(x - max), chunk sums into a double, times 1/sum
swiglu     ggml_vec_swiglu_f32: x / (1 + ggml_v_expf(-x)) * g
The float sums follow the order of ggml's AVX2 code (see simd.py for why that matters).
attention  the non-flash path of llm_graph_context::build_attn_mha: kq = mul_mat(k, q) (q converted to
           the cache type), softmax(kq * scale + causal mask), kqv = mul_mat(v, kq) (kq converted too)
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from workbench.cpu import features
from workbench.cpu.attention_f16 import attention_f16
from workbench.cpu.fp16 import FP16_TO_FP32, round_fp16
from workbench.cpu.simd import expf, fma32, hsum8, silu, v_expf


@njit(cache=True)
def rms_norm(x, w, eps):
    """(T, E) -> (T, E): x / sqrt(mean(x^2) + eps) * w, rounding as ggml (x*x in float, summed in double)."""
    T, E = x.shape
    out = np.empty_like(x)
    eps32 = np.float32(eps)
    for t in range(T):
        s = 0.0
        for i in range(E):
            s += np.float64(x[t, i] * x[t, i])
        mean = np.float32(s / E)
        scale = np.float32(1.0) / np.float32(math.sqrt(mean + eps32))
        for i in range(E):
            out[t, i] = (x[t, i] * scale) * w[i]
    return out


@njit(cache=True)
def rope_cache(pos, n_rot, theta_scale, freq_scale, freq_factors, corr0, corr1, ext_factor, mscale):
    """cos/sin (T, n_rot/2) per position, as ggml_rope_cache_init: theta multiplied up in float32."""
    T = pos.shape[0]
    cs = np.empty((T, n_rot // 2, 2), np.float32)
    for t in range(T):
        theta = np.float32(pos[t])
        for i in range(n_rot // 2):
            ff = freq_factors[i] if freq_factors.shape[0] > 0 else np.float32(1.0)
            extrap = theta / ff
            interp = freq_scale * extrap
            th = interp
            ms = mscale
            if ext_factor != 0.0:       # YaRN: ramp between interpolation and extrapolation
                y = (np.float32(i) - corr0) / max(np.float32(0.001), corr1 - corr0)
                ramp = (np.float32(1.0) - min(np.float32(1.0), max(np.float32(0.0), y))) * ext_factor
                th = interp * (np.float32(1.0) - ramp) + extrap * ramp
                ms = ms * (np.float32(1.0) + np.float32(0.1) * np.float32(math.log(np.float32(1.0) / freq_scale)))
            cs[t, i, 0] = np.float32(math.cos(th)) * ms
            cs[t, i, 1] = np.float32(math.sin(th)) * ms
            theta = theta * theta_scale
    return cs


@njit(cache=True)
def rope(x, cs):
    """In place on x (T, n_heads, head_dim): rotate adjacent pairs (x[2i], x[2i+1]) of the first n_rot dims."""
    T, H, _ = x.shape
    for t in range(T):
        for h in range(H):
            for i in range(cs.shape[1]):
                c, s = cs[t, i, 0], cs[t, i, 1]
                x0, x1 = x[t, h, 2 * i], x[t, h, 2 * i + 1]
                # rotate_pairs, as GCC contracts it with -march=native: fma(x0, c, -(x1 s)), fma(x0, s, x1 c)
                x[t, h, 2 * i] = fma32(x0, c, -(x1 * s))
                x[t, h, 2 * i + 1] = fma32(x0, s, x1 * c)


@njit(cache=True)
def softmax_rows(x):
    """ggml_soft_max (no mask, scale 1) per row: ggml_v_expf on chunks of 8, libm expf on the rest."""
    out = np.empty_like(x)
    for t in range(x.shape[0]):
        out[t] = _softmax_inplace(x[t].copy(), x.shape[1])
    return out


@njit(cache=True)
def _softmax_inplace(w, n, masked_tail=False):
    """ggml_vec_soft_max_f32 + scale on w[:n]: exp(w - max) / sum, ggml_v_expf on chunks of 8, libm on a tail.

    masked_tail: w is a row of attention scores that llama.cpp continues with masked (-inf) cells, because its
    n_kv is padded to a multiple of 256; there the last partial chunk also goes through ggml_v_expf and the
    masked lanes add 0 to its sum."""
    mx = np.float32(-np.inf)
    for i in range(n):
        mx = max(mx, w[i])
    total = 0.0
    n8 = n - n % 8
    for c in range(0, n8, 8):
        for i in range(c, c + 8):
            w[i] = expf(w[i] - mx)
        total += np.float64(hsum8(w[c:c + 8]))
    if masked_tail and n8 < n:
        chunk = np.zeros(8, np.float32)
        for i in range(n8, n):
            w[i] = expf(w[i] - mx)
            chunk[i - n8] = w[i]
        total += np.float64(hsum8(chunk))
        n8 = n
    for i in range(n8, n):
        w[i] = np.float32(math.exp(w[i] - mx))
        total += np.float64(w[i])
    inv = np.float32(1.0 / total)
    for i in range(n):
        w[i] = w[i] * inv
    return w


@njit(cache=True)
def _swiglu_spec(g, u):
    """silu(g) * u, elementwise (T, F) (ggml_vec_swiglu_f32 with ggml_v_silu; libm for a tail < 8)."""
    out = np.empty_like(g)
    F = g.shape[1]
    for t in range(g.shape[0]):
        for i in range(F - F % 8):
            out[t, i] = silu(g[t, i]) * u[t, i]
        for i in range(F - F % 8, F):
            x = g[t, i]
            out[t, i] = x / (np.float32(1.0) + np.float32(math.exp(-x))) * u[t, i]
    return out


def _swiglu_vec_impl(g, u):
    """_swiglu_spec with the exponentials vectorized (simd.v_expf, hardware fma), rows in parallel."""
    out = np.empty_like(g)
    F = g.shape[1]
    F8 = F - F % 8
    for t in prange(g.shape[0]):
        neg = np.empty(F8, np.float32)
        e = np.empty(F8, np.float32)
        for i in range(F8):
            neg[i] = np.float32(0.0) - g[t, i]
        v_expf(neg, e)
        for i in range(F8):
            out[t, i] = g[t, i] / (np.float32(1.0) + e[i]) * u[t, i]
        for i in range(F8, F):
            x = g[t, i]
            out[t, i] = x / (np.float32(1.0) + np.float32(math.exp(-x))) * u[t, i]
    return out


_swiglu_vec = njit(cache=True, parallel=True)(_swiglu_vec_impl)
_swiglu_vec_1 = njit(cache=True)(_swiglu_vec_impl)       # one token: no thread pool


def swiglu(g, u):
    """silu(g) * u as ggml_vec_swiglu_f32 (see _swiglu_spec), vectorized where the host has fma."""
    if not features.hardware_fma():
        return _swiglu_spec(g, u)
    return (_swiglu_vec if g.shape[0] > 1 else _swiglu_vec_1)(g, u)


def _load(a, i, j, table):
    """a[i, j] as float32: a is either float32, or uint16 bits of fp16 (read through `table`)."""


@overload(_load, inline="always")
def _load_impl(a, i, j, table):
    if a.dtype == types.uint16:
        return lambda a, i, j, table: table[a[i, j]]
    return lambda a, i, j, table: a[i, j]


@njit(cache=True)
def _attention_job(job, q, kc, vc, n_past, n_head_kv, scale, f16, table, out):
    """Causal GQA attention of T new queries against the cache, for query head job % H of token job // H.

    q (T, n_head, D) after RoPE; kc, vc (n_ctx, n_head_kv * D) float32, or fp16 bits (uint16, f16=True);
    query t sits at position n_past + t and sees keys 0 .. n_past + t. out (T, n_head * D).
    As llama.cpp: with an F16 cache mul_mat converts q and the probabilities to fp16 first; for a batch
    (T >= 2) the products go through llamafile's tinyBLAS (8 lanes, one fma chain each, hsum8), for one
    token through ggml_vec_dot_f16/_f32 (4 x 8 lanes over chunks of 32, then a pairwise reduce).
    """
    T, H, D = q.shape
    group = H // n_head_kv
    batch = T >= 2
    t = job // H
    h = job % H
    c0 = (h // group) * D
    n_kv = n_past + t + 1
    qv = np.empty(D, np.float32)
    for d in range(D):
        qv[d] = round_fp16(q[t, h, d]) if f16 else q[t, h, d]
    # kq = K q, scaled (softmax_ext: wp = kq * scale + mask). mul_mat only reaches tinyBLAS when it had to
    # convert q (F16 cache) and there are >= 2 tokens; otherwise ggml_vec_dot_f16/_f32, whose tail after the
    # last chunk of 32 is summed in order (in double for f16, as a float fma chain for f32).
    kq_tiny = batch and f16
    D32 = D - D % 32
    p = np.empty(n_kv, np.float32)
    lanes = np.zeros(32, np.float32)
    for j in range(n_kv):
        lanes[:] = 0.0
        if kq_tiny:
            for d in range(D):
                lanes[d % 8] = fma32(qv[d], _load(kc, j, c0 + d, table), lanes[d % 8])
            p[j] = hsum8(lanes) * scale
            continue
        for d in range(D32):
            lanes[d % 32] = fma32(qv[d], _load(kc, j, c0 + d, table), lanes[d % 32])
        s = _reduce32(lanes) if D32 > 0 else np.float32(0.0)
        if f16:
            s64 = np.float64(s)
            for d in range(D32, D):
                s64 += np.float64(qv[d] * _load(kc, j, c0 + d, table))
            s = np.float32(s64)
        else:
            for d in range(D32, D):
                s = fma32(qv[d], _load(kc, j, c0 + d, table), s)
        p[j] = s * scale
    _softmax_inplace(p, n_kv, True)                # n_kv is padded to 256 in llama.cpp: no libm tail
    # kqv = V^T p, accumulated per lane of j
    acc = np.zeros((32, D), np.float32)
    for j in range(n_kv):
        pj = round_fp16(p[j]) if f16 else p[j]
        lane = j % 8 if batch else j % 32
        for d in range(D):
            acc[lane, d] = fma32(pj, _load(vc, j, c0 + d, table), acc[lane, d])
    for d in range(D):
        out[t, h * D + d] = hsum8(acc[:8, d]) if batch else _reduce32(acc[:, d])


@njit(cache=True, parallel=True)
def _attention_parallel(q, kc, vc, n_past, n_head_kv, scale, f16, table, out):
    for job in prange(q.shape[0] * q.shape[1]):
        _attention_job(job, q, kc, vc, n_past, n_head_kv, scale, f16, table, out)


@njit(cache=True)
def _attention_serial(q, kc, vc, n_past, n_head_kv, scale, f16, table, out):
    for job in range(q.shape[0] * q.shape[1]):
        _attention_job(job, q, kc, vc, n_past, n_head_kv, scale, f16, table, out)


def attention(q, kc, vc, n_past, n_head_kv, scale, f16, out):
    """See _attention_job (an F16 cache is read through fp16.FP16_TO_FP32); small problems (one token, short context) skip the thread pool. On an F16 cache, on
    a host with hardware fma, attention_f16 computes the same sums vectorized."""
    T, H, D = q.shape
    if f16 and D % 8 == 0 and features.hardware_fma():
        attention_f16(q, kc, vc, n_past, n_head_kv, scale, out)
        return
    work = T * H * (n_past + T) * D
    kernel = _attention_parallel if work > 1 << 18 else _attention_serial
    kernel(q, kc, vc, n_past, n_head_kv, scale, f16, FP16_TO_FP32, out)


@njit(cache=True, inline="always")
def _reduce32(a):
    """GGML_F16_VEC_REDUCE on 4 accumulators of 8 lanes (a[8 * k + lane]): pairwise, then two hadds."""
    x = np.empty(8, np.float32)
    for i in range(8):
        x[i] = (a[i] + a[16 + i]) + (a[8 + i] + a[24 + i])
    t0 = np.empty(4, np.float32)
    for i in range(4):
        t0[i] = x[i] + x[i + 4]
    return (t0[0] + t0[1]) + (t0[2] + t0[3])
