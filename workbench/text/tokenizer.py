"""The tokenizer stored in a GGUF file, reproducing llama.cpp's `llama_vocab` (src/llama-vocab.cpp).

    tok = Tokenizer.from_metadata(read_gguf(path).metadata)
    ids = tok.tokenize("Hello world")                  # llama_tokenize(add_special=True)
    text = tok.detokenize(ids)                         # llama_detokenize

Three vocabulary types: SentencePiece-style ("llama", workbench.text.spm), BPE ("gpt2" byte-level, and
"gemma4" SPM-style on raw UTF-8: workbench.text.bpe with workbench.text.pretokenize) and WordPiece
("bert", workbench.text.wpm). Special tokens are cut out of the text first (`_partition`, as
tokenizer_st_partition); token attributes, EOG set and defaults follow `llama_vocab::impl::load`.
"""
from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from workbench.gguf import Keys

from workbench.text.bpe import BPEWordCache
from workbench.text.pretokenize import BYTE_TO_UNICODE, PRE_TOKENIZERS, UNICODE_TO_BYTE, regex_split
from workbench.text.spm import SPACE, bridge_chars, split_words, spm_tokenize
from workbench.text.unicode_data import cpts_from_utf8
from workbench.text.wpm import WordPiece


class TokenizerError(ValueError):
    """Unsupported or inconsistent tokenizer metadata, or an out-of-range token id."""


# llama_token_attr bits (include/llama.h)
ATTR_UNDEFINED, ATTR_UNKNOWN, ATTR_UNUSED, ATTR_NORMAL = 0, 1 << 0, 1 << 1, 1 << 2
ATTR_CONTROL, ATTR_USER_DEFINED, ATTR_BYTE = 1 << 3, 1 << 4, 1 << 5
ATTR_LSTRIP, ATTR_RSTRIP = 1 << 7, 1 << 8
# tokenizer.ggml.token_type (llama_token_type) -> attribute
_TYPE_TO_ATTR = {1: ATTR_NORMAL, 2: ATTR_UNKNOWN, 3: ATTR_CONTROL, 4: ATTR_USER_DEFINED,
                 5: ATTR_UNUSED, 6: ATTR_BYTE}

# fill-in-the-middle token kind -> its id key (LLM_KV_TOKENIZER_FIM_*_ID in llama_vocab::impl::load)
_FIM_KEYS = {"pre": Keys.Tokenizer.FIM_PRE_ID, "suf": Keys.Tokenizer.FIM_SUF_ID, "mid": Keys.Tokenizer.FIM_MID_ID,
             "pad": Keys.Tokenizer.FIM_PAD_ID, "rep": Keys.Tokenizer.FIM_REP_ID, "sep": Keys.Tokenizer.FIM_SEP_ID}

# token texts llama.cpp recognises as end-of-turn / end-of-generation (llama_vocab::impl::load)
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
              "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>",
              "<end_of_utterance>")
_EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>",
              "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>",
              "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>",
              "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[")
_FIM_TEXTS = {
    "pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
            "<|code_prefix|>", "<|prefix|>"),
    "suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
            "<|code_suffix|>", "<|suffix|>"),
    "mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
            "<|code_middle|>", "<|middle|>"),
    "pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "sep": ("<|file_sep|>",),
}
_ALWAYS_RENDERED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")
_C_SPACE = " \t\n\v\f\r"  # C isspace() in the "C" locale
_INVALID_BYTE = re.compile("[\udc80-\udcff]")  # surrogateescape'd bytes of invalid UTF-8
# pre-tokenizer names llama.cpp maps to its Gemma-4 type: add_bos forced on, whatever the metadata
# says, and a word of newlines that is a token is taken whole
_GEMMA4_PRE = ("gemma4", "granite-embed-multi-311m")


@dataclass
class Tokenizer:
    kind: str                           # "spm", "bpe" or "wpm"
    tokens: list[str] = field(repr=False)  # token texts (GPT-2 byte-level form for byte-level BPE)
    scores: list[float] = field(repr=False)
    attrs: list[int] = field(repr=False)  # ATTR_* bits per token
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None
    unk_id: int | None
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool = False      # SPM: prefix a space to text at the start / after specials
    clean_spaces: bool = False          # detokenize: " ," -> "," etc (BPE pre-tokenizer dependent)
    pre: str = "default"
    eog_ids: frozenset[int] = frozenset()
    merges: list[str] = field(default_factory=list, repr=False)
    ignore_merges: bool = False
    sep_id: int | None = None           # WPM: appended after the text when add_special
    lowercase: bool = True              # WPM normalizer (tokenizer.ggml.normalizer.*)
    strip_accents: bool = True

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def from_metadata(cls, md: Mapping) -> "Tokenizer":
        model = md.get(Keys.Tokenizer.MODEL)
        tokens = md.get(Keys.Tokenizer.LIST)
        if tokens is None:
            raise TokenizerError(f"metadata has no {Keys.Tokenizer.LIST!r}")
        tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        n = len(tokens)
        scores = md.get(Keys.Tokenizer.SCORES)
        scores = [float(s) for s in scores] if scores is not None else [0.0] * n
        types = md.get(Keys.Tokenizer.TOKEN_TYPE)
        attrs = ([_TYPE_TO_ATTR.get(int(t), ATTR_UNDEFINED) for t in types] if types is not None
                 else [ATTR_NORMAL] * n)
        if len(scores) < n or len(attrs) < n:
            raise TokenizerError(f"tokenizer scores/token_type shorter than the {n} tokens")
        pre, merges, ignore_merges, clean_spaces = "default", [], False, False
        sep = None
        if model == "llama":
            kind, bos, eos, unk = "spm", 1, 2, 0
            add_space_prefix, add_bos, add_eos = True, True, False
        elif model in ("gpt2", "gemma4"):
            kind, bos, eos, unk = ("bpe", 11, 11, None) if model == "gpt2" else ("bpe", None, None, None)
            add_space_prefix, add_bos, add_eos = False, False, False
            # gemma4 always means the "gemma4" pre-tokenizer (llama_vocab::impl::load)
            pre = (md.get(Keys.Tokenizer.PRE) or "default") if model == "gpt2" else "gemma4"
            if pre not in PRE_TOKENIZERS:
                raise TokenizerError(f"unsupported {Keys.Tokenizer.PRE} = {pre!r} "
                                     f"(supported: {', '.join(sorted(PRE_TOKENIZERS))})")
            cfg = PRE_TOKENIZERS[pre]
            clean_spaces, ignore_merges = cfg.clean_spaces, cfg.ignore_merges
            if cfg.add_bos is not None:
                add_bos = cfg.add_bos
            merges = md.get(Keys.Tokenizer.MERGES)
            if merges is None:
                raise TokenizerError(f"BPE tokenizer without {Keys.Tokenizer.MERGES!r}")
        elif model == "bert":
            kind, bos, eos, unk, sep = "wpm", 101, None, 100, 102
            add_space_prefix, add_bos, add_eos, clean_spaces = False, True, False, True
        else:
            raise TokenizerError(f"unsupported {Keys.Tokenizer.MODEL} = {model!r} (supported: 'llama' "
                                 "(SentencePiece), 'gpt2' (byte-level BPE), 'gemma4' (SPM-style BPE), "
                                 "'bert' (WordPiece))")
        add_space_prefix = bool(md.get(Keys.Tokenizer.ADD_SPACE_PREFIX, add_space_prefix))

        def special_id(key, default):
            default = default if default is not None and default < n else None
            v = md.get(key)
            return int(v) if v is not None and 0 <= int(v) < n else default

        bos, eos, unk = (special_id(Keys.Tokenizer.BOS_ID, bos), special_id(Keys.Tokenizer.EOS_ID, eos),
                         special_id(Keys.Tokenizer.UNK_ID, unk))
        eot, eom = special_id(Keys.Tokenizer.EOT_ID, None), special_id(Keys.Tokenizer.EOM_ID, None)
        sep = special_id(Keys.Tokenizer.SEP_ID, sep)
        fim = {k: special_id(key, None) for k, key in _FIM_KEYS.items()}
        add_bos = bool(md.get(Keys.Tokenizer.ADD_BOS, add_bos)) or pre in _GEMMA4_PRE
        add_eos = bool(md.get(Keys.Tokenizer.ADD_EOS, add_eos))
        # BertNormalizer options (on unless the metadata says no): strip_accents follows lowercase
        lowercase = bool(md.get(Keys.Tokenizer.NORMALIZER_LOWERCASE, True))
        strip_accents = bool(md.get(Keys.Tokenizer.NORMALIZER_STRIP_ACCENTS, lowercase))
        if kind == "wpm" and unk is None:
            raise TokenizerError(f"{Keys.Tokenizer.MODEL} = 'bert' (WordPiece) needs an unknown token for "
                                 f"words it cannot spell: {Keys.Tokenizer.UNK_ID} is missing or out of range "
                                 f"and token 100 does not exist")
        eot, eog = _special_by_text(tokens, attrs, eos, eot, eom, fim)
        _special_by_model_name(md, tokens, attrs)
        return cls(kind=kind, tokens=tokens, scores=scores, attrs=attrs, bos_id=bos, eos_id=eos,
                   eot_id=eot, unk_id=unk, add_bos=add_bos, add_eos=add_eos,
                   add_space_prefix=add_space_prefix, clean_spaces=clean_spaces, pre=pre,
                   eog_ids=frozenset(eog), merges=list(merges), ignore_merges=ignore_merges,
                   sep_id=sep, lowercase=lowercase, strip_accents=strip_accents)

    def __post_init__(self):
        self.token_to_id = {t: i for i, t in enumerate(self.tokens)}
        self.bytes_to_id = {t.encode("utf-8", "surrogateescape"): i for t, i in self.token_to_id.items()}
        # special tokens matched in raw text, longest (in bytes) first (cache_special_tokens)
        special = [i for i, a in enumerate(self.attrs)
                   if a & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)]
        self._special = sorted(special, key=lambda i: -len(self._text_bytes(i)))
        self._escape_spaces = self.kind == "bpe" and PRE_TOKENIZERS[self.pre].escape_whitespaces
        self._pieces = [self._piece_uncached(i) for i in range(len(self.tokens))]
        if self.kind == "spm":
            self._bridges = bridge_chars(self.tokens)
            self._spm_cache: dict[str, list[int]] = {}
        if self.kind == "bpe":
            ranks: dict[tuple[str, str], int] = {}
            for rank, m in enumerate(self.merges):
                pos = m.find(" ", 1)
                pair = (m[:pos], m[pos + 1:]) if pos >= 0 else ("", "")
                ranks.setdefault(pair, rank)  # first occurrence wins (unordered_map::emplace)
            cfg = PRE_TOKENIZERS[self.pre]
            self._regexes, self._byte_encode = cfg.regexes, cfg.byte_encode
            if cfg.byte_encode:  # a symbol outside the vocabulary: its raw bytes as 1-byte tokens
                byte_tokens = [self.bytes_to_id.get(bytes([b])) for b in range(256)]
            else:  # raw UTF-8 (SPM-style BPE): byte tokens are <0xXX>
                byte_tokens = [self.token_to_id.get(f"<0x{b:02X}>") for b in range(256)]
            self._words = BPEWordCache(self.token_to_id, ranks, self.ignore_merges, byte_tokens,
                                       whole_newlines=self.pre in _GEMMA4_PRE)
        if self.kind == "wpm":
            if self.unk_id is None:
                raise TokenizerError("a WordPiece tokenizer needs unk_id")
            longest = max((len(b) for b in self.bytes_to_id), default=0)
            self._wordpiece = WordPiece(self.bytes_to_id, self.unk_id, longest)

    def _text_bytes(self, i: int) -> bytes:
        return self.tokens[i].encode("utf-8", "surrogateescape")

    # ---- properties ------------------------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    def is_eog(self, token: int) -> bool:
        return token in self.eog_ids

    def is_control(self, token: int) -> bool:
        return bool(self.attrs[token] & ATTR_CONTROL)

    def byte_to_token(self, b: int) -> int:
        """llama_vocab::byte_to_token: SPM <0xXX> (or the raw byte), BPE its GPT-2 character."""
        if self.kind == "spm":
            tok = self.token_to_id.get(f"<0x{b:02X}>")
            if tok is None:
                tok = self.bytes_to_id.get(bytes([b]))
        else:
            tok = self.token_to_id.get(BYTE_TO_UNICODE[b])
        if tok is None:
            raise TokenizerError(f"vocabulary has no token for byte 0x{b:02X}")
        return tok

    # ---- text -> ids -----------------------------------------------------------------------
    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Cut special tokens out of the text (tokenizer_st_partition): each special token, longest
        first, splits every remaining raw fragment at each occurrence. Control and unknown
        tokens are only recognised with parse_special; user-defined ones always."""
        frags: list[str | int] = [text]
        for sid in self._special:
            attr = self.attrs[sid]
            if not parse_special and attr & (ATTR_CONTROL | ATTR_UNKNOWN):
                continue
            st = self.tokens[sid]
            out: list[str | int] = []
            for frag in frags:
                if not isinstance(frag, str) or st not in frag:
                    out.append(frag)
                    continue
                pos = 0
                while True:
                    hit = frag.find(st, pos)
                    if hit < 0:
                        if pos < len(frag):
                            out.append(frag[pos:])
                        break
                    left = frag[pos:hit]
                    if attr & ATTR_LSTRIP:
                        left = left.rstrip(_C_SPACE)
                    if left:
                        out.append(left)
                    out.append(sid)
                    pos = hit + len(st)
                    if attr & ATTR_RSTRIP:
                        while pos < len(frag) and frag[pos] in _C_SPACE:
                            pos += 1
            frags = out
        return frags

    def tokenize(self, text: str | bytes, add_special: bool = True,
                 parse_special: bool = False) -> list[int]:
        """llama_tokenize: BOS/EOS as the metadata says when add_special; special-token texts
        become their tokens only with parse_special."""
        if isinstance(text, (bytes, bytearray)):
            # SPM works on raw bytes (invalid ones become byte tokens); BPE and WPM decode
            # codepoints first, each invalid byte becoming U+FFFD (unicode_cpts_from_utf8)
            text = (bytes(text).decode("utf-8", "surrogateescape") if self.kind == "spm"
                    else "".join(map(chr, cpts_from_utf8(bytes(text)))))
        frags = self._partition(text, parse_special) if text else []
        if self.kind == "wpm":
            return self._tokenize_wpm(frags, add_special)
        out: list[int] = []
        if add_special and self.add_bos:
            if self.bos_id is None:
                raise TokenizerError("add_bos is set but the vocabulary has no BOS token")
            out.append(self.bos_id)
        if self.kind == "spm":
            prev_special = True  # prefix a space at the start and after each special token
            for frag in frags:
                if isinstance(frag, int):
                    out.append(frag)
                    prev_special = True
                    continue
                if self.add_space_prefix and prev_special:
                    frag = " " + frag
                escaped = frag.replace(" ", SPACE)
                # invalid UTF-8 (bytes input) can glue bytes across a cut: no cutting then
                words = (split_words(escaped, self._bridges) if not _INVALID_BYTE.search(escaped)
                         else [escaped])
                for word in words:
                    ids = self._spm_cache.get(word)
                    if ids is None:
                        raw = word.encode("utf-8", "surrogateescape")
                        ids = spm_tokenize(raw, self.bytes_to_id, self.scores, self.byte_to_token)
                        self._spm_cache[word] = ids
                    out.extend(ids)
                prev_special = False
        else:
            for frag in frags:
                if isinstance(frag, int):
                    out.append(frag)
                    continue
                if self._escape_spaces:  # SPM-style BPE (llama_escape_whitespace)
                    frag = frag.replace(" ", SPACE)
                for word in regex_split(frag, self._regexes, self._byte_encode):
                    out.extend(self._words(word))
        if add_special and self.add_eos:
            if self.eos_id is None:
                raise TokenizerError("add_eos is set but the vocabulary has no EOS token")
            out.append(self.eos_id)
        return out

    def _tokenize_wpm(self, frags: list[str | int], add_special: bool) -> list[int]:
        """The WPM branch of llama_vocab::impl::tokenize: with add_special the text is framed by
        BOS ([CLS]) and SEP, whatever add_bos says."""
        if add_special and (self.bos_id is None or self.sep_id is None):
            raise TokenizerError("a WordPiece vocabulary needs BOS ([CLS]) and SEP tokens for add_special")
        out = [self.bos_id] if add_special else []
        for frag in frags:
            if isinstance(frag, int):
                out.append(frag)
            else:
                out.extend(self._wordpiece.tokenize(frag, self.lowercase, self.strip_accents))
        if add_special:
            out.append(self.sep_id)
        return out

    # ---- ids -> text -----------------------------------------------------------------------
    def _piece_uncached(self, token: int) -> bytes:
        """llama_token_to_piece(special=True) before caching."""
        attr, text = self.attrs[token], self.tokens[token]
        if attr & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED):
            return text.encode("utf-8", "surrogateescape")
        if attr & ATTR_NORMAL:
            if self.kind != "bpe" or self._escape_spaces:  # llama_unescape_whitespace
                return text.replace("\u2581", " ").encode("utf-8", "surrogateescape")
            out = bytearray()
            for ch in text:  # llama_decode_text: GPT-2 characters back to bytes
                b = UNICODE_TO_BYTE.get(ch)
                if b is None:
                    u = ch.encode("utf-8", "surrogateescape")
                    out += b"[UNK_BYTE_0x" + u.hex().encode() + text.encode("utf-8", "surrogateescape") + b"]"
                else:
                    out.append(b)
            return bytes(out)
        if attr & ATTR_BYTE:
            return bytes([int(text[3:5], 16)])
        return b""

    def token_to_piece(self, token: int, special: bool = True, lstrip: int = 0) -> bytes:
        """The bytes of one token (llama_token_to_piece). Control/unknown tokens are empty unless
        `special`; up to `lstrip` leading spaces are dropped."""
        if not 0 <= token < len(self.tokens):
            raise TokenizerError(f"token id {token} out of range [0, {len(self.tokens)})")
        if not special and self.attrs[token] & (ATTR_UNKNOWN | ATTR_CONTROL):
            return b""
        piece = self._pieces[token]
        k = 0
        while k < lstrip and k < len(piece) and piece[k] == 0x20:
            k += 1
        return piece[k:]

    def detokenize_bytes(self, ids: Iterable[int], remove_special: bool = False,
                         unparse_special: bool = False) -> bytes:
        """llama_detokenize, as raw bytes."""
        ids = [int(i) for i in ids]
        remove_space = self.add_space_prefix  # drop the space the tokenizer prefixed
        if remove_special and self.add_bos and ids and ids[0] == self.bos_id:
            remove_space = False  # (llama.cpp keeps the space when it strips a BOS)
            ids = ids[1:]
        if remove_special and self.add_eos and ids and ids[-1] == self.eos_id:
            ids = ids[:-1]
        parts = []
        for tok in ids:
            parts.append(self.token_to_piece(tok, unparse_special, int(remove_space)))
            remove_space = False
        text = b"".join(parts)
        return _clean_up_spaces(text) if self.clean_spaces else text

    def detokenize(self, ids: Iterable[int], remove_special: bool = False,
                   unparse_special: bool = False) -> str:
        """llama_detokenize, decoded as UTF-8 (invalid bytes become U+FFFD)."""
        return self.detokenize_bytes(ids, remove_special, unparse_special).decode("utf-8", "replace")


def _special_by_text(tokens: list[str], attrs: list[int], eos: int | None, eot: int | None,
                     eom: int | None, fim: dict[str, int | None]) -> tuple[int | None, set[int]]:
    """EOT / EOM / FIM / EOG tokens found by their text, as llama_vocab::impl::load: they are forced
    to CONTROL (attrs and fim are updated in place). Returns the EOT token and the end-of-generation
    set. llama.cpp walks a hash map here; we walk ids in order (only matters if several texts match)."""
    index = {t: i for i, t in enumerate(tokens)}
    if eot is None:
        eot = next((index[t] for t in sorted((t for t in _EOT_TEXTS if t in index),
                                              key=index.get)), None)
    if eot is not None:
        attrs[eot] |= ATTR_CONTROL
    if eom is None and "<|eom_id|>" in index:
        eom = index["<|eom_id|>"]
        attrs[eom] |= ATTR_CONTROL
    for k, texts in _FIM_TEXTS.items():
        if fim[k] is None:
            hits = sorted(index[t] for t in texts if t in index)
            if hits:
                fim[k] = hits[0]
                attrs[hits[0]] |= ATTR_CONTROL
    for i, t in enumerate(tokens):  # control tokens named "unused" are unused
        if attrs[i] & ATTR_CONTROL and "unused" in t:
            attrs[i] |= ATTR_UNUSED
    eog = {i for i in (fim["pad"], fim["rep"], fim["sep"]) if i is not None}
    for t in _EOG_TEXTS:
        if t in index:
            eog.add(index[t])
            attrs[index[t]] |= ATTR_CONTROL
    for t in _ALWAYS_RENDERED:  # gpt-oss: these are always rendered
        if t in index:
            attrs[index[t]] = ATTR_USER_DEFINED
    eog |= {i for i in (eos, eot, eom) if i is not None}
    texts = {tokens[i]: i for i in sorted(eog)}
    has_call = "<|call|>" in texts or "<|calls|>" in texts
    if "<|end|>" in texts and has_call and ("<|return|>" in texts or "<|flush|>" in texts):
        end = texts["<|end|>"]  # o200k_harmony / solar-open: <|end|> ends no generation there
        eog.discard(end)
        attrs[end] = ATTR_USER_DEFINED
    if "</s>" in texts and ("<|tool_response>" in texts or "<|plamo:eos|>" in texts):
        eog.discard(texts["</s>"])  # Gemma-4, PLaMo: "</s>" is a normal token there
        attrs[texts["</s>"]] = ATTR_NORMAL
    return eot, eog


def _special_by_model_name(md: Mapping, tokens: list[str], attrs: list[int]) -> None:
    """LSTRIP / RSTRIP set by model, pre-tokenizer or architecture name (the end of
    llama_vocab::impl::load), in place."""
    index = {t: i for i, t in enumerate(tokens)}
    name = str(md.get(Keys.General.NAME) or "").lower()
    pre = str(md.get(Keys.Tokenizer.PRE) or "")
    arch = str(md.get(Keys.General.ARCHITECTURE) or "")
    if (any(k in pre for k in ("jina-v2-de", "jina-v2-es", "jina-v2-code"))
            or any(k in arch for k in ("nomic-bert-moe", "jina-bert-v3"))):
        if "<mask>" in index:
            attrs[index["<mask>"]] |= ATTR_LSTRIP
    elif "phi-3" in name or "phi3" in name:
        for i, a in enumerate(attrs):  # every special token eats the spaces after it ...
            if a & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN):
                attrs[i] |= ATTR_RSTRIP
        if "</s>" in index:
            attrs[index["</s>"]] |= ATTR_RSTRIP
        for t in ("<unk>", "<s>", "<|endoftext|>"):  # ... except these
            if t in index:
                attrs[index[t]] &= ~ATTR_RSTRIP
    elif "modern-bert" in name and "[MASK]" in index:
        attrs[index["[MASK]"]] |= ATTR_LSTRIP


def _clean_up_spaces(text: bytes) -> bytes:
    """The three in-place passes of llama_vocab::impl::detokenize when clean_spaces is set."""
    t = bytearray(text)
    # 1: " ?", " !", " .", " ," lose the space
    n, total = len(t), (1 if t else 0)
    for i in range(1, n):
        x = t[i]
        if t[i - 1] == 0x20 and x in b"?!.,":
            total -= 1
        t[total] = x
        total += 1
    del t[total:]
    # 2: " ' " -> "'"
    n, total, i = len(t), (1 if t else 0), 1
    while i < n:
        x = t[i]
        if x == 0x27 and i + 1 < n and t[i - 1] == 0x20 and t[i + 1] == 0x20:
            total -= 1
            i += 1
            t[i] = 0  # the next space is skipped (and reads as NUL afterwards)
        t[total] = x
        total += 1
        i += 1
    del t[total:]
    # 3: " 's", " 'm", " 're", " 've" lose the space
    n, total = len(t), (1 if t else 0)
    for i in range(1, n):
        x = t[i]
        if t[i - 1] == 0x20 and x == 0x27 and i + 1 < n:
            x1 = t[i + 1]
            if x1 in b"sm":
                total -= 1
            elif x1 not in b"td" and i + 2 < n and (x1, t[i + 2]) in ((0x72, 0x65), (0x76, 0x65)):
                total -= 1
        t[total] = x
        total += 1
    del t[total:]
    return bytes(t)


class StreamDecoder:
    """Feed token ids one at a time, get text back without ever splitting a UTF-8 character:
    incomplete trailing bytes wait for the next token (as llama.cpp's CLIs print pieces)."""

    def __init__(self, tokenizer: Tokenizer, special: bool = False):
        self.tokenizer, self.special = tokenizer, special
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        return self._decoder.decode(self.tokenizer.token_to_piece(token, self.special))

    def flush(self) -> str:
        """Whatever is still pending (an incomplete character becomes U+FFFD)."""
        return self._decoder.decode(b"", final=True)
