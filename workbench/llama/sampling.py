"""Token sampling as llama.cpp's default chain (common/sampling.cpp, src/llama-sampler.cpp).

    rng = LlamaRNG(seed)                      # std::mt19937(seed), as llama_sampler_init_dist
    sampler = Sampler(SamplingParams(), rng)
    token = sampler.sample(logits, history)   # history: prompt + generated tokens so far

Chain order (common_params_sampling::samplers, DRY/XTC/top-n-sigma off by default):
penalties -> top_k -> typical -> top_p -> min_p -> temperature -> dist. Every stage works on a
candidate list (ids, logits) that shrinks and may get sorted by logit, exactly like
llama_token_data_array; arithmetic is float32 where llama.cpp uses float, float64 where it uses
double (the final draw). Ties in logits are ordered by token id (llama.cpp's std::partial_sort
leaves them unspecified).

With a grammar (a workbench.text.grammar.GrammarMatcher) the chain runs as common_sampler_sample with
grammar_first=false: sample from the unconstrained chain first; if the grammar accepts that token it
is the answer; otherwise start again from the original logits with the grammar's disallowed tokens at
-inf and run the whole chain again (a second RNG draw). The caller accepts the chosen token into the
matcher (common_sampler_accept).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from workbench.cpu.libm import expf_array, logf, logf_array
from workbench.text.grammar import GrammarError, GrammarMatcher


class SamplingError(ValueError):
    """Invalid sampling parameters or logits."""


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8       # <= 0: greedy (all but the best logit set to -inf)
    top_k: int = 40                # <= 0: off
    top_p: float = 0.95            # >= 1: off
    min_p: float = 0.05            # <= 0: off; relative to the most likely token
    typical_p: float = 1.0         # >= 1: off
    repeat_penalty: float = 1.0    # 1: off; logits of recent tokens divided (>0) or multiplied (<=0)
    repeat_last_n: int = 64        # window of recent tokens penalized; 0: off (as --repeat-last-n)
    frequency_penalty: float = 0.0  # minus count * this
    presence_penalty: float = 0.0   # minus this if present
    min_keep: int = 0              # top_p / min_p / typical keep at least this many

    def __post_init__(self):
        if self.repeat_last_n < 0:
            raise SamplingError(f"repeat_last_n must be >= 0, got {self.repeat_last_n}")
        if self.min_keep < 0:
            raise SamplingError(f"min_keep must be >= 0, got {self.min_keep}")


class LlamaRNG:
    """std::mt19937 seeded like llama.cpp's dist sampler, drawing doubles as libstdc++'s
    std::uniform_real_distribution<double>(0, 1) (generate_canonical: two 32-bit words)."""

    def __init__(self, seed: int):
        if not 0 <= seed < 2**32:
            raise SamplingError(f"seed must be a 32-bit unsigned integer, got {seed}")
        self.seed = seed
        self._mt = np.random.MT19937()
        self._mt._legacy_seeding(seed)  # init_genrand(seed) == std::mt19937(seed)

    def uniform(self) -> float:
        lo, hi = (float(x) for x in self._mt.random_raw(2))
        r = (lo + hi * 4294967296.0) / 18446744073709551616.0
        return r if r < 1.0 else float(np.nextafter(1.0, 0.0))


class Candidates:
    """llama_token_data_array: token ids with their logits, in current order."""

    def __init__(self, logits: np.ndarray):
        self.ids = np.arange(len(logits))
        self.logits = np.array(logits, dtype=np.float32)
        self.sorted = False

    def keep(self, idx) -> None:
        self.ids, self.logits = self.ids[idx], self.logits[idx]

    def sort(self) -> None:
        """Descending logits (llama_token_data_array_partial_sort_inplace over all)."""
        if not self.sorted:
            self.keep(np.argsort(-self.logits, kind="stable"))
            self.sorted = True

    def softmax(self) -> np.ndarray:
        """float32 probabilities in current order (llama_sampler_softmax_impl)."""
        mx = self.logits[0] if self.sorted else self.logits.max()
        p = expf_array(self.logits - mx)
        return p / np.cumsum(p)[-1]  # (sequential float sum, as the C loop)


def apply_penalties(c: Candidates, history: Sequence[int], last_n: int, repeat: float,
                    freq: float, present: float) -> None:
    """llama_sampler_penalties_apply over the last `last_n` tokens of the history."""
    if last_n <= 0 or (repeat == 1.0 and freq == 0.0 and present == 0.0):
        return  # (llama_sampler_init_penalties clamps a negative window to 0: off)
    window = list(history)[-last_n:]
    if not window:
        return
    tokens, counts = np.unique(np.asarray(window, dtype=np.int64), return_counts=True)
    pos = np.searchsorted(tokens, c.ids)
    pos[pos >= len(tokens)] = 0
    hit = tokens[pos] == c.ids
    lg = c.logits[hit]
    cnt = counts[pos[hit]].astype(np.float32)
    lg = np.where(lg <= 0, lg * np.float32(repeat), lg / np.float32(repeat))
    c.logits[hit] = lg - (cnt * np.float32(freq) + np.float32(present))
    c.sorted = False


def apply_top_k(c: Candidates, k: int) -> None:
    """llama_sampler_top_k_impl: the k highest logits, in descending order (ties by token id).

    Same order as sorting everything (Candidates.sort) but in O(n): the k-th highest logit is found by
    partition, only the logits at or above it are sorted (stably, so ties keep token order)."""
    if k <= 0:
        return
    n = len(c.ids)
    if c.sorted or k >= n or np.isnan(c.logits).any():
        c.sort()
        c.keep(slice(0, min(k, n)))
        return
    neg = -c.logits
    kth = np.partition(neg, k - 1)[k - 1]
    sub = np.flatnonzero(neg <= kth)          # every token that can be among the first k, in id order
    c.keep(sub[np.argsort(neg[sub], kind="stable")][:k])
    c.sorted = True


def apply_typical(c: Candidates, p: float, min_keep: int) -> None:
    """llama_sampler_typical_apply: keep tokens whose surprise is closest to the entropy."""
    if p >= 1.0:
        return
    c.sort()
    probs = c.softmax()
    log_probs = logf_array(probs)
    entropy = np.cumsum(-probs * log_probs)[-1]
    shifted = np.abs(-log_probs - entropy)
    order = np.argsort(shifted, kind="stable")
    cum = np.cumsum(probs[order])
    last = len(order)
    for i in range(len(order)):
        if cum[i] > np.float32(p) and (min_keep == 0 or i >= min_keep - 1):
            last = i + 1
            break
    c.keep(order[:last])
    c.sorted = False


def apply_top_p(c: Candidates, p: float, min_keep: int) -> None:
    """llama_sampler_top_p_apply: smallest prefix (by probability) whose mass reaches p."""
    if p >= 1.0:
        return
    probs = c.softmax()
    if not c.sorted:
        order = np.argsort(-c.logits, kind="stable")
        c.keep(order)
        probs = probs[order]
        c.sorted = True
    cum = np.cumsum(probs)  # float32, sequential
    hits = np.nonzero((cum >= np.float32(p)) & (np.arange(1, len(cum) + 1) >= min_keep))[0]
    c.keep(slice(0, hits[0] + 1 if len(hits) else len(cum)))


def apply_min_p(c: Candidates, p: float, min_keep: int) -> None:
    """llama_sampler_min_p_apply: drop tokens with prob < p * max prob (logit < max + log p)."""
    if p <= 0.0 or len(c.ids) == 0:
        return
    log_p = np.float32(logf(np.float32(p)))
    if not c.sorted:
        keep = c.logits >= c.logits.max() + log_p
        n = int(keep.sum())
        if n and n >= min_keep:
            c.keep(np.nonzero(keep)[0])  # order preserved
            return
        c.sort()
    min_logit = c.logits[0] + log_p
    i = 1  # the best token always stays
    while i < len(c.ids) and not (c.logits[i] < min_logit and i >= min_keep):
        i += 1
    c.keep(slice(0, i))


def apply_temperature(c: Candidates, temp: float) -> None:
    """llama_sampler_temp_impl: scale, or (temp <= 0) keep only the first best logit."""
    if len(c.ids) == 0:
        return
    if temp <= 0.0:
        best = int(np.argmax(c.logits))
        rest = np.ones(len(c.ids), bool)
        rest[best] = False
        c.logits[rest] = -np.inf
        return
    c.logits = c.logits / np.float32(temp)


def sample_dist(c: Candidates, rng: LlamaRNG) -> int:
    """llama_sampler_dist_apply: one uniform draw, first token whose running mass reaches it."""
    if len(c.ids) == 0:
        raise SamplingError("no candidate token left to sample from")
    r = rng.uniform()  # drawn even for a single candidate (keeps the RNG stream aligned)
    if len(c.ids) == 1:
        return int(c.ids[0])
    mx = c.logits[0] if c.sorted else c.logits.max()
    p = expf_array(c.logits - mx).astype(np.float64)  # expf, accumulated in double
    run = np.cumsum(p)
    i = int(np.searchsorted(run, run[-1] * r, side="left"))
    return int(c.ids[min(i, len(run) - 1)])


class Sampler:
    """The default common_sampler chain with an explicit RNG."""

    def __init__(self, params: SamplingParams | None = None, rng: LlamaRNG | None = None):
        self.params = params or SamplingParams()
        self.rng = rng if rng is not None else LlamaRNG(0)

    def sample(self, logits, history: Sequence[int] = (), grammar: GrammarMatcher | None = None) -> int:
        logits = np.asarray(logits)
        if logits.ndim != 1 or logits.size == 0:
            raise SamplingError(f"logits must be a non-empty 1-D array, got shape {logits.shape}")
        token = self._chain(logits, history)
        if grammar is None or grammar.is_allowed(token):
            return token
        # rejection: resample with the grammar applied first (common_sampler_sample)
        allowed = grammar.allowed()
        if not allowed.any():
            raise GrammarError("the grammar allows no token here (not even end-of-generation)")
        return self._chain(np.where(allowed, np.asarray(logits, np.float32), np.float32(-np.inf)), history)

    def _chain(self, logits: np.ndarray, history: Sequence[int]) -> int:
        sp = self.params
        c = Candidates(logits)
        apply_penalties(c, history, sp.repeat_last_n, sp.repeat_penalty, sp.frequency_penalty,
                        sp.presence_penalty)
        apply_top_k(c, sp.top_k)
        apply_typical(c, sp.typical_p, sp.min_keep)
        apply_top_p(c, sp.top_p, sp.min_keep)
        apply_min_p(c, sp.min_p, sp.min_keep)
        apply_temperature(c, sp.temperature)
        return sample_dist(c, self.rng)
