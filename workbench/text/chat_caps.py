"""The Jinja sandbox chat templates run in, and what a template can do (llama.cpp's jinja caps).

    caps = template_caps(source)        # TemplateCaps(supports_system_role=False, ...)
    text = render_template(source, {"messages": [...], "bos_token": "<s>", ...})

Templates run in jinja2's ImmutableSandboxedEnvironment with llama.cpp's settings (trim_blocks,
lstrip_blocks, loop controls) and helpers (raise_exception, strftime_now, tojson without HTML
escaping and with Python's / llama.cpp's separators). A template that reaches for Python internals
fails with ChatTemplateError.

template_caps follows jinja::caps_get (common/jinja/caps.cpp): it renders the template on small
probe conversations and watches which values the template reads. llama.cpp's engine marks a value
"used" when it is fetched by member access, tested, filtered or dumped by tojson; here the probe's
dicts record which keys were read (and tojson reads everything it dumps). A template that never
reads the system message's content does not support the system role, whether it raises on it
(Gemma) or silently skips it (YandexGPT). Errors while probing are ignored, as in caps_try_execute.
"""
from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from typing import Any, Mapping

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """A chat template is missing, unknown, unsafe, or raised an error while rendering."""


class _Probe(dict):
    """A probe dict that records which of its keys the template read (value_t::stats.used)."""
    __slots__ = ("_read",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._read: set = set()

    def __getitem__(self, key):
        self._read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._read.add(key)
        return super().get(key, default)

    def items(self):
        self._read.update(self.keys())
        return super().items()

    def values(self):
        self._read.update(self.keys())
        return super().values()

    def was_read(self, key) -> bool:
        return key in self._read


def _probe(value):
    """Deep copy of plain JSON-like data with every dict a _Probe."""
    if isinstance(value, Mapping):
        return _Probe({k: _probe(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_probe(v) for v in value]
    return value


def _mark_read(value) -> None:
    """tojson reads everything it dumps (mark_used(..., deep=true) in llama.cpp's tojson)."""
    if isinstance(value, _Probe):
        value.items()
    if isinstance(value, Mapping):
        for v in dict.values(value):
            _mark_read(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _mark_read(v)


def _raise_exception(message: str):
    raise ChatTemplateError(f"chat template raised: {message}")


def _tojson(value, indent=None, separators=None, sort_keys=False, ensure_ascii=False):
    _mark_read(value)
    return json.dumps(value, indent=indent, separators=separators, sort_keys=sort_keys,
                      ensure_ascii=ensure_ascii)


class _Sandbox(ImmutableSandboxedEnvironment):
    """Unsafe attribute access (``__class__``, ``__globals__``, ...) raises at once instead of
    quietly rendering as an empty Undefined."""

    def unsafe_undefined(self, obj, attribute):
        raise SecurityError(f"access to attribute {attribute!r} of a "
                            f"{type(obj).__name__!r} object is unsafe")


def _environment() -> ImmutableSandboxedEnvironment:
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: time.strftime(fmt, time.localtime())
    env.filters["tojson"] = _tojson  # HF/llama.cpp style: no HTML escaping
    return env


_ENV = _environment()


@functools.lru_cache(maxsize=64)
def compile_template(source: str) -> jinja2.Template:
    """The parsed template (cached: the same template is rendered for every request)."""
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from None


def render_template(source: str, context: Mapping[str, Any]) -> str:
    """Render `source` with the variables in `context`, errors as ChatTemplateError."""
    tmpl = compile_template(source)
    try:
        return tmpl.render(**context)
    except ChatTemplateError:
        raise
    except SecurityError as e:
        raise ChatTemplateError(f"chat template tried an unsafe operation (blocked by the "
                                f"sandbox): {e}") from None
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a template's own bug (1/0, bad types) is bad input
        raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from None


@dataclass(frozen=True)
class TemplateCaps:
    """What a chat template handles (jinja::caps; the defaults are llama.cpp's)."""
    supports_system_role: bool = True          # reads the content of a leading system message
    supports_tools: bool = True                # reads tools[i].function.name
    supports_tool_calls: bool = True           # reads an assistant message's tool_calls
    supports_parallel_tool_calls: bool = True  # reads the second of two tool calls
    supports_object_arguments: bool = False    # reads tool-call arguments as an object


_TOOLS = [{"name": "tool", "type": "function",
           "function": {"name": "tool1", "description": "Tool description",
                        "parameters": {"type": "object",
                                       "properties": {"arg": {"type": "string",
                                                              "description": "Arg description"}},
                                       "required": ["arg"]}}}]


def _tool_conversation(arguments, n_calls: int = 1) -> list[dict]:
    calls = [{"id": f"call0000{i + 1}", "type": "function",
              "function": {"name": "tool1", "arguments": arguments}} for i in range(n_calls)]
    return [{"role": "user", "content": "User message"},
            {"role": "assistant", "content": "", "tool_calls": calls},
            {"role": "tool", "content": "Tool response", "tool_call_id": "call00001"},
            {"role": "assistant", "content": "The tool response was 'tool response'"},
            {"role": "user", "content": "User message"}]


def _try_render(tmpl: jinja2.Template, messages: list, tools: list | None = None):
    """caps_try_execute: render probe data; (success, messages, tools) as the template left them."""
    messages, tools = _probe(messages), _probe(tools or [])
    try:
        tmpl.render(messages=messages, tools=tools, bos_token="", eos_token="",
                    add_generation_prompt=True)
        return True, messages, tools
    except Exception:  # noqa: BLE001 - ignored while probing, as llama.cpp does
        return False, messages, tools


@functools.lru_cache(maxsize=64)
def template_caps(source: str) -> TemplateCaps:
    """Probe a Jinja chat template as jinja::caps_get does (typed-content probes left out)."""
    tmpl = compile_template(source)
    caps = dict(supports_system_role=True, supports_tools=True, supports_tool_calls=True,
                supports_parallel_tool_calls=True, supports_object_arguments=False)

    _, msgs, _ = _try_render(tmpl, [{"role": "system", "content": "System message"},
                                    {"role": "user", "content": "User message"}])
    caps["supports_system_role"] = msgs[0].was_read("content")

    # one tool call with object arguments: when the render fails nothing is inferred
    ok, msgs, tools = _try_render(tmpl, _tool_conversation({"arg": "value"}), _TOOLS)
    if ok:
        caps["supports_tools"] &= tools[0]["function"].was_read("name")
        calls_read = msgs[1].was_read("tool_calls")
        caps["supports_tool_calls"] &= calls_read
        caps["supports_object_arguments"] = calls_read and \
            dict.__getitem__(msgs[1], "tool_calls")[0]["function"]["arguments"].was_read("arg")
    if not caps["supports_object_arguments"]:
        # the same call with arguments as a JSON string: a failure here means no tool support
        ok, msgs, tools = _try_render(tmpl, _tool_conversation('{"arg": "value"}'), _TOOLS)
        if not ok:
            caps["supports_tools"] = caps["supports_tool_calls"] = False
        else:
            caps["supports_tools"] &= tools[0]["function"].was_read("name")
            caps["supports_tool_calls"] &= msgs[1].was_read("tool_calls")

    args = {"arg": "value"} if caps["supports_object_arguments"] else '{"arg": "value"}'
    ok, msgs, _ = _try_render(tmpl, _tool_conversation(args, n_calls=2), _TOOLS)
    caps["supports_parallel_tool_calls"] = ok and \
        dict.__getitem__(msgs[1], "tool_calls")[1].was_read("function")
    return TemplateCaps(**caps)
