"""BPE pre-tokenization, as llama.cpp's `unicode_regex_split` (src/unicode.cpp).

Text is cut into "words" before BPE merges run, by a list of regexes chosen by `tokenizer.ggml.pre`.
llama.cpp does not run those regexes with a Unicode regex engine: the most common patterns
(GPT-2, Llama-3, Qwen2, Qwen3.5, Gemma-4's newline split) have hand-written splitters
(`unicode_regex_split_custom_*`); a pattern with \\p{..} classes runs through std::regex on a
*collapsed* text where each non-ASCII codepoint is replaced by one byte standing for its Unicode
category (0xD1 = \\p{N}, 0xD2 = \\p{L}, ...); any other pattern (DeepSeek's spelled-out ranges)
runs through std::wregex on the codepoints, non-ASCII spaces turned into \\v. All three are
reproduced here, so the split matches llama.cpp, quirks included (e.g. `\\s` never matches
U+001C..U+001F, categories come from llama.cpp's Unicode 15.1 table: workbench.text.unicode_data).

A split is a list of lengths in codepoints ("offsets"); each regex refines the previous split.
"""
from __future__ import annotations

import re
from typing import NamedTuple

from workbench.text.unicode_data import (LETTER, MARK, MASK_CATEGORIES, NUMBER, PUNCTUATION, SYMBOL,
                                         WHITESPACE, cpt_flags, cpt_tolower)

__all__ = ["BYTE_TO_UNICODE", "UNICODE_TO_BYTE", "PRE_TOKENIZERS", "PreTokenizer", "byte_encode",
           "cpt_flags", "regex_split", "GPT2", "LLAMA3", "QWEN2", "QWEN35", "NEWLINES"]


# --- GPT-2 byte <-> unicode mapping (unicode_byte_to_utf8_map) --------------------------------
def _byte_to_unicode() -> list[str]:
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = [""] * 256
    for b in keep:
        table[b] = chr(b)
    n = 0
    for b in range(256):
        if not table[b]:
            table[b] = chr(256 + n)  # unprintable bytes move to U+0100.. in order
            n += 1
    return table


BYTE_TO_UNICODE: list[str] = _byte_to_unicode()
UNICODE_TO_BYTE: dict[str, int] = {u: b for b, u in enumerate(BYTE_TO_UNICODE)}
_BYTE_ENCODE_TABLE = {b: u for b, u in enumerate(BYTE_TO_UNICODE)}


def byte_encode(word: str) -> str:
    """UTF-8 bytes of `word`, each shown as its GPT-2 printable character."""
    return word.encode("utf-8", "surrogatepass").decode("latin-1").translate(_BYTE_ENCODE_TABLE)


# --- hand-written splitters (unicode_regex_split_custom_{gpt2,llama3,qwen2}) -------------------
_OUT_OF_RANGE = -1
_APOS, _CR, _LF, _SP = 0x27, 0x0D, 0x0A, 0x20
_S_T_M_D = (ord("s"), ord("t"), ord("m"), ord("d"))
_RE_VE_LL = ((ord("r"), ord("e")), (ord("v"), ord("e")), (ord("l"), ord("l")))


def _split_gpt2(cpts: list[int], flg: list[int], offsets: list[int]) -> list[int]:
    """'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"""
    out: list[int] = []
    start = 0
    for n in offsets:
        ini, end = start, start + n
        start = end

        def F(p):  # flags inside this segment, 0 outside (unicode_cpt_flags{})
            return flg[p] if ini <= p < end else 0

        pos = ini
        while pos < end:
            cpt, flags = cpts[pos], flg[pos]
            if cpt == _APOS and pos + 1 < end:  # contractions, case sensitive
                c1 = cpts[pos + 1]
                if c1 in _S_T_M_D:
                    out.append(2); pos += 2; continue
                if pos + 2 < end and (c1, cpts[pos + 2]) in _RE_VE_LL:
                    out.append(3); pos += 3; continue
            f2 = F(pos + 1) if cpt == _SP else flags
            first = pos
            if f2 & LETTER:  # ' ?\p{L}+'
                pos += cpt == _SP
                while F(pos) & LETTER:
                    pos += 1
                out.append(pos - first); continue
            if f2 & NUMBER:  # ' ?\p{N}+'
                pos += cpt == _SP
                while F(pos) & NUMBER:
                    pos += 1
                out.append(pos - first); continue
            if f2 and not f2 & (WHITESPACE | LETTER | NUMBER):  # ' ?[^\s\p{L}\p{N}]+'
                pos += cpt == _SP
                while True:
                    f = F(pos)
                    if not f or f & (WHITESPACE | LETTER | NUMBER):
                        break
                    pos += 1
                out.append(pos - first); continue
            nws = 0
            while F(pos + nws) & WHITESPACE:
                nws += 1
            if nws > 1 and pos + nws < end:  # '\s+(?!\S)': leave the last space to the next word
                pos += nws - 1
            elif nws > 0:  # '\s+'
                pos += nws
            else:  # no match: a lone character
                pos += 1
            out.append(pos - first)
    return out


def _split_llama3(cpts: list[int], flg: list[int], offsets: list[int], max_digits: int,
                  letters: int = LETTER) -> list[int]:
    """(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,max_digits}|
    ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+   (Llama-3: 3 digits, Qwen2: 1)

    With letters=LETTER|MARK, \\p{L} reads [\\p{L}\\p{M}] (Qwen3.5: unicode_regex_split_custom_qwen35)."""
    out: list[int] = []
    start = 0
    for n in offsets:
        ini, end = start, start + n
        start = end

        def F(p):
            return flg[p] if ini <= p < end else 0

        def C(p):
            return cpts[p] if ini <= p < end else _OUT_OF_RANGE

        pos = ini
        while pos < end:
            cpt, flags = cpts[pos], flg[pos]
            first = pos
            if cpt == _APOS and pos + 1 < end:  # contractions, case insensitive
                c1 = cpt_tolower(cpts[pos + 1])
                if c1 in _S_T_M_D:
                    out.append(2); pos += 2; continue
                if pos + 2 < end and (c1, cpt_tolower(cpts[pos + 2])) in _RE_VE_LL:
                    out.append(3); pos += 3; continue
            # '[^\r\n\p{L}\p{N}]?\p{L}+'
            if not (cpt == _CR or cpt == _LF or flags & NUMBER):
                if flags & letters or F(pos + 1) & letters:
                    pos += 1
                    while F(pos) & letters:
                        pos += 1
                    out.append(pos - first); continue
            if flags & NUMBER:  # '\p{N}{1,max_digits}'
                while F(pos) & NUMBER:
                    pos += 1
                    if pos - first >= max_digits:
                        out.append(pos - first); first = pos
                if pos > first:
                    out.append(pos - first)
                continue
            # ' ?[^\s\p{L}\p{N}]+[\r\n]*' (the "any flag" test looks at the current char)
            f2 = F(pos + 1) if cpt == _SP else flags
            if flags and not f2 & (WHITESPACE | letters | NUMBER):
                pos += cpt == _SP
                while True:
                    f = F(pos)
                    if not f or f & (WHITESPACE | letters | NUMBER):
                        break
                    pos += 1
                while C(pos) in (_CR, _LF):
                    pos += 1
                out.append(pos - first); continue
            nws, last_crlf_end = 0, 0
            while F(pos + nws) & WHITESPACE:
                if cpts[pos + nws] in (_CR, _LF):
                    last_crlf_end = pos + nws + 1
                nws += 1
            if last_crlf_end > 0:  # '\s*[\r\n]+'
                pos = last_crlf_end
            elif nws > 1 and pos + nws < end:  # '\s+(?!\S)'
                pos += nws - 1
            elif nws > 0:  # '\s+'
                pos += nws
            else:
                pos += 1
            out.append(pos - first)
    return out


# --- generic patterns on the collapsed text (unicode_regex_split + unicode_regex_split_stl) ----
# one stand-in character per category, and the ASCII members of that category (Python syntax)
_UCAT = {"N": (NUMBER, "\xd1", "0-9"), "L": (LETTER, "\xd2", "A-Za-z"),
         "P": (PUNCTUATION, "\xd3", r"!-#%-*,-/:-;?-@\[-\]_\{\}"), "M": (MARK, "\xd4", ""),
         "S": (SYMBOL, "\xd5", r"\$\+<->\^`\|~"),
         "Lu": (LETTER, "\xd2", "A-Za-z"), "Ll": (LETTER, "\xd2", "A-Za-z"),
         "Lt": (LETTER, "\xd2", "A-Za-z"), "Lm": (LETTER, "\xd2", "A-Za-z"),
         "Lo": (LETTER, "\xd2", "A-Za-z")}
_COLLAPSE_CHAR = {flag: ch for flag, ch, _ in _UCAT.values()}
_UCAT_RE = re.compile(r"\\p\{(N|L|P|M|S|Lu|Ll|Lt|Lm|Lo)\}")


def _collapse_regex(expr: str) -> str:
    """Rewrite \\p{X} as a class of the stand-in byte + ASCII members, tracking [...] nesting."""
    out, inside, i = [], False, 0
    while i < len(expr):
        ch = expr[i]
        if ch == "[" and (i == 0 or expr[i - 1] != "\\"):
            inside = True; out.append(ch); i += 1; continue
        if inside and ch == "]" and expr[i - 1] != "\\":
            inside = False; out.append(ch); i += 1; continue
        m = _UCAT_RE.match(expr, i)
        if m:
            _, stand_in, ascii_members = _UCAT[m.group(1)]
            body = stand_in + ascii_members
            out.append(body if inside else "[" + body + "]")
            i = m.end(); continue
        out.append(ch); i += 1
    return "".join(out)


def _collapsed_text(cpts: list[int], flg: list[int]) -> str:
    chars = []
    for c, f in zip(cpts, flg):
        if c < 128:
            chars.append(chr(c))
        elif f & WHITESPACE:
            chars.append("\x0b")  # std::regex's \s only knows ASCII spaces
        else:
            chars.append(_COLLAPSE_CHAR.get(f & MASK_CATEGORIES, "\xd0"))
    return "".join(chars)


_compiled: dict[str, re.Pattern] = {}
_BARE_DOLLAR = re.compile(r"(?<!\\)((?:\\\\)*)\$")


def _ecma_to_python(expr: str) -> str:
    """ECMAScript `$` (no multiline) matches only at the very end; Python's also matches before a
    final newline, so it becomes `\\Z`. (No pattern in the table puts a `$` inside [...].)"""
    return _BARE_DOLLAR.sub(lambda m: m.group(1) + r"\Z", expr)


def _split_regex(text: str, expr: str, offsets: list[int]) -> list[int]:
    """Matches and the gaps between them become words, within each existing word."""
    pat = _compiled.get(expr)
    if pat is None:
        pat = _compiled[expr] = re.compile(_ecma_to_python(expr), re.ASCII)
    out: list[int] = []
    start = 0
    for n in offsets:
        last = 0  # each word is matched on its own, as std::regex_iterator on a sub-range
        for m in pat.finditer(text[start:start + n]):
            if m.start() > last:
                out.append(m.start() - last)
            out.append(m.end() - m.start())
            last = m.end()
        if last < n:
            out.append(n - last)
        start += n
    return out


def _split_newlines(cpts: list[int], flg: list[int], offsets: list[int]) -> list[int]:
    """[^\n]+|[\n]+ : runs of newlines and runs of anything else (unicode_regex_split_custom_newlines)."""
    out: list[int] = []
    start = 0
    for n in offsets:
        pos, end = start, start + n
        while pos < end:
            first, is_nl = pos, cpts[pos] == _LF
            while pos < end and (cpts[pos] == _LF) == is_nl:
                pos += 1
            out.append(pos - first)
        start = end
    return out


# --- the pattern lists per pre-tokenizer (llm_tokenizer_bpe constructor) -----------------------
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|"
          r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|"
         r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN35 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|"
          r"\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
NEWLINES = r"[^\n]+|[\n]+"

_CUSTOM = {GPT2: _split_gpt2,
           LLAMA3: lambda c, f, o: _split_llama3(c, f, o, 3),
           QWEN2: lambda c, f, o: _split_llama3(c, f, o, 1),
           QWEN35: lambda c, f, o: _split_llama3(c, f, o, 1, LETTER | MARK),
           NEWLINES: _split_newlines}

_DEFAULT = [r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"]
_FALCON = [r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"]
# DeepSeek's letter class is spelled out range by range (no \p{..}): std::wregex runs it on the
# codepoints themselves, comparing range bounds by value, as Python's re does.
_DEEPSEEK_LETTERS = (
    "A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
    "\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1"
    "\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5"
    "\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a"
    "\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d"
    "\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3"
    "\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115"
    "\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f"
    "\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3"
    "\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf"
    "\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f"
    "\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2"
    "\U000118a0-\U000118df\U0001e900-\U0001e943")
_CJK_HANGUL = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
_DEEPSEEK_LLM = ["[\r\n]", "\\s?[" + _DEEPSEEK_LETTERS + "]+",
                 "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
                 "\\s+$", _CJK_HANGUL, "\\p{N}+"]
_DEEPSEEK_CODER = ["[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", _CJK_HANGUL, "\\p{N}"]


class PreTokenizer(NamedTuple):
    """What `tokenizer.ggml.pre` selects (llama_vocab::impl::load + llm_tokenizer_bpe)."""
    regexes: list[str]                 # applied in turn, each refining the previous split
    clean_spaces: bool                 # detokenize drops " ," etc.
    ignore_merges: bool                # a word that is a token is taken whole
    add_bos: bool | None               # default for add_bos (None: the BPE default, False)
    byte_encode: bool = True           # words in GPT-2 byte-level form (False: raw UTF-8)
    escape_whitespaces: bool = False   # spaces become U+2581 before splitting (SPM-style BPE)


# tokenizer.ggml.pre -> PreTokenizer
PRE_TOKENIZERS: dict[str, PreTokenizer] = {}
for _names, _cfg in [
    (["default"], (_DEFAULT, True, False, None)),
    (["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
      "jina-v5-nano"], ([LLAMA3], True, True, True)),
    (["dbrx", "smaug-bpe"], ([LLAMA3], True, False, None)),
    (["chatglm-bpe"], ([LLAMA3], True, False, None)),
    (["glm4", "glm5"], ([LLAMA3], True, True, None)),
    (["falcon"], (_FALCON, True, False, None)),
    (["gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0",
      "mellum", "modern-bert", "exaone4", "mpt", "olmo", "jais", "jina-v1-en", "jina-v2-code",
      "roberta-bpe"], ([GPT2], True, False, None)),
    (["trillion", "granite-docling"], ([GPT2], False, False, None)),
    (["starcoder", "refact", "codeshell", "exaone", "minerva-7b", "mellum2"],
     ([r"\p{N}", GPT2], True, False, None)),
    (["smollm", "command-r"], ([r"\p{N}", GPT2], False, False, None)),
    (["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan"], ([QWEN2], False, False, None)),
    (["qwen35"], ([QWEN35], False, False, None)),
    (["stablelm2", "megrez"], ([QWEN2], True, False, None)),
    (["deepseek-llm"], (_DEEPSEEK_LLM, False, False, None)),
    (["deepseek-coder"], (_DEEPSEEK_CODER, False, False, None)),
    (["gemma4", "granite-embed-multi-311m"], ([NEWLINES], True, False, True, False, True)),
]:
    for _n in _names:
        PRE_TOKENIZERS[_n] = PreTokenizer(*_cfg)


def regex_split(text: str, exprs: list[str], encode_bytes: bool = True) -> list[str]:
    """Split `text` into words with llama.cpp's pre-tokenizer regexes (unicode_regex_split);
    with `encode_bytes`, each word comes back in GPT-2 byte-level form ready for BPE merges."""
    cpts = [ord(c) for c in text]
    flg = [cpt_flags(c) for c in cpts]
    offsets = [len(cpts)]
    collapsed = plain = None
    for expr in exprs:
        custom = _CUSTOM.get(expr)
        if custom is not None:
            offsets = custom(cpts, flg, offsets)
        elif _UCAT_RE.search(expr):
            if collapsed is None:
                collapsed = _collapsed_text(cpts, flg)
            offsets = _split_regex(collapsed, _collapse_regex(expr), offsets)
        else:  # no categories: the codepoints themselves, non-ASCII spaces as \v (std::wregex)
            if plain is None:
                plain = "".join("\x0b" if c > 0x7F and f & WHITESPACE else chr(c)
                                for c, f in zip(cpts, flg))
            offsets = _split_regex(plain, expr, offsets)
    words, start = [], 0
    for n in offsets:
        words.append(text[start:start + n])
        start += n
    return [byte_encode(w) for w in words] if encode_bytes else words
