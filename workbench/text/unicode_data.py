"""Codepoint properties as llama.cpp's own tables give them (src/unicode-data.cpp, src/unicode.cpp).

llama.cpp does not ask a Unicode library: `scripts/gen-unicode-data.py` baked UnicodeData.txt (15.1)
into tables. Python's `unicodedata` (14.0 in 3.11) gives the same answers once three quirks are
reproduced: the whitespace set is llama.cpp's own (U+001C..U+001F are *not* whitespace), the
lowercase map is the simple one-codepoint mapping of UnicodeData.txt, and "NFD" keeps only the
first codepoint of each decomposition (one codepoint in, one out).
"""
from __future__ import annotations

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
    """Simple (one-codepoint) lowercase mapping of UnicodeData.txt, as `unicode_tolower`.

    str.lower() applies the full mapping: the one codepoint where that is longer than one
    character (U+0130 -> "i" + U+0307) keeps its simple mapping "i"."""
    if cpt == 0x130:
        return 0x69
    low = chr(cpt).lower()
    return ord(low) if len(low) == 1 else cpt


_nfd_cache: dict[int, int] = {}


def cpt_nfd(cpt: int) -> int:
    """The first codepoint of the canonical decomposition, as `unicode_cpts_normalize_nfd` does:
    llama.cpp's NFD table maps each codepoint to one codepoint (é -> e; the accent is dropped)."""
    out = _nfd_cache.get(cpt)
    if out is None:
        out = _nfd_cache[cpt] = ord(unicodedata.normalize("NFD", chr(cpt))[0]) if cpt < 0x110000 else cpt
    return out


def cpts_from_utf8(raw: bytes) -> list[int]:
    """UTF-8 -> codepoints as `unicode_cpts_from_utf8`: each byte of an invalid sequence is U+FFFD."""
    try:
        return [ord(c) for c in raw.decode("utf-8")]
    except UnicodeDecodeError:
        pass
    out, i = [], 0
    while i < len(raw):
        b = raw[i]
        need = 0 if b < 0x80 else 1 if b & 0xE0 == 0xC0 else 2 if b & 0xF0 == 0xE0 else \
            3 if b & 0xF8 == 0xF0 else -1
        if need >= 0 and i + need < len(raw) and all(raw[i + k] & 0xC0 == 0x80 for k in range(1, need + 1)):
            cp = b if need == 0 else (b & (0x3F >> need)) << (6 * need)
            for k in range(1, need + 1):
                cp |= (raw[i + k] & 0x3F) << (6 * (need - k))
            out.append(cp if cp <= 0x10FFFF else 0xFFFD)
            i += need + 1
        else:
            out.append(0xFFFD)
            i += 1
    return out
