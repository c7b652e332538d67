"""Hugging Face <-> GGUF tensor names for the llama family (Llama, Mistral, Mixtral).

The subset of gguf-py's TensorNameMap (tensor_mapping.py) that these architectures use, in both directions,
plus the Q/K row permutation llama.cpp applies to attention weights (LlamaModel.permute in
conversion/llama.py): HF stores each head's rotary pairs as two halves, ggml's rope wants them interleaved.
"""
from __future__ import annotations

import re

import numpy as np

from workbench.gguf.constants import TensorNames, tensor_name

# tensors outside the blocks: HF name (without .weight/.bias) -> GGUF template
GLOBAL_NAMES = {
    "model.embed_tokens": TensorNames.TOKEN_EMBD,
    "lm_head": TensorNames.OUTPUT,
    "model.norm": TensorNames.OUTPUT_NORM,
}

# per-block tensors: HF name after "model.layers.{bid}." -> GGUF template
BLOCK_NAMES = {
    "input_layernorm": TensorNames.ATTN_NORM,
    "self_attn.q_proj": TensorNames.ATTN_Q,
    "self_attn.k_proj": TensorNames.ATTN_K,
    "self_attn.v_proj": TensorNames.ATTN_V,
    "self_attn.o_proj": TensorNames.ATTN_OUT,
    "post_attention_layernorm": TensorNames.FFN_NORM,
    "mlp.gate_proj": TensorNames.FFN_GATE,
    "mlp.up_proj": TensorNames.FFN_UP,
    "mlp.down_proj": TensorNames.FFN_DOWN,
    "block_sparse_moe.gate": TensorNames.FFN_GATE_INP,
}

# Mixtral experts: HF `block_sparse_moe.experts.{xid}.{w}` stacked over xid into one 3-D tensor.
# Order matters: llama.cpp emits w1, w2, w3 (gate, down, up) once a block's experts are all read.
EXPERT_NAMES = {
    "w1": TensorNames.FFN_GATE_EXPS,
    "w2": TensorNames.FFN_DOWN_EXPS,
    "w3": TensorNames.FFN_UP_EXPS,
}

# HF names llama.cpp drops without a word (prepare_tensors)
SKIPPED_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")

_BLOCK_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_EXPERT_RE = re.compile(r"^model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$")


class TensorNameError(ValueError):
    """An HF or GGUF tensor name outside the mapping."""


def block_id(hf_name: str) -> int | None:
    """The first all-digit component of a name, as llama.cpp picks the block id."""
    return next((int(p) for p in hf_name.split(".") if p.isdecimal()), None)


def expert_parts(hf_name: str) -> tuple[int, int, str] | None:
    """(block, expert, "w1"|"w2"|"w3") for a Mixtral expert weight, else None."""
    m = _EXPERT_RE.match(hf_name)
    return (int(m.group(1)), int(m.group(2)), m.group(3)) if m else None


def gguf_name(hf_name: str) -> str:
    """HF tensor name -> GGUF tensor name (map_tensor_name); raises TensorNameError when unknown."""
    stem, _, suffix = hf_name.rpartition(".")
    if suffix in ("weight", "bias") and stem in GLOBAL_NAMES:
        return tensor_name(GLOBAL_NAMES[stem], suffix=suffix)
    m = _BLOCK_RE.match(hf_name)
    if m and m.group(2) in BLOCK_NAMES:
        return tensor_name(BLOCK_NAMES[m.group(2)], int(m.group(1)), m.group(3))
    raise TensorNameError(f"cannot map tensor {hf_name!r} to a GGUF name (not a Llama/Mistral/Mixtral tensor)")


def expert_gguf_name(bid: int, w: str) -> str:
    return tensor_name(EXPERT_NAMES[w], bid)


def hf_name(gguf_tensor: str) -> str:
    """GGUF tensor name -> HF name (the inverse of gguf_name; expert stacks map to their `w` template)."""
    base, _, suffix = gguf_tensor.rpartition(".")
    for hf, tmpl in GLOBAL_NAMES.items():
        if base == tmpl:
            return f"{hf}.{suffix}"
    m = re.match(r"^blk\.(\d+)\.", base)
    if m:
        bid = int(m.group(1))
        for hf, tmpl in BLOCK_NAMES.items():
            if tmpl.format(bid=bid) == base:
                return f"model.layers.{bid}.{hf}.{suffix}"
        for w, tmpl in EXPERT_NAMES.items():
            if tmpl.format(bid=bid) == base:
                return f"model.layers.{bid}.block_sparse_moe.experts.{{xid}}.{w}.{suffix}"
    raise TensorNameError(f"GGUF tensor {gguf_tensor!r} has no Hugging Face name in the llama mapping")


def permute_qk(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """HF -> GGUF row order of attn_q/attn_k (weights or biases): within each head, the rows
    [r0..r(d/2-1), i0..i(d/2-1)] become [r0, i0, r1, i1, ...] (LlamaModel.permute)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """Inverse of permute_qk (GGUF -> HF row order)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
