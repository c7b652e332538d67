"""Embeddings as llama.cpp computes them (llama-server's /embedding and /v1/embeddings).

    embed(model, tokens)                       # pooled with the model's default, Euclidean-normalized: (n_embd,)
    embed(model, tokens, pooling="mean")       # "none" | "mean" | "cls" | "last"
    embed(model, tokens, pooling="none")       # per-token vectors (n_tokens, n_embd), not normalized

The vectors come from llama.cpp's `result_norm` (res->t_embd): the hidden state after the final output norm,
before the output projection (Model.hidden_states), on a fresh context: the model's KV cache is untouched.
Pooling follows llm_graph_context::build_pooling (src/llama-graph.cpp):
  none  every token's vector (llama_get_embeddings_ith)
  mean  ggml_mul_mat(cont(transpose(h)), inp_mean): per dimension a ggml_vec_dot_f32 of the n hidden values
        with a column of 1.0f/n (llm_graph_input_mean::set_input), summed in that kernel's order (mean_rows)
  cls   ggml_get_rows of the first position;  last  of the last position (llm_graph_input_cls::set_input)
Normalization is common_embd_normalize (common/common.cpp), applied like llama-server's send_embedding: to
pooled vectors only (the per-token vectors of pooling "none" come back raw).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numba import njit

from workbench.cpu.simd import fmaf
from workbench.gguf import Keys, key
from workbench.llama.model import N_UBATCH, Model

POOLINGS = ("none", "mean", "cls", "last")
# llama_pooling_type (include/llama.h): the values of the GGUF key `{arch}.pooling_type`
POOLING_IDS = {-1: "none", 0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}   # -1 UNSPECIFIED -> NONE
POOLING_TYPE_KEY = Keys.LLM.POOLING_TYPE   # LLM_KV_POOLING_TYPE
INT16_RANGE = 32760.0                     # common_embd_normalize's max-abs scale (normalize=0)


class EmbeddingError(ValueError):
    """An embedding request llama.cpp would refuse: no tokens, too many, an unknown pooling or normalization."""


def default_pooling(model: Model) -> str:
    """The pooling llama.cpp uses when none is asked for: `{arch}.pooling_type` from the GGUF, else "none"
    (llama_model::load_hparams reads the key if present; llama_context turns an unspecified pooling into NONE).
    A reranker's "rank" is returned as such; `embed` refuses it (it needs a classifier head llama models lack)."""
    name = key(POOLING_TYPE_KEY, model.config.arch)
    value = model.gguf.metadata.get(name)
    if value is None:
        return "none"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) not in POOLING_IDS:
        raise EmbeddingError(f"{name}={value!r} is not a known pooling type (expected one of {sorted(POOLING_IDS)})")
    return POOLING_IDS[int(value)]


def embed(model: Model, tokens: Sequence[int], pooling: str | None = None, normalize: int = 2) -> np.ndarray:
    """The embedding of `tokens`, float32: (n_embd,) for pooling mean/cls/last, (n_tokens, n_embd) for "none".

    pooling None takes default_pooling(model). normalize as llama.cpp's --embd-normalize: -1 none, 0 max
    absolute scaled to the int16 range, 1 taxicab, 2 Euclidean (the default), p > 2 the p-norm; ignored for
    pooling "none" (llama-server's send_embedding normalizes pooled vectors only).
    Like llama-server, pooling none/mean/cls needs all tokens in one ubatch (at most N_UBATCH = 512, the
    default physical batch); "last" may run in several, up to the context size (server_slot::can_split)."""
    pooling = check_pooling(model, pooling)
    check_normalize(normalize)
    tokens = np.asarray(tokens).reshape(-1)
    n = len(tokens)
    if n == 0:
        raise EmbeddingError("embed: no tokens (the input is empty)")
    if n > model.n_ctx:
        raise EmbeddingError(f"embed: {n} tokens are more than the context holds (n_ctx={model.n_ctx})")
    if pooling != "last" and n > N_UBATCH:
        raise EmbeddingError(f"embed: {n} tokens are too many for pooling {pooling!r}: they must fit in one "
                             f"physical batch of {N_UBATCH} tokens (llama.cpp's n_ubatch); only 'last' can split")
    try:
        h = model.hidden_states(tokens)                      # (n, n_embd) result_norm, fresh context
    except ValueError as e:                                  # a token outside the vocabulary
        raise EmbeddingError(f"embed: {e}") from e
    if pooling == "none":
        return h
    return normalize_embedding(pool(h, pooling), normalize)


def check_pooling(model: Model, pooling: str | None) -> str:
    """The pooling to use: `pooling` (case-insensitive) or the model's default; EmbeddingError otherwise."""
    name = default_pooling(model) if pooling is None else pooling
    if not isinstance(name, str) or name.lower() not in POOLINGS:
        raise EmbeddingError(f"pooling={name!r} is not supported: expected one of {POOLINGS} or None "
                             "(rank pooling needs a reranker's classifier head)")
    return name.lower()


def check_normalize(normalize: int) -> None:
    """EmbeddingError unless `normalize` is an int >= -1 (below -1 llama.cpp would take a negative p-norm)."""
    if isinstance(normalize, bool) or not isinstance(normalize, (int, np.integer)) or normalize < -1:
        raise EmbeddingError(f"normalize={normalize!r} must be an int >= -1 (-1 none, 0 max absolute int16, "
                             "1 taxicab, 2 Euclidean, p > 2 p-norm)")


def pool(h: np.ndarray, pooling: str) -> np.ndarray:
    """Pool hidden states h (n, n_embd) into one vector (n_embd,) as build_pooling does."""
    h = np.ascontiguousarray(h, dtype=np.float32)
    if pooling == "mean":
        return mean_rows(h, np.float32(1.0) / np.float32(h.shape[0]))
    if pooling == "cls":
        return h[0].copy()
    if pooling == "last":
        return h[-1].copy()
    raise EmbeddingError(f"pool: pooling={pooling!r} is not one of mean, cls, last")


@njit(cache=True)
def mean_rows(h, inv_n):
    """out[e] = sum_t h[t, e] * inv_n as ggml_vec_dot_f32 sums it on AVX2 (a mul_mat with one column takes no
    tinyBLAS path): 4 x 8 fma lanes over the first n - n % 32 tokens, GGML_F32x8_REDUCE to a float, then the
    leftover tokens added one by one to that float in order. GCC vectorizes that leftover loop as an in-order
    reduction: products rounded on their own in groups of 4, the last (n % 32) % 4 contracted into fmas."""
    n, E = h.shape
    n32 = n - n % 32
    n4 = n32 + (n - n32) // 4 * 4
    out = np.empty(E, np.float32)
    lanes = np.empty(32, np.float32)
    x8 = np.empty(8, np.float32)
    for e in range(E):
        lanes[:] = 0.0
        for t in range(n32):
            lanes[t % 32] = fmaf(h[t, e], inv_n, lanes[t % 32])
        for i in range(8):                                   # sum[0] += sum[2]; sum[1] += sum[3]; sum[0] += sum[1]
            x8[i] = (lanes[i] + lanes[16 + i]) + (lanes[8 + i] + lanes[24 + i])
        acc = ((x8[0] + x8[4]) + (x8[1] + x8[5])) + ((x8[2] + x8[6]) + (x8[3] + x8[7]))
        for t in range(n32, n4):
            acc = acc + h[t, e] * inv_n
        for t in range(n4, n):
            acc = fmaf(h[t, e], inv_n, acc)
        out[e] = acc
    return out


def normalize_embedding(v: np.ndarray, normalize: int = 2) -> np.ndarray:
    """common_embd_normalize: v divided by its norm, the norm summed in double in index order, its inverse
    rounded to float and multiplied in float (a zero vector stays zero). -1 returns v unchanged."""
    check_normalize(normalize)
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    if normalize == -1:
        total = 1.0
    elif normalize == 0:
        total = float(np.max(np.abs(v), initial=0.0)) / INT16_RANGE
    elif normalize == 2:
        squares = (v * v).astype(np.float64)                 # float products, added in double
        total = math.sqrt(sequential_sum(squares))
    else:
        p = int(normalize)
        total = c_pow(sequential_sum(np.array([c_pow(abs(float(x)), p) for x in v])), 1.0 / p)
    scale = np.float32(1.0 / total) if total > 0.0 else np.float32(0.0)
    return v * scale


def c_pow(x: float, y: float) -> float:
    """libm's pow, as std::pow(double, double): math.pow, but inf on overflow where Python raises."""
    try:
        return math.pow(x, y)
    except OverflowError:
        return math.inf


def sequential_sum(x: np.ndarray) -> float:
    """x[0] + x[1] + ... left to right in double, as a C loop adds (np.sum adds pairwise)."""
    return float(np.cumsum(x, dtype=np.float64)[-1]) if len(x) else 0.0
