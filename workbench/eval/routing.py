"""MoE routing statistics from captured routing (Model.logits(tokens, capture_routing=True)).

All take `experts` int (n_layer, n_tok, k) and `weights` float (n_layer, n_tok, k), top-k per token
ordered by weight, plus the number of experts."""
from __future__ import annotations

import numpy as np
import pandas as pd

from workbench.eval.perplexity import perplexity
from workbench.llama import load


def expert_load(experts: np.ndarray, n_expert: int) -> np.ndarray:
    """(n_layer, n_expert): fraction of the routed (token, slot) pairs each expert receives."""
    L = experts.shape[0]
    counts = np.zeros((L, n_expert))
    for il in range(L):
        counts[il] = np.bincount(experts[il].ravel(), minlength=n_expert)[:n_expert]
    return counts / counts.sum(axis=1, keepdims=True)


def load_balance(load: np.ndarray) -> np.ndarray:
    """Per layer: max load / mean load (1.0 = perfectly balanced)."""
    return load.max(axis=1) / load.mean(axis=1)


def usage_entropy(load: np.ndarray) -> np.ndarray:
    """Per layer: entropy (nats) of the expert-usage distribution; log(n_expert) when uniform."""
    p = np.clip(load, 1e-12, 1)
    return -(p * np.log(p)).sum(axis=1)


def consecutive_share(experts: np.ndarray) -> np.ndarray:
    """Per layer: how often token t+1 shares at least one expert with token t."""
    a, b = experts[:, 1:, :], experts[:, :-1, :]
    shared = (a[..., :, None] == b[..., None, :]).any(axis=(-1, -2))
    return shared.mean(axis=1)


def routing_stats(experts: np.ndarray, weights: np.ndarray, n_expert: int) -> dict:
    load = expert_load(experts, n_expert)
    return {"load": load, "balance": load_balance(load), "entropy": usage_entropy(load),
            "consecutive_share": consecutive_share(experts), "weights": weights}


def routing_table(stats: dict) -> pd.DataFrame:
    """One row per layer: load balance, usage entropy, consecutive-token sharing, mean top-1 weight."""
    w = stats["weights"]
    return pd.DataFrame({"layer": np.arange(len(stats["balance"])), "max_over_mean_load": stats["balance"],
                         "usage_entropy": stats["entropy"], "consecutive_share": stats["consecutive_share"],
                         "mean_top1_weight": w[..., 0].mean(axis=1)})


def ppl_by_experts_used(model_path, text: str, n_ctx: int = 128, n_chunks: int = 4, tokens=None) -> pd.DataFrame:
    """PPL for every number of experts used 1..n_expert (like --override-kv {arch}.expert_used_count=int:N)."""
    base = load(model_path, n_ctx=n_ctx)
    n_expert = base.config.n_expert
    if not n_expert:
        raise ValueError(f"{model_path} is not a mixture-of-experts model")
    toks = base.tokenize(text, add_special=True) if tokens is None else tokens
    rows = []
    for k in range(1, n_expert + 1):
        m = load(model_path, n_ctx=n_ctx, n_expert_used=k)
        r = perplexity(m, text, n_ctx=n_ctx, n_chunks=n_chunks, tokens=toks, progress=False)
        rows.append({"n_expert_used": k, "ppl": r.ppl, "ppl_err": r.ppl_err, "n_scored": r.n_scored})
    return pd.DataFrame(rows)
