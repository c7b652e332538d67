"""Activations as ggml-cpu's mul_mat hands them to a vec_dot: converted to the weight type's `vec_dot_type`.

type_traits_cpu in ggml-cpu.c pairs every weight type with the type its activations are converted to
(quantize_row_q8_0/_q8_1 AVX2 versions, quantize_row_q8_K_ref, fp16/bf16 rounding); the products of
workbench.llama.matmul then see exactly these values.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from workbench.gguf import GGMLType

from workbench.cpu.ops import round_f16 as _round_f16_scalar


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

def round_f16(x: np.ndarray) -> np.ndarray:
    """fp32 -> fp16 -> fp32, round to nearest even (ggml_cpu_fp32_to_fp16)."""
    return x.astype(np.float16).astype(np.float32)


def round_bf16(x: np.ndarray) -> np.ndarray:
    """fp32 -> bf16 -> fp32, round to nearest even (ggml_compute_fp32_to_bf16; nan kept quiet)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32) << 16
    r = np.where(np.isnan(x), (u.astype(np.uint32) >> 16 | 64) << 16, r).astype(np.uint32)
    return r.view(np.float32)


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
                iscale = np.float32(-127.0) / vmax if amax > 0 else np.float32(0.0)
                d = np.float32(1.0) / iscale if amax > 0 else np.float32(0.0)
                for i in range(bs):
                    q[i] = min(np.float32(127.0), np.rint(iscale * x[t, o + i]))
                dq = d
            else:
                d = amax / np.float32(127.0)
                iscale = np.float32(127.0) / amax if amax > 0 else np.float32(0.0)
                for i in range(bs):
                    q[i] = np.rint(x[t, o + i] * iscale)
                dq = _round_f16_scalar(d)
            for i in range(bs):
                xh[t, o + i] = dq * q[i]
                xq[t, o + i] = np.int8(q[i])
            dq_out[t, b] = dq
            for j in range(bs // S):          # S > bs (no min term): nothing to sum
                s = np.float32(0.0)
                for i in range(j * S, (j + 1) * S):
                    s += q[i]
                xsum[t, (o // S) + j] = _round_f16_scalar(s * d) if kind == 1 else s * dq


def prepare_activations(x: np.ndarray, act_type: GGMLType, S: int, quantize_act: bool = True, with_ints=False):
    """x (T, K) -> (xhat (T, K), xsum (T, K // S)): the activations as ggml's vec_dot sees them,
    and their sums per sub-block of S (for the formats with a min)."""
    T, K = x.shape
    if act_type in (GGMLType.F32, GGMLType.F16, GGMLType.BF16) or not quantize_act:
        if quantize_act and act_type == GGMLType.F16:
            x = round_f16(x)
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
