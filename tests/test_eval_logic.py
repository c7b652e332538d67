"""Perplexity / KLD bookkeeping against an independent reference, with a cheap fake model (the real engine's
numbers are checked against llama.cpp in test_perplexity.py)."""
from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from workbench.eval.kl import decode_log_probs, encode_log_probs, kl_divergence, read_kld, record_width, save_base
from workbench.eval.perplexity import PerplexityError, perplexity, token_nll


class FakeModel:
    """Logits depend on the previous token only (a bigram table), so any chunking is easy to re-derive."""

    def __init__(self, n_vocab=37, seed=0, add_bos=False, noise=0.0):
        rng = np.random.default_rng(seed)
        self.table = rng.standard_normal((n_vocab, n_vocab)).astype(np.float32) * 3
        if noise:
            self.table += rng.standard_normal(self.table.shape).astype(np.float32) * noise
        self.n_vocab, self.add_bos, self.bos_id = n_vocab, add_bos, 1
        self.calls = []

    def tokenize(self, text, add_special=True):
        ids = [2 + (ord(c) % (self.n_vocab - 2)) for c in text]
        return ([self.bos_id] if add_special and self.add_bos else []) + ids

    def logits(self, tokens):
        self.calls.append(np.array(tokens))
        return self.table[np.asarray(tokens)]


def reference_ppl(model, tokens, n_ctx, n_chunk):
    nll = []
    for i in range(n_chunk):
        chunk = list(tokens[i * n_ctx:(i + 1) * n_ctx])
        if model.add_bos:
            chunk[0] = model.bos_id
        for j in range(n_ctx // 2, n_ctx - 1):
            row = model.table[chunk[j]].astype(np.float64)
            lp = row - np.log(np.exp(row - row.max()).sum()) - row.max()
            nll.append(-lp[tokens[i * n_ctx + j + 1]])
    nll = np.array(nll)
    ppl = math.exp(nll.mean())
    return ppl, ppl * math.sqrt((np.mean(nll ** 2) - nll.mean() ** 2) / (len(nll) - 1)), len(nll)


@pytest.mark.parametrize("add_bos", [False, True])
@pytest.mark.parametrize("n_ctx, n_chunks", [(16, None), (32, 3), (8, 5)])
def test_perplexity_protocol(add_bos, n_ctx, n_chunks):
    text = "the quick brown fox jumps over the lazy dog " * 12
    m = FakeModel(add_bos=add_bos)
    toks = m.tokenize(text)
    r = perplexity(m, text, n_ctx=n_ctx, n_chunks=n_chunks, progress=False)
    n_chunk = len(toks) // n_ctx if n_chunks is None else min(n_chunks, len(toks) // n_ctx)
    ppl, err, n = reference_ppl(m, toks, n_ctx, n_chunk)
    assert (r.n_chunk, r.n_scored) == (n_chunk, n) and n == n_chunk * (n_ctx // 2 - 1)
    assert r.ppl == pytest.approx(ppl, rel=1e-6) and r.ppl_err == pytest.approx(err, rel=1e-5)
    if add_bos:
        assert all(c[0] == m.bos_id for c in m.calls), "first token of every chunk is BOS"
    assert r.summary().startswith("Final estimate: PPL = ")


def test_text_too_short_is_a_clear_error():
    with pytest.raises(PerplexityError, match="at least 64 tokens"):
        perplexity(FakeModel(), "short text", n_ctx=32, progress=False)


def test_token_nll_matches_float64_log_softmax():
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal((5, 1000)) * 8).astype(np.float32)
    t = rng.integers(0, 1000, 5)
    ref = -(logits.astype(np.float64)[np.arange(5), t] - np.log(np.exp(logits.astype(np.float64)).sum(axis=1)))
    np.testing.assert_allclose(token_nll(logits, t), ref, rtol=1e-6)


def test_log_prob_records_round_trip():
    rng = np.random.default_rng(5)
    logits = (rng.standard_normal((4, 101)) * 5).astype(np.float32)
    rec = encode_log_probs(logits)
    assert rec.shape == (4, record_width(101)) == (4, 106)
    lp = decode_log_probs(rec, 101)
    true = logits - np.log(np.exp(logits.astype(np.float64)).sum(axis=1, keepdims=True))
    near = true > true.max(axis=1, keepdims=True) - 16
    assert np.abs(lp - true)[near].max() < 16 / 65535 * 1.01


def test_kld_file_layout_and_self_comparison(tmp_path):
    text = "abcdefghijklmnopqrstuvwxyz0123456789 " * 10
    m = FakeModel(n_vocab=51)
    path = tmp_path / "base.kld"
    nll = save_base(m, text, path, n_ctx=32, progress=False)
    toks = m.tokenize(text)
    n_chunk = len(toks) // 32
    raw = path.read_bytes()
    assert raw[:8] == b"_logits_" and struct.unpack_from("<Iii", raw, 8) == (32, 51, n_chunk)
    assert len(raw) == 20 + 4 * 32 * n_chunk + 2 * n_chunk * 15 * record_width(51)
    kf = read_kld(path)
    np.testing.assert_array_equal(kf.tokens, toks[:32 * n_chunk])
    same = kl_divergence(m, path, progress=False)
    assert same.same_top_p == 1.0 and same.kld_mean < 1e-5 and abs(same.ln_ppl_ratio) < 1e-4
    assert same.n_scored == len(nll) == n_chunk * 15
    other = kl_divergence(FakeModel(n_vocab=51, noise=0.5), path, progress=False)
    assert other.kld_mean > 100 * max(same.kld_mean, 1e-9) and other.same_top_p < 1.0
    assert other.kld_percentiles["min"] <= other.kld_percentiles["median"] <= other.kld_percentiles["max"]


def test_kld_rejects_other_vocabulary(tmp_path):
    text = "abcdefghijklmnopqrstuvwxyz " * 10
    save_base(FakeModel(n_vocab=51), text, tmp_path / "b.kld", n_ctx=16, progress=False)
    with pytest.raises(PerplexityError, match="inconsistent vocabulary"):
        kl_divergence(FakeModel(n_vocab=52), tmp_path / "b.kld", progress=False)
    (tmp_path / "bad.kld").write_bytes(b"_logits_" + b"\x00" * 5)
    with pytest.raises(PerplexityError):
        read_kld(tmp_path / "bad.kld")


def test_llama_cpp_logits_follow_the_model_interface(toy_dir):
    pytest.importorskip("llama_cpp")
    from workbench.eval.kl import LlamaCppLogits
    from workbench.llama import load

    path = toy_dir / "tiny-mixtral-f16.gguf"
    ours = load(path, n_ctx=32)
    tokens = np.arange(3, 35, dtype=np.int32)
    ref = LlamaCppLogits(path, 32, ours.add_bos, ours.bos_id, flash_attn=False)
    try:
        assert ref.n_vocab == ours.n_vocab
        got = ref.logits(tokens, first_output=16)
        again = ref.logits(tokens, first_output=16)                 # each call starts from an empty context
        with pytest.raises(PerplexityError, match="shorter than the batch"):
            ref.logits(np.arange(3, 40))
    finally:
        ref.close()
    want = ours.logits(tokens, first_output=16)
    assert got.shape == want.shape == (16, ours.n_vocab) and got.dtype == np.float32
    np.testing.assert_array_equal(got, again)
    assert np.abs(got - want).max() < 1e-2 * np.abs(want).max()
