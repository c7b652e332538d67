"""Chat prompts: the GGUF's Jinja chat template (sandboxed) or a built-in format, as llama.cpp.

    prompt = render_chat([{"role": "user", "content": "Hi"}], "gguf", metadata=md)
    ids = tokenizer.tokenize(prompt, add_special=True, parse_special=True)

Templates run in jinja2's ImmutableSandboxedEnvironment with llama.cpp's settings (trim_blocks,
lstrip_blocks, loop controls) and helpers (raise_exception, strftime_now, bos_token, eos_token,
add_generation_prompt). A template that reaches for Python internals fails with ChatTemplateError.
As common_chat_template_direct_apply, a leading BOS text is removed from the result when the
tokenizer adds BOS itself (and a trailing EOS when it adds EOS), so it is not doubled.

Built-ins reproduce llama.cpp's hard-coded formats (llm_chat_apply_template): "chatml",
"llama2" (LLAMA_2_SYS: [INST] <<SYS>>...<</SYS>>), "llama3", "mistral" (LLAMA_2 without <<SYS>>,
i.e. Mixtral-Instruct's "[INST] ... [/INST]answer</s>").
"""
from __future__ import annotations

import json
import time
from typing import Callable, Mapping, Sequence

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from workbench.gguf import Keys


class ChatTemplateError(ValueError):
    """A chat template is missing, unknown, unsafe, or raised an error while rendering."""


Message = Mapping[str, str]
_C_SPACE = " \t\n\v\f\r"


def _chatml(messages: Sequence[Message], add_generation_prompt: bool) -> str:
    out = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return out + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def _llama2(messages: Sequence[Message], add_generation_prompt: bool, system_tags: bool = True) -> str:
    out, inside_turn = ["[INST] "], True  # the BOS comes from the tokenizer
    for m in messages:
        role, content = m["role"], m["content"]
        if not inside_turn:
            out.append("[INST] ")
            inside_turn = True
        if role == "system":
            out.append(f"<<SYS>>\n{content}\n<</SYS>>\n\n" if system_tags else content + "\n")
        elif role == "user":
            out.append(content + " [/INST]")
        else:
            out.append(content + "</s>")
            inside_turn = False
    return "".join(out)


def _llama3(messages: Sequence[Message], add_generation_prompt: bool) -> str:
    out = "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n"
                  f"{m['content'].strip(_C_SPACE)}<|eot_id|>" for m in messages)
    return out + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else "")


BUILTIN_TEMPLATES: dict[str, Callable[[Sequence[Message], bool], str]] = {
    "chatml": _chatml,
    "llama2": _llama2,
    "llama3": _llama3,
    "mistral": lambda msgs, agp: _llama2(msgs, agp, system_tags=False),
}
STOP_STRINGS: dict[str, list[str]] = {
    "chatml": ["<|im_end|>", "<|im_start|>"],
    "llama2": ["</s>", "[INST]"],
    "llama3": ["<|eot_id|>", "<|start_header_id|>"],
    "mistral": ["</s>", "[INST]"],
}


def detect_template(source: str) -> str | None:
    """Which built-in family a Jinja template belongs to (llm_chat_detect_template, abridged)."""
    if "<|im_start|>" in source:
        return "chatml"
    if "[INST]" in source:
        return "llama2" if "<<SYS>>" in source else "mistral"
    if "<|start_header_id|>" in source:
        return "llama3"
    return None


def _raise_exception(message: str):
    raise ChatTemplateError(f"chat template raised: {message}")


def _tojson(value, indent=None, separators=None, sort_keys=False, ensure_ascii=False):
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


def _special_text(metadata: Mapping | None, key: str) -> str:
    if not metadata or metadata.get(key) is None:
        return ""
    tokens = metadata.get(Keys.Tokenizer.LIST) or []
    i = int(metadata[key])
    return tokens[i] if 0 <= i < len(tokens) else ""


def render_jinja(source: str, messages: Sequence[Message], *, bos_token: str = "",
                 eos_token: str = "", add_generation_prompt: bool = True, **extra) -> str:
    """Render one Jinja chat template in the sandbox."""
    try:
        tmpl = _ENV.from_string(source)
        return tmpl.render(messages=[dict(m) for m in messages], bos_token=bos_token,
                           eos_token=eos_token, add_generation_prompt=add_generation_prompt,
                           **extra)
    except ChatTemplateError:
        raise
    except SecurityError as e:
        raise ChatTemplateError(f"chat template tried an unsafe operation (blocked by the "
                                f"sandbox): {e}") from None
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from None


def render_chat(messages: Sequence[Message], template: str = "gguf", *,
                metadata: Mapping | None = None, add_generation_prompt: bool = True) -> str:
    """The prompt text for `messages` ([{"role", "content"}, ...]).

    template: "gguf" (tokenizer.chat_template of `metadata`), a built-in name (BUILTIN_TEMPLATES),
    or a Jinja template string."""
    for i, m in enumerate(messages):
        if "role" not in m or "content" not in m:
            raise ChatTemplateError(f"message {i} needs 'role' and 'content', got {sorted(m)}")
    if template in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[template](messages, add_generation_prompt)
    if template == "gguf":
        if not metadata or not metadata.get(Keys.Tokenizer.CHAT_TEMPLATE):
            raise ChatTemplateError(f"template='gguf' but the metadata has no "
                                    f"{Keys.Tokenizer.CHAT_TEMPLATE!r}")
        source = metadata[Keys.Tokenizer.CHAT_TEMPLATE]
    elif "{" in template:
        source = template
    else:
        raise ChatTemplateError(f"unknown chat template {template!r}: use 'gguf', one of "
                                f"{sorted(BUILTIN_TEMPLATES)}, or a Jinja template string")
    bos = _special_text(metadata, Keys.Tokenizer.BOS_ID)
    eos = _special_text(metadata, Keys.Tokenizer.EOS_ID)
    out = render_jinja(source, messages, bos_token=bos, eos_token=eos,
                       add_generation_prompt=add_generation_prompt)
    # the tokenizer adds BOS / EOS itself: do not double them (common_chat_template_direct_apply)
    # (SentencePiece vocabularies add BOS unless the metadata says otherwise, as llama_vocab)
    spm = bool(metadata) and metadata.get(Keys.Tokenizer.MODEL) == "llama"
    add_bos = bool(metadata.get(Keys.Tokenizer.ADD_BOS, spm)) if metadata else False
    add_eos = bool(metadata.get(Keys.Tokenizer.ADD_EOS, False)) if metadata else False
    if add_bos and bos and out.startswith(bos):
        out = out[len(bos):]
    if add_eos and eos and out.endswith(eos):
        out = out[:-len(eos)]
    return out


def stop_strings(template: str = "gguf", metadata: Mapping | None = None) -> list[str]:
    """Text that ends the assistant's turn for this template (besides EOG tokens)."""
    name = template
    if template not in BUILTIN_TEMPLATES:
        source = (metadata or {}).get(Keys.Tokenizer.CHAT_TEMPLATE, "") if template == "gguf" else template
        name = detect_template(source or "")
    stops = list(STOP_STRINGS.get(name, []))
    eos = _special_text(metadata, Keys.Tokenizer.EOS_ID)
    if eos and eos not in stops:
        stops.append(eos)
    return stops
