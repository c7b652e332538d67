"""The llama / Mixtral forward pass, read top to bottom like llama2.c's run.c.

Follows llama.cpp's graph (src/models/llama.cpp, llm_build_llama) op for op:
embed -> per layer [RMSNorm -> Q,K,V -> RoPE -> cache -> causal GQA attention -> Wo -> residual ->
RMSNorm -> FFN (SwiGLU, or the MoE block) -> residual] -> output norm -> logits.
Shapes: T new tokens, E = n_embd, H = n_head, Hkv = n_head_kv, D = head_dim, F = n_ff, V = n_vocab.
"""
from __future__ import annotations

import math

import numpy as np

from workbench.cpu import ops
from workbench.cpu.flash_attn import flash_attention
from workbench.cpu.libm import logf, powf
from workbench.llama.config import LlamaConfig
from workbench.llama.experts import moe_ffn
from workbench.llama.kv_cache import KVCache
from workbench.llama.weights import LayerWeights, ModelWeights


def swiglu_ffn(lw: LayerWeights, x: np.ndarray) -> np.ndarray:
    """Dense FFN: down(silu(gate x) * up x), (T, E) -> (T, E) (build_ffn with LLM_FFN_SILU, LLM_FFN_PAR)."""
    g = lw.ffn_gate.mul(x)                                # (T, F)
    u = lw.ffn_up.mul(x)                                  # (T, F)
    return lw.ffn_down.mul(ops.swiglu(g, u))              # (T, E)


def yarn_corr_dims(n_dims: int, n_ctx_orig: int, freq_base: float, beta_fast: float, beta_slow: float):
    """ggml_rope_yarn_corr_dims: the dims whose wavelength fits in n_ctx_orig beta_fast / beta_slow times,
    in float32 as ggml.c computes them (n_dims * logf(n_ctx_orig / (beta * 2 * pi)) / (2 * logf(base)))."""
    f32 = np.float32

    def corr_dim(n_rot_beta):
        turns = f32(n_ctx_orig) / (f32(n_rot_beta) * f32(2) * f32(math.pi))
        return f32(n_dims) * f32(logf(turns)) / (f32(2) * f32(logf(f32(freq_base))))
    return (f32(max(0.0, math.floor(corr_dim(beta_fast)))), f32(min(n_dims - 1.0, math.ceil(corr_dim(beta_slow)))))


class RopeTables:
    """The constants of ggml_rope_ext for this model (theta_scale, YaRN correction dims, freq factors)."""

    def __init__(self, cfg: LlamaConfig, freq_factors: np.ndarray | None):
        n = cfg.n_rot
        # float32 libm calls as ggml (powf, logf): a numpy power or log would depend on the host's SIMD level
        self.theta_scale = np.float32(powf(np.float32(cfg.rope_freq_base), np.float32(-2.0) / np.float32(n)))
        self.corr = yarn_corr_dims(n, cfg.n_ctx_orig, cfg.rope_freq_base, cfg.yarn_beta_fast, cfg.yarn_beta_slow)
        self.freq_factors = (np.asarray(freq_factors, np.float32) if freq_factors is not None
                             else np.zeros(0, np.float32))
        self.cfg = cfg

    def cos_sin(self, pos: np.ndarray) -> np.ndarray:
        c = self.cfg
        return ops.rope_cache(pos.astype(np.int64), c.n_rot, self.theta_scale, np.float32(c.rope_freq_scale),
                              self.freq_factors, self.corr[0], self.corr[1], np.float32(c.yarn_ext_factor),
                              np.float32(c.yarn_attn_factor))


def layer_forward(cfg: LlamaConfig, lw: LayerWeights, il: int, x: np.ndarray, cs: np.ndarray, cache: KVCache,
                  n_past: int, scale, attention, routing: list | None = None) -> np.ndarray:
    """One transformer block on x (T, E) at positions n_past.. (cos/sin `cs`), its K/V stored in layer il of the
    cache; returns the block's output (T, E). Every weight is called through `.mul` (and `.expert(e).mul`), so a
    stand-in with that interface sees exactly what enters each matrix (llama-imatrix's and GPTQ's collectors)."""
    T = len(x)
    H, Hkv, D = cfg.n_head, cfg.n_head_kv, cfg.head_dim
    # attention
    h = ops.rms_norm(x, lw.attn_norm, cfg.rms_eps)          # (T, E)
    q = lw.wq.mul(h).reshape(T, H, D)                       # (T, H, D)
    k = lw.wk.mul(h).reshape(T, Hkv, D)                     # (T, Hkv, D)
    v = lw.wv.mul(h)                                        # (T, Hkv*D)
    ops.rope(q, cs)
    ops.rope(k, cs)
    cache.store(il, n_past, k.reshape(T, Hkv * D), v)
    kc, vc = cache.layer(il, n_past + T)                    # (n_kv, Hkv*D) each
    att = np.empty((T, H * D), np.float32)                  # (T, H*D)
    attention(q, kc, vc, n_past, Hkv, scale, cache.is_f16, att)
    x = x + lw.wo.mul(att)                                  # residual

    # feed-forward: dense SwiGLU or the mixture of experts
    h = ops.rms_norm(x, lw.ffn_norm, cfg.rms_eps)           # (T, E)
    if lw.gate_inp is not None:
        f, selected, weights = moe_ffn(lw, h, cfg.n_expert_used)
        if routing is not None:
            routing.append((selected, weights))
    else:
        f = swiglu_ffn(lw, h)
    return x + f                                            # residual


def forward(cfg: LlamaConfig, w: ModelWeights, rope: RopeTables, cache: KVCache, tokens: np.ndarray,
            out_rows: np.ndarray | None = None, routing: list | None = None,
            flash_attn: bool = False, hidden: bool = False) -> np.ndarray:
    """Run T tokens at positions cache.n_past .. +T-1, append their K/V to the cache, return the logits
    (len(out_rows) or T, V) of the rows `out_rows` (default all). `routing` collects (experts, weights) per layer.
    flash_attn: attention as llama.cpp's flash-attention graph (its command-line tools' default on CPU).
    hidden=True returns the output-normed hidden states (rows, E) instead of the logits: llama.cpp's
    `result_norm` (res->t_embd), the tensor its embeddings are pooled from (llm_graph_context::build_pooling)."""
    T = len(tokens)
    n_past = cache.n_past
    cache.check_room(T)
    cs = rope.cos_sin(np.arange(n_past, n_past + T))        # (T, n_rot/2, 2)
    scale = np.float32(cfg.kq_scale)
    attention = flash_attention if flash_attn else ops.attention

    x = w.token_embd.get_rows(tokens)                       # (T, E) token embeddings
    for il, lw in enumerate(w.layers):
        x = layer_forward(cfg, lw, il, x, cs, cache, n_past, scale, attention, routing)
    cache.n_past = n_past + T

    if out_rows is not None:
        x = x[out_rows]
    h = ops.rms_norm(np.ascontiguousarray(x), w.output_norm, cfg.rms_eps)   # (rows, E) result_norm
    if hidden:
        return h
    return w.output.mul(h)                                  # (rows, V) logits
