"""ollama Modelfiles: FROM / TEMPLATE / SYSTEM / PARAMETER, and the common Go-template subset of TEMPLATE
(`{{ if .System }}…{{ end }}`, `{{ .System }}`, `{{ .Prompt }}`, `{{ .Response }}`)."""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from workbench.gguf import Keys, read_gguf
from workbench.text.chat import detect_template

# Go templates of the built-in chat formats (what `ollama show --modelfile` gives for such models)
GO_TEMPLATES = {
    "chatml": "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
              "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n{{ .Response }}",
    "llama2": "[INST] {{ if .System }}<<SYS>>\n{{ .System }}\n<</SYS>>\n\n{{ end }}{{ .Prompt }} [/INST] {{ .Response }}",
    "llama3": "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
              "<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}",
    "mistral": "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }} [/INST]{{ .Response }}",
}
STOPS = {"chatml": ["<|im_start|>", "<|im_end|>"], "llama2": ["[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"],
         "llama3": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "mistral": ["[INST]", "[/INST]"]}

# ollama PARAMETER name -> (workbench sampling name, type)
PARAMETERS = {"temperature": ("temperature", float), "top_k": ("top_k", int), "top_p": ("top_p", float),
              "min_p": ("min_p", float), "repeat_penalty": ("repeat_penalty", float),
              "repeat_last_n": ("repeat_last_n", int), "seed": ("seed", int), "num_predict": ("n_predict", int),
              "num_ctx": ("n_ctx", int), "num_keep": ("n_keep", int), "stop": ("stop", str)}


class ModelfileError(ValueError):
    """A Modelfile line that cannot be understood."""


@dataclass
class Modelfile:
    model: str = ""
    template: str = ""
    system: str = ""
    parameters: dict = field(default_factory=dict)   # workbench names; "stop" is a list

    def render(self, prompt: str, system: str | None = None, response: str = "") -> str:
        return render_go_template(self.template or "{{ .Prompt }}", system=self.system if system is None else system,
                                  prompt=prompt, response=response)


def _unquote(value: str) -> str:
    value = value.strip()
    if value.startswith('"""'):
        return value[3:-3] if value.endswith('"""') and len(value) >= 6 else value[3:]
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].encode("utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8")
    return value


def parse_modelfile(text: str, base_dir: str | Path | None = None) -> Modelfile:
    mf = Modelfile()
    # join multi-line """...""" values onto their instruction
    tokens = re.findall(r'(?ms)^\s*(\w+)\s+("""(?:.*?)"""|[^\n]*)', text)
    for instr, value in tokens:
        instr = instr.upper()
        if instr.startswith("#"):
            continue
        if instr == "FROM":
            path = _unquote(value)
            if base_dir is not None and not Path(path).is_absolute():
                path = str(Path(base_dir) / path)
            mf.model = path
        elif instr == "TEMPLATE":
            mf.template = _unquote(value)
        elif instr == "SYSTEM":
            mf.system = _unquote(value)
        elif instr == "PARAMETER":
            parts = value.strip().split(None, 1)
            if len(parts) != 2:
                raise ModelfileError(f"PARAMETER needs a name and a value: {value!r}")
            name, raw = parts[0].lower(), _unquote(parts[1])
            if name not in PARAMETERS:
                raise ModelfileError(f"unknown PARAMETER {name!r}; known: {', '.join(PARAMETERS)}")
            key, kind = PARAMETERS[name]
            try:
                val = kind(raw)
            except ValueError:
                raise ModelfileError(f"PARAMETER {name}: {raw!r} is not a {kind.__name__}") from None
            if key == "stop":
                mf.parameters.setdefault("stop", []).append(val)
            else:
                mf.parameters[key] = val
        elif instr in ("LICENSE", "ADAPTER", "MESSAGE", "REQUIRES"):
            continue
        elif not instr.startswith("#"):
            raise ModelfileError(f"unknown Modelfile instruction {instr!r}")
    if not mf.model:
        raise ModelfileError("the Modelfile has no FROM line")
    return mf


_TAG = re.compile(r"{{-?\s*(.*?)\s*-?}}", re.S)


def render_go_template(template: str, system: str = "", prompt: str = "", response: str = "") -> str:
    """The Go-template subset ollama's simple templates use: .System/.Prompt/.Response, if/else/end."""
    values = {".System": system or "", ".Prompt": prompt or "", ".Response": response or ""}
    out, stack, pos = [], [True], 0   # stack of "emitting?" flags
    for m in _TAG.finditer(template):
        if all(stack):
            out.append(template[pos:m.start()])
        pos = m.end()
        expr = m.group(1)
        if expr.startswith("if "):
            cond = expr[3:].strip()
            if cond not in values:
                raise ModelfileError(f"unsupported template condition {{{{ {expr} }}}}")
            stack.append(bool(values[cond]))
        elif expr == "else":
            if len(stack) < 2:
                raise ModelfileError("{{ else }} without {{ if }}")
            stack[-1] = not stack[-1]
        elif expr == "end":
            if len(stack) < 2:
                raise ModelfileError("{{ end }} without {{ if }}")
            stack.pop()
        elif expr in values:
            if all(stack):
                out.append(values[expr])
        else:
            raise ModelfileError(f"unsupported template expression {{{{ {expr} }}}}")
    if len(stack) != 1:
        raise ModelfileError("unterminated {{ if }} in TEMPLATE")
    out.append(template[pos:])
    return "".join(out)


def modelfile_for(gguf_path, template_name: str | None = None) -> str:
    """A Modelfile for a GGUF: FROM, the Go template of its chat format, stop parameters."""
    path = Path(gguf_path)
    with read_gguf(path) as gf:
        source = gf.metadata.get(Keys.Tokenizer.CHAT_TEMPLATE, "")
    name = template_name or (detect_template(source) if source else None) or "chatml"
    if name not in GO_TEMPLATES:
        raise ModelfileError(f"no Go template for chat format {name!r}; choose one of {', '.join(GO_TEMPLATES)}")
    lines = [f"FROM {path.resolve()}", f'TEMPLATE """{GO_TEMPLATES[name]}"""']
    lines += [f"PARAMETER stop {shlex.quote(s) if ' ' in s else s}" for s in STOPS[name]]
    return "\n".join(lines) + "\n"
