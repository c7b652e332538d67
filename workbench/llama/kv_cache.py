"""The KV cache: per layer, the keys and values of every position so far (llama_kv_cache, one sequence).

Layout: k, v (n_layer, n_ctx, n_head_kv * head_dim), contiguous per token. F16 by default like llama.cpp
(`type_k = type_v = GGML_TYPE_F16`): K and V are rounded to fp16 when stored (ggml_set_rows / cpy), and
stored as fp16 bits; F32 keeps them exact. `n_past` positions are valid; `truncate` rolls back.
Memory is mapped lazily without huge pages (_lazy_zeros): pages of positions never written are not resident.
"""
from __future__ import annotations

import mmap

import numpy as np

CACHE_TYPES = ("f16", "f32")


class ContextError(ValueError):
    """More tokens than the context holds, or a bad position; the message says how many."""


def _lazy_zeros(shape, dtype) -> np.ndarray:
    """Zeros whose pages become resident only when written, 4 KiB at a time. np.zeros would do, but numpy
    asks the kernel for transparent huge pages on big arrays: the first token of each layer then makes 2 MiB
    resident per layer (K and V of an 8192-token SmolLM2 context: 180 MiB resident after one token)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes < 1 << 22:
        return np.zeros(shape, dtype)
    buf = mmap.mmap(-1, nbytes)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        buf.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


class KVCache:
    def __init__(self, n_layer: int, n_ctx: int, n_embd_kv: int, cache_type: str = "f16"):
        if cache_type not in CACHE_TYPES:
            raise ValueError(f"cache_type={cache_type!r}: expected one of {CACHE_TYPES}")
        if n_ctx < 1:
            raise ContextError(f"n_ctx={n_ctx} must be >= 1")
        self.cache_type = cache_type
        self.n_ctx = n_ctx
        dtype = np.float16 if cache_type == "f16" else np.float32
        self.k = _lazy_zeros((n_layer, n_ctx, n_embd_kv), dtype)   # (n_layer, n_ctx, n_head_kv * head_dim)
        self.v = _lazy_zeros((n_layer, n_ctx, n_embd_kv), dtype)
        self.n_past = 0                                        # positions 0 .. n_past-1 are filled

    @property
    def is_f16(self) -> bool:
        return self.cache_type == "f16"

    def check_room(self, n_new: int) -> None:
        if self.n_past + n_new > self.n_ctx:
            raise ContextError(f"{n_new} new tokens after {self.n_past} do not fit in the context of "
                               f"{self.n_ctx} tokens (n_ctx): {self.n_past + n_new - self.n_ctx} too many")

    def store(self, layer: int, pos: int, k: np.ndarray, v: np.ndarray) -> None:
        """Write k, v (T, n_embd_kv) at positions pos .. pos+T-1 of `layer` (rounded to the cache type)."""
        T = k.shape[0]
        if pos + T > self.n_ctx:
            raise ContextError(f"positions {pos}..{pos + T - 1} exceed n_ctx {self.n_ctx}")
        self.k[layer, pos:pos + T] = k     # numpy's float32 -> float16 cast rounds to nearest even
        self.v[layer, pos:pos + T] = v

    def layer(self, layer: int, n_kv: int) -> tuple[np.ndarray, np.ndarray]:
        """K, V of the first n_kv positions of `layer`: float32, or uint16 fp16 bits for the attention kernel."""
        k, v = self.k[layer, :n_kv], self.v[layer, :n_kv]
        if self.is_f16:
            return k.view(np.uint16), v.view(np.uint16)
        return k, v

    def truncate(self, n: int) -> None:
        """Forget positions n and after (rollback); what is written there later overwrites them."""
        if not 0 <= n <= self.n_past:
            raise ContextError(f"truncate({n}): must be between 0 and n_past={self.n_past}")
        self.n_past = n

    def reset(self) -> None:
        self.n_past = 0

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes
