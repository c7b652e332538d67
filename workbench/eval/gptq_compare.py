"""GPTQ vs GGUF on one base model: the same ftype made three ways, measured the same way.

    rtn           llama-quantize's rounding (quantize_model, byte-identical to llama-quantize)
    rtn+imatrix   the same with an importance matrix computed on the calibration text (llama-imatrix's sums)
    gptq          `--method gptq` on the same text and tokens (workbench.eval.gptq_model)
    gptq checkpoint  optional: GPTQ checkpoints (AutoGPTQ's grid: bits, group size, act-order) from the same
                  text, measured on their dequantized weights (workbench.eval.gptq_checkpoint_model)

Each file: size, bits per weight, PPL, mean / p99 KLD and same-top-token rate against the base on evaluation
texts disjoint from the calibration (the calibration text's later chunks, and other texts), generation speed.
The KLD base is the F16 model's own log-probabilities (a .kld file, as llama-perplexity --kl-divergence-base).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.eval.gptq_checkpoint_model import gptq_checkpoint_model
from workbench.eval.gptq_model import gptq_quantize_model
from workbench.eval.imatrix import compute_imatrix
from workbench.eval.kl import kl_divergence, save_base
from workbench.gguf import read_gguf
from workbench.llama import load
from workbench.quant.gptq import SHRINK
from workbench.quant.quantize_model import quantize_model

METHODS = ("rtn", "rtn+imatrix", "gptq")


class CompareError(ValueError):
    """The texts are too short for disjoint calibration and evaluation, or an unknown method was asked for."""


def eval_tokens(model, calibration: str, others: dict[str, str], n_ctx: int, n_chunks: int, eval_chunks: int):
    """Evaluation sets: chunks of the calibration text after the calibration chunks (a gap of as many chunks
    again), and the first chunks of each other text."""
    toks = np.asarray(model.tokenize(calibration, add_special=True), np.int32)
    start = 2 * n_chunks * n_ctx
    if len(toks) < start + eval_chunks * n_ctx:
        raise CompareError(f"the calibration text has {len(toks)} tokens: {n_chunks} chunks of {n_ctx} for "
                           f"calibration and {eval_chunks} disjoint ones for evaluation need {start + eval_chunks * n_ctx}")
    sets = {"calibration text, held-out chunks": toks[start:start + eval_chunks * n_ctx]}
    for name, text in others.items():
        t = np.asarray(model.tokenize(text, add_special=True), np.int32)
        if len(t) < eval_chunks * n_ctx:
            raise CompareError(f"text {name!r}: {len(t)} tokens, {eval_chunks} chunks of {n_ctx} need more")
        sets[name] = t[:eval_chunks * n_ctx]
    return sets


def tokens_per_second(model, n: int = 32) -> float:
    """Greedy generation speed: n tokens after a one-token prompt, from a fresh context."""
    model.reset()
    model.eval([model.bos_id if model.add_bos else 1])
    tok = 0
    t0 = time.perf_counter()
    for _ in range(n):
        tok = int(np.argmax(model.eval([tok])))
    return n / (time.perf_counter() - t0)


def checkpoint_label(bits: int, group_size: int, act_order: bool) -> str:
    """How a GPTQ checkpoint's settings read in the tables, as its model cards name branches: 4b-g128-act."""
    return f"{bits}b-g{group_size}" + ("-act" if act_order else "")


def compare_methods(base, ftypes, calibration: str, others: dict[str, str], out_dir, *, methods=METHODS,
                    checkpoints=(), n_ctx: int = 512, n_chunks: int = 16, eval_chunks: int = 8, damp: float = 0.01,
                    shrink: float = SHRINK, act_order: bool = False, progress: bool = False) -> pd.DataFrame:
    """One row per (ftype, method, evaluation set). checkpoints: (bits, group_size, act_order) of GPTQ checkpoints
    to add (method "gptq checkpoint", ftype their label; size: the checkpoint's own; measured on its dequantized
    F16 GGUF, so no tokens/s: llama.cpp does not run GPTQ checkpoints). Files are cached in out_dir by recipe."""
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise CompareError(f"unknown method(s) {bad}: choose from {METHODS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base_model = load(base, n_ctx=n_ctx, flash_attn=True)
    sets = eval_tokens(base_model, calibration, others, n_ctx, n_chunks, eval_chunks)
    bases = {}
    for i, (name, toks) in enumerate(sets.items()):
        bases[name] = out / f"base.{i}.{eval_chunks}x{n_ctx}.kld"
        save_base(base_model, None, bases[name], n_ctx=n_ctx, tokens=toks, progress=progress)
    n_params = sum(int(np.prod(t.shape)) for t in read_gguf(base).tensors)
    imat = None
    tag = f"{n_chunks}x{n_ctx}"
    rows = []
    for ft in ftypes:
        for method in methods:
            t0 = time.perf_counter()
            if method == "rtn":
                path = out / f"rtn.{ft}.gguf"
                quantize_model(base, path, ft, progress=False, with_error=False)
            elif method == "rtn+imatrix":
                if imat is None:
                    imat = compute_imatrix(base, calibration, n_ctx=n_ctx, n_chunks=n_chunks, progress=progress)
                path = out / f"rtn_imatrix.{tag}.{ft}.gguf"
                quantize_model(base, path, ft, imatrix=imat, progress=False, with_error=False)
            else:
                path = out / f"gptq.{tag}{'.ao' if act_order else ''}.d{damp:g}.s{shrink:g}.{ft}.gguf"
                if not path.exists():
                    gptq_quantize_model(base, path, ft, calibration, n_ctx=n_ctx, n_chunks=n_chunks, damp=damp,
                                        shrink=shrink, act_order=act_order, progress=progress)
            seconds = time.perf_counter() - t0
            m = load(path, n_ctx=n_ctx, flash_attn=True)
            speed = tokens_per_second(m)
            size = path.stat().st_size
            for name, kld_file in bases.items():
                r = kl_divergence(m, kld_file, progress=progress)
                rows.append({"ftype": ft, "method": method, "eval": name, "file_bytes": size,
                             "bpw": 8 * size / n_params, "ppl": r.ppl, "kld_mean": r.kld_mean, "kld_err": r.kld_err,
                             "kld_p99": r.kld_percentiles["99"], "same_top": r.same_top_p, "tokens_per_s": speed,
                             "quantize_s": seconds})
    for bits, group, ao in checkpoints:
        lab = checkpoint_label(bits, group, ao)
        path = out / f"gptq_ckpt.{tag}.d{damp:g}.s{shrink:g}.{lab}.gguf"
        t0 = time.perf_counter()
        ck = gptq_checkpoint_model(base, path, calibration, bits=bits, group_size=group, act_order=ao, damp=damp,
                                   shrink=shrink, n_ctx=n_ctx, n_chunks=n_chunks, progress=progress)
        seconds = time.perf_counter() - t0
        m = load(path, n_ctx=n_ctx, flash_attn=True)
        for name, kld_file in bases.items():
            r = kl_divergence(m, kld_file, progress=progress)
            rows.append({"ftype": lab, "method": "gptq checkpoint", "eval": name, "file_bytes": ck.checkpoint_bytes,
                         "bpw": 8 * ck.checkpoint_bytes / n_params, "ppl": r.ppl, "kld_mean": r.kld_mean,
                         "kld_err": r.kld_err, "kld_p99": r.kld_percentiles["99"], "same_top": r.same_top_p,
                         "tokens_per_s": float("nan"), "quantize_s": seconds})
    return pd.DataFrame(rows)


def gain_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean KLD per (evaluation set, ftype) and method, with gptq's change against rtn+imatrix in percent."""
    t = df.pivot_table(index=["eval", "ftype"], columns="method", values="kld_mean")
    if {"gptq", "rtn+imatrix"} <= set(t.columns):
        t["gptq vs rtn+imatrix (%)"] = 100 * (t["gptq"] / t["rtn+imatrix"] - 1)
    return t
