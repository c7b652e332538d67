"""Model hyper-parameters, read once from GGUF metadata (llama.cpp: `llama_model::load_hparams` + the
context parameters derived in `llama_context::llama_context`).

No other module reads raw metadata keys: everything the forward pass needs is a field of `LlamaConfig`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from workbench.gguf import Keys, key

SUPPORTED_ARCHS = ("llama",)  # Mixtral GGUFs are arch "llama" with expert_count > 0


class ConfigError(ValueError):
    """The GGUF metadata does not describe a model this engine can run; the message names the key."""


@dataclass(frozen=True)
class LlamaConfig:
    arch: str                 # general.architecture ("llama"; Mixtral is llama + experts)
    n_vocab: int              # rows of token_embd (llama.vocab_size or the tokenizer list length)
    n_ctx_train: int          # llama.context_length: the context the model was trained on
    n_embd: int               # llama.embedding_length: width of the residual stream
    n_layer: int              # llama.block_count
    n_ff: int                 # llama.feed_forward_length: hidden width of the (per-expert) FFN
    n_head: int               # llama.attention.head_count: query heads
    n_head_kv: int            # llama.attention.head_count_kv: key/value heads (GQA when < n_head)
    head_dim: int             # llama.attention.key_length (= value_length), default n_embd / n_head
    n_rot: int                # llama.rope.dimension_count: rotated dims per head (= head_dim for llama)
    rms_eps: float            # llama.attention.layer_norm_rms_epsilon
    n_expert: int             # llama.expert_count: 0 for a dense model
    n_expert_used: int        # llama.expert_used_count: top-k experts per token (overridable at load)
    rope_freq_base: float     # llama.rope.freq_base (default 10000)
    rope_freq_scale: float    # 1 / rope.scaling.factor (1 when no scaling, as llama.cpp's freq_scale)
    rope_scaling: str         # rope.scaling.type: "none", "linear" (default) or "yarn"
    n_ctx_orig: int           # rope.scaling.original_context_length (YaRN), default n_ctx_train
    yarn_ext_factor: float    # YaRN ramp mix: 1 for yarn, else 0 (llama.cpp's cparams.yarn_ext_factor)
    yarn_attn_factor: float   # magnitude scale of cos/sin (mscale), after llama.cpp's YaRN corrections
    yarn_beta_fast: float     # YaRN correction range (default 32)
    yarn_beta_slow: float     # YaRN correction range (default 1)
    kq_scale: float           # attention scale: attention.scale or 1/sqrt(head_dim)

    @property
    def n_embd_kv(self) -> int:
        """Width of one token's K (or V) across all KV heads."""
        return self.n_head_kv * self.head_dim

    @property
    def is_moe(self) -> bool:
        return self.n_expert > 0

    def with_expert_used(self, n_expert_used: int) -> "LlamaConfig":
        """Like llama.cpp's `--override-kv llama.expert_used_count=int:N`."""
        if not self.is_moe:
            raise ConfigError("n_expert_used: the model has no experts (expert_count is 0)")
        if not 1 <= n_expert_used <= self.n_expert:
            raise ConfigError(f"n_expert_used={n_expert_used} must be in 1..{self.n_expert} (expert_count)")
        return replace(self, n_expert_used=int(n_expert_used))

    @classmethod
    def from_metadata(cls, md, n_vocab_tensor: int | None = None) -> "LlamaConfig":
        arch = md.get(Keys.General.ARCHITECTURE)
        if arch not in SUPPORTED_ARCHS:
            raise ConfigError(f"{Keys.General.ARCHITECTURE}={arch!r} is not supported (supported: {SUPPORTED_ARCHS})")

        def get(template, default=None, required=False):
            k = key(template, arch)
            if k in md:
                return md[k]
            if required:
                raise ConfigError(f"missing metadata key {k!r}")
            return default

        n_embd = int(get(Keys.LLM.EMBEDDING_LENGTH, required=True))
        n_head = int(get(Keys.Attention.HEAD_COUNT, required=True))
        n_head_kv = int(get(Keys.Attention.HEAD_COUNT_KV, n_head))
        head_dim = int(get(Keys.Attention.KEY_LENGTH, n_embd // n_head))
        if int(get(Keys.Attention.VALUE_LENGTH, head_dim)) != head_dim:
            raise ConfigError("attention.value_length != attention.key_length is not supported")
        if n_head % n_head_kv:
            raise ConfigError(f"head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")
        n_vocab = get(Keys.LLM.VOCAB_SIZE)
        if n_vocab is None:
            tokens = md.get(Keys.Tokenizer.LIST)
            n_vocab = len(tokens) if tokens is not None else n_vocab_tensor
        n_ctx_train = int(get(Keys.LLM.CONTEXT_LENGTH, required=True))
        n_expert = int(get(Keys.LLM.EXPERT_COUNT, 0))

        # RoPE scaling: llama_model::load_hparams then llama_context's cparams (src/llama-context.cpp)
        scaling = str(get(Keys.Rope.SCALING_TYPE, "linear"))
        if scaling not in ("none", "linear", "yarn"):
            raise ConfigError(f"{key(Keys.Rope.SCALING_TYPE, arch)}={scaling!r} is not supported")
        factor = float(get(Keys.Rope.SCALING_FACTOR, get(Keys.Rope.SCALE_LINEAR, 0.0)))
        freq_scale = 1.0 if (factor == 0.0 or scaling == "none") else 1.0 / factor
        ext_factor = float(get(Keys.Rope.SCALING_YARN_EXT_FACTOR, -1.0))
        if ext_factor < 0:
            ext_factor = 1.0 if scaling == "yarn" else 0.0
        attn_factor = float(get(Keys.Rope.SCALING_YARN_ATTN_FACTOR, 1.0))
        if ext_factor != 0.0:
            scale = 1.0 / freq_scale

            def mscale(s, m):
                return 1.0 if s <= 1.0 else 0.1 * m * math.log(s) + 1.0

            log_mul = float(get(Keys.Rope.SCALING_YARN_LOG_MUL, 0.0))
            attn_factor = mscale(scale, 1.0) / mscale(scale, log_mul) if log_mul else mscale(scale, 1.0)
            # ggml's rope_yarn multiplies by 1 + 0.1 ln(1/freq_scale) again: cancel it (llama.cpp #17945)
            attn_factor = float(np.float32(attn_factor / (1.0 + 0.1 * math.log(scale))))
        attn_factor *= float(get(Keys.Rope.SCALING_ATTN_FACTOR, 1.0))
        attn_scale = float(get(Keys.Attention.SCALE, 0.0))

        return cls(
            arch=arch, n_vocab=int(n_vocab), n_ctx_train=n_ctx_train, n_embd=n_embd,
            n_layer=int(get(Keys.LLM.BLOCK_COUNT, required=True)), n_ff=int(get(Keys.LLM.FEED_FORWARD_LENGTH, required=True)),
            n_head=n_head, n_head_kv=n_head_kv, head_dim=head_dim,
            n_rot=int(get(Keys.Rope.DIMENSION_COUNT, head_dim)),
            rms_eps=float(get(Keys.Attention.LAYERNORM_RMS_EPS, 1e-5)),
            n_expert=n_expert, n_expert_used=int(get(Keys.LLM.EXPERT_USED_COUNT, 0)) if n_expert else 0,
            rope_freq_base=float(get(Keys.Rope.FREQ_BASE, 10000.0)), rope_freq_scale=freq_scale,
            rope_scaling=scaling, n_ctx_orig=int(get(Keys.Rope.SCALING_ORIG_CTX_LEN, n_ctx_train)),
            yarn_ext_factor=ext_factor, yarn_attn_factor=attn_factor,
            yarn_beta_fast=float(get(Keys.Rope.SCALING_YARN_BETA_FAST, 32.0)),
            yarn_beta_slow=float(get(Keys.Rope.SCALING_YARN_BETA_SLOW, 1.0)),
            kq_scale=attn_scale if attn_scale else 1.0 / math.sqrt(head_dim),
        )
