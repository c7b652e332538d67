"""SentencePiece-style merges, as llama.cpp's `llm_tokenizer_spm_session` (tokenizer.ggml.model "llama").

The text (spaces already escaped to U+2581) starts as one symbol per UTF-8 character; the adjacent
pair whose concatenation is a vocabulary token with the highest score is merged first (ties:
leftmost). Final symbols that are not tokens are split back along the merges that built them
(`resegment`), down to single characters, which fall back to byte tokens <0xXX>.
"""
from __future__ import annotations

import heapq
import re
from typing import Callable

SPACE = "\u2581"


def bridge_chars(tokens: list[str]) -> frozenset[str]:
    """Characters that some token has right before a U+2581 (other than U+2581 itself)."""
    return frozenset(t[i - 1] for t in tokens for i in range(1, len(t))
                     if t[i] == SPACE and t[i - 1] != SPACE)


def split_words(text: str, bridges: frozenset[str]) -> list[str]:
    """Cut the escaped text before each run of U+2581 that no token can bridge.

    llama.cpp merges over the whole text, but a merge joins two neighbours into a token, so it
    can only cross such a cut if some token contains "<c>U+2581" (c = the char before the cut).
    Cutting there changes nothing in the result and lets words be tokenized once and cached."""
    banned = "".join(re.escape(c) for c in sorted(bridges | {SPACE}))
    return [w for w in re.split(f"(?<=[^{banned}])(?={SPACE})", text) if w]


def _utf8_len(lead: int) -> int:
    """unicode_len_utf8: length from the lead byte's high nibble (continuation bytes count 1)."""
    return (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4)[lead >> 4]


def spm_tokenize(text: bytes, bytes_to_id: dict[bytes, int], scores: list[float],
                 byte_to_token: Callable[[int], int]) -> list[int]:
    starts, pos = [], 0
    while pos < len(text):
        starts.append(pos)
        pos += min(_utf8_len(text[pos]), len(text) - pos)
    n = len(starts)
    if n == 0:
        return []
    offs = starts                      # symbol i covers text[offs[i]:offs[i] + size[i]]
    size = [b - a for a, b in zip(starts, starts[1:] + [len(text)])]
    prev = list(range(-1, n - 1))
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    heap: list[tuple[float, int, int, int]] = []
    rev_merge: dict[bytes, tuple[int, int]] = {}

    def try_add_bigram(left: int, right: int) -> None:
        if left < 0 or right < 0:
            return
        piece = text[offs[left]:offs[left] + size[left] + size[right]]
        tok = bytes_to_id.get(piece)
        if tok is None:
            return
        heapq.heappush(heap, (-scores[tok], left, right, len(piece)))  # max score first
        rev_merge[piece] = (left, right)  # the latest pair that can build this piece

    for i in range(1, n):
        try_add_bigram(i - 1, i)
    while heap:
        _, left, right, nbytes = heapq.heappop(heap)
        if size[left] == 0 or size[right] == 0 or size[left] + size[right] != nbytes:
            continue  # one of the symbols was merged since
        size[left] += size[right]
        size[right] = 0
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prev[nxt[right]] = left
        try_add_bigram(prev[left], left)
        try_add_bigram(left, nxt[left])

    out: list[int] = []

    def resegment(i: int) -> None:
        piece = text[offs[i]:offs[i] + size[i]]
        tok = bytes_to_id.get(piece)
        if tok is not None:
            out.append(tok)
            return
        pair = rev_merge.get(piece)
        if pair is None:
            out.extend(byte_to_token(b) for b in piece)
            return
        resegment(pair[0])
        resegment(pair[1])

    i = 0
    while i != -1:
        resegment(i)
        i = nxt[i]
    return out
