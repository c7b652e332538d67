"""Activations as ggml-cpu's mul_mat hands them to a vec_dot: converted to the weight type's `vec_dot_type`.

type_traits_cpu in ggml-cpu.c pairs every weight type with the type its activations are converted to
(quantize_row_q8_0/_q8_1 AVX2 versions, quantize_row_q8_K_ref, fp16/bf16 rounding); the products of
workbench.llama.matmul then see exactly these values. The one place activations are quantized:

prepare_activations  (T, K) tokens -> xhat (and the integers, scales, sub-block sums), every vec_dot_type
q8_lanes             one token -> Q8_0 / Q8_1 in the forms the one-token vector kernels read
q8_K_token           one token -> Q8_K with block_q8_K's bsums (the k-quant one-token kernels)
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from workbench.gguf import GGMLType
from workbench.gguf.constants import QK_K

from workbench.cpu.fp16 import round_fp16, round_fp16_rows


# ggml-cpu.c type_traits_cpu[type].vec_dot_type (types not listed: Q8_K, as the i-quants use)
VEC_DOT_TYPE = {
    GGMLType.F32: GGMLType.F32, GGMLType.F16: GGMLType.F16, GGMLType.BF16: GGMLType.BF16,
    GGMLType.Q4_0: GGMLType.Q8_0, GGMLType.Q4_1: GGMLType.Q8_1, GGMLType.Q5_0: GGMLType.Q8_0,
    GGMLType.Q5_1: GGMLType.Q8_1, GGMLType.Q8_0: GGMLType.Q8_0, GGMLType.IQ4_NL: GGMLType.Q8_0,
    GGMLType.MXFP4: GGMLType.Q8_0, GGMLType.NVFP4: GGMLType.Q8_0, GGMLType.Q1_0: GGMLType.Q8_0,
    GGMLType.Q2_0: GGMLType.Q8_0,
}


def vec_dot_type(wtype: GGMLType) -> GGMLType:
    return VEC_DOT_TYPE.get(GGMLType(wtype), GGMLType.Q8_K)


# --- activations -> vec_dot_type -------------------------------------------------------------------

def round_bf16(x: np.ndarray) -> np.ndarray:
    """fp32 -> bf16 -> fp32, round to nearest even (ggml_compute_fp32_to_bf16; nan kept quiet)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32) << 16
    r = np.where(np.isnan(x), (u.astype(np.uint32) >> 16 | 64) << 16, r).astype(np.uint32)
    return r.view(np.float32)


@njit(cache=True, inline="always")
def q8_0_scale(amax):
    """quantize_row_q8_0 / _q8_1 (AVX2) of a block whose largest |x| is amax: (d, iscale); q = rint(x * iscale)
    and the block stores fp16(d)."""
    return amax / np.float32(127.0), (np.float32(127.0) / amax if amax > 0 else np.float32(0.0))


@njit(cache=True, inline="always")
def q8_K_scale(vmax, amax):
    """quantize_row_q8_K_ref of a block whose value of largest |x| (the first one) is vmax, amax = |vmax|:
    (iscale, d); q = min(127, rint(iscale * x)), d stored as float32."""
    iscale = np.float32(-127.0) / vmax if amax > 0 else np.float32(0.0)
    return iscale, (np.float32(1.0) / iscale if amax > 0 else np.float32(0.0))


@njit(cache=True, parallel=True)
def _quantize_q8(x, bs, kind, S, xh, xsum, xq, dq_out):
    """Per block of bs: Q8_0/Q8_1 (kind 0/1, quantize_row_q8_0/_1 AVX2: q = rint(x*127/amax), d fp16)
    or Q8_K (kind 2, quantize_row_q8_K_ref: signed max, q = rint(-127/max x), d = 1/iscale in f32).
    Writes xhat = d * q and xsum = the scaled sum of q per sub-block of S (Q8_1: s = fp16(d * sum q))."""
    T, K = x.shape
    for t in prange(T):
        q = np.empty(bs, np.float32)
        for b in range(K // bs):
            o = b * bs
            amax = np.float32(0.0)
            vmax = np.float32(0.0)
            for i in range(bs):
                a = abs(x[t, o + i])
                if a > amax:
                    amax = a
                    vmax = x[t, o + i]
            if kind == 2:
                iscale, d = q8_K_scale(vmax, amax)
                for i in range(bs):
                    q[i] = min(np.float32(127.0), np.rint(iscale * x[t, o + i]))
                dq = d
            else:
                d, iscale = q8_0_scale(amax)
                for i in range(bs):
                    q[i] = np.rint(x[t, o + i] * iscale)
                dq = round_fp16(d)
            for i in range(bs):
                xh[t, o + i] = dq * q[i]
                xq[t, o + i] = np.int8(q[i])
            dq_out[t, b] = dq
            for j in range(bs // S):          # S > bs (no min term): nothing to sum
                s = np.float32(0.0)
                for i in range(j * S, (j + 1) * S):
                    s += q[i]
                xsum[t, (o // S) + j] = round_fp16(s * d) if kind == 1 else s * dq


def prepare_activations(x: np.ndarray, act_type: GGMLType, S: int, quantize_act: bool = True, with_ints=False):
    """x (T, K) -> (xhat (T, K), xsum (T, K // S)): the activations as ggml's vec_dot sees them,
    and their sums per sub-block of S (for the formats with a min)."""
    T, K = x.shape
    if act_type in (GGMLType.F32, GGMLType.F16, GGMLType.BF16) or not quantize_act:
        if quantize_act and act_type == GGMLType.F16:
            x = round_fp16_rows(x)
        elif quantize_act and act_type == GGMLType.BF16:
            x = round_bf16(x)
        xsum = x.reshape(T, K // S, S).sum(axis=2, dtype=np.float32) if S < K else np.zeros((T, 1), np.float32)
        return x, xsum
    bs = act_type.block_size
    kind = {GGMLType.Q8_0: 0, GGMLType.Q8_1: 1, GGMLType.Q8_K: 2}[act_type]
    xh = np.empty((T, K), np.float32)
    xsum = np.zeros((T, max(K // S, 1)), np.float32)
    xq = np.empty((T, K), np.int8)
    dq = np.empty((T, K // bs), np.float32)
    _quantize_q8(x, bs, kind, S, xh, xsum, xq, dq)
    if with_ints:
        return xh, xsum, xq, dq
    return xh, xsum


# --- one token, for the one-token vector kernels (vec_dot_ir, vec_dot_avx2, vec_dot_kquants, ...) ----

@njit(cache=True)
def q8_lanes(x, kind, with_lanes=True):
    """One token x (K,) quantized as ggml's quantize_row_q8_0 (kind 0) / _q8_1 (kind 1) for a vec_dot (the
    values of _quantize_q8, computed for one row with loops LLVM vectorizes), in the forms the
    one-token kernels read: xq (K,) int8, xl (K/32, 4, 8) the same as float32 in lane order (empty unless
    with_lanes: only the portable kernels read it), dx (K/32,) the fp16
    scales, s (K/32,) the block sums (Q8_1's s = fp16(d * sum q); only Q4_1's min term reads them)."""
    K = x.shape[0]
    nb = K // 32
    xq = np.empty(K, np.int8)
    dx = np.empty(nb, np.float32)
    s = np.empty(nb, np.float32)
    q = np.empty(32, np.float32)
    for b in range(nb):
        xb = x[32 * b:32 * b + 32]
        amax = np.float32(0.0)
        for i in range(32):
            a = abs(xb[i])
            amax = a if a > amax else amax
        d, iscale = q8_0_scale(amax)
        total = np.float32(0.0)
        for i in range(32):
            q[i] = np.rint(xb[i] * iscale)
            total += q[i]
        for i in range(32):
            xq[32 * b + i] = np.int8(q[i])
        dq = round_fp16(d)
        dx[b] = dq
        s[b] = round_fp16(total * d) if kind == 1 else total * dq
    xl = np.empty((nb if with_lanes else 0, 4, 8), np.float32)
    for b in range(nb if with_lanes else 0):
        for lane in range(8):
            for k in range(4):
                xl[b, k, lane] = xq[32 * b + 4 * lane + k]
    return xq, xl, dx, s


@njit(cache=True)
def q8_K_token(x):
    """One token x (K,) as quantize_row_q8_K_ref (the values of _quantize_q8, kind 2): per
    block of 256 the value of largest |x| (the first one) gives iscale = -127 / max, d = 1 / iscale,
    q = min(127, rint(iscale * x)). Returns xq (K,) int8, d (K/256,) float32, bsums (K/16,) int16 (block_q8_K
    bsums) and the sums per 32 (K/32,) int32 (what the repacked Q4_K gemv adds with _mm_hadd_epi16)."""
    K = x.shape[0]
    nb = K // QK_K
    xq = np.empty(K, np.int8)
    d = np.empty(nb, np.float32)
    bs16 = np.empty(K // 16, np.int16)
    bs32 = np.empty(K // 32, np.int32)
    for b in range(nb):
        o = b * QK_K
        amax = np.float32(0.0)
        vmax = np.float32(0.0)
        for i in range(QK_K):
            a = abs(x[o + i])
            if a > amax:
                amax = a
                vmax = x[o + i]
        iscale, db = q8_K_scale(vmax, amax)
        d[b] = db
        for i in range(QK_K):
            xq[o + i] = np.int8(min(np.float32(127.0), np.rint(iscale * x[o + i])))
    for j in range(K // 16):
        s = np.int32(0)
        for i in range(16):
            s += np.int32(xq[16 * j + i])
        bs16[j] = np.int16(s)
    for j in range(K // 32):
        bs32[j] = np.int32(bs16[2 * j]) + np.int32(bs16[2 * j + 1])
    return xq, d, bs16, bs32
