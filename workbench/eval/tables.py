"""The quant comparison table: one call quantizes a base model to each ftype and measures size, BPW, PPL,
KL divergence against the base and speed, as llama.cpp users assemble by hand from llama-quantize,
llama-perplexity --kl-divergence and llama-bench; plus a noise floor (the KLD of the base against itself
evaluated another valid way) and a within-noise mark for every row not clearly above it."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.assets import data_dir
from workbench.eval.bench import llama_cpp_available
from workbench.eval.kl import KLDResult, LlamaCppLogits, kl_divergence, read_kld, save_base
from workbench.eval.perplexity import ppl_and_error
from workbench.gguf import read_gguf
from workbench.llama import load
from workbench.quant.quantize_model import quantize_model

SIGMAS = 2.0   # "clearly above the noise floor": more than this many standard errors apart


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
                flash_attn: bool = True, noise_floor: bool = True, sigmas: float = SIGMAS) -> pd.DataFrame:
    """Quantize `base_gguf` to each ftype and compare with the base (row "base" first), as llama-perplexity
    --kl-divergence-base / --kl-divergence would (flash_attn=True, its default on CPU; False: as llama-cpp-python).

    The noise floor (noise_floor=True): a quantized file's KLD means something only where it is clearly above
    the KLD of evaluations that should be equal to the base. Rows of kind "noise floor" (noise_floor_rows) hold
    the base itself evaluated a different, equally valid way: llama.cpp's other attention graph (flash attention
    toggled: another softmax/accumulation order), the weights times float32 activations (ggml rounds them to
    F16 for an F16 matmul), and llama.cpp's own build on this host when llama_cpp imports. Each KLD also
    carries the uint16 rounding of the base file's log-probs. `within_noise` (mark_within_noise) is True for a
    row whose kld_mean - sigmas * kld_err does not exceed the floor's highest kld_mean + sigmas * kld_err.

    Columns: ftype, kind ("base", "noise floor", "quant"), file_bytes, bpw, ppl, ppl_err, delta_ppl, ppl_ratio,
    kld_mean, kld_err, kld_p99, same_top_p, dp_rms, prompt_tps, gen_tps, within_noise. Also written as CSV and
    markdown (within-noise rows marked "≈") under data/reports/."""
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
    rows = [{"ftype": "base", "kind": "base", "file_bytes": size, "bpw": bpw, "ppl": base_ppl, "ppl_err": base_err,
             "delta_ppl": 0.0, "ppl_ratio": 1.0, "kld_mean": 0.0, "kld_err": 0.0, "kld_p99": 0.0, "same_top_p": 1.0,
             "dp_rms": 0.0, "prompt_tps": pp, "gen_tps": tg}]
    if noise_floor:
        rows += noise_floor_rows(base_gguf, kld_file, flash_attn=flash_attn, add_bos=base.add_bos,
                                 bos_id=base.bos_id, progress=progress)
    for ftype in ftypes:
        dst = out_dir / f"{base_gguf.stem}.{ftype}.gguf"
        if not dst.exists():
            quantize_model(base_gguf, dst, ftype, imatrix=imatrix, progress=progress, with_error=False,
                           allow_requantize=True)
        m = load(dst, n_ctx=n_ctx, flash_attn=flash_attn)
        pp, tg = speed(m) if with_speed else (np.nan, np.nan)
        rows.append(kld_row(ftype, "quant", kl_divergence(m, kld_file, progress=progress), dst, pp, tg))
    df = mark_within_noise(pd.DataFrame(rows), sigmas)
    reports = Path(reports_dir) if reports_dir else data_dir() / "reports"
    write_table(df, reports / "quant_table", notes=noise_note(df, sigmas))
    return df


def kld_row(ftype: str, kind: str, k: KLDResult, path, prompt_tps=np.nan, gen_tps=np.nan) -> dict:
    """One table row from a KLDResult and the compared file."""
    size, bpw = model_bpw(path)
    return {"ftype": ftype, "kind": kind, "file_bytes": size, "bpw": bpw, "ppl": k.ppl, "ppl_err": k.ppl_err,
            "delta_ppl": k.ppl_minus_base, "ppl_ratio": float(np.exp(k.ln_ppl_ratio)), "kld_mean": k.kld_mean,
            "kld_err": k.kld_err, "kld_p99": k.kld_percentiles["99"], "same_top_p": k.same_top_p, "dp_rms": k.dp_rms,
            "prompt_tps": prompt_tps, "gen_tps": gen_tps}


def noise_floor_rows(base_gguf, kld_file, flash_attn: bool, add_bos: bool, bos_id: int,
                     progress: bool = False) -> list[dict]:
    """KLD rows (kind "noise floor") of the base model against its own `.kld` file, evaluated another valid way:

    - "noise: attention order": flash attention toggled (llama.cpp builds a different attention graph with it,
      llm_graph_context::build_attn_mha: an online softmax over KV blocks in place of one softmax per row);
    - "noise: f32 activations": activations kept in float32 (quantize_act=False) where ggml converts them to the
      weight's vec_dot_type (F16 for an F16 base) and our decoded path sums in its own order;
    - "noise: llama.cpp (this host)": llama.cpp's build here through llama-cpp-python, when it imports.
    The .kld file's n_ctx and chunks are used throughout."""
    n_ctx = read_kld(kld_file).n_ctx
    variants = [("noise: attention order", load(base_gguf, n_ctx=n_ctx, flash_attn=not flash_attn)),
                ("noise: f32 activations", load(base_gguf, n_ctx=n_ctx, flash_attn=flash_attn, quantize_act=False))]
    rows = [kld_row(name, "noise floor", kl_divergence(m, kld_file, progress=progress), base_gguf)
            for name, m in variants]
    if llama_cpp_available():
        ref = LlamaCppLogits(base_gguf, n_ctx, add_bos, bos_id, flash_attn=flash_attn)
        try:
            rows.append(kld_row("noise: llama.cpp (this host)", "noise floor",
                                kl_divergence(ref, kld_file, progress=progress), base_gguf))
        finally:
            ref.close()
    return rows


def mark_within_noise(df: pd.DataFrame, sigmas: float = SIGMAS) -> pd.DataFrame:
    """Add `within_noise`: True where kld_mean - sigmas*kld_err <= the floor, the highest kld_mean + sigmas*kld_err
    of the rows of kind "noise floor" (0 when there are none: then a row is within noise unless its KLD is
    clearly above zero). The base and the floor rows themselves are within noise by construction."""
    missing = {"kld_mean", "kld_err"} - set(df.columns)
    if missing:
        raise ValueError(f"mark_within_noise: the table lacks the column(s) {sorted(missing)}")
    out = df.copy()
    err = out.kld_err.fillna(0.0)
    floor = floor_level(out, sigmas)
    out["within_noise"] = (out.kld_mean - sigmas * err) <= floor
    return out


def floor_level(df: pd.DataFrame, sigmas: float = SIGMAS) -> float:
    """The highest kld_mean + sigmas*kld_err among the rows of kind "noise floor" (0.0 without any)."""
    floor = df[df["kind"] == "noise floor"] if "kind" in df.columns else df.iloc[:0]
    return float((floor.kld_mean + sigmas * floor.kld_err.fillna(0.0)).max()) if len(floor) else 0.0


def noise_note(df: pd.DataFrame, sigmas: float = SIGMAS) -> str:
    """The markdown footnote that explains the "≈" marks."""
    return (f"≈ within noise: kld_mean - {sigmas:g}·kld_err <= {floor_level(df, sigmas):.3g}, the highest "
            f"kld_mean + {sigmas:g}·kld_err of the noise-floor rows (the base evaluated another valid way).")


def write_table(df: pd.DataFrame, stem, notes: str = "") -> tuple[Path, Path]:
    """`stem`.csv and `stem`.md (a markdown table that needs no extra package, then `notes`)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv, md = stem.with_suffix(".csv"), stem.with_suffix(".md")
    df.to_csv(csv, index=False)
    md.write_text(to_markdown(df) + (f"\n{notes}\n" if notes else ""), encoding="utf-8")
    return csv, md


def to_markdown(df: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    """A markdown table; the `within_noise` column shows "≈" where True and nothing where False."""
    def fmt(v, col):
        if col == "within_noise":
            return "≈" if bool(v) else ""
        return floatfmt.format(v) if isinstance(v, (float, np.floating)) else str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(fmt(v, c) for v, c in zip(row, df.columns)) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body]) + "\n"
