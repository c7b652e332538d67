"""llama-quantize's mixes: which ggml type each tensor gets for an ftype (Q4_K_M, Q5_K_S, IQ2_M, ...).

Follows llama.cpp's `src/llama-quant.cpp`: `tensor_allows_quantization`, `llama_tensor_get_type`
(+ `_impl`: output/token_embd special cases, attn_v/attn_k/attn_q/ffn_down/attn_output rules per ftype and
per layer via `use_more_bits`, GQA and expert-count conditions), `tensor_type_fallback` (rows that are not a
multiple of the block size) and `tensor_requires_imatrix`. Tensors are visited in llama.cpp's order
(`weight_name_comparer`: layer number, then name), since the attn_v / ffn_down counters depend on it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from workbench.gguf.constants import GGMLType as T, LlamaFileType as F

# llama_ftype_get_default_type
DEFAULT_TYPE: dict[F, T] = {
    F.Q4_0: T.Q4_0, F.Q4_1: T.Q4_1, F.Q5_0: T.Q5_0, F.Q5_1: T.Q5_1, F.Q8_0: T.Q8_0, F.F16: T.F16,
    F.BF16: T.BF16, F.ALL_F32: T.F32, F.MXFP4_MOE: T.MXFP4,
    F.Q2_K_S: T.Q2_K, F.Q2_K: T.Q2_K, F.IQ3_XS: T.IQ3_S,
    F.Q3_K_S: T.Q3_K, F.Q3_K_M: T.Q3_K, F.Q3_K_L: T.Q3_K, F.Q4_K_S: T.Q4_K, F.Q4_K_M: T.Q4_K,
    F.Q5_K_S: T.Q5_K, F.Q5_K_M: T.Q5_K, F.Q6_K: T.Q6_K, F.TQ1_0: T.TQ1_0, F.TQ2_0: T.TQ2_0,
    F.IQ2_XXS: T.IQ2_XXS, F.IQ2_XS: T.IQ2_XS, F.IQ2_S: T.IQ2_XS, F.IQ2_M: T.IQ2_S, F.IQ3_XXS: T.IQ3_XXS,
    F.IQ1_S: T.IQ1_S, F.IQ1_M: T.IQ1_M, F.IQ4_NL: T.IQ4_NL, F.IQ4_XS: T.IQ4_XS, F.IQ3_S: T.IQ3_S,
    F.IQ3_M: T.IQ3_S,
}

# tensor_type_fallback: a 256-block type on rows that are not a multiple of 256
FALLBACK: dict[T, T] = {
    **{t: T.IQ4_NL for t in (T.IQ1_S, T.IQ1_M, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S, T.IQ4_XS)},
    **{t: T.Q4_0 for t in (T.Q2_0, T.Q2_K, T.Q3_K, T.TQ1_0, T.TQ2_0)},
    T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0,
}

UNQUANTIZED_TYPES = (T.F32, T.F16, T.BF16, T.F64, T.I8, T.I16, T.I32, T.I64)

# substrings that keep a 2-D "weight" tensor unquantized (tensor_allows_quantization, llama-family subset
# plus the generic ones)
_NEVER_QUANTIZED = ("_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
                    "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "attn_rel_b.weight",
                    ".position_embd", ".rel_pos", ".patch_embd", ".patch_merger")
_NEVER_QUANTIZED_NAMES = ("position_embd.weight", "token_types.weight")

IQ_LOW = (F.IQ2_XXS, F.IQ2_XS, F.IQ1_S, F.IQ2_S, F.IQ2_M, F.IQ1_M)


def requires_imatrix_type(gtype: T) -> bool:
    return gtype in (T.IQ3_XXS, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ1_M, T.IQ1_S)


def category(name: str) -> str:
    """tensor_get_category: a broad role from the tensor name."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"), ("attn_v.weight", "attn_v"),
                     ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                     ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


def allows_quantization(name: str, n_dims: int, quantize_output: bool = True) -> bool:
    """tensor_allows_quantization: only 2-D/3-D `*weight` tensors that are not norms, routers, ..."""
    if n_dims < 2 or not name.endswith("weight"):
        return False
    if not quantize_output and name == "output.weight":
        return False
    return not any(s in name for s in _NEVER_QUANTIZED) and name not in _NEVER_QUANTIZED_NAMES


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _layer_of(name: str) -> int:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else -1


def llama_order(names) -> list[str]:
    """llama_model_loader's weights_map order: by layer number (non-layer tensors first), then by name."""
    return sorted(names, key=lambda n: (_layer_of(n), n.encode("utf-8")))


@dataclass
class ModelShape:
    """What the rules look at, read from GGUF metadata."""

    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int = 0

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @property
    def is_70b(self) -> bool:  # llama's load_hparams: 80 layers with GQA
        return self.arch == "llama" and self.n_layer == 80 and self.n_head != self.n_head_kv


@dataclass
class _State:
    """quantize_state_impl: counters advanced as tensors are visited in order."""

    n_attention_wv: int = 0
    i_attention_wv: int = 0
    i_ffn_down: int = 0
    i_ffn_gate: int = 0
    i_ffn_up: int = 0
    has_tied_embeddings: bool = True
    fallbacks: list = field(default_factory=list)


def _type_impl(qs: _State, m: ModelShape, new: T, name: str, ne0: int, ne2: int, ftype: F, cat: str,
               has_imatrix: bool, output_tensor_type: T | None) -> T:
    """llama_tensor_get_type_impl."""
    n_expert = max(1, m.n_expert)
    falcon = m.arch == "falcon"

    def layer(i_counter: int) -> tuple[int, int]:
        return (_layer_of(name) if n_expert > 1 else i_counter), m.n_layer

    if cat == "output" or (qs.has_tied_embeddings and cat == "token_embd"):
        if output_tensor_type is not None:
            return output_tensor_type
        if ftype == F.MXFP4_MOE or falcon or ne0 % new.block_size:
            return T.Q8_0
        if ftype in (F.IQ2_XXS, F.IQ2_XS, F.IQ3_XXS, F.IQ1_S, F.IQ2_S, F.IQ2_M, F.IQ1_M):
            return T.Q5_K
        return new if new == T.Q8_0 else T.Q6_K
    if ftype == F.MXFP4_MOE:
        return T.MXFP4 if ne2 > 1 else T.Q8_0
    if cat == "token_embd":
        if ftype in (F.IQ2_XXS, F.IQ2_XS, F.IQ1_S, F.IQ1_M):
            return T.Q2_K
        if ftype in (F.IQ2_S, F.IQ2_M, F.IQ3_XXS):
            return T.IQ3_S
        if ftype in (F.TQ1_0, F.TQ2_0):
            return T.Q4_K
        return new
    attn_v_like = cat in ("attn_v", "attn_qkv", "attn_kv_b")
    if ftype in IQ_LOW:
        if attn_v_like:
            if m.n_gqa >= 4 or m.n_expert >= 4:
                new = T.Q4_K
            else:
                new = T.IQ3_S if ftype in (F.IQ2_S, F.IQ2_M) else T.Q2_K
            qs.i_attention_wv += 1
        elif m.n_expert == 8 and cat == "attn_k":
            new = T.Q4_K
        elif cat == "ffn_down":
            if qs.i_ffn_down < m.n_layer // 8:
                new = T.IQ3_S if ftype in (F.IQ2_S, F.IQ2_M) else T.Q2_K
            qs.i_ffn_down += 1
        elif cat == "attn_output":
            if m.n_expert == 8:
                new = T.Q5_K
            elif ftype in (F.IQ1_S, F.IQ1_M):
                new = T.IQ2_XXS
            elif ftype in (F.IQ2_S, F.IQ2_M):
                new = T.IQ3_S
        return new
    if attn_v_like:
        i, n = qs.i_attention_wv, qs.n_attention_wv
        if ftype == F.Q2_K:
            new = T.Q4_K if m.n_gqa >= 4 else T.Q3_K
        elif ftype == F.Q2_K_S and m.n_gqa >= 4:
            new = T.Q4_K
        elif ftype == F.IQ3_XXS:
            new = T.Q4_K if m.n_gqa >= 4 else (T.IQ3_S if not has_imatrix else T.IQ3_XXS)
        elif ftype in (F.IQ3_XS, F.IQ3_S) and m.n_gqa >= 4:
            new = T.Q4_K
        elif ftype == F.IQ3_M:
            new = T.Q4_K
        elif ftype == F.Q3_K_M:
            new = T.Q5_K if i < 2 else T.Q4_K
        elif ftype == F.Q3_K_L:
            new = T.Q5_K
        elif ftype in (F.IQ4_NL, F.IQ4_XS) and m.n_gqa >= 4:
            new = T.Q5_K
        elif ftype in (F.Q4_K_M, F.Q5_K_M) and use_more_bits(i, n):
            new = T.Q6_K
        elif ftype == F.Q4_K_S and i < 4:
            new = T.Q5_K
        if m.is_70b and new in (T.Q3_K, T.Q4_K):
            new = T.Q5_K
        if m.n_expert == 8:
            new = T.Q8_0
        qs.i_attention_wv += 1
    elif cat == "attn_k":
        if m.n_expert == 8:
            new = T.Q8_0
        elif ftype == F.IQ3_XS:
            new = T.IQ3_XXS
        elif ftype == F.IQ3_XXS:
            new = T.IQ2_S
    elif cat == "attn_q":
        if ftype == F.IQ3_XS:
            new = T.IQ3_XXS
        elif ftype == F.IQ3_XXS:
            new = T.IQ2_S
    elif cat == "ffn_down":
        i, n = layer(qs.i_ffn_down)
        if ftype == F.Q2_K:
            new = T.Q3_K
        elif ftype == F.Q2_K_S:
            if i < n // 8:
                new = T.Q4_K
        elif ftype == F.IQ3_XXS and not has_imatrix:
            new = T.Q4_K if i < n // 8 else T.Q3_K
        elif ftype == F.Q3_K_M:
            new = T.Q5_K if i < n // 16 else (T.Q4_K if not falcon or use_more_bits(i, n) else T.Q3_K)
        elif ftype == F.IQ3_M and (i < n // 8 or (m.n_expert == 8 and use_more_bits(i, n))):
            new = T.Q4_K
        elif ftype == F.Q3_K_L:
            new = T.Q4_K if falcon else T.Q5_K
        elif ftype == F.Q4_K_M:
            if falcon:
                new = T.Q6_K if i < n // 16 else (T.Q5_K if use_more_bits(i, n) else T.Q4_K)
            elif use_more_bits(i, n):
                new = T.Q6_K
        elif i < n // 8 and ftype in (F.IQ4_NL, F.IQ4_XS) and not has_imatrix:
            new = T.Q5_K
        elif ftype == F.Q5_K_M and use_more_bits(i, n):
            new = T.Q6_K
        elif ftype == F.Q4_K_S and not falcon and i < n // 8:
            new = T.Q5_K
        elif ftype in (F.Q4_0, F.Q5_0) and has_imatrix and i < n // 8:
            new = T.Q4_1 if ftype == F.Q4_0 else T.Q5_1
        qs.i_ffn_down += 1
    elif cat == "attn_output":
        if not falcon:
            if m.n_expert == 8:
                if ftype in (F.Q2_K, F.IQ3_XS, F.IQ3_XXS, F.Q3_K_S, F.Q3_K_M, F.IQ4_NL, F.Q4_K_S, F.Q4_K_M,
                             F.IQ3_S, F.IQ3_M, F.IQ4_XS):
                    new = T.Q5_K
            else:
                new = {F.Q2_K: T.Q3_K, F.IQ3_XXS: T.IQ3_S, F.Q3_K_M: T.Q4_K, F.Q3_K_L: T.Q5_K,
                       F.IQ3_M: T.Q4_K}.get(ftype, new)
        elif ftype == F.Q3_K_L:
            new = T.Q4_K
    elif cat == "attn_qkv":
        new = {F.Q3_K_M: T.Q4_K, F.Q3_K_L: T.Q4_K, F.IQ3_M: T.Q4_K, F.Q4_K_M: T.Q5_K, F.Q5_K_M: T.Q6_K}.get(ftype, new)
    elif cat in ("ffn_gate", "ffn_up"):
        attr = "i_ffn_gate" if cat == "ffn_gate" else "i_ffn_up"
        i, n = layer(getattr(qs, attr))
        if ftype == F.IQ3_XS and n // 8 <= i < 7 * n // 8:
            new = T.IQ3_XXS
        setattr(qs, attr, getattr(qs, attr) + 1)
    return new


def _fallback(qs: _State, name: str, ne0: int, target: T) -> T:
    """tensor_type_fallback: demote to a type whose block divides the row, else F16."""
    if ne0 % target.block_size == 0:
        return target
    if target in FALLBACK:
        new = FALLBACK[target]
    elif target.block_size <= 32:
        new = target
    else:
        raise ValueError(f"no tensor type fallback is defined for type {target.name} ({name})")
    if ne0 % new.block_size:
        new = T.F16
    qs.fallbacks.append((name, target, new))
    return new


@dataclass(frozen=True)
class TensorPlan:
    name: str
    src_type: T
    dst_type: T
    quantize: bool            # allowed to change type at all
    requires_imatrix: bool


def plan_types(tensors, shape: ModelShape, ftype, *, has_imatrix: bool = False, pure: bool = False,
               output_tensor_type=None, token_embedding_type=None) -> list[TensorPlan]:
    """The target type of every tensor, in llama.cpp's output order. `tensors`: objects with .name, .type,
    .shape (numpy order)."""
    ftype = F.parse(ftype)
    if ftype not in DEFAULT_TYPE:
        raise ValueError(f"invalid output file type {ftype.name}")
    default = DEFAULT_TYPE[ftype]
    out_t = T.parse(output_tensor_type) if output_tensor_type is not None else None
    emb_t = T.parse(token_embedding_type) if token_embedding_type is not None else None
    by_name = {t.name: t for t in tensors}
    order = llama_order(by_name)
    qs = _State()
    for n in order:
        cat = category(n)
        qs.n_attention_wv += cat in ("attn_v", "attn_qkv", "attn_kv_b")
        if cat == "output":
            qs.has_tied_embeddings = False
    plans = []
    for n in order:
        t = by_name[n]
        ne = tuple(reversed(t.shape))
        cat = category(n)
        n_dims = len(ne)
        while n_dims > 1 and ne[n_dims - 1] == 1:  # ggml_n_dims ignores trailing 1s
            n_dims -= 1
        allowed = allows_quantization(n, n_dims)
        dst = T(t.type)
        if allowed:
            if emb_t is not None and cat == "token_embd":
                dst = emb_t
            elif out_t is not None and cat == "output":
                dst = out_t
            else:
                dst = default
                if dst not in UNQUANTIZED_TYPES:
                    if not pure:
                        ne2 = ne[2] if len(ne) > 2 else 1
                        dst = _type_impl(qs, shape, dst, n, ne[0], ne2, ftype, cat, has_imatrix, out_t)
                    dst = _fallback(qs, n, ne[0], dst)
        requires = (cat not in ("token_embd", "output") and
                    (requires_imatrix_type(dst) or (dst == T.Q2_K and ftype == F.Q2_K_S)))
        plans.append(TensorPlan(n, T(t.type), dst, allowed, requires))
    return plans
