"""Helpers for the numbered notebooks (notebooks/0*_*.ipynb), so that their cells stay a few lines long.

- small/full presets: `params(small={...}, full={...})` picks one by $WORKBENCH_FULL ("1" = full mode;
  anything else, the default, is small mode: what `make demo` and the tests run on 2 CPU cores)
- folders: `reports_dir()`, `work_dir(name)` under data/ (honours $WORKBENCH_DATA)
- conversion: the Q/K row permutation on a tiny example, byte- and tensor-level diffs of two GGUF files
- quantization: a cached F16 base, cached quantizations with their per-tensor error reports, the
  requantization penalty of a Q4_1 source, an importance-weighted (imatrix) vs plain quantization of one tensor
- context: a model with linear RoPE scaling (like llama.cpp's --rope-freq-scale)
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from workbench.assets import data_dir, ensure_texts
from workbench.text.files import read_prompt_file


# --- parameters -----------------------------------------------------------------------------------
def is_small() -> bool:
    """Small mode unless WORKBENCH_FULL=1."""
    return os.environ.get("WORKBENCH_FULL") != "1"


def params(small: dict, full: dict, **common) -> SimpleNamespace:
    """The preset of the current mode (plus `common` values) as attributes; prints what was chosen."""
    chosen = {**common, **(small if is_small() else full), "small": is_small()}
    print(("small" if chosen["small"] else "full") + " mode (set WORKBENCH_FULL=1 for full mode): "
          + ", ".join(f"{k}={v}" for k, v in chosen.items() if k != "small"))
    return SimpleNamespace(**chosen)


def reports_dir() -> Path:
    d = data_dir() / "reports"
    d.mkdir(parents=True, exist_ok=True)
    return d


def work_dir(name: str) -> Path:
    d = data_dir() / "models" / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def toy_dir() -> Path:
    """The toy checkpoints shipped in ../shared/golden/toy (or $WORKBENCH_SHARED/golden/toy, with llama.cpp's
    reference conversions); on a machine without them, seeded stand-ins made offline under data/models/toy."""
    shared = Path(os.environ.get("WORKBENCH_SHARED", Path(__file__).resolve().parent.parent.parent / "shared"))
    toy = shared / "golden" / "toy"
    if toy.is_dir():
        return toy
    from workbench.toy_models import ensure_toy_models

    return ensure_toy_models(data_dir() / "models" / "toy")


def read_text(lang: str = "en", max_chars: int | None = None) -> str:
    """An evaluation text ("en": botchan, "zh": People's Daily news), optionally cut to max_chars."""
    text = read_prompt_file(ensure_texts()[lang])  # as llama-perplexity -f reads it: BOM and CRLF kept
    return text if max_chars is None else text[:max_chars]


# --- conversion -----------------------------------------------------------------------------------
def _rope_pairs(x: np.ndarray, pos: int, adjacent: bool, base: float = 10000.0) -> np.ndarray:
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
    """Why convert_hf_to_gguf permutes attn_q/attn_k rows: HF's rotate_half pairs row i with row i+d/2,
    ggml's RoPE pairs rows 2i and 2i+1. Returns (row table, max |RoPE_ggml(W_gguf x) - permute(RoPE_hf(W_hf x))|)."""
    from workbench.hf.names import permute_qk

    n = n_head * head_dim
    labels = np.array([f"h{h}.{'re' if j < head_dim // 2 else 'im'}{j % (head_dim // 2)}"
                       for h in range(n_head) for j in range(head_dim)])
    order = permute_qk(np.arange(n), n_head)
    table = pd.DataFrame({"gguf_row": np.arange(n), "takes_hf_row": order, "hf_label": labels[order]})
    rng = np.random.default_rng(seed)
    w_hf, x = rng.standard_normal((n, 8)), rng.standard_normal(8)
    q_hf = np.concatenate([_rope_pairs(h, pos, adjacent=False) for h in np.split(w_hf @ x, n_head)])
    q_gguf = np.concatenate([_rope_pairs(h, pos, adjacent=True) for h in np.split(permute_qk(w_hf, n_head) @ x, n_head)])
    return table, float(np.abs(q_gguf - permute_qk(q_hf, n_head)).max())


def file_diff(a, b, chunk: int = 1 << 24) -> dict:
    """Byte-level comparison of two files: sizes, identical?, first differing offset, differing bytes."""
    a, b = Path(a), Path(b)
    sa, sb = a.stat().st_size, b.stat().st_size
    first, n_diff = None, 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        off = 0
        while (ba := fa.read(chunk)) and (bb := fb.read(chunk)):
            m = min(len(ba), len(bb))
            d = np.flatnonzero(np.frombuffer(ba[:m], np.uint8) != np.frombuffer(bb[:m], np.uint8))
            if d.size and first is None:
                first = off + int(d[0])
            n_diff += int(d.size)
            off += m
    return {"a": a.name, "b": b.name, "bytes_a": sa, "bytes_b": sb, "identical": sa == sb and n_diff == 0,
            "first_diff_offset": first if first is not None else (None if sa == sb else min(sa, sb)),
            "differing_bytes_in_common_prefix": n_diff}


def tensor_diff(a, b) -> pd.DataFrame:
    """Per tensor of GGUF `a` (matched by name in `b`): types, bytes identical?, max |a - b| after
    dequantizing both to float32."""
    from workbench.gguf import read_gguf
    from workbench.hf.export import dequantize_tensor

    ga, gb = read_gguf(a), read_gguf(b)
    by_name = {t.name: t for t in gb.tensors}
    rows = []
    for t in ga.tensors:
        u = by_name.get(t.name)
        if u is None:
            rows.append({"name": t.name, "type_a": t.type.name, "type_b": None, "bytes_equal": False,
                         "max_abs_diff": np.nan})
            continue
        same = t.type == u.type and t.shape == u.shape and bytes(t.data) == bytes(u.data)
        diff = 0.0 if same else float(np.abs(dequantize_tensor(t) - dequantize_tensor(u).reshape(t.shape)).max()) \
            if t.n_elements == u.n_elements else np.nan
        rows.append({"name": t.name, "type_a": t.type.name, "type_b": u.type.name, "shape": tuple(t.shape),
                     "bytes_equal": same, "max_abs_diff": diff})
    return pd.DataFrame(rows)


# --- quantization ---------------------------------------------------------------------------------
def f16_base(model_path) -> Path:
    """An F16 copy of `model_path` (cached beside it): the base every quantization below starts from.
    For the Q4_1 default this is a dequantization, so everything made from it is a requantization."""
    from workbench.quant.quantize_model import quantize_model

    src = Path(model_path)
    dst = work_dir("quant") / f"{src.stem}.F16.gguf"
    if not dst.exists():
        quantize_model(src, dst, "F16", allow_requantize=True, progress=False, with_error=False)
    return dst


def quantize_all(base, ftypes, out_dir=None) -> tuple[dict, pd.DataFrame]:
    """Quantize `base` to each ftype (cached: <out_dir>/<base stem>.<ftype>.gguf, the names quant_table
    reuses, plus a .tensors.csv per-tensor report). Returns ({ftype: path}, long per-tensor report)."""
    from workbench.quant.quantize_model import quantize_model

    base = Path(base)
    out_dir = Path(out_dir) if out_dir else work_dir("quant")
    paths, reports = {}, []
    for ft in ftypes:
        dst = out_dir / f"{base.stem}.{ft}.gguf"
        rep = dst.with_suffix(".tensors.csv")
        if dst.exists() and rep.exists():
            df = pd.read_csv(rep)
        else:
            df = quantize_model(base, dst, ft, allow_requantize=True, progress=False)
            df.to_csv(rep, index=False)
        paths[ft] = dst
        reports.append(df.assign(ftype=ft))
    return paths, pd.concat(reports, ignore_index=True)


def rel_rmse(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(np.mean((x - y) ** 2)) / max(np.sqrt(np.mean(x ** 2)), 1e-30))


def requant_errors(model_path, targets=("Q4_1", "Q4_0", "Q5_1", "Q5_0", "Q8_0"), tensors=None) -> pd.DataFrame:
    """Relative RMSE of quantizing the (dequantized, F16-rounded) tensors of `model_path` again to each target type.
    Re-quantizing Q4_1 data to Q4_1 reproduces its 16 levels almost exactly; 5-bit types put 32 levels on a
    different grid, so they add error although they have more bits."""
    from workbench.gguf import read_gguf
    from workbench.hf.export import dequantize_tensor
    from workbench.quant import dequantize, quantize

    gf = read_gguf(model_path)
    picked = [t for t in gf.tensors if len(t.shape) == 2 and (tensors is None or t.name in tensors)]
    if tensors is None:
        picked = [t for t in picked if t.name.startswith("blk.0.")]
    rows = []
    for t in picked:
        # through F16 as the F16 base stores it (Q4_1 -> F16 -> target)
        x = dequantize_tensor(t).reshape(-1, t.shape[-1]).astype(np.float16).astype(np.float32)
        row = {"tensor": t.name, "source_type": t.type.name}
        for target in targets:
            row[f"->{target}"] = rel_rmse(x, dequantize(quantize(x, target), target, x.shape[1]))
        rows.append(row)
    return pd.DataFrame(rows)


def layer0_activations(model_path, text: str, n_tokens: int = 256) -> np.ndarray:
    """The exact input of blk.0.attn_q/k/v for `text`: RMS-normed token embeddings times attn_norm."""
    from workbench.gguf import read_gguf
    from workbench.hf.export import dequantize_tensor
    from workbench.llama.config import LlamaConfig
    from workbench.text.tokenizer import Tokenizer

    gf = read_gguf(model_path)
    cfg = LlamaConfig.from_metadata(gf.metadata)
    toks = np.asarray(Tokenizer.from_metadata(gf.metadata).tokenize(text, add_special=True)[:n_tokens])
    by = {t.name: t for t in gf.tensors}
    emb = dequantize_tensor(by["token_embd.weight"])[toks]
    h = emb / np.sqrt(np.mean(emb ** 2, axis=1, keepdims=True) + cfg.rms_eps)
    return (h * dequantize_tensor(by["blk.0.attn_norm.weight"])).astype(np.float32)


def imatrix_comparison(model_path, text: str, tensor: str = "blk.0.attn_q.weight", type: str = "IQ4_NL",
                       n_tokens: int = 256) -> pd.DataFrame:
    """Quantize one tensor without and with an importance vector (mean squared activation per input column,
    what llama-imatrix accumulates) and measure both the plain weight error and the error of the layer's
    output on the real activations (what the importance weighting optimizes). SmolLM2 rows have 576 columns,
    so 256-column types (IQ4_XS, k-quants) do not apply to it: the default is IQ4_NL (blocks of 32)."""
    from workbench.gguf import read_gguf
    from workbench.hf.export import dequantize_tensor
    from workbench.quant import dequantize, quantize

    h = layer0_activations(model_path, text, n_tokens)
    w = dequantize_tensor(next(t for t in read_gguf(model_path).tensors if t.name == tensor))
    imp = np.mean(h.astype(np.float64) ** 2, axis=0).astype(np.float32)
    rows = []
    for name, im in (("no imatrix", None), ("imatrix (layer-0 activations)", imp)):
        wq = dequantize(quantize(w, type, imatrix=im), type, w.shape[1])
        rows.append({"quantization": f"{type}, {name}", "weight_rel_rmse": rel_rmse(w, wq),
                     "output_rel_rmse": rel_rmse(h @ w.T, h @ wq.T)})
    return pd.DataFrame(rows)


# --- context ----------------------------------------------------------------------------------------
def load_rope_scaled(model_path, n_ctx: int, freq_scale: float):
    """Load a model with linear RoPE scaling (positions multiplied by freq_scale, like --rope-freq-scale)."""
    from workbench import load
    from workbench.llama.forward import RopeTables

    m = load(model_path, n_ctx=n_ctx)
    m.config = dataclasses.replace(m.config, rope_freq_scale=float(freq_scale))
    m.rope = RopeTables(m.config, m.weights.rope_freqs)
    return m


def rope_scaling_table(model_path, text: str, contexts, scales=(1.0, 0.5), n_chunks: int = 2) -> pd.DataFrame:
    """PPL for each (context, freq_scale): linear scaling 0.5 stretches the trained positions over 2x the
    context; it costs a little below the training length and is what keeps PPL sane beyond it."""
    from workbench.eval.perplexity import perplexity

    rows = []
    for n_ctx in contexts:
        for s in scales:
            r = perplexity(load_rope_scaled(model_path, n_ctx, s), text, n_ctx=n_ctx, n_chunks=n_chunks, progress=False)
            rows.append({"n_ctx": n_ctx, "freq_scale": s, "label": f"rope freq_scale {s}", "ppl": r.ppl,
                         "ppl_err": r.ppl_err})
    return pd.DataFrame(rows)
