"""Byte-level BPE pre-tokenization, as llama.cpp's `unicode_regex_split` (src/unicode.cpp).

Text is cut into "words" before BPE merges run, by a list of regexes chosen by `tokenizer.ggml.pre`.
llama.cpp does not run those regexes with a Unicode regex engine: the three most common patterns
(GPT-2, Llama-3, Qwen2) have hand-written splitters (`unicode_regex_split_custom_*`), and every
other pattern runs through std::regex on a *collapsed* text where each non-ASCII codepoint is
replaced by one byte standing for its Unicode category (0xD1 = \\p{N}, 0xD2 = \\p{L}, ...).
Both are reproduced here, so the split matches llama.cpp, quirks included (e.g. `\\s` never
matches U+001C..U+001F, categories come from llama.cpp's Unicode 15.1 table).

A split is a list of lengths in codepoints ("offsets"); each regex refines the previous split.
"""
from __future__ import annotations

import re
import unicodedata

# --- codepoint flags (unicode.h: unicode_cpt_flags) -------------------------------------------
UNDEFINED, NUMBER, LETTER, SEPARATOR = 0x0001, 0x0002, 0x0004, 0x0008
MARK, PUNCTUATION, SYMBOL, CONTROL = 0x0010, 0x0020, 0x0040, 0x0080
MASK_CATEGORIES, WHITESPACE = 0x00FF, 0x0100

_CATEGORY_FLAG = {"C": CONTROL, "L": LETTER, "M": MARK, "N": NUMBER, "P": PUNCTUATION,
                  "S": SYMBOL, "Z": SEPARATOR}

# unicode-data.cpp's `unicode_set_whitespace`: note U+001C..U+001F are *not* whitespace there
# (Python's str.isspace says they are), U+0085 and U+00A0 are.
WHITESPACE_CPTS = frozenset([0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680,
                             *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000])

# llama.cpp's table was generated from Unicode 15.1; Python 3.11's unicodedata is 14.0. These are
# the codepoints assigned between the two (unassigned "Cn" in 14.0), with their 15.1 category.
_UNICODE_15_1_ADDITIONS = (
    (0x00CF3, 0x00CF3, "M"), (0x00ECE, 0x00ECE, "M"), (0x02FFC, 0x02FFF, "S"),
    (0x031EF, 0x031EF, "S"), (0x10EFD, 0x10EFF, "M"), (0x1123F, 0x11240, "L"),
    (0x11241, 0x11241, "M"), (0x11B00, 0x11B09, "P"), (0x11F00, 0x11F01, "M"),
    (0x11F02, 0x11F02, "L"), (0x11F03, 0x11F03, "M"), (0x11F04, 0x11F10, "L"),
    (0x11F12, 0x11F33, "L"), (0x11F34, 0x11F3A, "M"), (0x11F3E, 0x11F42, "M"),
    (0x11F43, 0x11F4F, "P"), (0x11F50, 0x11F59, "N"), (0x1342F, 0x1342F, "L"),
    (0x13439, 0x1343F, "C"), (0x13440, 0x13440, "M"), (0x13441, 0x13446, "L"),
    (0x13447, 0x13455, "M"), (0x1B132, 0x1B132, "L"), (0x1B155, 0x1B155, "L"),
    (0x1D2C0, 0x1D2D3, "N"), (0x1DF25, 0x1DF2A, "L"), (0x1E030, 0x1E06D, "L"),
    (0x1E08F, 0x1E08F, "M"), (0x1E4D0, 0x1E4EB, "L"), (0x1E4EC, 0x1E4EF, "M"),
    (0x1E4F0, 0x1E4F9, "N"), (0x1F6DC, 0x1F6DC, "S"), (0x1F774, 0x1F776, "S"),
    (0x1F77B, 0x1F77F, "S"), (0x1F7D9, 0x1F7D9, "S"), (0x1FA75, 0x1FA77, "S"),
    (0x1FA87, 0x1FA88, "S"), (0x1FAAD, 0x1FAAF, "S"), (0x1FABB, 0x1FABD, "S"),
    (0x1FABF, 0x1FABF, "S"), (0x1FACE, 0x1FACF, "S"), (0x1FADA, 0x1FADB, "S"),
    (0x1FAE8, 0x1FAE8, "S"), (0x1FAF7, 0x1FAF8, "S"), (0x2B739, 0x2B739, "L"),
    (0x2EBF0, 0x2EE5D, "L"), (0x31350, 0x323AF, "L"),
)

_flag_cache: dict[int, int] = {}


def cpt_flags(cpt: int) -> int:
    """Category flag (+ WHITESPACE bit) of one codepoint, as `unicode_cpt_flags_from_cpt`."""
    f = _flag_cache.get(cpt)
    if f is None:
        cat = unicodedata.category(chr(cpt)) if cpt < 0x110000 else "Cn"
        if cat == "Cn":
            f = UNDEFINED
            for lo, hi, c in _UNICODE_15_1_ADDITIONS:
                if lo <= cpt <= hi:
                    f = _CATEGORY_FLAG[c]
                    break
        else:
            f = _CATEGORY_FLAG[cat[0]]
        if cpt in WHITESPACE_CPTS:
            f |= WHITESPACE
        _flag_cache[cpt] = f
    return f


def cpt_tolower(cpt: int) -> int:
    """Simple (one-codepoint) lowercase mapping, as `unicode_tolower`."""
    low = chr(cpt).lower()
    return ord(low) if len(low) == 1 else cpt


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


def _split_llama3(cpts: list[int], flg: list[int], offsets: list[int], max_digits: int) -> list[int]:
    """(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,max_digits}|
    ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+   (Llama-3: 3 digits, Qwen2: 1)"""
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
                if flags & LETTER or F(pos + 1) & LETTER:
                    pos += 1
                    while F(pos) & LETTER:
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
            if flags and not f2 & (WHITESPACE | LETTER | NUMBER):
                pos += cpt == _SP
                while True:
                    f = F(pos)
                    if not f or f & (WHITESPACE | LETTER | NUMBER):
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


def _split_regex(text: str, expr: str, offsets: list[int]) -> list[int]:
    """Matches and the gaps between them become words, within each existing word."""
    pat = _compiled.get(expr)
    if pat is None:
        pat = _compiled[expr] = re.compile(expr, re.ASCII)
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


# --- the pattern lists per pre-tokenizer (llm_tokenizer_bpe constructor) -----------------------
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|"
          r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|"
         r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

_CUSTOM = {GPT2: _split_gpt2,
           LLAMA3: lambda c, f, o: _split_llama3(c, f, o, 3),
           QWEN2: lambda c, f, o: _split_llama3(c, f, o, 1)}

_DEFAULT = [r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"]
_FALCON = [r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"]

# tokenizer.ggml.pre -> (regexes, clean_spaces, ignore_merges, add_bos default) (llama_vocab::load)
PRE_TOKENIZERS: dict[str, tuple[list[str], bool, bool, bool | None]] = {}
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
    (["stablelm2", "megrez"], ([QWEN2], True, False, None)),
]:
    for _n in _names:
        PRE_TOKENIZERS[_n] = _cfg


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
