"""Every figure the notebooks show: PPL vs context, quant Pareto, per-tensor error heatmap, MoE routing.

Chinese labels are added only when a CJK-capable font is installed (e.g. Debian's fonts-noto-cjk), so that no
plot ever draws boxes or prints missing-glyph warnings. A font installed after matplotlib built its font cache
is found too (cjk_font registers it). Figures are sized for a notebook column (<= 10 inches wide) with text of
at least 9 pt.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Serif CJK SC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
             "Source Han Sans SC", "SimHei", "Microsoft YaHei", "PingFang SC", "AR PL UMing CN")
CJK_FILES = re.compile(r"cjk|wqy|wenquanyi|sourcehan|simhei|msyh|pingfang|uming", re.IGNORECASE)
FONT_PT = 9                 # smallest text in a figure
# the order of a llama block's tensors (llm_build_llama): attention, then the feed-forward (dense or MoE)
TENSOR_KINDS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate_inp", "ffn_gate",
                "ffn_up", "ffn_down", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")


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
    """The first installed CJK-capable font family, or None. matplotlib reads its font list from a cache built
    once; CJK font files installed after that are registered here first."""
    from matplotlib import font_manager

    names = {f.name for f in font_manager.fontManager.ttflist}
    if not names.intersection(CJK_FONTS):
        for path in font_manager.findSystemFonts():
            if CJK_FILES.search(Path(path).name):
                try:
                    font_manager.fontManager.addfont(path)
                except (OSError, RuntimeError, ValueError):   # an unreadable font file: skip it
                    continue
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


def ppl_vs_context(df: pd.DataFrame, path=None, title: str | None = None, facet: str = "text"):
    """PPL (± llama-perplexity's error bar: PPL times the standard error of the mean token NLL) vs n_ctx on a
    log2 axis, one curve per model/format (Chinese-Mixtral's figure). With a `facet` column (default "text")
    holding several values, one panel per value, each with its own y axis (English and Chinese PPL differ
    by orders of magnitude)."""
    plt = pyplot()
    _setup_fonts()
    panels = list(dict.fromkeys(df[facet])) if facet in df.columns else [None]
    fig, axes = plt.subplots(1, len(panels), figsize=(min(4.8 * len(panels), 10), 4.2), squeeze=False,
                             layout="constrained")
    group = "model" if facet in df.columns and "model" in df.columns else (
        "label" if "label" in df.columns else "model")
    contexts = sorted(df.n_ctx.unique())
    for ax, panel in zip(axes[0], panels):
        part = df if panel is None else df[df[facet] == panel]
        for name, g in part.groupby(group, sort=False):
            g = g.sort_values("n_ctx")
            yerr = g["ppl_err"] if "ppl_err" in g.columns else None
            ax.errorbar(g.n_ctx, g.ppl, yerr=yerr, marker="o", ms=4, capsize=4, elinewidth=1.2, label=str(name))
        ax.set_xscale("log", base=2)
        ax.set_xticks(contexts, [str(c) for c in contexts])
        ax.minorticks_off()
        ax.tick_params(labelsize=FONT_PT)
        ax.set_xlabel(label("context length (tokens)", "上下文长度（词元）"), fontsize=FONT_PT + 1)
        ax.set_ylabel(label("perplexity", "困惑度"), fontsize=FONT_PT + 1)
        if panel is not None:
            ax.set_title(_text_label(panel), fontsize=FONT_PT + 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=FONT_PT)
    fig.suptitle(title or label("Perplexity vs context length (± 1 s.e.)", "困惑度与上下文长度（± 1 标准误）"),
                 fontsize=FONT_PT + 2)
    return save_figure(fig, path)


def _text_label(name) -> str:
    return {"en": label("English text", "英文文本"), "zh": label("Chinese text", "中文文本")}.get(name, str(name))


def pareto(df: pd.DataFrame, path=None, y: str = "kld_mean"):
    """File size vs KLD (or PPL) per ftype, with the Pareto front highlighted. Rows of `kind` "noise floor"
    (quant_table's) are drawn as one dashed line at their highest mean + 2 s.e., not as points; points marked `within_noise` are hollow."""
    plt = pyplot()
    _setup_fonts()
    kind = df["kind"] if "kind" in df.columns else pd.Series("quant", index=df.index)
    d = df[(kind == "quant") & (df.ftype != "base")].sort_values("file_bytes") if "ftype" in df else df
    fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
    size_mb = d.file_bytes / 2**20
    noise = d["within_noise"].astype(bool) if "within_noise" in d.columns else pd.Series(False, index=d.index)
    ax.scatter(size_mb[~noise], d[y][~noise], zorder=3, label=label("quantized file", "量化文件"))
    if noise.any():
        ax.scatter(size_mb[noise], d[y][noise], zorder=3, facecolors="none", edgecolors="tab:blue",
                   label=label("within noise", "在噪声内"))
    for _, r in d.iterrows():
        ax.annotate(r.ftype, (r.file_bytes / 2**20, r[y]), fontsize=FONT_PT, xytext=(3, 3), textcoords="offset points")
    front, best = [], np.inf
    for _, r in d.iterrows():
        if r[y] < best:
            best = r[y]
            front.append((r.file_bytes / 2**20, r[y]))
    if front:
        fx, fy = zip(*front)
        ax.step(fx, fy, where="post", color="tab:red", alpha=0.6, label=label("Pareto front", "帕累托前沿"))
    floor = df[kind == "noise floor"]
    if y == "kld_mean" and len(floor):
        top = float((floor.kld_mean + 2 * floor.kld_err).max())
        if top > 0:
            ax.axhline(top, color="gray", ls="--", label=label("noise floor (mean + 2 s.e.)", "噪声底（均值 + 2 标准误）"))
    if y == "kld_mean":
        ax.set_yscale("log")
    ax.tick_params(labelsize=FONT_PT)
    ax.set_xlabel(label("file size (MiB)", "文件大小 (MiB)"), fontsize=FONT_PT + 1)
    ax.set_ylabel({"kld_mean": label("mean KL divergence vs base", "相对基准模型的平均 KL 散度"),
                   "ppl": label("perplexity", "困惑度")}.get(y, y), fontsize=FONT_PT + 1)
    ax.set_title(label("Size vs quality per quantization type", "各量化格式的大小与质量"), fontsize=FONT_PT + 2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=FONT_PT)
    return save_figure(fig, path)


def pareto_by_method(df: pd.DataFrame, path=None):
    """File size vs mean KLD, one colour per method, one panel per evaluation set (log KLD, error bars 2 s.e.)."""
    plt = pyplot()
    _setup_fonts()
    evals = list(dict.fromkeys(df["eval"]))
    fig, axes = plt.subplots(1, len(evals), figsize=(5.0 * len(evals), 4.2), layout="constrained", squeeze=False)
    for ax, ev in zip(axes[0], evals):
        d = df[df["eval"] == ev]
        for method, g in d.groupby("method", sort=False):
            g = g.sort_values("file_bytes")
            ax.errorbar(g.file_bytes / 2**20, g.kld_mean, yerr=2 * g.kld_err, marker="o", capsize=3, label=method)
            for _, r in g.iterrows():
                ax.annotate(r.ftype, (r.file_bytes / 2**20, r.kld_mean), fontsize=8, xytext=(3, 3),
                            textcoords="offset points")
        ax.set_yscale("log")
        ax.set_title(ev, fontsize=10)
        ax.set_xlabel(label("file size (MiB)", "文件大小 (MiB)"))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(label("mean KL divergence vs F16", "相对 F16 的平均 KL 散度"))
    axes[0][0].legend(fontsize=9)
    return save_figure(fig, path)


_BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.(.+?)(?:\.weight|\.bias)?$")
GLOBAL_ROW = "other"   # the heatmap row of tensors outside the blocks (token_embd, output)


def tensor_grid(errors: pd.DataFrame, value: str = "rel_rmse") -> dict[str, pd.DataFrame]:
    """{ftype: table} with rows blk.0, blk.1, ... in numeric order (then "other" for tensors outside the
    blocks) and columns the tensor kinds in a block's order (attn_q, attn_k, attn_v, attn_output, ffn_gate,
    ffn_up, ffn_down, ...), then the other tensors (token_embd, output). NaN: no such tensor, or one left
    unquantized (value <= 0). Kinds without any value in any ftype are dropped."""
    if errors.empty:
        raise ValueError("tensor_grid: the error table is empty")
    missing = {"name", "ftype", value} - set(errors.columns)
    if missing:
        raise ValueError(f"tensor_grid: the error table lacks the column(s) {sorted(missing)}")
    e = errors[["name", "ftype", value]].copy()
    parsed = e.name.map(lambda n: _BLOCK_TENSOR.match(str(n)))
    e["layer"] = [int(m.group(1)) if m else -1 for m in parsed]
    e["kind"] = [m.group(2) if m else re.sub(r"\.weight$", "", str(n)) for m, n in zip(parsed, e.name)]
    e[value] = e[value].where(e[value] > 0)
    layers = sorted(e.layer[e.layer >= 0].unique())
    rows = [f"blk.{i}" for i in layers] + ([GLOBAL_ROW] if (e.layer < 0).any() else [])
    e["row"] = [f"blk.{i}" if i >= 0 else GLOBAL_ROW for i in e.layer]
    block_kinds = set(e.kind[e.layer >= 0])
    order = [k for k in TENSOR_KINDS if k in block_kinds] + sorted(block_kinds - set(TENSOR_KINDS))
    order += sorted(set(e.kind[e.layer < 0]) - set(order))
    present = set(e.kind[e[value].notna()])
    cols = [k for k in order if k in present]
    return {ft: g.pivot_table(index="row", columns="kind", values=value, aggfunc="first", dropna=False)
            .reindex(index=rows, columns=cols) for ft, g in e.groupby("ftype", sort=False)}


def tensor_error_heatmap(errors: pd.DataFrame, path=None, value: str = "rel_rmse", max_cols: int = 4):
    """Small multiples of per-tensor quantization error: one panel per ftype (order of appearance), rows = layers
    in numeric order, columns = tensor kinds (tensor_grid), colour = log10 of `value` on one scale shared by
    all panels. Gray: tensor absent or kept in float. `errors`: quantize_model's reports concatenated (columns
    name, ftype, rel_rmse)."""
    plt = pyplot()
    _setup_fonts()
    grids = tensor_grid(errors, value)
    logs = {ft: np.log10(g.to_numpy(dtype=float)) for ft, g in grids.items()}
    finite = np.concatenate([v[np.isfinite(v)] for v in logs.values()])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (-3.0, 0.0)
    first = next(iter(grids.values()))
    n_rows, n_cols = first.shape
    ncols = min(len(grids), max_cols)
    nrows = -(-len(grids) // ncols)
    cell_h = 0.15 if n_rows <= 40 else 0.1                      # >= 9 pt per layer label
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, sharey=True, layout="constrained",
                             figsize=(min(1.6 + ncols * (0.3 * n_cols + 0.4), 10), nrows * (n_rows * cell_h + 1.4)))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#d9d9d9")
    step = 1 if n_rows <= 40 else 2
    im = None
    for ax, (ft, g) in zip(axes.ravel(), grids.items()):
        im = ax.imshow(np.ma.masked_invalid(logs[ft]), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax,
                       interpolation="nearest")
        ax.set_title(str(ft), fontsize=FONT_PT + 1, fontweight="bold")
        ax.set_xticks(range(n_cols), list(g.columns), rotation=90, fontsize=FONT_PT)
        ax.set_yticks(range(0, n_rows, step), list(g.index)[::step], fontsize=FONT_PT)
        ax.tick_params(length=2)
    for ax in axes.ravel()[len(grids):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(label("layer", "层"), fontsize=FONT_PT + 1)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8,
                 label=label("log10 relative RMSE", "相对均方根误差 (log10)") if value == "rel_rmse"
                 else f"log10 {value}")
    fig.supxlabel(label("tensor kind (gray: absent or kept in float)", "张量类型（灰色：不存在或保留浮点）"),
                  fontsize=FONT_PT + 1)
    fig.suptitle(label("Per-tensor quantization error", "逐张量量化误差"), fontsize=FONT_PT + 2)
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
