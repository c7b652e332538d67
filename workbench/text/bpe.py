"""BPE merges of one pre-tokenized word, as llama.cpp's `llm_tokenizer_bpe_session`.

Every word starts as one symbol per character (of its GPT-2 byte-level form, or of the raw text
for SPM-style BPE such as Gemma-4); the adjacent pair with the lowest merge rank is merged first
(ties: leftmost), entries made stale by an earlier merge are skipped when popped. Symbols that end
up outside the vocabulary fall back to one token per UTF-8 byte where such byte tokens exist (and
are dropped otherwise, as llama.cpp does).
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
    """word -> token ids, memoized: real text repeats its words a lot (a novel: ~10x).

    `byte_tokens[b]` is the fallback token of byte b for a final symbol outside the vocabulary
    (None: the byte is dropped, as llama.cpp does). `whole_newlines`: a word made only of "\n"
    that is a token is taken whole (llama.cpp's Gemma-4 fix in llm_tokenizer_bpe_session)."""

    def __init__(self, token_to_id: dict[str, int], ranks: dict[tuple[str, str], int],
                 ignore_merges: bool, byte_tokens: list[int | None], whole_newlines: bool = False):
        if len(byte_tokens) != 256:
            raise ValueError(f"byte_tokens must have 256 entries, not {len(byte_tokens)}")
        self.token_to_id, self.ranks = token_to_id, ranks
        self.ignore_merges, self.whole_newlines = ignore_merges, whole_newlines
        self.byte_tokens = byte_tokens
        self.cache: dict[str, list[int]] = {}

    def __call__(self, word: str) -> list[int]:
        ids = self.cache.get(word)
        if ids is None:
            ids = self.cache[word] = self._tokenize(word)
        return ids

    def _tokenize(self, word: str) -> list[int]:
        whole = self.ignore_merges or (self.whole_newlines and not word.strip("\n"))
        if whole and word in self.token_to_id:
            return [self.token_to_id[word]]  # the whole word is a token: no merges needed
        out = []
        for sym in bpe_merge(word, self.ranks):
            tok = self.token_to_id.get(sym)
            if tok is not None:
                out.append(tok)
                continue
            for b in sym.encode("utf-8", "surrogatepass"):  # per raw byte of the symbol's text
                tok = self.byte_tokens[b]
                if tok is not None:
                    out.append(tok)
        return out
