"""WordPiece (BERT) tokenization, as llama.cpp's `llm_tokenizer_wpm_session` (tokenizer.ggml.model "bert").

llama.cpp's converter stores a BERT vocabulary without "##": a piece that starts a word gets a
U+2581 prefix ("▁hello"), a continuation piece is bare ("llo"). Tokenizing then runs in two steps:

1. `wpm_preprocess` (BertNormalizer + BertPreTokenizer): optionally map each codepoint to the first
   codepoint of its decomposition and drop marks (strip_accents), optionally lowercase; drop NUL,
   U+FFFD and control characters; split at whitespace; every punctuation character, ASCII symbol
   and CJK ideograph becomes a word of its own.
2. `WordPiece`: prefix each word with U+2581 and take the longest vocabulary token at each position
   (greedy, longest first); if some position has no token, the whole word becomes the unknown token.
"""
from __future__ import annotations

from workbench.text.unicode_data import (CONTROL, MARK, PUNCTUATION, SYMBOL, WHITESPACE, cpt_flags,
                                         cpt_nfd, cpt_tolower)

SPACE = "\u2581"

# CJK ideograph blocks of llm_tokenizer_wpm_session::is_chinese_char (after HF's BertPreTokenizer,
# including its 0x2B920 lower bound where the Unicode block starts at 0x2B820)
_CJK_RANGES = ((0x04E00, 0x09FFF), (0x03400, 0x04DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0x0F900, 0x0FAFF), (0x2F800, 0x2FA1F))


def is_chinese_char(cpt: int) -> bool:
    """A CJK ideograph: BERT splits each one off as a word of its own."""
    return any(lo <= cpt <= hi for lo, hi in _CJK_RANGES)


def wpm_preprocess(text: str, lowercase: bool = False, strip_accents: bool = False) -> list[str]:
    """Normalize and split into words (llm_tokenizer_wpm_session::preprocess)."""
    words: list[str] = []
    cur: list[str] = []
    for ch in text:
        cpt = ord(ch)
        if strip_accents:
            cpt = cpt_nfd(cpt)  # one codepoint in, one out: the base letter
        flags = cpt_flags(cpt)
        if flags & WHITESPACE:
            if cur:
                words.append("".join(cur))
                cur = []
            continue
        if cpt == 0 or cpt == 0xFFFD or flags & CONTROL:
            continue
        if strip_accents and flags & MARK:
            continue
        s = chr(cpt_tolower(cpt) if lowercase else cpt)
        if flags & PUNCTUATION or (cpt < 0x7F and flags & SYMBOL) or is_chinese_char(cpt):
            if cur:
                words.append("".join(cur))
                cur = []
            words.append(s)
        else:
            cur.append(s)
    if cur:
        words.append("".join(cur))
    return words


class WordPiece:
    """Greedy longest-match of one word against the vocabulary, memoized per word.

    `bytes_to_id` maps token texts (UTF-8) to ids; `max_token_len` is the longest token text in
    bytes (llama_vocab::max_token_len); `unk_id` is what a word without a full match becomes."""

    def __init__(self, bytes_to_id: dict[bytes, int], unk_id: int, max_token_len: int):
        self.bytes_to_id, self.unk_id, self.max_token_len = bytes_to_id, unk_id, max_token_len
        self.cache: dict[str, list[int]] = {}

    def __call__(self, word: str) -> list[int]:
        ids = self.cache.get(word)
        if ids is None:
            ids = self.cache[word] = self._tokenize(word)
        return ids

    def _tokenize(self, word: str) -> list[int]:
        # llama.cpp walks the bytes of "▁" + word; a token can only match at character boundaries
        raw = (SPACE + word).encode("utf-8", "surrogatepass")
        n, out, i = len(raw), [], 0
        while i < n:
            for j in range(min(n, i + self.max_token_len + 1), i, -1):
                tok = self.bytes_to_id.get(raw[i:j])
                if tok is not None:
                    out.append(tok)
                    i = j
                    break
            else:
                return [self.unk_id]  # some position has no token: the word is unknown
        return out or [self.unk_id]

    def tokenize(self, text: str, lowercase: bool = False, strip_accents: bool = False) -> list[int]:
        """Ids of a whole raw-text fragment (llm_tokenizer_wpm_session::tokenize)."""
        out: list[int] = []
        for word in wpm_preprocess(text, lowercase, strip_accents):
            out.extend(self(word))
        return out
