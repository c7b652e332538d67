"""llama.cpp's own chat-template suite (tests/test-chat-template.cpp, jinja mode), rendered by us.

The cases are parsed from the C++ source at test time (nothing of llama.cpp is copied into this
repo); the test skips when that source is absent (CI). Each case is rendered as
main_automated_tests does in jinja mode: format_using_common with the fixed six-message
conversation (+ the case's extra turns), the case's bos/eos text, add_generation_prompt=true, no
model (so no BOS/EOS stripping), no tools.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import LLAMA_CPP_HINT, llama_cpp_source

from workbench.text.chat import (
    ChatTemplateError,
    TemplateCaps,
    render_chat,
    render_jinja,
    template_caps,
    template_messages,
)

SUITE = "tests/test-chat-template.cpp"
N_JINJA_CASES = 35  # cases in the reference commit's suite with supported_with_jinja = true


# --- a small reader for the C++ aggregate initialisers: string literals, bools and {lists} ---

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "0": "\0",
            "a": "\a", "b": "\b", "f": "\f", "v": "\v", "?": "?"}
_TOKEN = re.compile(r'''\s+|//[^\n]*|/\*.*?\*/|(?P<raw>(?:u8|u|U|L)?R"(?P<delim>[^(]*)\((?P<rbody>.*?)\)(?P=delim)")'''
                    r'''|(?P<str>(?:u8|u|U|L)?"(?P<body>(?:[^"\\\n]|\\.)*)")|(?P<punct>[{},()])'''
                    r'''|(?P<word>[A-Za-z_][A-Za-z_0-9]*)''', re.S)


def _unescape(body: str) -> str:
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        e = body[i + 1]
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 2
        elif e in "uU":
            n = 4 if e == "u" else 8
            out.append(chr(int(body[i + 2:i + 2 + n], 16)))
            i += 2 + n
        else:
            raise ValueError(f"unsupported C++ escape \\{e} in the suite")
    return "".join(out)


def _tokens(src: str):
    pos = 0
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if m is None:
            raise ValueError(f"cannot read the suite near {src[pos:pos + 40]!r}")
        pos = m.end()
        if m["raw"] is not None:
            yield ("str", m["rbody"])
        elif m["str"] is not None:
            yield ("str", _unescape(m["body"]))
        elif m["punct"]:
            yield (m["punct"], m["punct"])
        elif m["word"]:
            yield ("word", m["word"])


def _parse_value(toks: list, i: int):
    """One initialiser value at toks[i]: (value, next index). Adjacent literals concatenate
    and the U8C(...) macro is transparent, as for the C++ compiler."""
    kind, text = toks[i]
    if kind == "{":
        items, i = [], i + 1
        while toks[i][0] != "}":
            v, i = _parse_value(toks, i)
            items.append(v)
            if toks[i][0] == ",":
                i += 1
        return items, i + 1
    if kind == "word" and text == "U8C":
        v, i = _parse_value(toks, i + 2)  # skip "U8C" "("
        assert toks[i][0] == ")"
        return _concat(v, toks, i + 1)
    if kind == "word" and text in ("true", "false"):
        return text == "true", i + 1
    if kind == "str":
        return _concat(text, toks, i + 1)
    raise ValueError(f"unexpected token {text!r} in the suite")


def _concat(value: str, toks: list, i: int):
    while toks[i][0] == "str" or toks[i] == ("word", "U8C"):
        more, i = _parse_value(toks, i)
        value += more
    return value, i


@dataclass
class Case:
    """One TestCase of main_automated_tests, fields in the struct's order and defaults."""
    name: str
    template_str: str
    expected_output: str
    expected_output_jinja: str
    bos_token: str = ""
    eos_token: str = ""
    supported_with_jinja: bool = True
    extra_conversation: list = field(default_factory=list)

    @property
    def expected(self) -> str:
        return self.expected_output_jinja or self.expected_output


def read_cases(path: Path) -> tuple[list[dict[str, str]], list[Case]]:
    """The base conversation and every TestCase of main_automated_tests."""
    src = path.read_text(encoding="utf-8")
    body = src[src.index("int main_automated_tests"):]
    conv_src = body[body.index("conversation {") + len("conversation "):]
    conv, _ = _parse_value(list(_tokens(conv_src[:conv_src.index("};") + 1])), 0)
    cases_src = body[body.index("test_cases {") + len("test_cases "):]
    cases_src = cases_src[:cases_src.index("\n    };") + len("\n    }")]
    raw, _ = _parse_value(list(_tokens(cases_src)), 0)
    conversation = [{"role": r, "content": c} for r, c in conv]
    return conversation, [Case(*fields) for fields in raw]


_PATH = llama_cpp_source(SUITE)
_CONV, _CASES = read_cases(_PATH) if _PATH else ([], [])
_JINJA = [c for c in _CASES if c.supported_with_jinja]
needs_suite = pytest.mark.skipif(_PATH is None, reason=f"llama.cpp source with {SUITE} not found ({LLAMA_CPP_HINT})")


def _render(case: Case) -> str:
    msgs = _CONV + [{"role": r, "content": c} for r, c in case.extra_conversation]
    return render_jinja(case.template_str, msgs, bos_token=case.bos_token, eos_token=case.eos_token,
                        add_generation_prompt=True)


@needs_suite
@pytest.mark.parametrize("case", _JINJA, ids=[c.name[:60] for c in _JINJA])
def test_case_renders_like_llama_cpp(case):
    assert _render(case) == case.expected


@needs_suite
def test_whole_suite_found_and_passes():
    assert len(_CONV) == 6 and _CONV[0]["role"] == "system"
    assert len(_JINJA) == N_JINJA_CASES, [c.name for c in _JINJA]
    bad = [c.name for c in _JINJA if _render(c) != c.expected]
    assert not bad, f"{len(bad)} of {len(_JINJA)} cases differ from llama.cpp: {bad}"


# --- self-contained checks (no llama.cpp source needed): small templates written for these tests ---

TURNS = "{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}"
RAISES = "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}" + TURNS
IGNORES = "{% for m in messages %}{% if m.role != 'system' %}<{{ m.role }}>{{ m.content }}{% endif %}{% endfor %}"
TOOLS = ("{% if tools %}[{% for t in tools %}{{ t.function.name }};{% endfor %}]{% endif %}"
         "{% for m in messages %}<{{ m.role }}>{{ m.content }}"
         "{% for c in m.tool_calls or [] %}({{ c.function.name }}:{{ c.function.arguments | tojson }})"
         "{% endfor %}{% if m.tool_call_id %}#{{ m.tool_call_id }}{% endif %}{% endfor %}")
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]


def test_template_raising_on_system_gets_it_folded_into_the_first_turn():
    assert not template_caps(RAISES).supports_system_role
    assert render_chat(CHAT, RAISES) == "<user>Be brief.\nHi</user><assistant>Hello</assistant><user>Bye</user>"
    # only the first system message folds: a second one (now first) still reaches the template
    with pytest.raises(ChatTemplateError, match="System role not supported"):
        render_chat([CHAT[0], CHAT[0], CHAT[1]], RAISES)


def test_template_ignoring_system_gets_it_folded_too():
    assert not template_caps(IGNORES).supports_system_role
    assert render_chat(CHAT[:2], IGNORES) == "<user>Be brief.\nHi"


def test_template_with_system_role_is_left_alone():
    caps = template_caps(TURNS)
    assert caps.supports_system_role and not caps.supports_tools and not caps.supports_tool_calls
    assert render_chat(CHAT[:2], TURNS) == "<system>Be brief.</system><user>Hi</user>"


def test_fold_rules_match_system_message_not_supported():
    no_sys = TemplateCaps(supports_system_role=False)
    # only the first message folds, into whatever comes next; a second system message stays
    msgs = template_messages([CHAT[0], {"role": "assistant", "content": "A"}, CHAT[0]], no_sys)
    assert msgs == [{"role": "assistant", "content": "Be brief.\nA"}, CHAT[0]]
    assert template_messages(CHAT[:1], no_sys) == []  # a lone system prompt is dropped
    # "developer" counts as "system", except for GPT-OSS (<|channel|>) templates
    dev = [{"role": "developer", "content": "D"}, CHAT[1]]
    assert template_messages(dev, no_sys) == [{"role": "user", "content": "D\nHi"}]
    assert template_messages(dev, no_sys, "<|channel|>")[0]["role"] == "developer"
    assert template_messages(CHAT, TemplateCaps()) == CHAT


def test_tools_reach_the_template_and_tool_messages_pass_through():
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    msgs = [{"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
            {"role": "tool", "content": "12C", "tool_call_id": "c1"}]
    caps = template_caps(TOOLS)
    assert caps == TemplateCaps(supports_system_role=True, supports_tools=True, supports_tool_calls=True,
                                supports_parallel_tool_calls=True, supports_object_arguments=True)
    # object arguments: the JSON string is parsed, so tojson re-spaces it
    assert render_chat(msgs, TOOLS, tools=tools) == ('[get_weather;]<user>Weather?<assistant>'
                                                   '(get_weather:{"city": "Oslo"})<tool>12C#c1')
    assert render_chat(msgs[:1], TOOLS, tools=[]) == "<user>Weather?"  # no tools: `tools` undefined
    assert render_chat(msgs[:1], "{{ tools is defined }}|{{ add_generation_prompt is defined }}",
                       add_generation_prompt=False) == "False|False"


def test_caps_string_arguments_and_single_tool_call():
    first_only = ("{% for m in messages %}{{ m.content }}{% if m.tool_calls %}"
                  "{{ m.tool_calls[0].function.name }}={{ m.tool_calls[0].function.arguments }}"
                  "{% endif %}{% endfor %}")
    caps = template_caps(first_only)
    assert caps.supports_tool_calls and not caps.supports_tools
    assert not caps.supports_parallel_tool_calls and not caps.supports_object_arguments
    # arguments given as an object reach a string-arguments template as compact JSON (nlohmann dump())
    call = {"type": "function", "function": {"name": "f", "arguments": {"a": [1, 2], "b": "é"}}}
    out = render_chat([{"role": "assistant", "tool_calls": [call]}], first_only)
    assert out == 'f={"a":[1,2],"b":"é"}'


def test_content_parts_join_with_newlines():
    parts = [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    assert render_chat([{"role": "user", "content": parts}], TURNS) == "<user>one\ntwo</user>"


@pytest.mark.parametrize("msgs, tools, match", [
    ([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}], None, "content part"),
    ([{"role": "user", "content": 3}], None, "string or a list"),
    ([{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f"}}]}], None, "arguments"),
    ([{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{oops"}}]}],
     None, "not valid JSON"),
    ([{"role": "user"}], None, "'content'"),
    ([{"role": "user", "content": "x"}], {"name": "f"}, "tools must be a list"),
])
def test_bad_messages_and_tools_are_reported(msgs, tools, match):
    with pytest.raises(ChatTemplateError, match=match):
        render_chat(msgs, TOOLS, tools=tools)
