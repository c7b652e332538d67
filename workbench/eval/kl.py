"""KL divergence against a base model, as llama-perplexity's `--kl-divergence-base` / `--kl-divergence`.

The base run stores, per scored token, its log-probabilities compressed to uint16 (the `.kld` file, readable
by llama.cpp): "_logits_", u32 n_ctx, i32 n_vocab, i32 n_chunk, i32 tokens[n_chunk*n_ctx], then per chunk
(n_ctx - 1 - n_ctx/2) records of nv = 2*ceil(n_vocab/2) + 4 uint16: float scale, float min_log_prob, then
round((logit - min_logit)/scale) for logits within 16 of the max (0 below). The quantized run compares its
own logits with these (perplexity.cpp `log_softmax(..., base_log_prob, ..., kld)`).
"""
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workbench.eval.logprobs import encode_log_probs, kld_rows, record_width, token_nll  # noqa: F401 (kl's API)
from workbench.eval.perplexity import PerplexityError, check_inputs, chunk_batches, output_logits

MAGIC = b"_logits_"


def decode_log_probs(records: np.ndarray, n_vocab: int) -> np.ndarray:
    """float32 log-probabilities back from the uint16 records."""
    head = np.ascontiguousarray(records[:, :4]).view(np.float32)
    scale, min_log_prob = head[:, 0], head[:, 1]
    return (scale[:, None] * records[:, 4:4 + n_vocab].astype(np.float32) + min_log_prob[:, None]).astype(np.float32)


def save_base(model, text: str, path, n_ctx: int = 512, n_chunks: int | None = None, tokens=None,
              progress: bool = True):
    """--kl-divergence-base: run the base model and write its log-probs to a `.kld` file. Returns the
    PerplexityResult-style NLL of the base (float64 array)."""
    from tqdm.auto import tqdm

    toks = np.asarray(model.tokenize(text, add_special=True) if tokens is None else tokens, dtype=np.int32)
    check_inputs(model, len(toks), n_ctx)
    n_chunk = len(toks) // n_ctx if n_chunks is None else min(n_chunks, len(toks) // n_ctx)
    first = n_ctx // 2
    n_vocab = int(model.n_vocab)
    path = Path(path)
    tmp = path.with_name("." + path.name + ".tmp")
    nlls = []
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<Iii", n_ctx, n_vocab, n_chunk))
            f.write(toks[: n_chunk * n_ctx].astype("<i4").tobytes())
            for i, batch in tqdm(chunk_batches(toks, n_ctx, n_chunk, model.bos_id if model.add_bos else None),
                                 total=n_chunk, desc="kld base", disable=not progress):
                logits = output_logits(model, batch, first)[: n_ctx - 1 - first]
                f.write(encode_log_probs(logits).astype("<u2").tobytes())
                nlls.append(token_nll(logits, toks[i * n_ctx + first + 1:(i + 1) * n_ctx]))
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return np.concatenate(nlls)


@dataclass
class KLDFile:
    n_ctx: int
    n_vocab: int
    n_chunk: int
    tokens: np.ndarray
    records: np.ndarray  # (n_chunk, n_ctx - 1 - n_ctx//2, nv) uint16


def read_kld(path) -> KLDFile:
    raw = Path(path).read_bytes()
    if raw[:8] != MAGIC:
        raise PerplexityError(f"{path} does not look like a file containing log-probabilities")
    if len(raw) < 20:
        raise PerplexityError(f"{path}: truncated .kld header ({len(raw)} bytes)")
    n_ctx, n_vocab, n_chunk = struct.unpack_from("<Iii", raw, 8)
    pos = 20
    n_tok = n_ctx * n_chunk
    nv = record_width(n_vocab)
    per_chunk = n_ctx - 1 - n_ctx // 2
    need = pos + 4 * n_tok + 2 * n_chunk * per_chunk * nv
    if n_vocab <= 0 or n_chunk <= 0 or len(raw) < need:
        raise PerplexityError(f"{path}: truncated or corrupt .kld file ({len(raw)} bytes, expected {need})")
    tokens = np.frombuffer(raw, "<i4", n_tok, pos)
    records = np.frombuffer(raw, "<u2", n_chunk * per_chunk * nv, pos + 4 * n_tok).reshape(n_chunk, per_chunk, nv)
    return KLDFile(n_ctx, n_vocab, n_chunk, tokens, records)


@dataclass
class KLDResult:
    ppl: float
    ppl_err: float
    ppl_base: float
    ln_ppl_ratio: float
    ln_ppl_ratio_err: float
    ppl_minus_base: float
    kld_mean: float
    kld_err: float
    kld_percentiles: dict          # "max", "99.9", "99", "95", "90", "median", "10", "5", "1", "0.1", "min"
    dp_mean: float
    dp_rms: float
    same_top_p: float
    n_scored: int
    kld_values: np.ndarray
    dp_values: np.ndarray

    def as_row(self) -> dict:
        p = self.kld_percentiles
        return {"ppl": self.ppl, "ppl_err": self.ppl_err, "ln_ppl_ratio": self.ln_ppl_ratio,
                "ppl_minus_base": self.ppl_minus_base, "kld_mean": self.kld_mean, "kld_err": self.kld_err,
                "kld_max": p["max"], "kld_p99": p["99"], "kld_p90": p["90"], "kld_median": p["median"],
                "kld_min": p["min"], "dp_mean": self.dp_mean, "dp_rms": self.dp_rms, "same_top_p": self.same_top_p,
                "n_scored": self.n_scored}


def _mean_unc(s: float, s2: float, n: int) -> tuple[float, float]:
    if n < 1:
        return 0.0, 0.0
    f = s / n
    df = s2 / n - f * f
    return f, (math.sqrt(df / (n - 1)) if df > 0 and n > 10 else 0.0)


def _percentile(values: np.ndarray, fraction: float) -> float:
    """perplexity.cpp's percentile lambda (float32 interpolation on sorted values)."""
    if fraction <= 0:
        return float(values[0])
    if fraction >= 1:
        return float(values[-1])
    p = np.float32(fraction) * np.float32(len(values) - 1)
    ip = int(p)
    p = np.float32(p - ip)
    return float((np.float32(1) - p) * values[ip] + p * values[min(ip + 1, len(values) - 1)])


def kl_divergence(model, base, progress: bool = True) -> KLDResult:
    """--kl-divergence: compare `model` with the base log-probs in `base` (a .kld path or KLDFile)."""
    from tqdm.auto import tqdm

    kf = base if isinstance(base, KLDFile) else read_kld(base)
    if kf.n_vocab != int(model.n_vocab):
        raise PerplexityError(f"inconsistent vocabulary: base has {kf.n_vocab} tokens, model has {model.n_vocab}")
    n_ctx, first = kf.n_ctx, kf.n_ctx // 2
    toks = kf.tokens
    s = dict(nll=0.0, nll2=0.0, nllb=0.0, nllb2=0.0, nllnllb=0.0, kld=0.0, kld2=0.0, dp=0.0, dp2=0.0, dp4=0.0)
    same_top, count = 0, 0
    kld_vals, dp_vals = [], []
    for i, batch in tqdm(chunk_batches(toks, n_ctx, kf.n_chunk, model.bos_id if model.add_bos else None),
                         total=kf.n_chunk, desc="kld", disable=not progress):
        logits = output_logits(model, batch, first)[: n_ctx - 1 - first].astype(np.float32)
        targets = toks[i * n_ctx + first + 1:(i + 1) * n_ctx]
        kld, p_diff, nll, nll_base, same = kld_rows(logits, kf.records[i], targets)
        nll64, nllb64, dp64 = nll.astype(np.float64), nll_base.astype(np.float64), p_diff.astype(np.float64)
        s["nll"] += nll64.sum(); s["nll2"] += (nll64 * nll64).sum()
        s["nllb"] += nllb64.sum(); s["nllb2"] += (nllb64 * nllb64).sum(); s["nllnllb"] += (nll64 * nllb64).sum()
        s["kld"] += kld.sum(); s["kld2"] += (kld * kld).sum()
        dp2 = (p_diff * p_diff).astype(np.float64)          # p_diff*p_diff in float, then double (as the C)
        s["dp"] += dp64.sum(); s["dp2"] += dp2.sum(); s["dp4"] += (dp2 * dp2).sum()
        same_top += int(same.sum())
        count += len(targets)
        kld_vals.append(kld.astype(np.float32))
        dp_vals.append(p_diff)
    kv = np.sort(np.concatenate(kld_vals))
    dv = np.sort(np.concatenate(dp_vals))
    lp, lp_u = _mean_unc(s["nll"], s["nll2"], count)
    lpb, lpb_u = _mean_unc(s["nllb"], s["nllb2"], count)
    cov = (s["nllnllb"] / count - (s["nll"] / count) * (s["nllb"] / count)) / (count - 1) if count >= 10 else 0.0
    kl_m, kl_u = _mean_unc(s["kld"], s["kld2"], count)
    dp_m, _ = _mean_unc(s["dp"], s["dp2"], count)
    mse, _ = _mean_unc(s["dp2"], s["dp4"], count)
    median = float(0.5 * (kv[len(kv) // 2] + kv[len(kv) // 2 - 1])) if len(kv) % 2 == 0 else float(kv[len(kv) // 2])
    pct = {"max": float(kv[-1]), "99.9": _percentile(kv, 0.999), "99": _percentile(kv, 0.99),
           "95": _percentile(kv, 0.95), "90": _percentile(kv, 0.90), "median": median,
           "10": _percentile(kv, 0.10), "5": _percentile(kv, 0.05), "1": _percentile(kv, 0.01),
           "0.1": _percentile(kv, 0.001), "min": float(kv[0])}
    ppl, ppl_b = math.exp(lp), math.exp(lpb)
    return KLDResult(ppl=ppl, ppl_err=ppl * lp_u, ppl_base=ppl_b, ln_ppl_ratio=lp - lpb,
                     ln_ppl_ratio_err=math.sqrt(max(lp_u * lp_u + lpb_u * lpb_u - 2 * cov, 0.0)),
                     ppl_minus_base=ppl - ppl_b, kld_mean=kl_m, kld_err=kl_u, kld_percentiles=pct, dp_mean=dp_m,
                     dp_rms=math.sqrt(mse), same_top_p=same_top / count, n_scored=count, kld_values=kv, dp_values=dv)


class LlamaCppLogits:
    """llama.cpp's own build on this host (llama-cpp-python, the `bench` extra) behind the interface that
    kl_divergence and perplexity call (`logits(batch, first_output)`, n_vocab, add_bos, bos_id), to measure how
    far this host's llama.cpp is from our logits. Each call evaluates the batch from an empty context with every
    position's logits kept (llama_batch with logits on, as perplexity.cpp asks for). add_bos / bos_id: those of
    the workbench model that made the base file, so both see the same batches."""

    def __init__(self, path, n_ctx: int, add_bos: bool, bos_id: int, flash_attn: bool = True,
                 n_threads: int | None = None):
        from llama_cpp import Llama   # optional (bench extra): imported only when this comparison is asked for

        threads = n_threads or len(os.sched_getaffinity(0))
        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=min(n_ctx, 512), logits_all=True,
                         flash_attn=flash_attn, n_threads=threads, n_threads_batch=threads, verbose=False)
        self.n_vocab = int(self.llm.n_vocab())
        self.add_bos, self.bos_id, self.n_ctx = bool(add_bos), int(bos_id), int(n_ctx)

    def logits(self, tokens, first_output: int = 0) -> np.ndarray:
        tokens = [int(t) for t in tokens]
        if len(tokens) > self.n_ctx:
            raise PerplexityError(f"llama.cpp context {self.n_ctx} is shorter than the batch of {len(tokens)}")
        self.llm.reset()
        self.llm.eval(tokens)
        return np.array(self.llm.scores[first_output:len(tokens)], dtype=np.float32)

    def close(self) -> None:
        self.llm.close()
