"""Sampling chain stages against small hand-computed cases (llama.cpp's llama-sampler.cpp semantics)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from workbench.llama.sampling import (Candidates, LlamaRNG, Sampler, SamplingError, SamplingParams,
                                    apply_min_p, apply_penalties, apply_temperature, apply_top_k,
                                    apply_top_p, apply_typical, sample_dist)


def cands(logits):
    return Candidates(np.asarray(logits, np.float32))


def log_probs(*p):
    return np.log(np.asarray(p, np.float64)).astype(np.float32)


def test_rng_is_std_mt19937():
    # the C++ standard fixes the 10000th output of a default-seeded (5489) std::mt19937
    rng = LlamaRNG(5489)
    assert int(rng._mt.random_raw(10000)[-1]) == 4123659995
    # generate_canonical<double, 53>: (w0 + w1 * 2^32) / 2^64 with the next two words
    rng = LlamaRNG(5489)
    w0, w1 = 3499211612, 581869302  # the first two std::mt19937 outputs for 5489
    assert rng.uniform() == (w0 + w1 * 2.0**32) / 2.0**64
    with pytest.raises(SamplingError, match="seed"):
        LlamaRNG(-1)


def test_top_k_sorts_and_truncates():
    c = cands([1, 3, 2, 5, 4])
    apply_top_k(c, 2)
    assert c.ids.tolist() == [3, 4] and c.sorted
    c = cands([1, 3, 2])
    apply_top_k(c, 0)  # off
    assert c.ids.tolist() == [0, 1, 2] and not c.sorted
    c = cands([1, 3, 2])
    apply_top_k(c, 10)  # k > n keeps all, sorted
    assert c.ids.tolist() == [1, 2, 0]


@pytest.mark.parametrize("p,kept", [(0.45, 1), (0.75, 2), (0.85, 3), (0.99, 4)])
def test_top_p_cumulative_mass(p, kept):
    c = cands(log_probs(0.15, 0.5, 0.05, 0.3))
    apply_top_p(c, p, 0)
    assert c.ids.tolist() == [1, 3, 0, 2][:kept]
    c = cands(log_probs(0.15, 0.5, 0.05, 0.3))
    apply_top_p(c, 1.0, 0)  # off: untouched, unsorted
    assert c.ids.tolist() == [0, 1, 2, 3] and not c.sorted


def test_top_p_min_keep():
    c = cands(log_probs(0.9, 0.05, 0.05))
    apply_top_p(c, 0.5, 2)
    assert len(c.ids) == 2


@pytest.mark.parametrize("p,kept", [(0.05, 4), (0.2, 3), (0.5, 2), (0.9, 1)])
def test_min_p_relative_to_best(p, kept):
    # probs 0.5, 0.3, 0.15, 0.05: keep p_i >= p * 0.5
    c = cands(log_probs(0.3, 0.05, 0.5, 0.15))
    apply_min_p(c, p, 0)
    assert sorted(c.ids.tolist()) == sorted([2, 0, 3, 1][:kept])
    assert not c.sorted  # the unsorted path keeps the original order
    assert c.ids.tolist() == [i for i in [0, 1, 2, 3] if i in c.ids]


def test_min_p_min_keep_falls_back_to_sorted_path():
    c = cands(log_probs(0.3, 0.05, 0.5, 0.15))
    apply_min_p(c, 0.9, 3)
    assert c.ids.tolist() == [2, 0, 3]


def test_typical_keeps_tokens_near_entropy():
    probs = np.array([0.4, 0.3, 0.2, 0.1])
    entropy = -(probs * np.log(probs)).sum()
    shifted = np.abs(-np.log(probs) - entropy)  # by hand: order by |surprise - entropy|
    order = np.argsort(shifted)
    cum = np.cumsum(probs[order])
    want = order[: int(np.argmax(cum > 0.5)) + 1]
    c = cands(np.log(probs))
    apply_typical(c, 0.5, 0)
    assert c.ids.tolist() == want.tolist()
    assert not c.sorted


def test_penalties():
    c = cands([2.0, -2.0, 1.0, 0.5])
    apply_penalties(c, [0, 1, 1], last_n=64, repeat=2.0, freq=0.0, present=0.0)
    assert c.logits.tolist() == [1.0, -4.0, 1.0, 0.5]
    c = cands([2.0, -2.0, 1.0, 0.5])
    apply_penalties(c, [0, 1, 1], last_n=64, repeat=1.0, freq=0.5, present=0.25)
    assert c.logits.tolist() == [2.0 - 0.75, -2.0 - 1.25, 1.0, 0.5]
    c = cands([2.0, -2.0, 1.0, 0.5])
    apply_penalties(c, [0, 1, 1, 3], last_n=1, repeat=2.0, freq=0.0, present=0.0)  # window: [3]
    assert c.logits.tolist() == [2.0, -2.0, 1.0, 0.25]


def test_temperature_and_greedy_stage():
    c = cands([1.0, 2.0, 4.0])
    apply_temperature(c, 0.5)
    assert c.logits.tolist() == [2.0, 4.0, 8.0]
    c = cands([1.0, 4.0, 4.0, 2.0])
    apply_temperature(c, 0.0)
    assert c.logits.tolist() == [-math.inf, 4.0, -math.inf, -math.inf]  # first best only


def test_dist_draw_by_hand():
    logits = np.array([0.0, 1.0, 2.0], np.float32)
    for seed in range(20):
        r = LlamaRNG(seed).uniform()
        p = np.exp(logits - 2.0).astype(np.float64)
        want = int(np.argmax(np.cumsum(p) >= p.sum() * r))
        assert sample_dist(cands(logits), LlamaRNG(seed)) == want


def test_greedy_is_argmax():
    rs = np.random.default_rng(0)
    sampler = Sampler(SamplingParams(temperature=0.0), LlamaRNG(1))
    for _ in range(20):
        logits = rs.normal(size=500).astype(np.float32)
        assert sampler.sample(logits, history=[1, 2, 3]) == int(np.argmax(logits))


def test_deterministic_per_seed_and_seed_matters():
    logits = np.random.default_rng(1).normal(size=1000).astype(np.float32) * 3
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)

    def draws(seed):
        s = Sampler(params, LlamaRNG(seed))
        return [s.sample(logits) for _ in range(50)]

    assert draws(42) == draws(42)
    assert draws(42) != draws(43)


def test_draws_follow_the_softmax():
    logits = np.array([0.0, 1.0, 2.0, -1.0], np.float32)
    s = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0), LlamaRNG(7))
    counts = np.bincount([s.sample(logits) for _ in range(4000)], minlength=4)
    p = np.exp(logits) / np.exp(logits).sum()
    assert np.all(np.abs(counts / 4000 - p) < 0.03), (counts / 4000, p)


def test_default_chain_only_samples_from_the_allowed_set():
    rs = np.random.default_rng(3)
    logits = rs.normal(size=2000).astype(np.float32) * 4
    s = Sampler(SamplingParams(), LlamaRNG(5))  # top_k 40, top_p .95, min_p .05, temp .8
    allowed = set(np.argsort(-logits)[:40].tolist())
    best = logits.max()
    for _ in range(200):
        t = s.sample(logits)
        assert t in allowed and logits[t] >= best + np.log(0.05)


def test_bad_inputs():
    with pytest.raises(SamplingError, match="logits"):
        Sampler().sample(np.zeros((2, 2), np.float32))
    with pytest.raises(SamplingError, match="repeat_last_n"):
        SamplingParams(repeat_last_n=-1)


@pytest.mark.parametrize("kind", ["normal", "ties", "mostly_masked", "signed_zeros"])
def test_top_k_by_partition_equals_the_full_stable_sort(kind):
    """apply_top_k finds the k best by partition; the ids and order must be those of sorting everything."""
    rng = np.random.default_rng(7)
    for _ in range(300):
        n, k = int(rng.integers(1, 3000)), int(rng.integers(1, 100))
        lg = {"normal": lambda: rng.normal(0, 3, n),
              "ties": lambda: rng.integers(-3, 3, n),
              "mostly_masked": lambda: np.where(rng.random(n) < 0.9, -np.inf, rng.normal(0, 1, n)),
              "signed_zeros": lambda: np.where(rng.random(n) < 0.5, 0.0, -0.0)}[kind]().astype(np.float32)
        fast, full = Candidates(lg), Candidates(lg)
        apply_top_k(fast, k)
        full.sort()
        full.keep(slice(0, min(k, n)))
        assert np.array_equal(fast.ids, full.ids), (n, k)
        assert np.array_equal(fast.logits.view(np.uint32), full.logits.view(np.uint32))
