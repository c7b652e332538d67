"""Perplexity exactly as llama.cpp's `llama-perplexity` (tools/perplexity/perplexity.cpp, `perplexity()`).

Protocol: tokenize the whole text once (with BOS only if the model adds one); split it into
`n_chunk = min(n_chunks, n_tokens // n_ctx)` non-overlapping chunks of n_ctx tokens; the first token of each
chunk is replaced by BOS when the model adds BOS; each chunk is evaluated from an empty cache; the logits at
positions n_ctx/2 ... n_ctx-2 score the next token (the second half, so every scored token has context).
NLL is accumulated in float64; PPL = exp(mean NLL); ± = PPL * sqrt((E[nll²] - E[nll]²) / (N - 1)).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from workbench.eval.logprobs import token_nll  # noqa: F401  (part of this module's API)


class PerplexityError(ValueError):
    """The text or settings cannot give a perplexity (too short, context too long, ...)."""


@dataclass
class PerplexityResult:
    ppl: float
    ppl_err: float
    n_ctx: int
    n_chunk: int
    n_scored: int
    n_tokens_text: int
    add_bos: bool
    chunk_ppl: list[float] = field(default_factory=list)   # running estimate after each chunk
    nll: np.ndarray | None = field(default=None, repr=False)  # per scored token
    seconds: float = 0.0

    @property
    def mean_nll(self) -> float:
        return math.log(self.ppl)

    @property
    def tokens_per_s(self) -> float:
        return self.n_chunk * self.n_ctx / self.seconds if self.seconds else float("nan")

    def summary(self) -> str:
        return f"Final estimate: PPL = {self.ppl:.4f} +/- {self.ppl_err:.5f}"


def ppl_and_error(nll: np.ndarray) -> tuple[float, float]:
    """exp(mean) and llama.cpp's ±: PPL * sqrt((E[x²] - E[x]²)/(N-1))."""
    n = len(nll)
    mean = float(np.sum(nll, dtype=np.float64)) / n
    mean2 = float(np.sum(nll * nll, dtype=np.float64)) / n
    ppl = math.exp(mean)
    var = mean2 - mean * mean
    return ppl, (ppl * math.sqrt(var / (n - 1)) if var > 0 and n > 1 else float("nan"))


def output_logits(model, batch: np.ndarray, first: int) -> np.ndarray:
    """Logits of positions first..end of one fresh-context batch (only those rows when the model can)."""
    try:
        return model.logits(batch, first_output=first)
    except TypeError:  # a model without the option computes every row
        return model.logits(batch)[first:]


def chunk_batches(tokens: np.ndarray, n_ctx: int, n_chunk: int, bos_id: int | None):
    """The n_chunk evaluation batches, BOS in front when the model adds it (tokens themselves unchanged)."""
    for i in range(n_chunk):
        batch = np.array(tokens[i * n_ctx:(i + 1) * n_ctx], dtype=np.int32)
        if bos_id is not None:
            batch[0] = bos_id
        yield i, batch


def check_inputs(model, n_tokens: int, n_ctx: int) -> None:
    if n_ctx < 4 or n_ctx % 2:
        raise PerplexityError(f"n_ctx must be an even number >= 4, got {n_ctx}")
    if n_tokens < 2 * n_ctx:
        raise PerplexityError(f"you need at least {2 * n_ctx} tokens to evaluate perplexity with a context of "
                              f"{n_ctx}; the text tokenizes to only {n_tokens} tokens")
    n_train = getattr(getattr(model, "config", None), "n_ctx_train", None)
    if n_train and n_ctx > n_train and not getattr(model.config, "rope_scaling_type", None):
        import warnings

        warnings.warn(f"n_ctx {n_ctx} exceeds the model's training context {n_train} and no rope scaling is set: "
                      f"expect the perplexity to degrade", stacklevel=3)


def perplexity(model, text: str, n_ctx: int = 512, n_chunks: int | None = None, n_threads: int | None = None,
               tokens=None, progress: bool = True, keep_nll: bool = False) -> PerplexityResult:
    """llama-perplexity on `text` (or pre-computed `tokens`) with `model` (a workbench Model)."""
    from tqdm.auto import tqdm

    if n_threads:
        import numba

        numba.set_num_threads(max(1, min(int(n_threads), numba.config.NUMBA_NUM_THREADS)))
    toks = np.asarray(model.tokenize(text, add_special=True) if tokens is None else tokens, dtype=np.int32)
    check_inputs(model, len(toks), n_ctx)
    n_chunk_max = len(toks) // n_ctx
    n_chunk = n_chunk_max if n_chunks is None or n_chunks < 0 else min(int(n_chunks), n_chunk_max)
    add_bos = bool(model.add_bos)
    first = n_ctx // 2
    nlls, running = [], []
    t0 = time.perf_counter()
    for i, batch in tqdm(chunk_batches(toks, n_ctx, n_chunk, model.bos_id if add_bos else None),
                         total=n_chunk, desc=f"perplexity n_ctx={n_ctx}", disable=not progress):
        logits = output_logits(model, batch, first)  # rows for positions first .. n_ctx-1
        targets = toks[i * n_ctx + first + 1:(i + 1) * n_ctx]
        nlls.append(token_nll(logits[: n_ctx - 1 - first], targets))
        running.append(math.exp(float(np.concatenate(nlls).mean())))
    seconds = time.perf_counter() - t0
    nll = np.concatenate(nlls)
    ppl, err = ppl_and_error(nll)
    return PerplexityResult(ppl=ppl, ppl_err=err, n_ctx=n_ctx, n_chunk=n_chunk, n_scored=len(nll),
                            n_tokens_text=len(toks), add_bos=add_bos, chunk_ppl=running,
                            nll=nll if keep_nll else None, seconds=seconds)


def chunks_for_context(n_ctx: int, max_tokens: int = 8192) -> int:
    """The goldens' chunk budget: max_tokens per context length, at least 2 chunks."""
    return max(2, max_tokens // n_ctx)
