"""GGUF (llama architecture) -> Hugging Face folder: the inverse of convert.py.

    export_hf("SmolLM2-135M-Instruct.Q4_1.gguf", "out/smollm2", dtype="f16")

Writes config.json, generation_config.json, model.safetensors (every tensor dequantized with
workbench.quant.dequantize, Q/K rows put back in HF order, Mixtral expert stacks split per expert),
the tokenizer (tokenizer.json for byte-level BPE vocabs, tokenizer.model rebuilt as a SentencePiece
ModelProto for SentencePiece vocabs) with tokenizer_config.json (special tokens, add_bos/eos, chat template),
and a README.md whose model-card front matter carries general.* back. `convert_hf` on the result gives the
same vocab, merges, template and (through the export dtype) the same tensor values.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from workbench.gguf.constants import GGMLType, Keys, TokenType, key
from workbench.hf.names import hf_name, unpermute_qk
from workbench.gguf.reader import GGUFFile, TensorInfo, read_gguf
from workbench.hf.safetensors import LazyTensor, bf16_to_f32, f32_to_bf16, write_sharded
from workbench.hf.vocab import PRE_TOKENIZERS
from workbench.quant import dequantize

K, G = Keys.Tokenizer, Keys.General
DTYPES = {"f32": np.float32, "f16": np.float16, "bf16": None}
SAMPLING_TO_GENERATION = {G.SAMPLING_TOP_K: "top_k", G.SAMPLING_TOP_P: "top_p", G.SAMPLING_TEMP: "temperature",
                          G.SAMPLING_PENALTY_REPEAT: "repetition_penalty"}
CARD_FIELDS = {G.NAME: "name", G.AUTHOR: "author", G.VERSION: "version", G.ORGANIZATION: "organization",
               G.FINETUNE: "finetune", G.BASENAME: "basename", G.SIZE_LABEL: "size_label", G.LICENSE: "license",
               G.DESCRIPTION: "description"}


class ExportError(ValueError):
    """A GGUF file that cannot be exported to Hugging Face format (the message names it)."""


def _f32(value: float) -> float:
    """A float32 metadata value as the shortest decimal that maps back to the same float32 (1e-05)."""
    return float(str(np.float32(value)))


def dequantize_tensor(t: TensorInfo, expert: int | None = None) -> np.ndarray:
    """A GGUF tensor (or one expert of a 3-D expert stack) -> float32 array of its numpy shape."""
    shape = t.shape if expert is None else t.shape[1:]
    if t.type in (GGMLType.F32, GGMLType.F16, GGMLType.BF16):
        raw = np.frombuffer(t.data, dtype={GGMLType.F32: "<f4", GGMLType.F16: "<f2", GGMLType.BF16: "<u2"}[t.type])
        raw = raw.reshape(t.shape) if expert is None else raw.reshape(t.shape)[expert]
        return bf16_to_f32(raw) if t.type == GGMLType.BF16 else raw.astype(np.float32)
    rows = t.rows()
    if expert is not None:
        per = rows.shape[0] // t.shape[0]
        rows = rows[expert * per:(expert + 1) * per]
    return dequantize(rows, t.type.name, t.shape[-1]).reshape(shape)


def _cast(x: np.ndarray, dtype: str) -> np.ndarray:
    return f32_to_bf16(x) if dtype == "bf16" else x.astype(DTYPES[dtype])


def hf_tensors(gf: GGUFFile, hp: dict, dtype: str = "f32") -> dict[str, LazyTensor]:
    """HF name -> LazyTensor of `dtype` (dequantized when written; Q/K un-permuted, experts split)."""
    st_dtype = {"f32": "F32", "f16": "F16", "bf16": "BF16"}[dtype]
    n_head, n_kv = hp["num_attention_heads"], hp["num_key_value_heads"]
    out: dict[str, LazyTensor] = {}
    for t in gf.tensors:
        if t.name == "rope_freqs.weight":  # derived from rope_scaling (llama3); not an HF weight
            continue
        try:
            name = hf_name(t.name)
        except ValueError as e:
            raise ExportError(f"{gf.path}: {e}") from None
        heads = (n_head, n_head) if name.endswith(("q_proj.weight", "q_proj.bias")) else \
            (n_head, n_kv) if name.endswith(("k_proj.weight", "k_proj.bias")) else None

        def load(t=t, heads=heads, expert=None):
            x = dequantize_tensor(t, expert)
            return _cast(unpermute_qk(x, *heads) if heads else x, dtype)

        if "{xid}" in name:
            for xid in range(t.shape[0]):
                out[name.format(xid=xid)] = LazyTensor(st_dtype, tuple(t.shape[1:]),
                                                       lambda load=load, xid=xid: load(expert=xid))
        else:
            out[name] = LazyTensor(st_dtype, tuple(t.shape), load)
    return out


def hf_config(gf: GGUFFile) -> dict[str, Any]:
    """config.json from the llama.* hyper-parameters."""
    md = gf.metadata
    arch = md.get(Keys.General.ARCHITECTURE)
    if arch != "llama":
        raise ExportError(f"{gf.path}: architecture {arch!r} cannot be exported (only 'llama')")

    def get(template, default=None):
        return md.get(key(template, arch), default)

    n_head = get(Keys.Attention.HEAD_COUNT)
    n_embd = get(Keys.LLM.EMBEDDING_LENGTH)
    n_vocab = get(Keys.LLM.VOCAB_SIZE) or len(md.get(K.LIST, []))
    n_experts = get(Keys.LLM.EXPERT_COUNT, 0)
    tied = "output.weight" not in gf
    cfg: dict[str, Any] = {
        "architectures": ["MixtralForCausalLM" if n_experts else "LlamaForCausalLM"],
        "model_type": "mixtral" if n_experts else "llama",
        "hidden_size": n_embd, "intermediate_size": get(Keys.LLM.FEED_FORWARD_LENGTH),
        "num_hidden_layers": get(Keys.LLM.BLOCK_COUNT), "num_attention_heads": n_head,
        "num_key_value_heads": get(Keys.Attention.HEAD_COUNT_KV, n_head),
        "head_dim": get(Keys.Attention.KEY_LENGTH, n_embd // n_head), "vocab_size": n_vocab,
        "max_position_embeddings": get(Keys.LLM.CONTEXT_LENGTH),
        "rms_norm_eps": _f32(get(Keys.Attention.LAYERNORM_RMS_EPS, 1e-5)),
        "rope_theta": _f32(get(Keys.Rope.FREQ_BASE, 10000.0)), "rope_scaling": None,
        "tie_word_embeddings": tied, "hidden_act": "silu", "attention_bias": "blk.0.attn_q.bias" in gf,
    }
    scaling = get(Keys.Rope.SCALING_TYPE)
    if scaling in ("linear", "yarn"):
        cfg["rope_scaling"] = {"type": scaling, "rope_type": scaling,
                               "factor": _f32(get(Keys.Rope.SCALING_FACTOR, 1.0))}
        if scaling == "yarn":
            cfg["rope_scaling"]["original_max_position_embeddings"] = get(Keys.Rope.SCALING_ORIG_CTX_LEN)
    if n_experts:
        cfg["num_local_experts"] = n_experts
        cfg["num_experts_per_tok"] = get(Keys.LLM.EXPERT_USED_COUNT, 2)
    for typ, k in (("bos", K.BOS_ID), ("eos", K.EOS_ID), ("pad", K.PAD_ID)):
        if k in md:
            cfg[f"{typ}_token_id"] = int(md[k])
    return cfg


# ------------------------------------------------------------------ tokenizer

def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32 fields are sign-extended to 64 bits on the wire
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, value: Any, kind: str) -> bytes:
    """One protobuf field: kind 'v' varint, 'f' float32, 's' string/bytes/sub-message."""
    if kind == "v":
        return _varint(num << 3) + _varint(int(value))
    if kind == "f":
        return _varint(num << 3 | 5) + struct.pack("<f", value)
    data = value.encode("utf-8") if isinstance(value, str) else value
    return _varint(num << 3 | 2) + _varint(len(data)) + data


def sentencepiece_model(md) -> bytes:
    """A SentencePiece ModelProto (sentencepiece_model.proto field numbers) for a 'llama' GGUF vocab:
    BPE model, byte fallback when <0xXX> pieces exist, identity normalizer like Llama/Mistral's."""
    tokens, scores, types = md[K.LIST], md.get(K.SCORES), md.get(K.TOKEN_TYPE)
    ids = {t: int(md[k]) for t, k in (("unk", K.UNK_ID), ("bos", K.BOS_ID), ("eos", K.EOS_ID), ("pad", K.PAD_ID))
           if k in md}
    # SentencePiece needs its unknown piece typed UNKNOWN; llama.cpp's GGUF often marks it CONTROL (it is in
    # tokenizer_config's added_tokens_decoder), which the converter re-applies on the way back.
    unk = ids.get("unk")
    if unk is None and types is not None:
        unk = next((i for i, t in enumerate(types) if int(t) == TokenType.UNKNOWN), None)
    if unk is None:
        unk = tokens.index("<unk>") if "<unk>" in tokens else 0
    types = [int(t) for t in types] if types is not None else None
    scores = [float(x) for x in scores] if scores is not None else None
    pieces = []
    for i, tok in enumerate(tokens):
        kind = int(types[i]) if types is not None else int(TokenType.NORMAL)
        kind = kind if kind in (1, 2, 3, 4, 5, 6) else int(TokenType.NORMAL)
        kind = int(TokenType.UNKNOWN) if i == unk else kind
        score = float(scores[i]) if scores is not None else 0.0
        pieces.append(_field(1, _field(1, tok, "s") + _field(2, score, "f") + _field(3, kind, "v"), "s"))
    byte_fallback = types is not None and any(int(t) == TokenType.BYTE for t in types)
    trainer = (_field(3, 2, "v") + _field(4, len(tokens), "v") + _field(25, 1, "v") + _field(35, int(byte_fallback), "v")
               + _field(40, unk, "v") + _field(41, ids.get("bos", -1), "v") + _field(42, ids.get("eos", -1), "v")
               + _field(43, ids.get("pad", -1), "v"))
    add_prefix = bool(md.get(K.ADD_SPACE_PREFIX, True))
    normalizer = (_field(1, "identity", "s") + _field(3, int(add_prefix), "v") + _field(4, 0, "v")
                  + _field(5, 1, "v"))
    return b"".join(pieces) + _field(2, trainer, "s") + _field(3, normalizer, "s")


def tokenizer_json(md) -> dict:
    """tokenizer.json for a byte-level BPE ('gpt2') GGUF vocab, with the pre-tokenizer its `pre` names."""
    pre = md.get(K.PRE, "default")
    spec = next(((n, p) for name, n, p in PRE_TOKENIZERS if name == pre), None)
    if spec is None:
        raise ExportError(f"{K.PRE} {pre!r} has no known tokenizer.json pre-tokenizer "
                          f"(known: {', '.join(n for n, _, _ in PRE_TOKENIZERS)})")
    tokens, types = md[K.LIST], md.get(K.TOKEN_TYPE)
    vocab, added = {}, []
    for i, tok in enumerate(tokens):
        kind = int(types[i]) if types is not None else int(TokenType.NORMAL)
        if kind == TokenType.UNUSED and tok == f"[PAD{i}]":
            continue
        vocab[tok] = i
        if kind in (TokenType.CONTROL, TokenType.USER_DEFINED):
            added.append({"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": kind != TokenType.CONTROL, "special": kind == TokenType.CONTROL})
    post = None
    if md.get(K.ADD_BOS) and K.BOS_ID in md:
        bos = tokens[int(md[K.BOS_ID])]
        post = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos: {"id": bos, "ids": [int(md[K.BOS_ID])], "tokens": [bos]}}}
    pre_tok = json.loads(json.dumps(spec[1]))
    for node in [pre_tok, *pre_tok.get("pretokenizers", [])]:
        if node.get("type") == "ByteLevel":
            node["trim_offsets"] = True
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": spec[0], "pre_tokenizer": pre_tok, "post_processor": post,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": pre == "llama-bpe",  # as Llama 3's tokenizer.json
                      "vocab": vocab, "merges": list(md.get(K.MERGES, []))}}


def tokenizer_config(md, is_spm: bool) -> dict:
    """tokenizer_config.json: special tokens by content, add_* flags, chat template, added_tokens_decoder."""
    tokens, types = md[K.LIST], md.get(K.TOKEN_TYPE)
    cfg: dict[str, Any] = {}
    if K.ADD_BOS in md:
        cfg["add_bos_token"] = bool(md[K.ADD_BOS])
    if K.ADD_EOS in md:
        cfg["add_eos_token"] = bool(md[K.ADD_EOS])
    if K.ADD_SPACE_PREFIX in md and not is_spm:
        cfg["add_prefix_space"] = bool(md[K.ADD_SPACE_PREFIX])
    decoder = {}
    for i, t in enumerate(types if types is not None else []):
        if int(t) in (TokenType.CONTROL, TokenType.USER_DEFINED):
            decoder[str(i)] = {"content": tokens[i], "lstrip": False, "normalized": int(t) != TokenType.CONTROL,
                               "rstrip": False, "single_word": False, "special": int(t) == TokenType.CONTROL}
    cfg["added_tokens_decoder"] = decoder
    for typ, k in (("bos", K.BOS_ID), ("eos", K.EOS_ID), ("unk", K.UNK_ID), ("pad", K.PAD_ID)):
        if k in md and int(md[k]) < len(tokens):
            cfg[f"{typ}_token"] = tokens[int(md[k])]
    if K.CHAT_TEMPLATE in md:
        cfg["chat_template"] = md[K.CHAT_TEMPLATE]
    cfg["clean_up_tokenization_spaces"] = False
    cfg["model_max_length"] = int(md.get(key(Keys.LLM.CONTEXT_LENGTH, "llama"), 2048))
    cfg["tokenizer_class"] = "LlamaTokenizer" if is_spm else "GPT2Tokenizer"
    if is_spm:
        cfg["legacy"] = True
    return cfg


def model_card(md) -> str:
    """README.md front matter that gives convert_hf the same general.* back."""
    lines = ["---"]
    for k, field in CARD_FIELDS.items():
        if k in md:
            lines.append(f"{field}: {json.dumps(str(md[k]), ensure_ascii=False)}")
    if G.LANGUAGES in md:
        lines.append("language:")
        lines += [f"- {json.dumps(str(v), ensure_ascii=False)}" for v in md[G.LANGUAGES]]
    if G.TAGS in md:
        lines.append("tags:")
        lines += [f"- {json.dumps(str(v), ensure_ascii=False)}" for v in md[G.TAGS]]
    lines += ["---", "", "Exported from GGUF by workbench (`python -m workbench export-hf`).", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------ driver

def export_hf(gguf_path, out_dir, dtype: str = "f16", max_shard_bytes: int = 5 * 10**9) -> Path:
    """Write a Hugging Face folder for the llama-architecture GGUF at `gguf_path`; returns `out_dir`.
    Tensors stream one at a time into model.safetensors, or into model-0000N-of-0000M.safetensors shards
    plus an index when they exceed `max_shard_bytes` (transformers' default 5 GB)."""
    dtype = dtype.lower()
    if dtype not in DTYPES:
        raise ExportError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    out = Path(out_dir)
    with read_gguf(gguf_path) as gf:
        md = gf.metadata
        cfg = hf_config(gf)
        cfg["torch_dtype"] = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[dtype]
        model = md.get(K.MODEL)
        if model not in ("llama", "gpt2"):
            raise ExportError(f"{gguf_path}: tokenizer model {model!r} cannot be exported (llama or gpt2 only)")
        tok_json = tokenizer_json(md) if model == "gpt2" else None
        spm = sentencepiece_model(md) if model == "llama" else None
        tensors = hf_tensors(gf, cfg, dtype)
        out.mkdir(parents=True, exist_ok=True)
        write_sharded(out, tensors, max_shard_bytes, metadata={"format": "pt"})
        (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        write_side_files(gf, cfg, out, tok_json, spm)
    return out


def write_side_files(gf: GGUFFile, cfg: dict, out: Path, tok_json=None, spm=None) -> None:
    """What a Hugging Face folder holds besides its weights and config.json: generation_config.json, the
    tokenizer (tokenizer.model for SentencePiece, tokenizer.json for BPE; built from the GGUF's vocabulary
    unless given) and README.md."""
    md = gf.metadata
    if tok_json is None and spm is None:
        model = md.get(K.MODEL)
        if model not in ("llama", "gpt2"):
            raise ExportError(f"{gf.path}: tokenizer model {model!r} cannot be exported (llama or gpt2 only)")
        tok_json = tokenizer_json(md) if model == "gpt2" else None
        spm = sentencepiece_model(md) if model == "llama" else None
    gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id") if k in cfg}
    gen.update({hf: (_f32(md[k]) if isinstance(md[k], float) else md[k])
                for k, hf in SAMPLING_TO_GENERATION.items() if k in md})
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")
    (out / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(md, spm is not None), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if tok_json is not None:
        (out / "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False), encoding="utf-8")
    if spm is not None:
        (out / "tokenizer.model").write_bytes(spm)
    (out / "README.md").write_text(model_card(md), encoding="utf-8")
