"""Sweeps over (model file × context length): perplexity tables, cached on disk, run through any
`concurrent.futures.Executor` or a `dask.distributed.Client` (same code, same table)."""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import Executor
from pathlib import Path

import pandas as pd

from workbench.assets import data_dir, sha256_file
from workbench.eval.perplexity import chunks_for_context, perplexity
from workbench.llama import load

_SHA_CACHE: dict[tuple, str] = {}


def file_sha256(path) -> str:
    p = Path(path)
    k = (str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size)
    if k not in _SHA_CACHE:
        _SHA_CACHE[k] = sha256_file(p)
    return _SHA_CACHE[k]


def _cache_file(cache_dir: Path, model_sha: str, text_sha: str, n_ctx: int, n_chunks: int, flash_attn: bool) -> Path:
    key = hashlib.sha256(f"{model_sha}:{text_sha}:{n_ctx}:{n_chunks}:fa={flash_attn}".encode()).hexdigest()[:32]
    return cache_dir / f"ppl-{key}.json"


def ppl_point(model_path: str, text: str, n_ctx: int, n_chunks: int, cache_dir: str | None = None,
              label: str | None = None, n_threads: int | None = None, flash_attn: bool = True) -> dict:
    """One (model, text, n_ctx) perplexity as a table row; cached by (model sha256, text sha256, n_ctx,
    chunks, flash_attn). A plain function of plain arguments, so executors and Dask workers can run it.
    flash_attn=True: llama-perplexity's numbers (its default on CPU); False: llama-cpp-python's."""
    text_sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    model_sha = file_sha256(model_path)
    cache = _cache_file(Path(cache_dir), model_sha, text_sha, n_ctx, n_chunks, flash_attn) if cache_dir else None
    if cache is not None and cache.exists():
        return json.loads(cache.read_text())
    model = load(model_path, n_ctx=n_ctx, n_threads=n_threads, flash_attn=flash_attn)
    r = perplexity(model, text, n_ctx=n_ctx, n_chunks=n_chunks, progress=False)
    row = {"model": label or Path(model_path).stem, "n_ctx": n_ctx, "n_chunk": r.n_chunk, "n_scored": r.n_scored,
           "ppl": r.ppl, "ppl_err": r.ppl_err, "seconds": r.seconds, "tokens_per_s": r.tokens_per_s,
           "model_sha256": model_sha, "text_sha256": text_sha}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(row))
    return row


def _submit(executor, fn, *args, **kwargs):
    """Executor.submit, or Client.submit for dask (pure=False keeps each task distinct)."""
    if type(executor).__module__.startswith("distributed"):
        return executor.submit(fn, *args, pure=False, **kwargs)
    return executor.submit(fn, *args, **kwargs)


def _result(fut):
    return fut.result()


def perplexity_by_context(models, text: str, contexts=(512, 1024, 2048, 4096), max_tokens: int = 8192,
                          executor: Executor | None = None, cache_dir=None, n_threads: int | None = None,
                          flash_attn: bool = True) -> pd.DataFrame:
    """PPL for every model file × context length (chunk budget: max_tokens per context, >= 2 chunks).

    models: a path, a list of paths, or {label: path}. executor: None (in process), any
    concurrent.futures.Executor, or a dask.distributed.Client."""
    if isinstance(models, (str, Path)):
        models = {Path(models).stem: str(models)}
    elif not isinstance(models, dict):
        models = {Path(m).stem: str(m) for m in models}
    cache_dir = str(cache_dir) if cache_dir is not None else str(data_dir() / "cache")
    jobs = [(label, str(path), int(c)) for label, path in models.items() for c in contexts]
    if executor is None:
        rows = [ppl_point(p, text, c, chunks_for_context(c, max_tokens), cache_dir, label, n_threads, flash_attn)
                for label, p, c in jobs]
    else:
        futs = [_submit(executor, ppl_point, p, text, c, chunks_for_context(c, max_tokens), cache_dir, label, n_threads,
                        flash_attn)
                for label, p, c in jobs]
        rows = [_result(f) for f in futs]
    return pd.DataFrame(rows).sort_values(["model", "n_ctx"], kind="stable").reset_index(drop=True)
