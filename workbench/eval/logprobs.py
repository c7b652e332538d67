"""Log-probabilities of scored tokens, as llama-perplexity computes them (tools/perplexity/perplexity.cpp).

Each function is the C loop of one `log_softmax` overload, row by row: the max in float32, `sum_exp +=
expf(logit - max)` in double in index order, libm's expf / log (numba calls the same libm functions). numpy's
exp and log would give other last bits, and other ones again on an AVX-512 host.

token_nll         log_softmax(n_vocab, logits, tok) of the perplexity run: -(logit[tok] - max - log(sum_exp))
encode_log_probs  log_softmax(..., log_prob, tok) of --kl-divergence-base: the uint16 record of each row
kld_rows          log_softmax(..., base_log_prob, tok, kld) of --kl-divergence: per-token KLD, nll, p_diff, ...
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def max_and_sum_exp(row):
    """(max, index of the first max, sum of expf(x - max) in double, in order)."""
    mx = row[0]
    imax = 0
    for i in range(1, row.shape[0]):
        if row[i] > mx:
            mx = row[i]
            imax = i
    s = 0.0
    for i in range(row.shape[0]):
        s += np.float64(math.exp(row[i] - mx))
    return mx, imax, s


@njit(cache=True, parallel=True)
def _token_nll(logits, targets, out):
    for r in prange(logits.shape[0]):
        mx, _, s = max_and_sum_exp(logits[r])
        out[r] = -(np.float64(logits[r, targets[r]] - mx) - math.log(s))


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row, float64 (perplexity.cpp's log_softmax)."""
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    targets = np.ascontiguousarray(targets, dtype=np.int64)
    if logits.ndim != 2 or len(targets) != logits.shape[0]:
        raise ValueError(f"token_nll: logits {logits.shape} and targets {targets.shape} do not match")
    out = np.empty(len(targets), np.float64)
    _token_nll(logits, targets, out)
    return out


def record_width(n_vocab: int) -> int:
    """uint16 per record: 4 (float scale, float min_log_prob) + n_vocab rounded up to even."""
    return 2 * ((n_vocab + 1) // 2) + 4


@njit(cache=True, parallel=True)
def _encode_rows(logits, out):
    n_vocab = logits.shape[1]
    for r in prange(logits.shape[0]):
        row = logits[r]
        mx, _, s = max_and_sum_exp(row)
        mn = row[0]
        for i in range(1, n_vocab):
            mn = min(mn, row[i])
        mn = max(mn, mx - np.float32(16))
        log_sum_exp = np.float32(math.log(s))
        head = np.empty(2, np.float32)
        head[0] = (mx - mn) / np.float32(65535)                 # scale
        head[1] = mn - mx - log_sum_exp                         # min_log_prob
        out[r, :4] = head.view(np.uint16)
        out[r, 4:] = 0
        if head[0] != 0:
            inv_scale = np.float32(1) / head[0]
            for i in range(n_vocab):
                if row[i] > mn:                                 # nearest_int: round half to even
                    out[r, 4 + i] = np.uint16(np.rint(inv_scale * (row[i] - mn)))


def encode_log_probs(logits: np.ndarray) -> np.ndarray:
    """The uint16 records (n, record_width) of --kl-divergence-base for rows of logits."""
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    out = np.empty((logits.shape[0], record_width(logits.shape[1])), np.uint16)
    _encode_rows(logits, out)
    return out


@njit(cache=True, parallel=True)
def _kld_rows(logits, records, targets, kld, p_diff, nll, nll_base, same_top):
    n_vocab = logits.shape[1]
    for r in prange(logits.shape[0]):
        row = logits[r]
        mx, imax, s = max_and_sum_exp(row)
        log_sum_exp = np.float32(math.log(s))
        head = records[r, :4].copy().view(np.float32)
        scale, min_log_prob = head[0], head[1]
        base = records[r, 4:]
        tok = targets[r]
        nll[r] = mx + log_sum_exp - row[tok]
        nll_base[r] = -(scale * np.float32(base[tok]) + min_log_prob)
        lse = mx + log_sum_exp
        total = 0.0
        imax_base = 0
        p_max = np.float32(0)
        for i in range(n_vocab):
            p_log_base = scale * np.float32(base[i]) + min_log_prob
            if i == 0 or p_log_base > p_max:
                p_max = p_log_base
                imax_base = i
            if p_log_base > np.float32(-16):
                total += np.float64(np.float32(math.exp(p_log_base)) * (p_log_base - row[i] + lse))
        kld[r] = total
        same_top[r] = imax == imax_base
        p_diff[r] = np.float32(math.exp(-nll[r])) - np.float32(math.exp(-nll_base[r]))


def kld_rows(logits: np.ndarray, records: np.ndarray, targets: np.ndarray):
    """Per scored token against the base records: (kld float64, p_diff float32, nll float32, nll_base float32,
    same_top bool), each as perplexity.cpp's KL log_softmax computes it."""
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    records = np.ascontiguousarray(records, dtype=np.uint16)
    targets = np.ascontiguousarray(targets, dtype=np.int64)
    n = logits.shape[0]
    kld, p_diff = np.empty(n, np.float64), np.empty(n, np.float32)
    nll, nll_base, same = np.empty(n, np.float32), np.empty(n, np.float32), np.empty(n, np.bool_)
    _kld_rows(logits, records, targets, kld, p_diff, nll, nll_base, same)
    return kld, p_diff, nll, nll_base, same
