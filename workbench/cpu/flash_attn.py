"""Flash attention as llama.cpp's CPU backend computes it (ggml_compute_forward_flash_attn_ext_tiled).

llama.cpp's command-line tools (llama-perplexity, llama-imatrix, llama-cli, llama-server) leave
flash_attn_type at AUTO, which llama_context resolves to enabled on the CPU backend; llama-cpp-python turns it
off. The two graphs round differently (the non-flash path is workbench.cpu.ops.attention), so a model loaded
with `flash_attn=True` reproduces the tools' numbers and one loaded without reproduces the Python bindings'.
Only the tiled path is reproduced: ggml takes it for batches of >= 64 queries (GGML_FA_TILE_Q); smaller batches
(generation, tiny contexts) go through its per-row fp16 path (ggml_compute_forward_flash_attn_ext_f16_one_chunk),
which is not reproduced.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from numba import njit, prange

from workbench.cpu.fp16 import FP16_TO_FP32
from workbench.cpu.simd import fmaf, hsum8, v_expf

FA_TILE = 64    # GGML_FA_TILE_Q and GGML_FA_TILE_KV (ggml-cpu/common.h)


@njit(cache=True, parallel=True)
def flash_attention_tiled(q, kT, v, n_past, n_head_kv, scale, out):
    """ggml_compute_forward_flash_attn_ext_tiled (ggml-cpu/ops.cpp) on an F32 or F16 cache, one query row at a
    time: a row's result does not depend on the rows it shares a tile with (keys masked for it add exact zeros).

    q (T, H, D) float32 after RoPE (this path does not round it to fp16); kT (Hkv * D, n_kv) the keys as float32,
    one dimension per row; v (n_kv, Hkv * D) float32; out (T, H * D). Query t sits at position n_past + t.
    kq   = q . k per key: one fma chain over d (simd_gemm), times scale; keys after the query are -inf (mask)
    then per tile of 64 keys:
    Mnew = max(M, max kq); if it grew: acc *= expf(M - Mnew), S *= expf(M - Mnew)       (libm expf)
    p    = ggml_v_expf(kq - Mnew); S += the sum of p (ggml_vec_soft_max_f32: hsum8 per 8 lanes, in double)
    acc  = acc + p . V: one fma chain over the keys per column (simd_gemm)
    out = acc * (1 / S)."""
    T, H, D = q.shape
    group = H // n_head_kv
    for job in prange(T * H):
        t, h = job // H, job % H
        c0 = (h // group) * D
        n_keys = n_past + t + 1
        kq = np.zeros(-(-n_keys // FA_TILE) * FA_TILE, np.float32)    # whole tiles, the padding masked
        for d in range(D):
            qd = q[t, h, d]
            kd = kT[c0 + d]
            for j in range(n_keys):
                kq[j] = fmaf(qd, kd[j], kq[j])
        for j in range(kq.shape[0]):
            kq[j] = kq[j] * scale if j < n_keys else np.float32(-np.inf)
        p = np.empty(FA_TILE, np.float32)
        acc = np.zeros(D, np.float32)
        M = np.float32(-np.inf)
        S = np.float32(0.0)
        for ic in range(0, n_keys, FA_TILE):
            x = kq[ic:ic + FA_TILE]
            tile_max = np.float32(-np.inf)
            for tk in range(FA_TILE):
                tile_max = x[tk] if x[tk] > tile_max else tile_max
            m_new = max(M, tile_max)
            if m_new > M:
                ms = np.float32(math.exp(M - m_new))
                for d in range(D):
                    acc[d] = acc[d] * ms
                S = S * ms
            M = m_new
            for tk in range(FA_TILE):
                x[tk] = x[tk] - m_new
            v_expf(x, p)
            total = 0.0
            for c in range(0, FA_TILE, 8):
                total += np.float64(hsum8(p[c:c + 8]))
            S = np.float32(np.float64(S) + total)
            for tk in range(min(FA_TILE, n_keys - ic)):      # the masked keys' p = 0 would add nothing
                pk = p[tk]
                vk = v[ic + tk, c0:c0 + D]
                for d in range(D):
                    acc[d] = fmaf(pk, vk[d], acc[d])
        inv = np.float32(1.0) / S
        o = out[t, h * D:(h + 1) * D]
        for d in range(D):
            o[d] = acc[d] * inv


def flash_attention(q, kc, vc, n_past, n_head_kv, scale, f16, out):
    """workbench.cpu.ops.attention's signature, computed as llama.cpp's CPU flash attention (see above)."""
    if q.shape[0] < FA_TILE:
        warnings.warn(f"a batch of {q.shape[0]} tokens: for fewer than {FA_TILE} tokens llama.cpp's flash attention "
                      f"takes its per-row fp16 path, which is not reproduced (the last bits can differ; load with "
                      f"flash_attn=False for llama-cpp-python's numbers)", stacklevel=3)
    kT = np.ascontiguousarray((FP16_TO_FP32[kc] if f16 else kc).T, np.float32)     # fp16 -> fp32 is exact
    v = np.ascontiguousarray(FP16_TO_FP32[vc] if f16 else vc, np.float32)
    flash_attention_tiled(np.ascontiguousarray(q, np.float32), kT, v, n_past, n_head_kv, np.float32(scale), out)
