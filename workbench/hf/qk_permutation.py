"""Why convert_hf_to_gguf.py permutes the rows of attn_q / attn_k (`LlamaModel.permute`), shown on a tiny
example: HF's rotate_half pairs row i with row i+d/2, ggml's RoPE (mode NORM) pairs rows 2i and 2i+1."""
from __future__ import annotations

import numpy as np
import pandas as pd

from workbench.hf.names import permute_qk


def rope_pairs(x: np.ndarray, pos: int, adjacent: bool, base: float = 10000.0) -> np.ndarray:
    """Rotate the rows of one head: pairs (2i, 2i+1) (ggml's normal RoPE) or (i, i+d/2) (HF rotate_half)."""
    d = x.shape[0]
    theta = pos * base ** (-np.arange(0, d, 2) / d)
    a, b = (x[0::2], x[1::2]) if adjacent else (x[: d // 2], x[d // 2:])
    ra, rb = a * np.cos(theta) - b * np.sin(theta), a * np.sin(theta) + b * np.cos(theta)
    out = np.empty_like(x)
    if adjacent:
        out[0::2], out[1::2] = ra, rb
    else:
        out[: d // 2], out[d // 2:] = ra, rb
    return out


def qk_permutation_example(n_head: int = 2, head_dim: int = 4, pos: int = 3, seed: int = 0):
    """Returns (row table, max |RoPE_ggml(W_gguf x) - permute(RoPE_hf(W_hf x))|): 0 up to rounding, because
    permuting the rows of W turns HF's half-split rotation into ggml's adjacent-pair rotation."""
    n = n_head * head_dim
    labels = np.array([f"h{h}.{'re' if j < head_dim // 2 else 'im'}{j % (head_dim // 2)}"
                       for h in range(n_head) for j in range(head_dim)])
    order = permute_qk(np.arange(n), n_head)
    table = pd.DataFrame({"gguf_row": np.arange(n), "takes_hf_row": order, "hf_label": labels[order]})
    rng = np.random.default_rng(seed)
    w_hf, x = rng.standard_normal((n, 8)), rng.standard_normal(8)
    q_hf = np.concatenate([rope_pairs(h, pos, adjacent=False) for h in np.split(w_hf @ x, n_head)])
    q_gguf = np.concatenate([rope_pairs(h, pos, adjacent=True) for h in np.split(permute_qk(w_hf, n_head) @ x, n_head)])
    return table, float(np.abs(q_gguf - permute_qk(q_hf, n_head)).max())
