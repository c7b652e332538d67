"""Parse a prefix of a JSON document while it is being generated (for streamed tool calls).

    node = parse_partial('{"name": "get_weather", "arguments": {"city": "Par')
    node.items["arguments"].text   # '{"city": "Par'   (a prefix of the final json.dumps text)

Each value becomes a `Partial`: the Python value seen so far (a string cut where the text ends, incomplete
members left out), `text`, a prefix of `json.dumps(final_value, ensure_ascii=False)` that only ever grows
as more text arrives (so a streamed client can be sent the difference, as llama-server streams
`function.arguments`; common_chat_msg_diff::compute_diffs), and `complete`. A piece of text is added to
`text` only once it is final: a number or a literal when a delimiter follows it, a member when its value
has begun. Text that cannot be the start of a JSON document raises PartialJSONError.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

_WS = " \t\n\r"
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_NUMBER_TAIL = re.compile(r"[0-9.eE+-]*")
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


class PartialJSONError(ValueError):
    """The text is not a prefix of any JSON document (the message gives the character offset)."""


@dataclass
class Partial:
    value: object = None
    text: str = ""             # grows monotonically; equals json.dumps(value, ensure_ascii=False) once complete
    complete: bool = False
    items: dict | list | None = None   # child Partials of an object (by key) or an array
    end: int = 0               # offset just after the value in the parsed text

    def dumps(self) -> str:
        return json.dumps(self.value, ensure_ascii=False)


def _skip(s: str, i: int) -> int:
    while i < len(s) and s[i] in _WS:
        i += 1
    return i


def _string(s: str, i: int) -> Partial:
    """A string starting at s[i] == '"'; an escape cut by the end of the text is left out."""
    out, j = [], i + 1
    while j < len(s):
        c = s[j]
        if c == '"':
            v = "".join(out)
            return Partial(v, json.dumps(v, ensure_ascii=False), True, end=j + 1)
        if c == "\\":
            if j + 1 >= len(s):
                break
            e = s[j + 1]
            if e in _ESCAPES:
                out.append(_ESCAPES[e])
                j += 2
                continue
            if e != "u":
                raise PartialJSONError(f"invalid escape '\\{e}' at offset {j}")
            if j + 6 > len(s):
                break
            try:
                code = int(s[j + 2:j + 6], 16)
            except ValueError:
                raise PartialJSONError(f"invalid \\u escape at offset {j}") from None
            if 0xD800 <= code < 0xDC00:       # a surrogate pair: wait for the low half
                if j + 12 > len(s):
                    break
                try:
                    low = int(s[j + 8:j + 12], 16) if s[j + 6:j + 8] == "\\u" else -1
                except ValueError:
                    low = -1
                if not 0xDC00 <= low < 0xE000:
                    raise PartialJSONError(f"unpaired surrogate at offset {j}")
                out.append(chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)))
                j += 12
                continue
            out.append(chr(code))
            j += 6
            continue
        if c < " ":
            raise PartialJSONError(f"control character {c!r} inside a string at offset {j}")
        out.append(c)
        j += 1
    v = "".join(out)
    return Partial(v, json.dumps(v, ensure_ascii=False)[:-1], False, end=len(s))


def _container(s: str, i: int, close: str) -> Partial:
    is_obj = close == "}"
    node = Partial({} if is_obj else [], "{" if is_obj else "[", items={} if is_obj else [])
    j, n = i + 1, 0
    while True:
        j = _skip(s, j)
        if j >= len(s):
            node.end = j
            return node
        if s[j] == close:
            node.text += close
            node.complete, node.end = True, j + 1
            return node
        if n:
            if s[j] != ",":
                raise PartialJSONError(f"expected ',' or '{close}' at offset {j}, got {s[j]!r}")
            j = _skip(s, j + 1)
            if j >= len(s):
                node.end = j
                return node
        if is_obj:
            if s[j] != '"':
                raise PartialJSONError(f"expected a member name at offset {j}, got {s[j]!r}")
            key = _string(s, j)
            if not key.complete:
                node.end = len(s)
                return node
            j = _skip(s, key.end)
            if j >= len(s):
                node.end = j
                return node
            if s[j] != ":":
                raise PartialJSONError(f"expected ':' at offset {j}, got {s[j]!r}")
            j += 1
        child = _value(s, j)
        if child is None:
            node.end = len(s)
            return node
        node.text += (", " if n else "") + (key.text + ": " if is_obj else "") + child.text
        if is_obj:
            node.items[key.value] = child
            if child.complete or isinstance(child.value, (str, dict, list)):
                node.value[key.value] = child.value
        else:
            node.items.append(child)
            node.value.append(child.value)
        n += 1
        if not child.complete:
            node.end = len(s)
            return node
        j = child.end


def _value(s: str, i: int) -> Partial | None:
    """The value starting at (or after whitespace at) s[i]; None when the text ends before it starts."""
    i = _skip(s, i)
    if i >= len(s):
        return None
    c = s[i]
    if c == '"':
        return _string(s, i)
    if c in "{[":
        return _container(s, i, "}" if c == "{" else "]")
    for word, v in (("true", True), ("false", False), ("null", None)):
        if s.startswith(word, i):
            return Partial(v, word, True, end=i + len(word))
        if word.startswith(s[i:]):
            return Partial(None, "", False, end=len(s))
    m = _NUMBER.match(s, i)
    if m and m.end() > i:
        if m.end() == len(s) or (s[m.end()] in ".eE+-" and _NUMBER_TAIL.fullmatch(s, m.end())):
            return Partial(None, "", False, end=len(s))   # more of the number may follow
        v = json.loads(m.group())
        return Partial(v, json.dumps(v), True, end=m.end())
    if c == "-" and i + 1 == len(s):
        return Partial(None, "", False, end=len(s))
    raise PartialJSONError(f"unexpected character {c!r} at offset {i}")


def parse_partial(text: str, start: int = 0) -> Partial | None:
    """The JSON value that begins at text[start] (after whitespace), complete or cut by the end of text."""
    return _value(text, start)
