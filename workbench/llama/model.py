"""`load(path) -> Model`: a GGUF llama / Mixtral model with an explicit KV cache.

    m = load("SmolLM2-135M-Instruct.Q4_1.gguf", n_ctx=1024)
    m.logits(tokens)            # (n, n_vocab) at every position, fresh context (the cache is untouched)
    m.hidden_states(tokens)     # (n, n_embd) output-normed hidden states, fresh context (what embeddings pool)
    m.eval(prompt)              # incremental: appends to the cache, returns the last token's logits
    m.eval([next_tok]); m.truncate(n); m.reset(); m.n_past

    load(path, rope_freq_scale=0.5)   # linear RoPE scaling, as llama.cpp's --rope-freq-scale
"""
from __future__ import annotations

import dataclasses
import math

import numba
import numpy as np

from workbench.gguf import read_gguf

from workbench.llama.config import LlamaConfig
from workbench.llama.experts import Routing
from workbench.llama.forward import RopeTables, forward
from workbench.llama.generate import chat
from workbench.llama.kv_cache import ContextError, KVCache
from workbench.llama.weights import ModelWeights
from workbench.text.tokenizer import Tokenizer

DEFAULT_N_CTX = 4096   # when n_ctx is not given: min(this, the training context)
N_UBATCH = 512         # tokens per forward call, as llama.cpp's default n_ubatch (bounds activation memory)


class Model:
    def __init__(self, gguf_file, config: LlamaConfig, weights: ModelWeights, n_ctx: int,
                 n_threads: int | None, cache_type: str, quantize_act: bool = True, flash_attn: bool = False):
        self.gguf = gguf_file               # keeps the memory map (the weights are views of it) alive
        self.config = config
        self.weights = weights
        self.rope = RopeTables(config, weights.rope_freqs)
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.cache_type = cache_type
        self.quantize_act = quantize_act    # emulate ggml's activation quantization in the matmuls
        self.flash_attn = flash_attn        # llama.cpp's flash-attention graph (its CLI tools) or not (its bindings)
        self.cache = KVCache(config.n_layer, n_ctx, config.n_embd_kv, cache_type)
        self._tokenizer = None
        self._chat_history = None          # tokens in the cache after the last chat() turn

    # --- incremental API --------------------------------------------------------------------------
    @property
    def n_past(self) -> int:
        return self.cache.n_past

    def reset(self) -> None:
        self.cache.reset()

    def truncate(self, n: int) -> None:
        """Roll the context back to its first n tokens."""
        self.cache.truncate(n)

    def eval(self, tokens, all_logits: bool = False) -> np.ndarray:
        """Append tokens to the context; logits of the last token (n_vocab,), or of all (T, n_vocab)."""
        tokens = self._check_tokens(tokens)
        if len(tokens) == 0:
            raise ValueError("eval: no tokens")
        self.cache.check_room(len(tokens))
        out = self._run(self.cache, tokens, all_logits, None)
        return out if all_logits else out[-1]

    # --- text API (tokenizer from the GGUF metadata) --------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = Tokenizer.from_metadata(self.gguf.metadata)
        return self._tokenizer

    @property
    def n_vocab(self) -> int:
        return self.config.n_vocab

    @property
    def add_bos(self) -> bool:
        return self.tokenizer.add_bos

    @property
    def bos_id(self) -> int:
        return self.tokenizer.bos_id

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        return self.tokenizer.tokenize(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids, remove_special: bool = False, unparse_special: bool = False) -> str:
        return self.tokenizer.detokenize(ids, remove_special=remove_special, unparse_special=unparse_special)

    def chat(self, messages, stream: bool = True, **kwargs):
        """Answer `messages` with the chat template (see workbench.llama.generate.chat)."""
        return chat(self, messages, stream=stream, **kwargs)

    def fork(self) -> "Model":
        """Another Model over the same memory-mapped weights with its own, empty KV cache (server slots)."""
        m = Model(self.gguf, self.config, self.weights, self.n_ctx, self.n_threads, self.cache_type, self.quantize_act,
                  self.flash_attn)
        m._tokenizer = self._tokenizer
        return m

    # --- one-shot API -----------------------------------------------------------------------------
    def logits(self, tokens, capture_routing: bool = False, first_output: int = 0):
        """Logits (n, n_vocab) float32 at every position of `tokens` from a fresh context.
        With capture_routing=True also a Routing (experts, weights of shape (n_layer, n, k)).
        first_output > 0 returns only the rows of positions first_output.. (what perplexity scores),
        skipping the output matmul of the others."""
        tokens = self._check_tokens(tokens)
        if len(tokens) > self.n_ctx:
            raise ContextError(f"prompt of {len(tokens)} tokens is longer than the context (n_ctx={self.n_ctx})")
        cache = KVCache(self.config.n_layer, max(len(tokens), 1), self.config.n_embd_kv, self.cache_type)
        routing = [] if capture_routing else None
        out = self._run(cache, tokens, True, routing, first_output)
        if not capture_routing:
            return out
        if not self.config.is_moe:
            return out, None
        L = self.config.n_layer
        experts = np.stack([np.concatenate([routing[b * L + il][0] for b in range(len(routing) // L)])
                            for il in range(L)])
        weights = np.stack([np.concatenate([routing[b * L + il][1] for b in range(len(routing) // L)])
                            for il in range(L)])
        return out, Routing(experts=experts, weights=weights)

    def hidden_states(self, tokens) -> np.ndarray:
        """The output-normed hidden states (n, n_embd) float32 at every position of `tokens` from a fresh context
        (the cache is untouched): llama.cpp's `result_norm`, what its embeddings are read or pooled from."""
        tokens = self._check_tokens(tokens)
        if len(tokens) == 0:
            raise ValueError("hidden_states: no tokens")
        if len(tokens) > self.n_ctx:
            raise ContextError(f"prompt of {len(tokens)} tokens is longer than the context (n_ctx={self.n_ctx})")
        cache = KVCache(self.config.n_layer, len(tokens), self.config.n_embd_kv, self.cache_type)
        return self._run(cache, tokens, True, None, hidden=True)

    # --- internals --------------------------------------------------------------------------------
    def _check_tokens(self, tokens) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        bad = (tokens < 0) | (tokens >= self.config.n_vocab)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"token {int(tokens[i])} at index {i} is outside the vocabulary (n_vocab={self.config.n_vocab})")
        return tokens

    def _run(self, cache: KVCache, tokens: np.ndarray, all_logits: bool, routing, first_output: int = 0,
             hidden: bool = False) -> np.ndarray:
        if self.n_threads:
            numba.set_num_threads(self.n_threads)
        outs = []
        for s in range(0, len(tokens), N_UBATCH):
            chunk = tokens[s:s + N_UBATCH]
            last = s + N_UBATCH >= len(tokens)
            rows = None if all_logits else np.array([len(chunk) - 1])
            if all_logits and first_output > s:
                rows = np.arange(max(first_output - s, 0), len(chunk))
            if not all_logits and not last:
                rows = np.zeros(0, np.int64)        # no logits needed for this ubatch
            outs.append(forward(self.config, self.weights, self.rope, cache, chunk, rows, routing,
                                self.flash_attn, hidden))
        return np.concatenate(outs) if len(outs) > 1 else outs[0]


def load(path, n_ctx: int | None = None, n_threads: int | None = None, cache_type: str = "f16",
         n_expert_used: int | None = None, quantize_act: bool = True, flash_attn: bool = False,
         rope_freq_scale: float | None = None) -> Model:
    """Open a GGUF llama/Mixtral model (weights stay memory-mapped and quantized).

    flash_attn=False gives llama-cpp-python's numbers (its default); True those of llama.cpp's command-line tools
    (llama-perplexity, llama-imatrix: flash attention AUTO, on for the CPU), for batches of >= 64 tokens.
    rope_freq_scale overrides the file's RoPE frequency scale, as llama.cpp's --rope-freq-scale (linear scaling:
    positions times this factor; 0.5 stretches the trained positions over twice the context); None keeps the file's."""
    if rope_freq_scale is not None:
        scale = float(rope_freq_scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"rope_freq_scale={rope_freq_scale!r} must be a finite number > 0 "
                             "(as llama.cpp's --rope-freq-scale; None keeps the file's value)")
    gf = read_gguf(path)
    cfg = LlamaConfig.from_metadata(gf.metadata)
    if n_expert_used is not None:
        cfg = cfg.with_expert_used(n_expert_used)
    if rope_freq_scale is not None:
        cfg = dataclasses.replace(cfg, rope_freq_scale=scale)
    weights = ModelWeights.from_gguf(gf, cfg, quantize_act)
    if n_ctx is None:
        n_ctx = min(cfg.n_ctx_train, DEFAULT_N_CTX)
    if n_threads is not None and not 1 <= n_threads <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"n_threads={n_threads} must be in 1..{numba.config.NUMBA_NUM_THREADS} (NUMBA_NUM_THREADS)")
    return Model(gf, cfg, weights, int(n_ctx), n_threads, cache_type, quantize_act, flash_attn)
