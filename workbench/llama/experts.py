"""The Mixtral mixture-of-experts block, a drop-in for the dense SwiGLU FFN.

As llama.cpp's llm_graph_context::build_moe_ffn (src/llama-graph.cpp) with gating SOFTMAX, norm_w true:
    probs    = softmax(gate_inp @ x)                      over all experts, (T, n_expert)
    selected = top-k of probs                             ggml_argsort_top_k, (T, k)
    weights  = probs[selected] / max(sum, 6.1e-5)         renormalised over the k chosen
    out      = sum_k weights_k * down_e(silu(gate_e x) * up_e x)
Each expert multiplies only the tokens routed to it (ggml_mul_mat_id).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workbench.cpu.ops import softmax_rows, swiglu
from workbench.llama.weights import LayerWeights

_MIN_WEIGHT_SUM = np.float32(6.103515625e-5)   # smallest normal fp16: build_moe_ffn's clamp before the division


@dataclass
class Routing:
    """Experts chosen per layer and token: experts (n_layer, T, k) int32, weights (n_layer, T, k) float32."""

    experts: np.ndarray
    weights: np.ndarray


def route(logits: np.ndarray, n_used: int) -> tuple[np.ndarray, np.ndarray]:
    """Router logits (T, n_expert) -> selected experts (T, k) by descending probability, and their weights."""
    probs = softmax_rows(np.ascontiguousarray(logits, dtype=np.float32))
    selected = np.argsort(-probs, axis=1, kind="stable")[:, :n_used]
    weights = np.take_along_axis(probs, selected, axis=1)
    total = np.maximum(weights.sum(axis=1, keepdims=True, dtype=np.float32), _MIN_WEIGHT_SUM)
    return selected.astype(np.int32), (weights / total).astype(np.float32)


def moe_ffn(lw: LayerWeights, x: np.ndarray, n_used: int):
    """x (T, n_embd) -> (out (T, n_embd), selected (T, k), weights (T, k))."""
    T, E = x.shape
    logits = lw.gate_inp.mul(x)                                     # (T, n_expert)
    selected, weights = route(logits, n_used)                       # (T, k), (T, k)
    per_slot = np.zeros((n_used, T, E), np.float32)                 # each token's k expert outputs
    for e in range(lw.gate_inp.shape[0]):
        tok, slot = np.nonzero(selected == e)                       # the tokens routed to expert e
        if tok.size == 0:
            continue
        xe = x[tok]                                                 # (n_e, n_embd)
        g = lw.gate_exps.expert(e).mul(xe)                          # (n_e, n_ff)
        u = lw.up_exps.expert(e).mul(xe)                            # (n_e, n_ff)
        y = lw.down_exps.expert(e).mul(swiglu(g, u))                # (n_e, n_embd)
        per_slot[slot, tok] = y * weights[tok, slot][:, None]
    out = per_slot[0].copy()
    for k in range(1, n_used):                                      # summed in slot order, as ggml_add
        out += per_slot[k]
    return out, selected, weights
