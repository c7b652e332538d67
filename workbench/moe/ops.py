"""The non-matmul ops of the llama graph, as ggml-cpu computes them (ggml/src/ggml-cpu/ops.cpp, vec.h).

rms_norm   ggml_compute_forward_rms_norm_f32: sum of squares in double, scale = 1/sqrtf(mean + eps)
rope       ggml_compute_forward_rope_flt, mode NORM (adjacent pairs), with ggml_rope_cache_init/rope_yarn
softmax    ggml_compute_forward_soft_max_f32: max, expf(x - max), sum in double, times 1/sum
swiglu     ggml_vec_swiglu_f32: x / (1 + expf(-x)) * g
attention  the non-flash path of llm_graph_context::build_attn_mha: kq = mul_mat(k, q) (q converted to
           the cache type), softmax(kq * scale + causal mask), kqv = mul_mat(v, kq) (kq converted too)
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

_FAST = {"reassoc", "contract"}

# fp16 bits -> float32 for every bit pattern (the F16 KV cache is read through this table)
F16_TABLE = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


@njit(cache=True)
def rms_norm(x, w, eps):
    """(T, E) -> (T, E): x / sqrt(mean(x^2) + eps) * w."""
    T, E = x.shape
    out = np.empty_like(x)
    for t in range(T):
        s = 0.0
        for i in range(E):
            s += np.float64(x[t, i]) * np.float64(x[t, i])
        scale = np.float32(1.0) / np.float32(math.sqrt(np.float32(s / E + eps)))
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
                x[t, h, 2 * i] = x0 * c - x1 * s
                x[t, h, 2 * i + 1] = x0 * s + x1 * c


@njit(cache=True)
def softmax_rows(x):
    out = np.empty_like(x)
    for t in range(x.shape[0]):
        mx = x[t].max()
        s = 0.0
        for i in range(x.shape[1]):
            out[t, i] = np.float32(math.exp(x[t, i] - mx))
            s += out[t, i]
        inv = np.float32(1.0 / s)
        for i in range(x.shape[1]):
            out[t, i] *= inv
    return out


@njit(cache=True, parallel=True)
def swiglu(g, u):
    """silu(g) * u, elementwise (T, F)."""
    out = np.empty_like(g)
    for t in prange(g.shape[0]):
        for i in range(g.shape[1]):
            x = g[t, i]
            out[t, i] = x / (np.float32(1.0) + np.float32(math.exp(-x))) * u[t, i]
    return out


def _load(a, i, j, table):
    """a[i, j] as float32: a is either float32, or uint16 bits of fp16 (read through `table`)."""


@overload(_load, inline="always")
def _load_impl(a, i, j, table):
    if a.dtype == types.uint16:
        return lambda a, i, j, table: table[a[i, j]]
    return lambda a, i, j, table: a[i, j]


@njit(cache=True, inline="always")
def round_f16(v):
    """float32 -> the nearest fp16 value (ties to even) as float32 (ggml_cpu_fp32_to_fp16)."""
    if v == 0 or not np.isfinite(v):
        return v
    e = math.frexp(v)[1]
    q = math.ldexp(1.0, max(e - 11, -24))
    r = np.rint(np.float64(v) / q) * q
    return np.float32(r) if abs(r) <= 65504.0 else np.float32(math.inf if r > 0 else -math.inf)


@njit(cache=True, parallel=True, fastmath=_FAST)
def attention(q, kc, vc, n_past, n_head_kv, scale, f16, table, out):
    """Causal GQA attention of T new queries against the cache.

    q (T, n_head, D) after RoPE; kc, vc (n_ctx, n_head_kv * D) float32, or fp16 bits (uint16, f16=True);
    query t sits at position n_past + t and sees keys 0 .. n_past + t. out (T, n_head * D).
    With an F16 cache ggml's mul_mat converts q and the probabilities to fp16 first: so do we.
    """
    T, H, D = q.shape
    group = H // n_head_kv
    for job in prange(T * H):
        t = job // H
        h = job % H
        c0 = (h // group) * D
        n_kv = n_past + t + 1
        qv = np.empty(D, np.float32)
        for d in range(D):
            qv[d] = round_f16(q[t, h, d]) if f16 else q[t, h, d]
        p = np.empty(n_kv, np.float32)
        mx = -np.inf
        for j in range(n_kv):
            s = np.float32(0.0)
            for d in range(D):
                s += qv[d] * _load(kc, j, c0 + d, table)
            p[j] = s * scale
            mx = max(mx, p[j])
        total = 0.0
        for j in range(n_kv):
            p[j] = np.float32(math.exp(p[j] - mx))
            total += p[j]
        inv = np.float32(1.0 / total)
        o = out[t, h * D:(h + 1) * D]
        o[:] = 0.0
        for j in range(n_kv):
            pj = p[j] * inv
            if f16:
                pj = round_f16(pj)
            for d in range(D):
                o[d] += pj * _load(vc, j, c0 + d, table)
