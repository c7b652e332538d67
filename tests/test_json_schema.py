"""JSON schema -> GBNF: which strings each schema accepts (checked through the grammar matcher on text, token by
token), the rules llama.cpp's json_schema_to_grammar follows, and errors naming the JSON pointer."""
from __future__ import annotations

import json
import os
import subprocess
from enum import Enum
from typing import List, Optional

import jsonschema
import pytest
from pydantic import BaseModel

from workbench.gguf import read_gguf
from workbench.text.grammar import Grammar, GrammarError
from workbench.text.json_schema import JSONSchemaError, int_range, json_schema_to_gbnf
from workbench.text.tokenizer import Tokenizer

from test_grammar import accepts


@pytest.fixture(scope="module")
def tok(smollm2_path) -> Tokenizer:
    return Tokenizer.from_metadata(read_gguf(smollm2_path).metadata)


PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 8},
    "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "role": {"enum": ["admin", "user"]},
    "nick": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
    "required": ["name", "age", "role"]}

CASES = [  # schema, accepted, refused
    (PERSON,
     ['{"name": "Al", "age": 7, "role": "user"}', '{"name":"Al","age":150,"role":"admin","nick":null}',
      '{\n  "name": "Al",\n  "age": 0,\n  "role": "user",\n  "nick": "x"\n}'],
     ['{"age": 7, "name": "Al", "role": "user"}',        # order is the schema's
      '{"name": "Al", "age": 151, "role": "user"}',       # maximum
      '{"name": "Al", "age": 07, "role": "user"}',        # no leading zero
      '{"name": "", "age": 7, "role": "user"}',           # minLength
      '{"name": "Al", "age": 7, "role": "root"}',         # enum
      '{"name": "Al", "age": 7, "role": "user", "x": 1}',  # no additional properties
      '{"name": "Al", "age": 7}',                          # required
      '{"name": "Al", "age": 7, "role": "user"} ']),      # nothing after the value
    ({"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3},
     ["[1]", "[1, 2, 3]", "[ -4, 5 ]"], ["[]", "[1, 2, 3, 4]", "[1.5]", "[1 ,2]"]),
    ({"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"type": "null"}, "c": {"type": "number"}}},
     ["{}", '{"a": true}', '{"b": null, "c": -1.5e3}', '{"a": false, "c": 2}'], ['{"c": 1, "a": true}', '{"a": 1}']),
    ({"type": "object", "additionalProperties": {"type": "integer"}, "properties": {"k": {"type": "string"}}},
     ['{"k": "v", "x": 1}', '{"x": 1, "y": 2}'], ['{"x": "s"}', '{"k": 1}']),
    ({"type": "object"}, ['{"any": [1, {"b": null}]}', "{}"], ["[]"]),
    ({"const": {"a": [1, "x"]}}, ['{"a":[1,"x"]}'], ['{"a": [1, "x"]}']),
    ({"type": ["integer", "null"]}, ["12", "null"], ["1.5", '"1"']),
    ({"type": "string", "format": "date"}, ['"2024-02-29"'], ['"2024-13-01"', '"24-01-01"']),
    ({"type": "string", "format": "uuid"}, ['"123e4567-e89b-12d3-a456-426614174000"'], ['"123"']),
    ({"type": "string", "pattern": "^[A-Z][a-z]+(-[0-9]{2})?$"}, ['"Ab"', '"Abc-12"'], ['"ab"', '"Ab-1"']),
    ({"type": "string", "pattern": "^\\d+$"}, ['"anything"'], ["1"]),  # unsupported: any string (as llama.cpp)
    ({"type": "integer", "exclusiveMinimum": -3, "maximum": 12}, ["-2", "0", "12", "-0"], ["-3", "13"]),
    ({"type": "integer", "minimum": 10}, ["10", "99", "1000"], ["9", "-1"]),
    ({"type": "integer", "maximum": -5}, ["-5", "-123"], ["-4", "0"]),
    ({"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}},
                {"type": "object", "properties": {"b": {"type": "string"}}}]},
     ['{"a": 1, "b": "x"}'], ['{"a": 1}', '{"b": "x", "a": 1}']),
    ({"type": "array", "items": [{"type": "integer"}, {"type": "string"}]}, ['[1, "a"]'], ['[1]', '["a", 1]']),
]


@pytest.mark.parametrize("schema, good, bad", CASES, ids=[json.dumps(c[0])[:40] for c in CASES])
def test_schema_accepts_exactly(tok, schema, good, bad):
    g = Grammar.from_json_schema(schema)
    for text in good:
        assert accepts(g, tok, text), (text, g.gbnf)
    for text in bad:
        assert not accepts(g, tok, text), (text, g.gbnf)


def test_accepted_json_validates_against_the_schema(tok):
    for schema, good, _ in CASES[:4]:
        for text in good:
            jsonschema.validate(json.loads(text), schema)


class Color(str, Enum):
    red = "red"
    blue = "blue"


class Item(BaseModel):
    name: str
    price: float
    color: Color


class Order(BaseModel):
    items: List[Item]
    note: Optional[str] = None
    parent: Optional["Order"] = None


def test_pydantic_schema_with_defs_anyof_and_recursion(tok):
    schema = Order.model_json_schema()
    assert "$defs" in schema
    g = Grammar.from_json_schema(json.dumps(schema))
    good = ['{"items": [{"name": "a", "price": 1.5, "color": "red"}], "note": null}',
            '{"items": [], "parent": {"items": [], "note": "x"}}']
    for text in good:
        assert accepts(g, tok, text), text
        Order.model_validate_json(text)
    assert not accepts(g, tok, '{"items": [{"name": "a", "price": 1.5, "color": "green"}]}')
    assert not accepts(g, tok, '{"note": null}')


@pytest.mark.parametrize("schema, pointer", [
    ({"type": "object", "properties": {"a": {"type": "strin"}}}, "#/properties/a"),
    ({"type": "array", "items": {"type": "integer"}, "minItems": -1}, "#"),
    ({"anyOf": []}, "#/anyOf"),
    ({"properties": {"x": {"$ref": "#/$defs/missing"}}}, "#/properties/x"),
    ({"enum": "abc"}, "#"),
    ({"type": "integer", "minimum": 5, "maximum": 1}, "#"),
])
def test_bad_schema_names_the_pointer(schema, pointer):
    with pytest.raises(JSONSchemaError, match=f"at {pointer}:"):
        json_schema_to_gbnf(schema)
    with pytest.raises(GrammarError, match=f"at {pointer}:"):
        Grammar.from_json_schema(schema)


def test_schema_text_that_is_not_json():
    with pytest.raises(GrammarError, match="line 1, column"):
        Grammar.from_json_schema("{not json")


@pytest.mark.parametrize("lo, hi", [(0, 150), (-20, 7), (3, 3), (105, 2048), (-99, -10)])
def test_int_range_accepts_exactly_the_range(tok, lo, hi):
    g = Grammar.from_gbnf(f"root ::= {int_range(lo, hi)}\n")
    for v in range(lo - 15, hi + 16, 1 if hi - lo < 300 else 7):
        assert accepts(g, tok, str(v)) is (lo <= v <= hi), v


# llama.cpp's own C++ json_schema_to_grammar as a program (schema on stdin, GBNF on stdout; see
# bench/grammar_reference.py for how to build it from the llama.cpp source): our GBNF must be the same rules.
# Regex patterns are left out: there the two write the same language with a different grouping of sub-rules
# (theirs names each repeated class `root-1`, ours inlines it), which test_schema_accepts_exactly covers.
CPP_CONVERTER = os.environ.get("LLAMA_JSON_SCHEMA_TO_GRAMMAR", "")
SAME_TEXT = [c[0] for c in CASES if "pattern" not in json.dumps(c[0])]


@pytest.mark.skipif(not (CPP_CONVERTER and os.access(CPP_CONVERTER, os.X_OK)),
                    reason="set LLAMA_JSON_SCHEMA_TO_GRAMMAR to llama.cpp's json_schema_to_grammar program")
@pytest.mark.parametrize("schema", SAME_TEXT + [PERSON, Order.model_json_schema()],
                         ids=[json.dumps(c)[:40] for c in SAME_TEXT] + ["person", "pydantic-order"])
def test_same_rules_as_llama_cpp_converter(schema):
    theirs = subprocess.run([CPP_CONVERTER], input=json.dumps(schema), capture_output=True, text=True, check=True)
    assert sorted(json_schema_to_gbnf(schema).splitlines()) == sorted(theirs.stdout.splitlines())
