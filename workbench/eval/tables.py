"""The quant comparison table: one call quantizes a base model to each ftype and measures size, BPW, PPL,
KL divergence against the base and speed, as llama.cpp users assemble by hand from llama-quantize,
llama-perplexity --kl-divergence and llama-bench."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.assets import data_dir
from workbench.eval.kl import kl_divergence, save_base
from workbench.eval.perplexity import ppl_and_error
from workbench.gguf import read_gguf
from workbench.llama import load
from workbench.quant.quantize_model import quantize_model


def model_bpw(path) -> tuple[int, float]:
    """(file bytes, bits per weight over all tensor elements) as llama.cpp reports BPW."""
    with read_gguf(path) as gf:
        n = sum(t.n_elements for t in gf.tensors)
        nbytes = sum(t.nbytes for t in gf.tensors)
    return Path(path).stat().st_size, 8.0 * nbytes / n


def speed(model, n_prompt: int = 64, n_gen: int = 16) -> tuple[float, float]:
    """(prompt tokens/s, generation tokens/s) on a synthetic prompt (like llama-bench pp/tg)."""
    rng = np.random.default_rng(0)
    toks = rng.integers(100, model.config.n_vocab, size=n_prompt)
    model.reset()
    t0 = time.perf_counter()
    model.eval(toks)
    pp = n_prompt / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for t in rng.integers(100, model.config.n_vocab, size=n_gen):
        model.eval([int(t)])
    tg = n_gen / (time.perf_counter() - t0)
    model.reset()
    return pp, tg


def quant_table(base_gguf, ftypes, text: str, n_ctx: int = 512, n_chunks: int | None = 16, out_dir=None,
                imatrix=None, with_speed: bool = True, progress: bool = False, reports_dir=None,
                flash_attn: bool = True) -> pd.DataFrame:
    """Quantize `base_gguf` to each ftype and compare with the base (row "base" first), as llama-perplexity
    --kl-divergence-base / --kl-divergence would (flash_attn=True, its default on CPU; False: as llama-cpp-python).

    Columns: ftype, file_bytes, bpw, ppl, ppl_err, delta_ppl, ppl_ratio, kld_mean, kld_err, kld_p99,
    same_top_p, dp_rms, prompt_tps, gen_tps. Also written as CSV and markdown under data/reports/."""
    out_dir = Path(out_dir) if out_dir else data_dir() / "models" / "quant_table"
    out_dir.mkdir(parents=True, exist_ok=True)
    base_gguf = Path(base_gguf)
    base = load(base_gguf, n_ctx=n_ctx, flash_attn=flash_attn)
    tokens = base.tokenize(text, add_special=True)
    kld_file = out_dir / f"{base_gguf.stem}.n{n_ctx}.kld"
    base_nll = save_base(base, text, kld_file, n_ctx=n_ctx, n_chunks=n_chunks, tokens=tokens, progress=progress)
    base_ppl, base_err = ppl_and_error(base_nll)
    size, bpw = model_bpw(base_gguf)
    pp, tg = speed(base) if with_speed else (np.nan, np.nan)
    rows = [{"ftype": "base", "file_bytes": size, "bpw": bpw, "ppl": base_ppl, "ppl_err": base_err, "delta_ppl": 0.0,
             "ppl_ratio": 1.0, "kld_mean": 0.0, "kld_err": 0.0, "kld_p99": 0.0, "same_top_p": 1.0, "dp_rms": 0.0,
             "prompt_tps": pp, "gen_tps": tg}]
    for ftype in ftypes:
        dst = out_dir / f"{base_gguf.stem}.{ftype}.gguf"
        if not dst.exists():
            quantize_model(base_gguf, dst, ftype, imatrix=imatrix, progress=progress, with_error=False,
                           allow_requantize=True)
        m = load(dst, n_ctx=n_ctx, flash_attn=flash_attn)
        k = kl_divergence(m, kld_file, progress=progress)
        size, bpw = model_bpw(dst)
        pp, tg = speed(m) if with_speed else (np.nan, np.nan)
        rows.append({"ftype": ftype, "file_bytes": size, "bpw": bpw, "ppl": k.ppl, "ppl_err": k.ppl_err,
                     "delta_ppl": k.ppl_minus_base, "ppl_ratio": float(np.exp(k.ln_ppl_ratio)),
                     "kld_mean": k.kld_mean, "kld_err": k.kld_err, "kld_p99": k.kld_percentiles["99"],
                     "same_top_p": k.same_top_p, "dp_rms": k.dp_rms, "prompt_tps": pp, "gen_tps": tg})
    df = pd.DataFrame(rows)
    reports = Path(reports_dir) if reports_dir else data_dir() / "reports"
    write_table(df, reports / "quant_table")
    return df


def write_table(df: pd.DataFrame, stem) -> tuple[Path, Path]:
    """`stem`.csv and `stem`.md (a markdown table that needs no extra package)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv, md = stem.with_suffix(".csv"), stem.with_suffix(".md")
    df.to_csv(csv, index=False)
    md.write_text(to_markdown(df), encoding="utf-8")
    return csv, md


def to_markdown(df: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    def fmt(v):
        return floatfmt.format(v) if isinstance(v, (float, np.floating)) else str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body]) + "\n"
