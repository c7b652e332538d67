"""Chat templates: the GGUF's own Jinja templates vs the built-in llama.cpp formats, and the sandbox."""
from __future__ import annotations

import pytest

from workbench.gguf import read_gguf
from workbench.text.chat import (BUILTIN_TEMPLATES, ChatTemplateError, detect_template,
                                render_chat, render_jinja, stop_strings, template_caps)

CONVO = [{"role": "system", "content": "You are terse."},
         {"role": "user", "content": "What is GGUF?"},
         {"role": "assistant", "content": "A file format."},
         {"role": "user", "content": "Who made it?"}]
USER_ONLY = [m for m in CONVO if m["role"] != "system"]


@pytest.fixture(scope="module")
def smollm2_md(smollm2_path):
    return read_gguf(smollm2_path).metadata


@pytest.fixture(scope="module")
def toy_md(toy_dir):
    return read_gguf(toy_dir / "tiny-mixtral-f16.gguf").metadata


@pytest.mark.parametrize("agp", [True, False])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_smollm2_template_is_chatml(smollm2_md, n, agp):
    msgs = CONVO[:n]
    assert render_chat(msgs, "gguf", metadata=smollm2_md, add_generation_prompt=agp) == \
        render_chat(msgs, "chatml", add_generation_prompt=agp)


def test_smollm2_template_adds_default_system_prompt(smollm2_md):
    out = render_chat(USER_ONLY[:1], "gguf", metadata=smollm2_md)
    assert out == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                   "Hugging Face<|im_end|>\n<|im_start|>user\nWhat is GGUF?<|im_end|>\n"
                   "<|im_start|>assistant\n")
    assert detect_template(smollm2_md["tokenizer.chat_template"]) == "chatml"
    assert stop_strings("gguf", smollm2_md)[:1] == ["<|im_end|>"]


def test_chatml_by_hand():
    assert render_chat(USER_ONLY[:1], "chatml") == \
        "<|im_start|>user\nWhat is GGUF?<|im_end|>\n<|im_start|>assistant\n"


def test_toy_mixtral_template_renders_inst_format(toy_md):
    out = render_chat(USER_ONLY, "gguf", metadata=toy_md)
    # the leading "<s>" is dropped because the tokenizer adds BOS (add_bos_token = true)
    assert out == "[INST] What is GGUF? [/INST]A file format.</s>[INST] Who made it? [/INST]"
    assert out == render_chat(USER_ONLY, "mistral")
    assert detect_template(toy_md["tokenizer.chat_template"]) == "mistral"
    assert "</s>" in stop_strings("gguf", toy_md)


def test_toy_mixtral_template_raise_exception(toy_md):
    with pytest.raises(ChatTemplateError, match="alternate"):
        render_chat([{"role": "assistant", "content": "x"}], "gguf", metadata=toy_md)


def test_llama2_and_llama3_builtins():
    assert render_chat(CONVO, "llama2") == (
        "[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nWhat is GGUF? [/INST]A file format.</s>"
        "[INST] Who made it? [/INST]")
    assert render_chat(CONVO[:2], "llama3") == (
        "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is GGUF?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert stop_strings("llama3")[0] == "<|eot_id|>"
    assert set(BUILTIN_TEMPLATES) >= {"chatml", "llama2", "llama3", "mistral"}


def test_jinja_string_helpers():
    src = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}:{{ m['content'] }}\n{% endfor %}"
           "{% if add_generation_prompt %}assistant:{% endif %}{{ strftime_now('%Y') | length }}")
    out = render_jinja(src, USER_ONLY[:1], bos_token="<s>")
    assert out == "<s>user:What is GGUF?\nassistant:4"
    assert render_jinja("{{ x | tojson }}", [], x={"a": "é<"}) == '{"a": "é<"}'


@pytest.mark.parametrize("evil", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('echo pwned').read() }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{% set l = [] %}{{ l.append(1) }}",
    "{{ raise_exception.__globals__ }}",
])
def test_sandbox_blocks_python_internals(evil):
    with pytest.raises(ChatTemplateError, match="unsafe|sandbox"):
        render_chat(USER_ONLY, evil)


def test_bad_template_arguments(toy_md):
    with pytest.raises(ChatTemplateError, match="unknown chat template"):
        render_chat(USER_ONLY, "vicuna-ish")
    with pytest.raises(ChatTemplateError, match="chat_template"):
        render_chat(USER_ONLY, "gguf", metadata={})
    with pytest.raises(ChatTemplateError, match="role"):
        render_chat([{"content": "x"}], "chatml")
    with pytest.raises(ChatTemplateError, match="failed"):
        render_chat(USER_ONLY, "{% for %}")


def test_smollm2_template_renders_the_golden_prompt(smollm2_md, golden_dir):
    import json

    cases = json.loads((golden_dir / "greedy_smollm2_q4_1.json").read_text(encoding="utf-8"))
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    assert render_chat(msgs, "gguf", metadata=smollm2_md) == cases[0]["prompt"]


def test_gguf_templates_caps_and_system_fold(smollm2_md, toy_md):
    # SmolLM2 (ChatML) reads the system message; the Mixtral template raises on it, so llama.cpp's
    # jinja mode folds the system prompt into the first user turn instead of failing
    assert template_caps(smollm2_md["tokenizer.chat_template"]).supports_system_role
    assert not template_caps(toy_md["tokenizer.chat_template"]).supports_system_role
    out = render_chat(CONVO, "gguf", metadata=toy_md)
    assert out == "[INST] You are terse.\nWhat is GGUF? [/INST]A file format.</s>[INST] Who made it? [/INST]"


def test_builtins_accept_tool_call_messages():
    msgs = USER_ONLY[:1] + [{"role": "assistant", "content": None,
                             "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}]
    assert render_chat(msgs, "chatml", add_generation_prompt=False) == \
        "<|im_start|>user\nWhat is GGUF?<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n"
