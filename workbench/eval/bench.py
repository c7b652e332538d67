"""Side-by-side speed measurements: the workbench and llama.cpp (through the optional `llama-cpp-python`)
on the same GGUF, same threads, interleaved repetitions, median ratios — like llama-bench's pp/tg.

llama.cpp's threads spin while they wait, so any other load on the machine slows it a lot: repetitions are
interleaved (ours, theirs, ours, ...) so that background noise hits both alike.
"""
from __future__ import annotations

import csv
import os
import statistics
import time
from pathlib import Path

import numpy as np

from workbench.assets import data_dir
from workbench.eval.plots import pyplot, save_figure
from workbench.gguf import read_gguf
from workbench.llama import load


def memory_bandwidth_gbs(size_mb: int = 256, repeat: int = 5) -> float:
    """Copy bandwidth (GB/s, bytes read + written) of a large numpy copy: the bound for generation."""
    a = np.ones(size_mb * 2**20 // 8)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t0)
    return 2 * a.nbytes / best / 1e9


def weight_bytes_per_token(gguf_path) -> int:
    """Bytes of weights a single-token forward pass reads (all tensors except the token embedding table,
    of which one row is read; a tied output matrix is read in full)."""
    with read_gguf(gguf_path) as gf:
        names = {t.name for t in gf.tensors}
        total = 0
        for t in gf.tensors:
            if t.name == "token_embd.weight":
                total += t.nbytes // t.shape[0] + (0 if "output.weight" in names else t.nbytes)
            else:
                total += t.nbytes
    return total


def prompt_tokens(n: int, n_vocab: int, seed: int = 0) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(100, min(n_vocab, 30000), size=n)]


class Runner:
    """pp / tg timing on top of an engine's reset() and eval(tokens)."""

    name = ""

    def reset(self) -> None:
        raise NotImplementedError

    def eval(self, tokens) -> None:
        raise NotImplementedError

    def pp(self, tokens) -> float:
        """Prompt processing tokens/s: the whole prompt in one call from an empty context."""
        self.reset()
        t0 = time.perf_counter()
        self.eval(tokens)
        return len(tokens) / (time.perf_counter() - t0)

    def tg(self, tokens) -> float:
        """Generation tokens/s: one token per call after the first."""
        self.reset()
        self.eval(tokens[:1])
        t0 = time.perf_counter()
        for t in tokens[1:]:
            self.eval([t])
        return (len(tokens) - 1) / (time.perf_counter() - t0)


class WorkbenchRunner(Runner):
    name = "workbench"

    def __init__(self, path, n_threads: int, n_ctx: int = 1024):
        self.model = load(path, n_ctx=n_ctx, n_threads=n_threads)
        self.n_vocab = self.model.config.n_vocab
        self.reset, self.eval = self.model.reset, self.model.eval


class LlamaCppRunner(Runner):
    name = "llama.cpp"

    def __init__(self, path, n_threads: int, n_ctx: int = 1024, logits_all: bool = False):
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                         n_batch=512, n_ubatch=512, logits_all=logits_all, verbose=False)
        self.n_vocab = self.llm.n_vocab()
        self.reset, self.eval = self.llm.reset, self.llm.eval


def llama_cpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
        return True
    except ImportError:
        return False


def interleaved(runners, fn_name: str, arg, repeat: int = 5) -> dict[str, float]:
    """Median tokens/s of `repeat` interleaved runs per runner (one warm-up run each first)."""
    for r in runners:
        getattr(r, fn_name)(arg)
    results = {r.name: [] for r in runners}
    for _ in range(repeat):
        for r in runners:
            results[r.name].append(getattr(r, fn_name)(arg))
    return {k: statistics.median(v) for k, v in results.items()}


def append_report(rows: list[dict], path=None) -> Path:
    """Append rows to data/reports/bench.csv (header written once)."""
    path = Path(path) if path else data_dir() / "reports" / "bench.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in rows for k in r})
    new = not path.exists()
    if not new:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if set(header) != set(keys):  # a different schema: start a new file
            path.rename(path.with_suffix(f".{int(time.time())}.csv"))
            new = True
        else:
            keys = header
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        if new:
            w.writeheader()
        for r in rows:
            w.writerow(r)
    return path


def bench_plot(csv_path=None, out=None):
    """Bar chart of workbench/llama.cpp ratios per model and test, from bench.csv."""
    import pandas as pd

    csv_path = Path(csv_path) if csv_path else data_dir() / "reports" / "bench.csv"
    df = pd.read_csv(csv_path)
    ratio_cols = [c for c in df.columns if c.endswith("_ratio")]
    if not ratio_cols:
        return None
    pyplot()                    # matplotlib with the package style
    last = df.groupby("model").tail(1).set_index("model")[ratio_cols]
    ax = last.plot.bar(figsize=(8, 4))
    ax.axhline(1.0, color="gray", ls="--")
    ax.set_ylabel("workbench / llama.cpp (tokens/s)")
    ax.set_title("Speed relative to llama.cpp (same file, same threads)")
    fig = ax.get_figure()
    fig.tight_layout()
    return save_figure(fig, out or csv_path.with_suffix(".png"))


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
