"""Activations read out of the model for the quantization experiments: the exact input of layer 0's
Q/K/V matmuls, computed by the forward's own ops (token embedding rows, then `workbench.cpu.ops.rms_norm`,
ggml_compute_forward_rms_norm_f32, times attn_norm), as llm_build_llama feeds blk.0.attn_q/k/v."""
from __future__ import annotations

import numpy as np

from workbench.cpu import ops
from workbench.llama import load


def layer0_activations(model_path, text: str, n_tokens: int = 256) -> np.ndarray:
    """(T, n_embd) float32: the input of blk.0.attn_q/k/v for the first n_tokens tokens of `text`
    (BOS added as the model's tokenizer does)."""
    m = load(model_path, n_ctx=n_tokens)
    tokens = np.asarray(m.tokenize(text, add_special=True)[:n_tokens], dtype=np.int64)
    x = m.weights.token_embd.get_rows(tokens)                              # (T, E), as forward()
    return ops.rms_norm(x, m.weights.layers[0].attn_norm, m.config.rms_eps)
