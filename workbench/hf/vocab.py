"""Tokenizer files -> tokenizer.* GGUF metadata, as llama.cpp's converter writes them, without transformers.

- SentencePiece (`tokenizer.model`, read with the `sentencepiece` package): pieces, scores and token types
  (TextModel._create_vocab_sentencepiece), then added_tokens.json and tokenizer_config.json's
  added_tokens_decoder (user-defined / control tokens).
- Byte-level BPE (`tokenizer.json`): tokens, types and merges (TextModel.get_vocab_base + SpecialVocab).
  llama.cpp names the pre-tokenizer by hashing transformers' tokenization of a check string; bpe_pre.py
  reproduces that tokenization, and tokenizers it cannot model are recognised from their tokenizer.json
  description (PRE_TOKENIZERS).
- Special tokens, add_bos/add_eos and the chat template: special_vocab.py.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.gguf.constants import GGUFValueType as VT, Keys, TokenType
from workbench.hf.bpe_pre import pre_from_hash
from workbench.hf.special_vocab import special_metadata

K = Keys.Tokenizer
SPIECE_SPACE = "\u2581"


class VocabError(ValueError):
    """A tokenizer file that cannot be converted (the message names it)."""


@dataclass
class Vocab:
    model: str                    # tokenizer.ggml.model: "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    pre: str                      # tokenizer.ggml.pre
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)


def _json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise VocabError(f"{path}: invalid JSON ({e})") from None


def looks_special(token: str) -> bool:
    """Added tokens some models forget to mark special (TextModel.does_token_look_special)."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
            or (token.startswith("<unused") and token.endswith(">")))


def sentencepiece_vocab(model_dir: Path, vocab_size: int | None) -> Vocab:
    """tokenizer.model (+ added_tokens.json, tokenizer_config.json) -> Vocab (_create_vocab_sentencepiece)."""
    from sentencepiece import SentencePieceProcessor

    path = model_dir / "tokenizer.model"
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
    except (OSError, RuntimeError) as e:
        raise VocabError(f"{path}: not a SentencePiece model ({e})") from None
    n_sp = sp.vocab_size()
    vocab_size = vocab_size or n_sp
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [int(TokenType.UNUSED)] * vocab_size
    for i in range(min(n_sp, vocab_size)):
        kind = TokenType.NORMAL
        if sp.IsUnknown(i):
            kind = TokenType.UNKNOWN
        elif sp.IsControl(i):
            kind = TokenType.CONTROL
        elif sp.IsUnused(i):
            kind = TokenType.UNUSED
        elif sp.IsByte(i):
            kind = TokenType.BYTE
        tokens[i], scores[i], types[i] = sp.IdToPiece(i), sp.GetScore(i), int(kind)
    added = model_dir / "added_tokens.json"
    if added.is_file():
        for text, tid in _json(added).items():
            if tid < vocab_size:
                tokens[tid], scores[tid], types[tid] = text, -1000.0, int(TokenType.USER_DEFINED)
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        for tid, data in _json(config).get("added_tokens_decoder", {}).items():
            tid, text = int(tid), data["content"]
            if tid >= vocab_size:
                continue
            if data.get("special") or looks_special(text):
                types[tid] = int(TokenType.CONTROL)
            else:
                text = text.replace(SPIECE_SPACE, " ")  # pre-normalize user-defined spaces
                types[tid] = int(TokenType.USER_DEFINED)
            tokens[tid], scores[tid] = text, -1000.0
    return Vocab("llama", "default", tokens, types, scores)


# Pre-tokenizers recognised from tokenizer.json (name, normalizer, pre_tokenizer), stripped of the keys that
# do not change tokenization. llama.cpp identifies them by hashing a tokenization (get_vocab_base_pre).
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
LLAMA3_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
PRE_TOKENIZERS: list[tuple[str, Any, Any]] = [
    ("smollm", None, {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                          _BYTE_LEVEL]}),
    ("llama-bpe", None, {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}),
    ("gpt-2", None, _BYTE_LEVEL),
]
# same description as smollm (the check-string hash tells them apart by vocabulary); export uses these
PRE_TOKENIZERS += [(name, None, PRE_TOKENIZERS[0][2]) for name in ("starcoder", "refact")]
_IGNORED = ("trim_offsets",)


def _canonical(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _canonical(v) for k, v in node.items() if k not in _IGNORED}
    if isinstance(node, list):
        return [_canonical(v) for v in node]
    return node


def detect_pre(tokenizer_json: dict, path: Path) -> str:
    """The tokenizer.ggml.pre name of a byte-level BPE tokenizer.json: llama.cpp's check-string hash when
    our tokenizer can compute it and the hash is known (bpe_pre), else the pre-tokenizer description."""
    if (name := pre_from_hash(tokenizer_json)) is not None:
        return name
    norm, pre = _canonical(tokenizer_json.get("normalizer")), _canonical(tokenizer_json.get("pre_tokenizer"))
    for name, want_norm, want_pre in PRE_TOKENIZERS:
        if norm == want_norm and pre == want_pre:
            return name
    raise VocabError(f"{path}: BPE pre-tokenizer not recognized (normalizer {norm}, pre_tokenizer {pre}); "
                     f"known: {', '.join(n for n, _, _ in PRE_TOKENIZERS)}")


def bpe_vocab(model_dir: Path, vocab_size: int | None) -> Vocab:
    """tokenizer.json (byte-level BPE) -> Vocab with merges (get_vocab_base + SpecialVocab merges)."""
    path = model_dir / "tokenizer.json"
    tj = _json(path)
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise VocabError(f"{path}: not a BPE tokenizer (model type {model.get('type')!r})")
    if model.get("byte_fallback") and not model.get("ignore_merges"):
        # llama.cpp reads these through transformers (LlamaHfVocab); the SentencePiece file is the way here
        raise VocabError(f"{path}: a SentencePiece-style BPE (byte_fallback) without tokenizer.model; "
                         f"put the model's tokenizer.model next to it")
    vocab: dict[str, int] = dict(model["vocab"])
    added = {a["content"]: a for a in tj.get("added_tokens", [])}
    config_path = model_dir / "tokenizer_config.json"
    config = _json(config_path) if config_path.is_file() else {}
    for tid, data in config.get("added_tokens_decoder", {}).items():
        added.setdefault(data["content"], {**data, "id": int(tid)})
    for text, a in added.items():
        vocab[text] = a["id"]
    vocab_size = vocab_size or len(vocab)
    if max(vocab.values()) >= vocab_size:
        raise VocabError(f"{path}: token id {max(vocab.values())} is not below vocab_size {vocab_size}")
    reverse = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(int(TokenType.UNUSED))
            continue
        text = reverse[i]
        if text in added:
            if added[text].get("special") or looks_special(text):
                types.append(int(TokenType.CONTROL))
            else:
                text = text.replace(SPIECE_SPACE, " ")
                types.append(int(TokenType.USER_DEFINED))
        else:
            types.append(int(TokenType.NORMAL))
        tokens.append(text)
    return Vocab("gpt2", detect_pre(tj, path), tokens, types, merges=_merges(model.get("merges"), path))


def _merges(merges: Any, path: Path) -> list[str]:
    """Merges as "a b" strings; the list-of-pairs format has its spaces encoded as U+0120+... (SpecialVocab)."""
    if not merges:
        return []
    if isinstance(merges[0], str):
        return list(merges)
    if isinstance(merges[0], list) and len(merges[0]) == 2:
        return [" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in pair)
                for pair in merges]
    raise VocabError(f"{path}: unknown merges format")


def vocab_metadata(model_dir: Path, vocab_size: int | None) -> list[tuple[str, Any, Any]]:
    """All tokenizer.* keys for a Llama-family model (LlamaModel.set_vocab): SentencePiece when
    tokenizer.model exists, else byte-level BPE from tokenizer.json."""
    out: list[tuple[str, Any, Any]] = []
    tc_path = model_dir / "tokenizer_config.json"
    if tc_path.is_file() and isinstance(_json(tc_path).get("add_prefix_space"), bool):
        out.append((K.ADD_SPACE_PREFIX, _json(tc_path)["add_prefix_space"], VT.BOOL))
    if (model_dir / "tokenizer.model").is_file():
        v = sentencepiece_vocab(model_dir, vocab_size)
    elif (model_dir / "tokenizer.json").is_file():
        v = bpe_vocab(model_dir, vocab_size)
    else:
        raise VocabError(f"{model_dir}: no tokenizer.model or tokenizer.json")
    out += [(K.MODEL, v.model, VT.STRING), (K.PRE, v.pre, VT.STRING),
            (K.LIST, v.tokens, (VT.ARRAY, VT.STRING))]
    if v.scores is not None:
        out.append((K.SCORES, v.scores, (VT.ARRAY, VT.FLOAT32)))
    out.append((K.TOKEN_TYPE, v.types, (VT.ARRAY, VT.INT32)))
    if v.model == "gpt2":
        out.append((K.MERGES, v.merges, (VT.ARRAY, VT.STRING)))
    out += special_metadata(model_dir, len(v.tokens) if v.model == "llama" else None)
    if vocab_size == 32016:  # LlamaModel.set_vocab: CodeLlama's infill tokens (only EOT has a GGUF writer)
        out += special_metadata(model_dir, None, ("prefix", "suffix", "middle", "eot"),
                                {"prefix": 32007, "suffix": 32008, "middle": 32009, "eot": 32010})
    if vocab_size == 49152:  # LlamaModel.set_vocab: "granite small models" never add BOS
        out.append((K.ADD_BOS, False, VT.BOOL))
    return out
