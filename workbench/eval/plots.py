"""Every figure the notebooks show: PPL vs context, quant Pareto, per-tensor error heatmap, MoE routing.

Chinese labels are used only when a CJK-capable font is installed (e.g. Debian's fonts-noto-cjk), so that no
plot ever draws boxes or prints missing-glyph warnings.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Serif CJK SC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
             "Source Han Sans SC", "SimHei", "Microsoft YaHei", "PingFang SC", "AR PL UMing CN")


def pyplot():
    """matplotlib.pyplot, on the Agg backend unless a notebook or an interactive backend is in use."""
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline") and not _interactive():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _interactive() -> bool:
    try:
        from IPython import get_ipython

        return get_ipython() is not None
    except ImportError:
        return False


@lru_cache(maxsize=1)
def cjk_font() -> str | None:
    """The first installed CJK-capable font family, or None."""
    from matplotlib import font_manager

    names = {f.name for f in font_manager.fontManager.ttflist}
    return next((n for n in CJK_FONTS if n in names), None)


def label(en: str, zh: str | None = None) -> str:
    """Bilingual label when a CJK font is available, else English only."""
    if zh and cjk_font():
        return f"{en} / {zh}"
    return en


def _setup_fonts() -> None:
    import matplotlib

    font = cjk_font()
    if font:
        fams = list(matplotlib.rcParams["font.sans-serif"])
        if font not in fams:
            matplotlib.rcParams["font.sans-serif"] = [font] + fams
        matplotlib.rcParams["axes.unicode_minus"] = False


def save_figure(fig, path):
    """Write fig to path (folders made as needed; nothing when path is empty) and return fig."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def ppl_vs_context(df: pd.DataFrame, path=None, title: str | None = None):
    """One curve per model/format: PPL (± error bars) vs n_ctx on a log2 axis (Chinese-Mixtral's figure)."""
    plt = pyplot()
    _setup_fonts()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    group = "label" if "label" in df.columns else "model"
    for name, g in df.groupby(group, sort=False):
        g = g.sort_values("n_ctx")
        ax.errorbar(g.n_ctx, g.ppl, yerr=g.get("ppl_err"), marker="o", capsize=3, label=str(name))
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(df.n_ctx.unique()), [str(c) for c in sorted(df.n_ctx.unique())])
    ax.set_xlabel(label("context length (tokens)", "上下文长度"))
    ax.set_ylabel(label("perplexity", "困惑度"))
    ax.set_title(title or label("Perplexity vs context length", "困惑度与上下文长度"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def pareto(df: pd.DataFrame, path=None, y: str = "kld_mean"):
    """File size vs KLD (or PPL) per ftype, with the Pareto front highlighted."""
    plt = pyplot()
    _setup_fonts()
    d = df[df.ftype != "base"].sort_values("file_bytes") if "ftype" in df else df
    fig, ax = plt.subplots(figsize=(7, 4.2))
    size_mb = d.file_bytes / 2**20
    ax.scatter(size_mb, d[y], zorder=3)
    for _, r in d.iterrows():
        ax.annotate(r.ftype, (r.file_bytes / 2**20, r[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front, best = [], np.inf
    for _, r in d.iterrows():
        if r[y] < best:
            best = r[y]
            front.append((r.file_bytes / 2**20, r[y]))
    if front:
        fx, fy = zip(*front)
        ax.step(fx, fy, where="post", color="tab:red", alpha=0.6, label="Pareto front")
    if y == "kld_mean":
        ax.set_yscale("log")
    ax.set_xlabel(label("file size (MiB)", "文件大小"))
    ax.set_ylabel({"kld_mean": "mean KL divergence vs base", "ppl": "perplexity"}.get(y, y))
    ax.set_title(label("Size vs quality per quantization type", "各量化格式的大小与质量"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def tensor_error_heatmap(errors: pd.DataFrame, path=None, value: str = "rel_rmse"):
    """Heatmap of per-tensor relative quantization error: rows = tensors, columns = ftypes.
    `errors`: long table with columns name, ftype, rel_rmse (quantize_model's reports concatenated)."""
    plt = pyplot()
    _setup_fonts()
    pivot = errors.pivot_table(index="name", columns="ftype", values=value, aggfunc="first")
    pivot = pivot.loc[:, pivot.mean().sort_values().index]
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * pivot.shape[1], 1.0 + 0.12 * pivot.shape[0]))
    im = ax.imshow(np.log10(pivot.to_numpy(dtype=float) + 1e-12), aspect="auto", cmap="viridis")
    ax.set_xticks(range(pivot.shape[1]), pivot.columns, rotation=60, fontsize=7)
    ax.set_yticks(range(pivot.shape[0]), pivot.index, fontsize=5)
    fig.colorbar(im, ax=ax, label="log10 relative RMSE")
    ax.set_title(label("Per-tensor quantization error", "逐张量量化误差"))
    return save_figure(fig, path)


def moe_routing(stats: dict, path=None):
    """Expert load per layer (heatmap), router entropy per layer, top-1 vs top-2 weight histogram."""
    plt = pyplot()
    _setup_fonts()
    load = stats["load"]  # (n_layer, n_expert) fraction of routed slots
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    im = axes[0].imshow(load, aspect="auto", cmap="magma")
    axes[0].set_xlabel(label("expert", "专家"))
    axes[0].set_ylabel(label("layer", "层"))
    axes[0].set_title(label("expert load", "专家负载"))
    fig.colorbar(im, ax=axes[0])
    axes[1].plot(stats["entropy"], marker="o")
    axes[1].axhline(np.log(load.shape[1]), ls="--", color="gray", label="uniform")
    axes[1].set_xlabel(label("layer", "层"))
    axes[1].set_title(label("router entropy (nats)", "路由熵"))
    axes[1].legend(fontsize=8)
    w = stats["weights"]  # (n_layer, n_tok, k)
    axes[2].hist(w[..., 0].ravel(), bins=30, alpha=0.7, label="top-1")
    if w.shape[-1] > 1:
        axes[2].hist(w[..., 1].ravel(), bins=30, alpha=0.7, label="top-2")
    axes[2].set_title(label("routing weights", "路由权重"))
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def ppl_vs_experts(df: pd.DataFrame, path=None):
    plt = pyplot()
    _setup_fonts()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(df.n_expert_used, df.ppl, yerr=df.get("ppl_err"), marker="o", capsize=3)
    ax.set_xlabel(label("experts used per token", "每个词元使用的专家数"))
    ax.set_ylabel(label("perplexity", "困惑度"))
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def token_expert_heatmap(experts: np.ndarray, weights: np.ndarray, n_expert: int, path=None, tokens=None,
                         max_tokens: int = 64):
    """Routing weight of every expert for every token (rows = experts, columns = tokens), one panel per layer.
    `experts`, `weights`: (n_layer, n_tok, k) as Model.logits(..., capture_routing=True) returns them."""
    plt = pyplot()
    _setup_fonts()
    L, T = experts.shape[0], min(experts.shape[1], max_tokens)
    fig, axes = plt.subplots(L, 1, figsize=(min(2 + 0.18 * T, 16), 1.0 + 0.35 * n_expert * L), squeeze=False)
    for il, ax in enumerate(axes[:, 0]):
        dense = np.zeros((n_expert, T))
        for k in range(experts.shape[2]):
            dense[experts[il, :T, k], np.arange(T)] = weights[il, :T, k]
        im = ax.imshow(dense, aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax.set_ylabel(label(f"layer {il}\nexpert", "专家"))
        if tokens is not None and il == L - 1:
            ax.set_xticks(range(T), [str(t) for t in tokens[:T]], rotation=90, fontsize=6)
    axes[0, 0].set_title(label("routing weight per token", "每个词元的路由权重"))
    fig.colorbar(im, ax=axes[:, 0].tolist())
    return save_figure(fig, path)
