"""JSON schema -> GBNF, accepting the same strings as llama.cpp's json_schema_to_grammar
(common/json-schema.cpp classifies a schema node, common/json-schema-to-grammar.cpp writes rules).

    json_schema_to_gbnf({"type": "object", "properties": {"a": {"type": "integer"}}})

Rules (their language, not their text, must match llama.cpp's): whitespace `space` (nothing, " ", or
1-2 newlines and up to 20 spaces/tabs) after "{" "[" ":" "," and before "}" "]"; properties in schema
order, required ones first, then any ordered subset of the optional ones and, with additionalProperties
(true, a schema, or by default without "properties"), other keys; const/enum as compact JSON; anyOf /
oneOf / type lists as alternatives; allOf merges objects; min/maxItems, min/maxLength, formats,
integer bounds by digits, anchored ^...$ patterns (others accept any string, as llama.cpp does), $ref.
"""
from __future__ import annotations

import json
import re

__all__ = ["JSONSchemaError", "json_schema_to_gbnf"]

INT_MIN, INT_MAX = -(2**63), 2**63 - 1

SPACE = '| " " | "\\n"{1,2} [ \\t]{0,20}'
PRIMITIVES = {  # name -> (GBNF body, rules it uses)
    "boolean": ('("true" | "false")', ()),
    "decimal-part": ("[0-9]{1,16}", ()),
    "integral-part": ("[0] | [1-9] [0-9]{0,15}", ()),
    "number": ('("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)?',
               ("integral-part", "decimal-part")),
    "integer": ('("-"? integral-part)', ("integral-part",)),
    "value": ("object | array | string | number | boolean | null",
              ("object", "array", "string", "number", "boolean", "null")),
    "object": ('"{" space ( string ":" space value ("," space string ":" space value)* )? space "}"',
               ("string", "value")),
    "array": ('"[" space ( value ("," space value)* )? space "]"', ("value",)),
    "uuid": ('"\\"" [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" '
             '[0-9a-fA-F]{12} "\\""', ()),
    "char": ('[^"\\\\\\x7F\\x00-\\x1F] | [\\\\] (["\\\\bfnrt] | "u" [0-9a-fA-F]{4})', ()),
    "string": ('"\\"" char* "\\""', ("char",)),
    "null": ('"null"', ()),
    "date": ('[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | "3" [0-1] )', ()),
    "time": ('([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{3} )? '
             '( "Z" | ( "+" | "-" ) ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )', ()),
    "date-time": ('date "T" time', ("date", "time")),
    "date-string": ('"\\"" date "\\""', ("date",)),
    "time-string": ('"\\"" time "\\""', ("time",)),
    "date-time-string": ('"\\"" date-time "\\""', ("date-time",)),
}
RESERVED = set(PRIMITIVES) | {"root"}
_UUID_FORMATS = {"uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"}
_FORMATS = {"date": "date-string", "time": "time-string", "date-time": "date-time-string"}


class JSONSchemaError(ValueError):
    """A schema that cannot become a grammar; the message names the JSON pointer of the problem."""


def literal(text: str) -> str:
    """A GBNF string literal (format_literal: escape \\r \\n \" and backslash)."""
    return '"' + text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n").replace('"', '\\"') + '"'


def constant(value) -> str:
    """A const / enum value as its compact JSON text (nlohmann's dump(): no spaces, UTF-8 kept)."""
    return literal(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def repetition(item: str, lo: int, hi: int | None, sep: str = "") -> str:
    """item repeated lo..hi times (None: unbounded), with an optional separator between items."""
    if hi == 0:
        return ""
    if lo == 0 and hi == 1:
        return item + "?"
    if not sep:
        if hi is None:
            return item + ("+" if lo == 1 else "*" if lo == 0 else f"{{{lo},}}")
        return f"{item}{{{lo},{hi}}}"
    rest = repetition(f"({sep} {item})", max(lo - 1, 0), None if hi is None else hi - 1)
    out = f"{item} {rest}"
    return f"({out})?" if lo == 0 else out


def _digits(lo: int, hi: int | None) -> str:
    """[0-9] repeated lo..hi times (None: unbounded), written as llama.cpp writes it."""
    if lo == hi == 1:
        return "[0-9]"
    if lo == hi:
        return f"[0-9]{{{lo}}}"
    return f"[0-9]{{{lo},{'' if hi is None else hi}}}"


def _drange(a: str, b: str) -> str:
    return f"[{a}]" if a == b else f"[{a}-{b}]"


def _same_length_range(lo: str, hi: str) -> str:
    """Decimal strings of len(lo) between lo and hi (equal lengths), digit by digit."""
    i = 0
    while i < len(lo) and i < len(hi) and lo[i] == hi[i]:
        i += 1
    parts = [f'"{lo[:i]}"'] if i else []
    if i < len(lo) and i < len(hi):
        n = len(lo) - i - 1
        if n == 0:
            parts.append(f"[{lo[i]}-{hi[i]}]")
        else:
            zeros, nines = "0" * n, "9" * n
            lo_rest, hi_rest = lo[i + 1:], hi[i + 1:]
            alts, reached = [], False
            if lo_rest == zeros:
                alts.append(f"{_drange(lo[i], chr(ord(hi[i]) - 1))} {_digits(n, n)}")
            else:
                alts.append(f"[{lo[i]}] ({_same_length_range(lo_rest, nines)})")
                if lo[i] < chr(ord(hi[i]) - 1):
                    if hi_rest == nines:
                        alts.append(f"{_drange(chr(ord(lo[i]) + 1), hi[i])} {_digits(n, n)}")
                        reached = True
                    else:
                        alts.append(f"{_drange(chr(ord(lo[i]) + 1), chr(ord(hi[i]) - 1))} {_digits(n, n)}")
            if not reached:
                alts.append(f"{_drange(hi[i], hi[i])} {_same_length_range(zeros, hi_rest)}")
            parts.append("(" + " | ".join(alts) + ")")
    return " ".join(parts)


def int_range(lo: int, hi: int, decimals: int = 16, top: bool = True) -> str:
    """Integers between lo and hi (INT_MIN / INT_MAX: unbounded; then at most `decimals` digits), by
    the digit scheme of llama.cpp's build_min_max_int, so both accept the same strings."""
    has_lo, has_hi = lo != INT_MIN, hi != INT_MAX
    if has_lo and has_hi:
        if lo < 0 and hi < 0:
            return f'"-" ({int_range(-hi, -lo, decimals, True)})'
        out = ""
        if lo < 0:
            out = f'"-" ({int_range(0, -lo, decimals, True)}) | '
            lo = 0
        lo_s, hi_s = str(lo), str(hi)
        for n in range(len(lo_s), len(hi_s)):
            out += _same_length_range(lo_s, "9" * n) + " | "
            lo_s = "1" + "0" * n
        return out + _same_length_range(lo_s, hi_s)
    fewer = max(decimals - 1, 1)
    if has_lo:
        if lo < 0:
            return (f'"-" ({int_range(INT_MIN, -lo, decimals, False)}) | [0] | [1-9] '
                    + _digits(0, decimals - 1))
        if lo == 0:
            return f"[0] | [1-9] {_digits(0, fewer)}" if top else _digits(1, decimals)
        if lo <= 9:
            c, start = str(lo), "1" if top else "0"
            out = f"{_drange(start, chr(ord(c) - 1))} {_digits(1, fewer)} | " if c > start else ""
            return out + f"{_drange(c, '9')} {_digits(0, fewer)}"
        s = str(lo)
        c = s[0]
        out = f"{_drange('1' if top else '0', chr(ord(c) - 1))} {_digits(len(s), fewer)} | " if c > "1" else ""
        out += f"{_drange(c, c)} ({int_range(int(s[1:]), INT_MAX, fewer, False)})"
        if c < "9":
            out += f" | {_drange(chr(ord(c) + 1), '9')} {_digits(len(s) - 1, fewer)}"
        return out
    if has_hi:
        if hi >= 0:
            neg = f'"-" [1-9] {_digits(0, fewer)} | ' if top else ""
            return neg + int_range(0, hi, decimals, True)
        return f'"-" ({int_range(-hi, INT_MAX, decimals, False)})'
    raise JSONSchemaError("an integer range needs a minimum or a maximum")


class _UnsupportedPattern(Exception):
    """A valid regex with no grammar equivalent here (llama.cpp then accepts any string)."""


_REGEX_META = set("|.()[]{}*+?^$")
_GBNF_ESCAPES = {"x": 2, "u": 4, "U": 8}
_GBNF_SIMPLE = set('trn\\"[]-')


def _gbnf_escape(p: str, i: int) -> int:
    """Length of a GBNF-compatible escape at p[i] (0 if it is not one)."""
    if i + 1 >= len(p) or p[i] != "\\":
        return 0
    e = p[i + 1]
    if e in _GBNF_SIMPLE:
        return 2
    n = _GBNF_ESCAPES.get(e, 0)
    if n and i + 2 + n <= len(p) and all(h in "0123456789abcdefABCDEF" for h in p[i + 2:i + 2 + n]):
        return 2 + n
    return 0


def pattern_to_gbnf(pattern: str) -> str:
    """An anchored ^...$ regex as a GBNF expression for the JSON string (quotes included); the regex
    subset llama.cpp's _visit_pattern handles (literals, ., [...], (...), (?:...), |, * + ? {m,n})."""
    if len(pattern) < 2 or pattern[0] != "^" or pattern[-1] != "$":
        raise _UnsupportedPattern("not anchored with '^' and '$'")
    p, pos = pattern[1:-1], 0

    def alternation(depth: int) -> str:
        nonlocal pos
        alts = [sequence(depth)]
        while pos < len(p) and p[pos] == "|":
            pos += 1
            alts.append(sequence(depth))
        return " | ".join(a or '""' for a in alts)

    def sequence(depth: int) -> str:
        nonlocal pos
        items: list[str] = []
        while pos < len(p) and p[pos] not in "|)":
            c = p[pos]
            if c == "(":
                pos += 1
                if p.startswith("?", pos):
                    if not p.startswith("?:", pos):
                        raise _UnsupportedPattern("unsupported group syntax")
                    pos += 2
                if depth >= 100:
                    raise _UnsupportedPattern("pattern nesting too deep")
                inner = alternation(depth + 1)
                if pos >= len(p):
                    raise JSONSchemaError("unbalanced parentheses")
                pos += 1
                items.append(f"({inner})")
            elif c == ".":
                pos += 1
                items.append("[^\\x0A\\x0D]")
            elif c in "^$":
                raise _UnsupportedPattern("anchor inside the pattern")
            elif c == "[":
                end, body = pos + 1, "["
                while end < len(p) and p[end] != "]":
                    if p[end] == "\\":
                        n = _gbnf_escape(p, end)
                        if not n:
                            raise _UnsupportedPattern(f"unsupported escape in a class: {p[end:end + 2]}")
                        body += p[end:end + n]
                        end += n
                    else:
                        body += p[end]
                        end += 1
                if end >= len(p):
                    raise JSONSchemaError("unterminated character class")
                pos = end + 1
                items.append(body + "]")
            elif c in "*+?":
                if not items:
                    raise JSONSchemaError("nothing to repeat")
                pos += 1
                items[-1] = f"({items[-1]}){c}"
            elif c == "{":
                end = p.find("}", pos)
                if end < 0:
                    raise _UnsupportedPattern("unterminated curly brackets")
                nums = p[pos + 1:end].split(",")
                pos = end + 1
                try:
                    if len(nums) == 1:
                        lo = hi = int(nums[0])
                    elif len(nums) == 2:
                        lo = int(nums[0]) if nums[0] else 0
                        hi = int(nums[1]) if nums[1] else None
                    else:
                        raise _UnsupportedPattern("wrong number of values in curly brackets")
                except ValueError:
                    raise _UnsupportedPattern("invalid number in curly brackets") from None
                if not items:
                    raise JSONSchemaError("nothing to repeat")
                items[-1] = repetition(f"({items[-1]})", lo, hi) or '""'
            elif c in "]}":
                raise _UnsupportedPattern(f"unsupported character: {c}")
            else:
                if c == "\\":
                    if pos == len(p) - 1:
                        raise JSONSchemaError("trailing backslash")
                    if p[pos + 1] in _REGEX_META:
                        items.append(literal(p[pos + 1]))
                        pos += 2
                        continue
                    n = _gbnf_escape(p, pos)
                    if not n:
                        raise _UnsupportedPattern(f"unsupported escape: {p[pos:pos + 2]}")
                    items.append('"' + p[pos:pos + n] + '"')
                    pos += n
                    continue
                items.append(literal(c))
                pos += 1
        return " ".join(items)

    body = alternation(0)
    if pos < len(p):
        raise JSONSchemaError("unbalanced parentheses")
    return f'"\\"" ({body or chr(34) * 2}) "\\""'


class _Converter:
    """Walks the schema (with JSON pointers for errors) and collects named GBNF rules."""

    def __init__(self, root):
        self.root, self.rules = root, {"space": SPACE}
        self.resolving: set[str] = set()

    def fail(self, path: str, msg: str):
        raise JSONSchemaError(f"JSON schema error at {path}: {msg}")

    def add(self, name: str, body: str) -> str:
        name = re.sub(r"[^a-zA-Z0-9-]+", "-", name)
        key, i = name, 0
        while key in self.rules and self.rules[key] != body:
            key, i = f"{name}{i}", i + 1
        self.rules[key] = body
        return key

    def primitive(self, name: str, as_name: str | None = None) -> str:
        body, deps = PRIMITIVES[name]
        key = self.add(as_name or name, body)
        for d in deps:
            if d not in self.rules:
                self.primitive(d)
        return key

    def count(self, s: dict, key: str, path: str, default):
        v = s.get(key, default)
        if key in s and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            self.fail(path, f"{key} must be a non-negative integer")
        return v

    def bound(self, s: dict, key: str, path: str, up: bool) -> int:
        v = s[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.fail(path, f"{key} must be a number")
        return v if isinstance(v, int) else int(-(-v // 1)) if up else int(v // 1)

    def resolve(self, ref, path: str):
        if not isinstance(ref, str):
            self.fail(path, "$ref must be a string")
        if not ref.startswith("#/"):
            self.fail(path, f"unsupported $ref {ref}, only references into the same document are supported")
        target = self.root
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                self.fail(path, f"cannot resolve $ref {ref}: {part} not found")
        return target

    def visit(self, s, path: str, name: str) -> str:
        """The rule for schema `s` (llama.cpp's visit over the node kind the builder gives it)."""
        rule = name + "-" if name in RESERVED else name or "root"
        kind = _kind(s)
        if kind == "invalid":
            self.fail(path, "schema must be an object" + (" (false matches nothing)" if s is False else ""))
        if kind == "any":
            return self.add(rule, self.primitive("value"))
        if kind == "ref":
            ref = s["$ref"]
            target = self.resolve(ref, path)
            ref_name = "ref" + re.sub(r"[^a-zA-Z0-9-]+", "-", ref[ref.find("#") + 1:])
            if ref_name not in self.rules and ref not in self.resolving:
                self.resolving.add(ref)
                ref_name = self.visit(target, ref, ref_name)
                self.resolving.discard(ref)
            return self.add(rule, ref_name)
        if kind == "anyOf":
            key = "oneOf" if "oneOf" in s else "anyOf" if "anyOf" in s else "type"
            alts = s[key] if key != "type" else [{**s, "type": t} for t in s["type"]]
            if not isinstance(alts, list) or not alts:
                self.fail(f"{path}/{key}", "must be a non-empty array")
            return self.add(rule, " | ".join(
                self.visit(a, f"{path}/{key}/{i}", f"{name}{'-' if name else 'alternative-'}{i}")
                for i, a in enumerate(alts)))
        if kind == "const":
            return self.add(rule, constant(s["const"]))
        if kind == "enum":
            if not isinstance(s["enum"], list) or not s["enum"]:
                self.fail(path, "enum must be a non-empty array")
            return self.add(rule, "(" + " | ".join(constant(v) for v in s["enum"]) + ")")
        if not isinstance(s.get("type", ""), str):
            self.fail(path, "type must be a string or an array of strings")
        if not isinstance(s.get("format", ""), str):
            self.fail(path, "format must be a string")
        if kind in ("object", "allOf", "array", "string", "integer"):
            return getattr(self, kind.lower())(s, path, name, rule)
        if kind in ("number", "boolean", "null"):
            return self.primitive(kind, "root" if rule == "root" else None)
        self.fail(path, f"unrecognized type {kind}")
    def object(self, s: dict, path: str, name: str, rule: str) -> str:
        props = s.get("properties", {})
        if not isinstance(props, dict):
            self.fail(path, "properties must be an object")
        req = s.get("required", [])
        required = {r for r in req if isinstance(r, str)} if isinstance(req, list) else set()
        if "additionalProperties" in s:
            extra = s["additionalProperties"]
            if isinstance(extra, bool):
                extra = {} if extra else None
            elif not isinstance(extra, dict):
                self.fail(path, "additionalProperties must be a boolean or a schema")
        else:
            extra = None if "properties" in s else {}
        if not props and extra is not None and _is_any(extra):
            return self.add(rule, self.primitive("object"))
        items = [(k, v, f"{path}/properties/{k}") for k, v in props.items()]
        return self.add(rule, self.object_body(items, required, path, name, extra))

    def object_body(self, props, required: set, path: str, name: str, extra) -> str:
        pre = name + "-" if name else ""
        kv, req, opt = {}, [], []
        for key, schema, ppath in props:
            value = self.visit(schema, ppath, pre + key)
            kv[key] = self.add(f"{pre}{key}-kv", f'{literal(json.dumps(key, ensure_ascii=False))} space ":" space {value}')
            (req if key in required else opt).append(key)
        if extra is not None:
            value = (self.primitive("value") if _is_any(extra)
                     else self.visit(extra, f"{path}/additionalProperties", f"{pre}additional-value"))
            names = list(kv)
            key_rule = (self.primitive("string") if not names
                        else self.add(f"{pre}additional-k", self.not_strings(names)))
            kv["*"] = self.add(f"{pre}additional-kv", f'{key_rule} ":" space {value}')
            opt.append("*")
        if not req and not opt:
            return '"{" space "}"'

        def chain(keys: list[str], first_optional: bool) -> str:
            k, item = keys[0], kv[keys[0]]
            comma = f'( "," space {item} )'
            if first_optional:
                out = comma + ("*" if k == "*" else "?")
            else:
                out = item + (f" {comma}*" if k == "*" else "")
            if len(keys) > 1:
                out += " " + self.add(f"{pre}{k}-rest", chain(keys[1:], True))
            return out

        body = '"{" space ' + ' "," space '.join(kv[k] for k in req)
        if opt:
            tail = " | ".join(chain(opt[i:], False) for i in range(len(opt)))
            body += f' ( "," space ( {tail} ) )?' if req else f" ({tail} )?"
        return body + ' space "}"'

    def not_strings(self, names: list[str]) -> str:
        """A JSON string that is none of `names` (llama.cpp's _not_strings, over a trie)."""
        char = self.primitive("char")
        trie: dict = {}
        for n in names:
            node = trie
            for ch in n:
                node = node.setdefault(ch, {})
            node[None] = {}  # end of a word

        def walk(node: dict) -> str:
            alts, rejects = [], ""
            for ch, child in node.items():
                if ch is None:
                    continue
                rejects += ch
                cls = _class_char(ch)
                if any(k is not None for k in child):
                    alts.append(f"[{cls}] ({walk(child)})")
                else:
                    alts.append(f"[{cls}] {char}+")
            if rejects:
                alts.append(f'[^"{"".join(_class_char(c) for c in rejects)}] {char}*')
            return " | ".join(alts)

        return f'["] ( {walk(trie)} ){"" if None in trie else "?"} ["]'

    def allof(self, s: dict, path: str, name: str, rule: str) -> str:
        parts = s["allOf"]
        if not isinstance(parts, list) or not parts:
            self.fail(f"{path}/allOf", "must be a non-empty array of schemas")
        props, required, enums = [], set(), {}

        def component(c, cpath: str, is_required: bool):
            while isinstance(c, dict) and "$ref" in c:
                c, cpath = self.resolve(c["$ref"], cpath), c["$ref"]
            kind = _kind(c)
            if kind == "object":
                for k, v in c.get("properties", {}).items():
                    props.append((k, v, f"{cpath}/properties/{k}"))
                    if is_required:
                        required.add(k)
            elif kind == "enum":
                for v in c["enum"]:
                    enums[constant(v)] = enums.get(constant(v), 0) + 1

        for i, c in enumerate(parts):
            cpath = f"{path}/allOf/{i}"
            if _kind(c) == "anyOf":
                key = "oneOf" if "oneOf" in c else "anyOf"
                for j, alt in enumerate(c[key]):
                    component(alt, f"{cpath}/{key}/{j}", False)
            else:
                component(c, cpath, True)
        common = [v for v, n in enums.items() if n == len(parts)]
        if common:
            return self.add(rule, "(" + " | ".join(sorted(common)) + ")")
        return self.add(rule, self.object_body(props, required, path, name, None))

    def array(self, s: dict, path: str, name: str, rule: str) -> str:
        sub = name + "-" if name else ""
        key = "items" if "items" in s else "prefixItems" if "prefixItems" in s else None
        items = s[key] if key else {}
        if isinstance(items, list):
            names = [self.visit(it, f"{path}/{key}/{i}", f"{sub}tuple-{i}") for i, it in enumerate(items)]
            return self.add(rule, '"[" space ' + ' "," space '.join(names) + ' space "]"')
        lo, hi = self.count(s, "minItems", path, 0), self.count(s, "maxItems", path, None)
        if _is_any(items) and lo == 0 and hi is None:
            return self.primitive("array", "root" if rule == "root" else None)
        item = self.visit(items, f"{path}/{key}", f"{sub}item")
        return self.add(rule, '"[" space ' + repetition(item, lo, hi, '"," space') + ' space "]"')

    def string(self, s: dict, path: str, name: str, rule: str) -> str:
        if "pattern" in s:
            pat = s["pattern"]
            if not isinstance(pat, str):
                self.fail(path, "pattern must be a string")
            try:
                return self.add(rule, pattern_to_gbnf(pat))
            except _UnsupportedPattern:
                return self.add(rule, self.primitive("string"))  # (llama.cpp warns and allows any)
            except JSONSchemaError as e:
                self.fail(f"{path}/pattern", f"invalid pattern {pat}: {e}")
        fmt = s.get("format")
        lo, hi = self.count(s, "minLength", path, 0), self.count(s, "maxLength", path, None)
        if fmt in _UUID_FORMATS:
            return self.primitive("uuid", "root" if rule == "root" else None)
        if fmt in _FORMATS:
            return self.add(rule, self.primitive(_FORMATS[fmt]))
        if lo > 0 or hi is not None:
            return self.add(rule, '"\\"" ' + repetition(self.primitive("char"), lo, hi) + ' "\\""')
        return self.primitive("string", "root" if rule == "root" else None)

    def integer(self, s: dict, path: str, name: str, rule: str) -> str:
        lo, hi = INT_MIN, INT_MAX
        if "minimum" in s:
            lo = self.bound(s, "minimum", path, True)
        elif "exclusiveMinimum" in s:
            lo = self.bound(s, "exclusiveMinimum", path, False) + 1
        if "maximum" in s:
            hi = self.bound(s, "maximum", path, False)
        elif "exclusiveMaximum" in s:
            hi = self.bound(s, "exclusiveMaximum", path, True) - 1
        if lo == INT_MIN and hi == INT_MAX:
            return self.primitive("integer", "root" if rule == "root" else None)
        if lo > hi:
            self.fail(path, f"no integer lies between minimum {lo} and maximum {hi}")
        return self.add(rule, "(" + int_range(lo, hi) + ")")


def _class_char(c: str) -> str:
    """A character inside a GBNF [...] class."""
    return {"\\": "\\\\", "]": "\\]", "-": "\\-", "\n": "\\n", "\r": "\\r", '"': '\\"'}.get(c, c)


def _is_any(s) -> bool:
    return s is True or _kind(s) == "any"


def _kind(s) -> str:
    """The node kind llama.cpp's schema builder (common_chat_schema_from_json) gives a schema."""
    if s is True:
        return "any"
    if not isinstance(s, dict):
        return "invalid"
    if "$ref" in s:
        return "ref"
    if "oneOf" in s or "anyOf" in s or isinstance(s.get("type"), list):
        return "anyOf"
    if "const" in s:
        return "const"
    if "enum" in s:
        return "enum"
    t = s.get("type")
    has_props = "properties" in s or ("additionalProperties" in s and s["additionalProperties"] is not True)
    if t is None:
        if has_props:
            return "object"
        if "allOf" in s:
            return "allOf"
        if "items" in s or "prefixItems" in s:
            return "array"
        if any(k in s for k in ("pattern", "minLength", "maxLength")) or s.get("format") in (
                set(_FORMATS) | _UUID_FORMATS):
            return "string"
        return "any"
    if t == "object":
        return "allOf" if not has_props and "allOf" in s else "object"
    if t == "string" and "allOf" in s:
        return "allOf"
    return t


def json_schema_to_gbnf(schema: dict | bool) -> str:
    """GBNF text (one `name ::= body` line per rule, names sorted) for a JSON schema."""
    conv = _Converter(schema)
    conv.visit(schema, "#", "")
    return "".join(f"{k} ::= {v}\n" for k, v in sorted(conv.rules.items()))
