"""Constrained decoding: GBNF grammars (as llama.cpp writes them), JSON schemas and regexes.

    g = Grammar.from_json_schema({"type": "object", "properties": {"name": {"type": "string"}}})
    m = g.matcher(tokenizer)          # one per generation; the grammar itself is reusable
    mask = m.allowed()                # bool (n_vocab,): tokens the grammar lets through now
    m.accept(token)

The GBNF text is parsed here with llama.cpp's rules (llama_grammar_parser: names, escapes,
char classes, repetitions, comments, undefined rules, left recursion), so a bad grammar fails with
the line and column of the problem. It is then handed to llguidance as a Lark grammar in which every
terminal is one character: llguidance's lexer is greedy across lexemes, llama.cpp's stacks are not,
and single-character lexemes make the two accept exactly the same strings.

Tokens are matched as llama.cpp's llama_grammar_apply_impl does: by their piece with special
tokens spelled out (token_to_piece(special=True)); end-of-generation tokens are allowed exactly when
the grammar can end; tokens with an empty piece or one starting with NUL are never allowed.
"""
from __future__ import annotations

import bisect
import json
import weakref
from dataclasses import dataclass, field

import llguidance as llg
import numpy as np

from workbench.text.json_schema import JSONSchemaError, json_schema_to_gbnf
from workbench.text.tokenizer import Tokenizer

__all__ = ["Grammar", "GrammarError", "GrammarMatcher", "json_schema_to_gbnf", "parse_gbnf"]

MAX_REPETITION = 2000  # llama.cpp's MAX_REPETITION_THRESHOLD
_HEX = {"x": 2, "u": 4, "U": 8}
_SIMPLE_ESCAPES = {"t": "\t", "r": "\r", "n": "\n", "\\": "\\", '"': '"', "[": "[", "]": "]", "-": "-"}


class GrammarError(ValueError):
    """A grammar that cannot be compiled (with its line:column, or JSON pointer for a schema),
    or a token the grammar does not allow."""


# ---- GBNF syntax tree ------------------------------------------------------------------------
# a node is ("chars", negated, ((lo, hi), ...)) | ("any",) | ("ref", name, offset) |
# ("alts", [[node, ...], ...]) | ("rep", node, min, max or None); a literal becomes one "chars" node
# per character.


@dataclass
class GbnfRules:
    rules: dict[str, list[list[tuple]]] = field(default_factory=dict)  # name -> alternatives
    order: list[str] = field(default_factory=list)


class _Parser:
    """llama_grammar_parser::parse, building a tree instead of rule elements."""

    def __init__(self, text: str):
        self.s, self.pos, self.out = text, 0, GbnfRules()

    def fail(self, msg: str, pos: int | None = None):
        pos = self.pos if pos is None else pos
        line = self.s.count("\n", 0, pos) + 1
        col = pos - (self.s.rfind("\n", 0, pos) + 1) + 1
        snippet = self.s[pos:pos + 20].split("\n")[0]
        raise GrammarError(f"GBNF parse error at line {line}, column {col}: {msg}"
                           + (f" (at {snippet!r})" if snippet else ""))

    def peek(self, k: int = 0) -> str:
        i = self.pos + k
        return self.s[i] if i < len(self.s) else ""

    def space(self, newline_ok: bool) -> None:
        s = self.s
        while self.pos < len(s) and (s[self.pos] in " \t#" or (newline_ok and s[self.pos] in "\r\n")):
            if s[self.pos] == "#":
                while self.pos < len(s) and s[self.pos] not in "\r\n":
                    self.pos += 1
            else:
                self.pos += 1

    def name(self) -> str:
        start = self.pos
        while self.peek() and (self.peek().isascii() and (self.peek().isalnum() or self.peek() == "-")):
            self.pos += 1
        if self.pos == start:
            self.fail("expecting a rule name")
        return self.s[start:self.pos]

    def char(self) -> int:
        c = self.peek()
        if not c:
            self.fail("unexpected end of input")
        if c != "\\":
            self.pos += 1
            return ord(c)
        e = self.peek(1)
        if e in _HEX:
            digits = self.s[self.pos + 2:self.pos + 2 + _HEX[e]]
            if len(digits) != _HEX[e] or any(d not in "0123456789abcdefABCDEF" for d in digits):
                self.fail(f"expecting {_HEX[e]} hex digits after \\{e}")
            self.pos += 2 + _HEX[e]
            value = int(digits, 16)
            if value > 0x10FFFF:
                self.fail(f"code point {value:#x} is beyond U+10FFFF", self.pos - 2 - _HEX[e])
            return value
        if e in _SIMPLE_ESCAPES:
            self.pos += 2
            return ord(_SIMPLE_ESCAPES[e])
        self.fail(f"unknown escape \\{e}")

    def parse(self) -> GbnfRules:
        self.space(True)
        while self.pos < len(self.s):
            self.rule()
        refs = []
        for alts in self.out.rules.values():
            _collect_refs(alts, refs)
        for name, pos in refs:
            if name not in self.out.rules:
                self.fail(f"undefined rule identifier {name!r}", pos)
        if "root" not in self.out.rules:
            raise GrammarError("GBNF grammar has no 'root' rule")
        _check_left_recursion(self.out.rules)
        return self.out

    def rule(self) -> None:
        name = self.name()
        self.space(False)
        if self.s[self.pos:self.pos + 3] != "::=":
            self.fail("expecting ::=")
        self.pos += 3
        self.space(True)
        alts = self.alternates(nested=False)
        if name not in self.out.rules:
            self.out.order.append(name)
        self.out.rules[name] = alts
        if self.peek() == "\r":
            self.pos += 2 if self.peek(1) == "\n" else 1
        elif self.peek() == "\n":
            self.pos += 1
        elif self.peek():
            self.fail("expecting newline or end")
        self.space(True)

    def alternates(self, nested: bool) -> list[list[tuple]]:
        alts = [self.sequence(nested)]
        while self.peek() == "|":
            self.pos += 1
            self.space(True)
            alts.append(self.sequence(nested))
        return alts

    def sequence(self, nested: bool) -> list[tuple]:
        seq: list[tuple] = []
        while self.pos < len(self.s):
            c = self.peek()
            if c == '"':
                self.pos += 1
                chars = []
                while self.peek() != '"':
                    v = self.char()
                    chars.append(("chars", False, ((v, v),)))
                self.pos += 1
                # llama.cpp: a repetition after a literal repeats the whole literal
                seq.append(chars[0] if len(chars) == 1 else ("alts", [chars]))
            elif c == "[":
                start = self.pos
                self.pos += 1
                negated = self.peek() == "^"
                self.pos += negated
                ranges = []
                while self.peek() != "]":
                    if not self.peek():
                        self.fail("unexpected end of input in a character class", start)
                    lo = self.char()
                    hi = lo
                    if self.peek() == "-" and self.peek(1) != "]":
                        self.pos += 1
                        hi = self.char()
                    ranges.append((lo, hi))
                self.pos += 1
                seq.append(("chars", negated, tuple(ranges)))
            elif c in "<!":
                self.fail("token references (<[id]>, <token>) are not supported")
            elif c.isascii() and (c.isalnum() or c == "-"):
                start = self.pos
                seq.append(("ref", self.name(), start))
            elif c == "(":
                self.pos += 1
                self.space(True)
                alts = self.alternates(nested=True)
                if self.peek() != ")":
                    self.fail("expecting ')'")
                self.pos += 1
                seq.append(("alts", alts))
            elif c == ".":
                self.pos += 1
                seq.append(("any",))
            elif c in "*+?{":
                if not seq:
                    self.fail(f"expecting an item before {c!r}")
                lo, hi = self.repetition(nested)
                seq[-1] = ("rep", seq[-1], lo, hi)
            else:
                break
            self.space(nested)
        return seq

    def repetition(self, nested: bool) -> tuple[int, int | None]:
        c = self.peek()
        self.pos += 1
        if c in "*+?":
            return {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
        self.space(nested)
        lo = self.integer()
        self.space(nested)
        if self.peek() == "}":
            hi: int | None = lo
        elif self.peek() == ",":
            self.pos += 1
            self.space(nested)
            hi = self.integer() if self.peek().isdigit() and self.peek().isascii() else None
            self.space(nested)
            if self.peek() != "}":
                self.fail("expecting '}'")
        else:
            self.fail("expecting ',' or '}'")
        self.pos += 1
        if lo > MAX_REPETITION:
            self.fail(f"{lo} repetitions exceed llama.cpp's limit of {MAX_REPETITION}")
        if hi is not None and hi > MAX_REPETITION:
            hi = None  # (llama.cpp: an upper bound over the limit means unbounded)
        if hi is not None and hi < lo:
            self.fail(f"repetition {{{lo},{hi}}} has its maximum below its minimum")
        return lo, hi

    def integer(self) -> int:
        start = self.pos
        while self.peek().isdigit() and self.peek().isascii():
            self.pos += 1
        if start == self.pos:
            self.fail("expecting an integer")
        return int(self.s[start:self.pos])


def _collect_refs(alts, out: list) -> None:
    for seq in alts:
        for node in seq:
            _node_refs(node, out)


def _node_refs(node, out: list) -> None:
    if node[0] == "ref":
        out.append((node[1], node[2]))
    elif node[0] == "alts":
        _collect_refs(node[1], out)
    elif node[0] == "rep":
        _node_refs(node[1], out)


def _nullable_rules(rules) -> set[str]:
    nullable: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, alts in rules.items():
            if name not in nullable and _alts_nullable(alts, nullable):
                nullable.add(name)
                changed = True
    return nullable


def _alts_nullable(alts, nullable) -> bool:
    return any(all(_node_nullable(n, nullable) for n in seq) for seq in alts)


def _node_nullable(node, nullable) -> bool:
    kind = node[0]
    if kind == "ref":
        return node[1] in nullable
    if kind == "alts":
        return _alts_nullable(node[1], nullable)
    if kind == "rep":
        return node[2] == 0 or _node_nullable(node[1], nullable)
    return False


def _left_refs(alts, nullable, out: set) -> None:
    """Rules reachable at the leftmost position (through nullable prefixes)."""
    for seq in alts:
        for node in seq:
            _node_left_refs(node, nullable, out)
            if not _node_nullable(node, nullable):
                break


def _node_left_refs(node, nullable, out: set) -> None:
    if node[0] == "ref":
        out.add(node[1])
    elif node[0] == "alts":
        _left_refs(node[1], nullable, out)
    elif node[0] == "rep":
        _node_left_refs(node[1], nullable, out)


def _check_left_recursion(rules) -> None:
    """llama_grammar_init_impl refuses left-recursive grammars ("left recursion detected")."""
    nullable = _nullable_rules(rules)
    left: dict[str, set[str]] = {}
    for name, alts in rules.items():
        left[name] = set()
        _left_refs(alts, nullable, left[name])
    for start in rules:
        seen, todo = set(), list(left[start])
        while todo:
            r = todo.pop()
            if r == start:
                raise GrammarError(f"GBNF grammar is left-recursive in rule {start!r} "
                                   "(llama.cpp refuses it: 'left recursion detected')")
            if r not in seen:
                seen.add(r)
                todo.extend(left.get(r, ()))


def parse_gbnf(text: str) -> GbnfRules:
    """Parse GBNF as llama.cpp does; GrammarError names the line and column of a problem."""
    if not isinstance(text, str):
        raise GrammarError(f"a GBNF grammar is text, got {type(text).__name__}")
    return _Parser(text).parse()


# ---- GBNF -> Lark with one-character lexemes ---------------------------------------------------

def _cp(v: int) -> str:
    return f"\\x{{{v:x}}}"


def _class_regex(negated: bool, ranges) -> str:
    parts = []
    for lo, hi in ranges:
        if 0xD800 <= lo <= 0xDFFF and 0xD800 <= hi <= 0xDFFF:
            continue  # surrogates are no characters: such a range matches nothing
        if lo > hi:
            continue  # (llama.cpp: an empty range matches nothing)
        parts.append(_cp(lo) if lo == hi else f"{_cp(lo)}-{_cp(hi)}")
    if not parts:
        return "/(?s:.)/" if negated else "/[^\\x{0}-\\x{10ffff}]/"
    return f"/[{'^' if negated else ''}{''.join(parts)}]/"


def _lark_node(node, names) -> str:
    kind = node[0]
    if kind == "chars":
        negated, ranges = node[1], node[2]
        if not negated and len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
            return f"/{_cp(ranges[0][0])}/"
        return _class_regex(negated, ranges)
    if kind == "any":
        return "/(?s:.)/"
    if kind == "ref":
        return names[node[1]]
    if kind == "alts":
        return "(" + _lark_alts(node[1], names) + ")"
    inner, lo, hi = _lark_node(node[1], names), node[2], node[3]
    if node[1][0] != "alts":
        inner = f"({inner})"
    if (lo, hi) == (0, None):
        return inner + "*"
    if (lo, hi) == (1, None):
        return inner + "+"
    if (lo, hi) == (0, 1):
        return inner + "?"
    if hi == 0:
        return '""'
    return inner + (f"{{{lo}}}" if hi == lo else f"{{{lo},}}" if hi is None else f"{{{lo},{hi}}}")


def _lark_alts(alts, names) -> str:
    out = []
    for seq in alts:
        out.append(" ".join(_lark_node(n, names) for n in seq) if seq else '""')
    return " | ".join(out)


def gbnf_to_lark(rules: GbnfRules) -> str:
    names = {name: f"r{i}" for i, name in enumerate(rules.order)}
    lines = [f"start: {names['root']}"]
    for name in rules.order:
        lines.append(f"{names[name]}: {_lark_alts(rules.rules[name], names)}")
    return "\n".join(lines) + "\n"


# ---- compiled grammar and per-generation matcher ----------------------------------------------

@dataclass(frozen=True)
class TokenTable:
    """A tokenizer as the grammar sees it: llguidance's view plus llama.cpp's special cases."""

    lltokenizer: object
    n_vocab: int
    eog: np.ndarray          # int64 ids of end-of-generation tokens
    eog_set: frozenset
    never: np.ndarray        # bool (n_vocab,): empty piece or NUL first byte (never allowed)
    by_piece: dict           # piece bytes -> token ids
    sorted_pieces: list      # all pieces, sorted (a prefix's extensions form one run)
    sorted_ids: np.ndarray   # token ids in that order


_TABLES: dict[int, tuple[weakref.ref, TokenTable]] = {}


class _Wrapper:
    """The object llguidance.TokenizerWrapper expects."""

    def __init__(self, tok: Tokenizer, pieces: list[bytes]):
        self.eos_token_id, self.bos_token_id = tok.eos_id, tok.bos_id
        self.tokens, self.special_token_ids, self._tok = pieces, [], tok

    def __call__(self, text: bytes) -> list[int]:
        return self._tok.tokenize(bytes(text), add_special=False)


def token_table(tok: Tokenizer) -> TokenTable:
    """Built once per Tokenizer (about 0.2 s for 49k tokens) and cached while it lives."""
    hit = _TABLES.get(id(tok))
    if hit is not None and hit[0]() is tok:
        return hit[1]
    # all pieces as plain text (llama.cpp matches control tokens by their text, too)
    pieces = [tok.token_to_piece(i, special=True) for i in range(tok.n_vocab)]
    never = np.array([not p or p[0] == 0 for p in pieces], bool)
    eog = np.array(sorted(tok.eog_ids), np.int64)
    eos = tok.eos_id if tok.eos_id is not None else (int(eog[0]) if len(eog) else 0)
    # (a piece starting with byte 0xFF reads as a special token to llguidance: never allowed)
    wrapper = _Wrapper(tok, pieces)
    llt = llg.LLTokenizer(llg.TokenizerWrapper(wrapper), n_vocab=tok.n_vocab, eos_token=eos)
    by_piece: dict[bytes, list[int]] = {}
    for i, p in enumerate(pieces):
        by_piece.setdefault(p, []).append(i)
    order = sorted(range(len(pieces)), key=pieces.__getitem__)
    table = TokenTable(llt, tok.n_vocab, eog, frozenset(tok.eog_ids), never, by_piece,
                       [pieces[i] for i in order], np.array(order, np.int64))
    key = id(tok)
    _TABLES[key] = (weakref.ref(tok, lambda _r, k=key, tables=_TABLES: tables.pop(k, None)), table)
    return table


@dataclass(frozen=True)
class Grammar:
    """A compiled, immutable grammar; make one GrammarMatcher per generation with .matcher()."""

    kind: str        # "gbnf", "json_schema" or "regex"
    source: str      # the GBNF text, regex, or the schema as JSON
    gbnf: str        # the GBNF text (empty for a regex)
    lark: str = field(repr=False)   # what llguidance runs

    @classmethod
    def from_gbnf(cls, text: str, *, kind: str = "gbnf", source: str | None = None) -> "Grammar":
        lark = gbnf_to_lark(parse_gbnf(text))
        compiled = llg.LLMatcher.grammar_from_lark(lark)
        err = llg.LLMatcher.validate_grammar(compiled)
        if err:
            raise GrammarError(f"grammar rejected by llguidance: {err}")
        return cls(kind, text if source is None else source, text, compiled)

    @classmethod
    def from_json_schema(cls, schema: dict | bool | str) -> "Grammar":
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise GrammarError(f"JSON schema is not valid JSON: line {e.lineno}, column {e.colno}: "
                                   f"{e.msg}") from None
        try:
            gbnf = json_schema_to_gbnf(schema)
        except JSONSchemaError as e:
            raise GrammarError(str(e)) from None
        return cls.from_gbnf(gbnf, kind="json_schema", source=json.dumps(schema))

    @classmethod
    def from_regex(cls, pattern: str) -> "Grammar":
        """A regex over the whole output (Rust regex syntax, as llguidance reads it)."""
        if not isinstance(pattern, str):
            raise GrammarError(f"a regex is text, got {type(pattern).__name__}")
        compiled = llg.LLMatcher.grammar_from_regex(pattern)
        err = llg.LLMatcher.validate_grammar(compiled)
        if err:
            raise GrammarError(f"invalid regex {pattern!r}: {err}")
        return cls("regex", pattern, "", compiled)

    def matcher(self, tokenizer: Tokenizer) -> "GrammarMatcher":
        return GrammarMatcher(self, token_table(tokenizer))


class GrammarMatcher:
    """The grammar's state during one generation (llama_sampler_grammar's apply / accept)."""

    def __init__(self, grammar: Grammar, table: TokenTable):
        self.grammar, self.table = grammar, table
        self._m = llg.LLMatcher(table.lltokenizer, grammar.lark, log_level=0)
        if self._m.is_error():
            raise GrammarError(f"grammar failed to start: {self._m.get_error()}")
        self._ended = False   # an end-of-generation token was accepted

    def allowed(self) -> np.ndarray:
        """bool (n_vocab,): the tokens llama_grammar_apply_impl leaves finite now."""
        n = self.table.n_vocab
        if self._ended:
            return np.zeros(n, bool)
        bits = np.frombuffer(self._m.compute_bitmask(), np.uint8)
        mask = np.unpackbits(bits, bitorder="little")[:n].astype(bool)
        forced = self._m.compute_ff_bytes()
        if forced:
            # llguidance keeps only the canonical tokenization of bytes the grammar forces; llama.cpp
            # allows every token consistent with them: re-check those one by one
            t = self.table
            cands = [i for k in range(1, len(forced) + 1) for i in t.by_piece.get(forced[:k], ())]
            lo = bisect.bisect_left(t.sorted_pieces, forced)
            hi = bisect.bisect_left(t.sorted_pieces, forced + b"\xff" * 8, lo)
            for i in [*cands, *t.sorted_ids[lo:hi].tolist()]:
                mask[i] = self._m.validate_tokens([int(i)]) == 1
        mask[self.table.never] = False
        mask[self.table.eog] = self._m.is_accepting()
        return mask

    def is_allowed(self, token: int) -> bool:
        """One token's verdict without computing the whole mask (the rejection-sampling check)."""
        if not 0 <= token < self.table.n_vocab:
            raise GrammarError(f"token id {token} out of range [0, {self.table.n_vocab})")
        if self._ended:
            return False
        if token in self.table.eog_set:
            return self._m.is_accepting()
        if self.table.never[token]:
            return False
        return self._m.validate_tokens([int(token)]) == 1

    def accept(self, token: int) -> None:
        """Advance past `token` (llama_grammar_accept_impl); GrammarError if it is not allowed."""
        token = int(token)
        if not self.is_allowed(token):
            raise GrammarError(f"token {token} is not allowed by the grammar here")
        if token in self.table.eog_set:
            self._ended = True
            return
        if not self._m.consume_token(token):
            raise GrammarError(f"token {token} rejected by the grammar: {self._m.get_error()}")

    def is_accepting(self) -> bool:
        """The text so far is a complete match (an end-of-generation token is allowed)."""
        return not self._ended and self._m.is_accepting()

    def is_finished(self) -> bool:
        """Nothing but an end-of-generation token can follow (or one was accepted)."""
        return self._ended or self._m.is_stopped()
