"""Chat prompts: the GGUF's Jinja chat template (sandboxed) or a built-in format, as llama.cpp.

    prompt = render_chat([{"role": "user", "content": "Hi"}], "gguf", metadata=md)
    ids = tokenizer.tokenize(prompt, add_special=True, parse_special=True)

Jinja templates render as in llama.cpp's jinja mode (common_chat_templates_apply): in the sandbox
of chat_caps, with the messages llama.cpp hands over (template_messages: OpenAI tool calls and
content parts normalised, a system prompt folded into the first turn for templates without a
system role, as their caps say), `tools` when given, bos_token/eos_token and
add_generation_prompt. A template that reaches for Python internals fails with ChatTemplateError.
As common_chat_template_direct_apply, a leading BOS text is removed from the result when the
tokenizer adds BOS itself (and a trailing EOS when it adds EOS), so it is not doubled.

Built-ins reproduce llama.cpp's hard-coded formats (llm_chat_apply_template): "chatml",
"llama2" (LLAMA_2_SYS: [INST] <<SYS>>...<</SYS>>), "llama3", "mistral" (LLAMA_2 without <<SYS>>,
i.e. Mixtral-Instruct's "[INST] ... [/INST]answer</s>").
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable, Mapping, Sequence

from workbench.gguf import Keys
from workbench.text.chat_caps import ChatTemplateError, TemplateCaps, render_template, template_caps

__all__ = ["BUILTIN_TEMPLATES", "STOP_STRINGS", "ChatTemplateError", "TemplateCaps", "detect_template",
           "render_chat", "render_jinja", "stop_strings", "template_caps", "template_messages"]

Message = Mapping[str, Any]
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


def _special_text(metadata: Mapping | None, key: str) -> str:
    if not metadata or metadata.get(key) is None:
        return ""
    tokens = metadata.get(Keys.Tokenizer.LIST) or []
    i = int(metadata[key])
    return tokens[i] if 0 <= i < len(tokens) else ""


def _content_text(i: int, content) -> str:
    """Message content as the template sees it: a string; OpenAI content parts joined as
    messages_inp_normalizer::concat_content_parts (a newline between text parts, none around a
    media marker)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ChatTemplateError(f"message {i}: 'content' must be a string or a list of parts, "
                                f"got {type(content).__name__}")
    text, after_media = "", False
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind not in ("text", "media_marker") or not isinstance(part.get("text", ""), str):
            raise ChatTemplateError(f"message {i}: unsupported content part {part!r} (only "
                                    f"{{'type': 'text', 'text': ...}} parts are supported)")
        if kind == "text" and text and not after_media:
            text += "\n"
        text += part.get("text", "")
        after_media = kind == "media_marker"
    return text


def _tool_call(i: int, call) -> dict:
    """One OpenAI tool call as common_chat_msg::to_json_oaicompat writes it (arguments as a
    JSON string; ids only when given)."""
    fn = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(fn, Mapping) or call.get("type") != "function" or "name" not in fn \
            or "arguments" not in fn:
        raise ChatTemplateError(f"message {i}: a tool call needs type 'function' and a function "
                                f"with 'name' and 'arguments', got {call!r}")
    args = fn["arguments"]
    if not isinstance(args, str):
        args = json.dumps(args, separators=(",", ":"), ensure_ascii=False)  # nlohmann dump()
    out = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
    if call.get("id"):
        out["id"] = call["id"]
    return out


def _template_message(i: int, m) -> dict:
    """common_chat_msgs_parse_oaicompat then to_json_oaicompat: the keys a template sees."""
    if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
        raise ChatTemplateError(f"message {i} needs a string 'role' and a 'content', got {m!r}")
    if "content" not in m and "tool_calls" not in m:
        raise ChatTemplateError(f"message {i} needs 'role' and 'content' (or 'tool_calls'), "
                                f"got {sorted(m)}")
    out = {"role": m["role"], "content": _content_text(i, m.get("content"))}
    for key in ("reasoning_content", "name", "tool_call_id"):
        if m.get(key):
            out[key] = m[key]
    if m.get("tool_calls"):
        if not isinstance(m["tool_calls"], list):
            raise ChatTemplateError(f"message {i}: 'tool_calls' must be a list")
        out["tool_calls"] = [_tool_call(i, c) for c in m["tool_calls"]]
    return out


def template_messages(messages: Sequence[Message], caps: TemplateCaps = TemplateCaps(),
                      source: str = "") -> list[dict]:
    """The messages llama.cpp hands to a Jinja template (common_chat_templates_apply_jinja):
    normalised OpenAI messages, "developer" mapped to "system" (except for GPT-OSS templates,
    which have a <|channel|>), and the workarounds the template's caps call for:

    - no system role: a leading system message is prepended to the next message's content with a
      "\n" between (whatever that message's role); a lone system message is dropped. Only the
      first message is folded (workaround::system_message_not_supported).
    - object arguments: tool-call arguments given as JSON strings are parsed
      (workaround::func_args_not_string)."""
    msgs = [_template_message(i, m) for i, m in enumerate(messages)]
    if "<|channel|>" not in source:
        for m in msgs:
            if m["role"] == "developer":
                m["role"] = "system"
    if not caps.supports_system_role and msgs and msgs[0]["role"] == "system":
        system = msgs.pop(0)
        if msgs:
            msgs[0]["content"] = system["content"] + "\n" + msgs[0]["content"]
    if caps.supports_object_arguments:
        for i, m in enumerate(msgs):
            for call in m.get("tool_calls", []):
                try:
                    call["function"]["arguments"] = json.loads(call["function"]["arguments"])
                except json.JSONDecodeError as e:
                    raise ChatTemplateError(f"message {i}: tool call arguments are not valid "
                                            f"JSON: {e}") from None
    return msgs


def render_jinja(source: str, messages: Sequence[Message], *, bos_token: str = "",
                 eos_token: str = "", add_generation_prompt: bool = True,
                 tools: list | None = None, **extra) -> str:
    """Render one Jinja chat template in the sandbox as llama.cpp's jinja mode does
    (common_chat_templates_apply with use_jinja, common_chat_template_direct_apply_impl).

    The messages go through template_messages with the template's caps (so a template without a
    system role gets the system prompt folded into the first turn); the context holds bos_token,
    eos_token, enable_thinking=true, datetime ("%b %d %Y") and date_string ("%d %b %Y"),
    `tools` only when non-empty, add_generation_prompt only when true (as llama.cpp, it is
    undefined otherwise), then `extra`."""
    if tools is not None and not isinstance(tools, list):
        raise ChatTemplateError(f"tools must be a list of tool objects, got {type(tools).__name__}")
    msgs = template_messages(messages, template_caps(source), source)
    now = time.localtime()
    context: dict[str, Any] = {"messages": msgs, "bos_token": bos_token, "eos_token": eos_token,
                               "enable_thinking": True,
                               "datetime": time.strftime("%b %d %Y", now),
                               "date_string": time.strftime("%d %b %Y", now)}
    if tools:
        context["tools"] = tools
    if add_generation_prompt:
        context["add_generation_prompt"] = True
    context.update(extra)
    return render_template(source, context)


def render_chat(messages: Sequence[Message], template: str = "gguf", *,
                metadata: Mapping | None = None, add_generation_prompt: bool = True,
                tools: list | None = None) -> str:
    """The prompt text for `messages` (OpenAI chat messages: {"role", "content"}, assistant
    "tool_calls", role "tool" with "tool_call_id").

    template: "gguf" (tokenizer.chat_template of `metadata`), a built-in name (BUILTIN_TEMPLATES),
    or a Jinja template string. `tools` (OpenAI tool objects) reach Jinja templates only, as in
    llama.cpp, whose built-in formats ignore them."""
    if template in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[template](template_messages(messages), add_generation_prompt)
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
                       add_generation_prompt=add_generation_prompt, tools=tools)
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
