"""Byte-level BPE merges of one pre-tokenized word, as llama.cpp's `llm_tokenizer_bpe_session`.

Every word starts as one symbol per character (of its GPT-2 byte-level form); the adjacent pair
with the lowest merge rank is merged first (ties: leftmost), entries made stale by an earlier
merge are skipped when popped. Symbols that end up outside the vocabulary fall back to one token
per UTF-8 byte where such single-byte tokens exist (and are dropped otherwise, as llama.cpp does).
"""
from __future__ import annotations

import heapq


def bpe_merge(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """The final symbols of `word` after rank-ordered merges (llm_tokenizer_bpe_session::tokenize)."""
    syms = list(word)
    n = len(syms)
    if n < 2:
        return syms
    prev = list(range(-1, n - 1))
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    heap: list[tuple[int, int, int, str]] = []

    def add_bigram(left: int, right: int) -> None:  # add_new_bigram
        if left < 0 or right < 0:
            return
        rank = ranks.get((syms[left], syms[right]))
        if rank is not None:
            heapq.heappush(heap, (rank, left, right, syms[left] + syms[right]))

    for i in range(1, n):
        add_bigram(i - 1, i)
    while heap:
        _, left, right, text = heapq.heappop(heap)
        ls, rs = syms[left], syms[right]
        if not ls or not rs or ls + rs != text:
            continue  # outdated: one side was merged elsewhere since
        syms[left], syms[right] = text, ""
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prev[nxt[right]] = left
        add_bigram(prev[left], left)
        add_bigram(left, nxt[left])
    return [s for s in syms if s]


class BPEWordCache:
    """word -> token ids, memoized: real text repeats its words a lot (a novel: ~10x)."""

    def __init__(self, token_to_id: dict[str, int], bytes_to_id: dict[bytes, int],
                 ranks: dict[tuple[str, str], int], ignore_merges: bool):
        self.token_to_id, self.bytes_to_id, self.ranks = token_to_id, bytes_to_id, ranks
        self.ignore_merges = ignore_merges
        self.cache: dict[str, list[int]] = {}

    def __call__(self, word: str) -> list[int]:
        ids = self.cache.get(word)
        if ids is None:
            ids = self.cache[word] = self._tokenize(word)
        return ids

    def _tokenize(self, word: str) -> list[int]:
        if self.ignore_merges and word in self.token_to_id:
            return [self.token_to_id[word]]  # the whole word is a token: no merges needed
        out = []
        for sym in bpe_merge(word, self.ranks):
            tok = self.token_to_id.get(sym)
            if tok is not None:
                out.append(tok)
                continue
            for b in sym.encode("utf-8"):  # per raw byte of the symbol's text
                tok = self.bytes_to_id.get(bytes([b]))
                if tok is not None:
                    out.append(tok)
        return out
