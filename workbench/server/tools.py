"""Tool calls for /v1/chat/completions: the request's tools, the prompt, the grammar, the answer's parser.

The format follows the chat template, as llama.cpp's common_chat_templates_apply chooses it
(common/chat.cpp, before its PEG auto-parser; the output shapes are the same):

    hermes   Hermes 2 Pro / Qwen 2.5:  <tool_call>{"name": ..., "arguments": {...}}</tool_call>
    llama3   Llama 3.1 / 3.2:          {"name": ..., "parameters": {...}}
    nemo     Mistral Nemo:             [TOOL_CALLS][{"name": ..., "arguments": {...}, "id": "abcDEF123"}]
    generic  a template that knows no tools (common_chat_params_init_generic): a system message asks for
             a JSON answer and the grammar forces {"tool_call": {...}} / {"tool_calls": [...]} or
             {"response": ...}.

Native formats are constrained by a grammar when a call is required (tool_choice "required" or a named
function). llama.cpp constrains "auto" with a lazy grammar that starts at the trigger text; here
"auto" is left free and the answer parsed (the generic format is constrained in every case).
Messages are adapted as minja's polyfills do when the template lacks a feature: tools described in
the system message, earlier tool calls written as the JSON the model is asked for, tool results as
user messages.
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from workbench.text.grammar import Grammar, json_schema_to_gbnf
from workbench.server.partial_json import Partial, PartialJSONError, parse_partial

FORMATS = ("generic", "hermes", "llama3", "nemo")
GENERIC_SYSTEM = ("Answer in JSON: either `tool_call` (to ask for a tool to be called) or `response` "
                  "(your reply to the user).")


class ToolRequestError(ValueError):
    """Malformed tools, tool_choice or messages in a chat request (answered with HTTP 400)."""


def detect_format(source: str) -> str:
    """The tool-call format of a chat template, from the markers in its source (as common_chat_templates_apply)."""
    if "<tool_call>" in source:
        return "hermes"
    if "[TOOL_CALLS]" in source:
        return "nemo"
    if "<|start_header_id|>ipython<|end_header_id|>" in source:
        return "llama3"
    return "generic"


def new_call_id() -> str:
    """A 32-character random id, as llama-server's gen_tool_call_id."""
    return uuid.uuid4().hex


@dataclass
class ToolRequest:
    tools: list            # OpenAI tool objects: {"type": "function", "function": {name, description, parameters}}
    choice: str = "auto"   # "auto", "none" or "required" (a named function narrows `tools` to it and is "required")
    parallel: bool = False
    format: str = "generic"

    @property
    def active(self) -> bool:
        return bool(self.tools) and self.choice != "none"


def parse_tool_request(body: dict, fmt: str, parallel_default: bool) -> ToolRequest:
    """tools / tool_choice / parallel_tool_calls of an OpenAI request (oaicompat_chat_params_parse)."""
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise ToolRequestError("field 'tools' must be a list of {type: 'function', function: {...}} objects")
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict) or t.get("type", "function") != "function":
            raise ToolRequestError(f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}")
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ToolRequestError(f"tools[{i}].function.name must be a non-empty string")
        params = fn.get("parameters", {})
        if not isinstance(params, (dict, bool)):
            raise ToolRequestError(f"tools[{i}].function.parameters must be a JSON schema object")
    choice = body.get("tool_choice", "auto")
    if isinstance(choice, dict):  # {"type": "function", "function": {"name": ...}}
        name = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), dict) else None
        chosen = [t for t in tools if t["function"]["name"] == name]
        if not chosen:
            raise ToolRequestError(f"tool_choice names function {name!r}, which is not in 'tools'")
        tools, choice = chosen, "required"
    elif choice not in ("auto", "none", "required"):
        raise ToolRequestError(f"invalid tool_choice {choice!r}: use 'auto', 'none', 'required' or "
                               f"{{'type': 'function', 'function': {{'name': ...}}}}")
    if choice == "required" and not tools:
        raise ToolRequestError("tool_choice 'required' needs a non-empty 'tools' list")
    parallel = body.get("parallel_tool_calls", parallel_default)
    if not isinstance(parallel, bool):
        raise ToolRequestError("field 'parallel_tool_calls' must be a boolean")
    return ToolRequest(tools, choice, parallel, fmt)


# ---------------------------------------------------------------------------------------------- prompt

def _arguments_object(args, where: str):
    if isinstance(args, str):
        try:
            return json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise ToolRequestError(f"{where}.function.arguments is not valid JSON: {e}") from None
    return args if args is not None else {}


def _add_system(messages: list, text: str) -> list:
    """Append text to the first system message, or put one in front (minja's add_system)."""
    if messages and messages[0].get("role") == "system":
        first = messages[0]
        return [{**first, "content": (first.get("content") or "") + "\n\n" + text}] + messages[1:]
    return [{"role": "system", "content": text}] + messages


def prepare_messages(messages: list, req: ToolRequest | None, caps) -> list:
    """The messages to render, with what the template lacks written in as text (minja's polyfills):
    tool calls as the JSON the generic format asks for, tool results as user messages, and for the generic
    format the tools and the answer shape in the system message. The rest (content parts, a system role
    the template lacks, argument objects) is render_chat's (template_messages)."""
    out = []
    for i, m in enumerate(messages):
        role, calls = m.get("role"), m.get("tool_calls")
        if role == "assistant" and calls and not caps.supports_tool_calls:
            if not isinstance(calls, list):
                raise ToolRequestError(f"messages[{i}].tool_calls must be a list")
            shown = []
            for k, c in enumerate(calls):
                fn = c.get("function") if isinstance(c, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise ToolRequestError(f"messages[{i}].tool_calls[{k}] needs function.name")
                shown.append({"name": fn["name"], "arguments": _arguments_object(fn.get("arguments"),
                                                                                 f"messages[{i}].tool_calls[{k}]"),
                              **({"id": c["id"]} if c.get("id") else {})})
            m = {"role": "assistant", "content": json.dumps({"tool_calls": shown}, indent=2, ensure_ascii=False)}
        elif role == "tool" and not caps.supports_tools:
            resp = {k: m[k] for k in ("name", "tool_call_id") if m.get(k)}
            content = m.get("content")
            resp["content"] = "" if content is None else content
            m = {"role": "user", "content": json.dumps({"tool_response": resp}, indent=2, ensure_ascii=False)}
        out.append(m)
    if req is not None and req.active and req.format == "generic":
        out = _add_system(out, GENERIC_SYSTEM.replace("`tool_call`", "`tool_calls`") if req.parallel
                          else GENERIC_SYSTEM)
        if not caps.supports_tools:
            out = _add_system(out, "These tools can be called to answer the user's request:\n"
                              + json.dumps(req.tools, indent=2, ensure_ascii=False))
    return out


# ---------------------------------------------------------------------------------------------- grammar

def _call_schema(tool: dict, args_key: str, id_schema: dict | None) -> dict:
    fn = tool["function"]
    params = fn.get("parameters") or {"type": "object"}
    props = {"name": {"type": "string", "const": fn["name"]}, args_key: params}
    if id_schema:
        props["id"] = id_schema
    return {"type": "object", "properties": props, "required": list(props)}


def _one_of(schemas: list) -> dict:
    return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}


def generic_schema(req: ToolRequest, response_schema: dict | None = None) -> dict:
    """The JSON schema of a generic-format answer (common_chat_params_init_generic)."""
    id_schema = {"type": "string", "minLength": 4} if req.parallel else None
    call = _one_of([_call_schema(t, "arguments", id_schema) for t in req.tools])
    answer = ({"type": "object", "properties": {"tool_calls": {"type": "array", "items": call, "minItems": 1}},
               "required": ["tool_calls"]} if req.parallel else
              {"type": "object", "properties": {"tool_call": call}, "required": ["tool_call"]})
    if req.choice == "required":
        return answer
    response = {"type": "object", "properties": {"response": response_schema or {"type": "string"}},
                "required": ["response"]}
    return {"anyOf": [answer, response]}


def _wrapped_gbnf(schema: dict, before: str, after: str, repeat: bool) -> str:
    """A grammar for `before JSON after` (repeated when `repeat`), the JSON following `schema`."""
    body = re.sub(r"^root\s*::=", "tool-call-json ::=", json_schema_to_gbnf(schema), count=1, flags=re.M)
    block = f"{json.dumps(before)} tool-ws tool-call-json tool-ws {json.dumps(after)}" if after else \
        f"{json.dumps(before)} tool-ws tool-call-json"
    root = "root ::= tool-block (tool-ws tool-block)*\n" if repeat else "root ::= tool-block\n"
    return root + f"tool-block ::= {block}\ntool-ws ::= [ \\t\\n]*\n" + body


def tool_grammar(req: ToolRequest, response_schema: dict | None = None) -> Grammar | None:
    """The grammar that constrains the answer, or None where the answer is left free."""
    if not req.active:
        return None
    if req.format == "generic":
        return Grammar.from_json_schema(generic_schema(req, response_schema))
    if req.choice != "required":
        return None   # llama.cpp: a lazy grammar triggered by the format's opening text
    if req.format == "hermes":
        call = _one_of([_call_schema(t, "arguments", None) for t in req.tools])
        return Grammar.from_gbnf(_wrapped_gbnf(call, "<tool_call>", "</tool_call>", req.parallel))
    if req.format == "llama3":
        return Grammar.from_json_schema(_one_of([_call_schema(t, "parameters", None) for t in req.tools]))
    id_schema = {"type": "string", "pattern": "^[a-zA-Z0-9]{9}$"}   # Mistral Nemo's call ids
    calls = {"type": "array", "items": _one_of([_call_schema(t, "arguments", id_schema) for t in req.tools]),
             "minItems": 1, **({} if req.parallel else {"maxItems": 1})}
    return Grammar.from_gbnf(_wrapped_gbnf(calls, "[TOOL_CALLS]", "", False))


# ---------------------------------------------------------------------------------------------- parsing

@dataclass
class ToolCall:
    name: str
    arguments: str          # JSON text (a prefix of it while streaming)
    id: str
    complete: bool = False

    def as_json(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ParsedMessage:
    content: str = ""
    tool_calls: list = field(default_factory=list)


def _held(text: str, marker: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of marker (held back while streaming)."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-k:]):
            return k
    return 0


def _call_from(node: Partial | None, args_key: str) -> tuple[str, Partial | None, str] | None:
    """(name, arguments node, id) of a call object once its name is complete."""
    if node is None or not isinstance(node.items, dict):
        return None
    name = node.items.get("name")
    if name is None or not name.complete or not isinstance(name.value, str):
        return None
    args = node.items.get(args_key)
    if args is None and args_key == "parameters":
        args = node.items.get("arguments")
    cid = node.items.get("id")
    return name.value, args, (cid.value if cid is not None and cid.complete and isinstance(cid.value, str) else "")


def _tagged(text: str, final: bool, opening: str, closing: str, args_key: str, array: bool):
    """Content before `opening`, then calls: JSON objects (or one array of them) each after `opening`."""
    k = text.find(opening)
    if k < 0:
        return text[:len(text) - (0 if final else _held(text, opening))], []
    nodes, j = [], k
    while j >= 0 and text.startswith(opening, j):
        node = parse_partial(text, j + len(opening))
        if node is None:
            break
        nodes.extend(node.items if array and isinstance(node.items, list) else [node])
        if not node.complete:
            break
        j = node.end
        while j < len(text) and text[j] in " \t\n\r":
            j += 1
        if closing and text.startswith(closing, j):
            j += len(closing)
            while j < len(text) and text[j] in " \t\n\r":
                j += 1
    return text[:k], [c for c in (_call_from(n, args_key) for n in nodes) if c]


def _generic(text: str):
    node = parse_partial(text)
    if node is None or not isinstance(node.items, dict):
        return "", []
    if "response" in node.items:
        r = node.items["response"]
        return (r.value if isinstance(r.value, str) else r.text), []
    if "tool_calls" in node.items and isinstance(node.items["tool_calls"].items, list):
        nodes = node.items["tool_calls"].items
    else:
        nodes = [node.items["tool_call"]] if "tool_call" in node.items else []
    return "", [c for c in (_call_from(n, "arguments") for n in nodes) if c]


_LLAMA3_START = re.compile(r'\s*\{\s*"(?:type|name)"')


def _llama3(text: str, final: bool):
    if _LLAMA3_START.match(text):
        node = parse_partial(text)
        call = _call_from(node, "parameters")
        return "", [call] if call else []
    head = text.lstrip()
    if not final and (not head or (head[0] == "{" and any(w.startswith(head[1:].lstrip())
                                                          for w in ('"name"', '"type"')))):
        return "", []   # could still become a call
    return text, []


class ToolCallParser:
    """Turns the generated text into content and tool calls, as a whole or as OpenAI stream deltas."""

    def __init__(self, req: ToolRequest | None):
        self.req = req
        self.text = ""
        self.sent_content = ""
        self.sent: list[ToolCall] = []   # calls announced to the client, with the argument text sent so far
        self.ids: list[str] = []

    def _parse(self, final: bool) -> ParsedMessage:
        req, text = self.req, self.text
        if req is None or not req.active:
            return ParsedMessage(text)
        try:
            if req.format == "generic":
                content, calls = _generic(text)
            elif req.format == "llama3":
                content, calls = _llama3(text, final)
            elif req.format == "hermes":
                content, calls = _tagged(text, final, "<tool_call>", "</tool_call>", "arguments", False)
            else:
                content, calls = _tagged(text, final, "[TOOL_CALLS]", "", "arguments", True)
        except PartialJSONError:
            # not the expected shape: the model answered in plain text (only possible where unconstrained)
            return ParsedMessage(text if final else self.sent_content, [])
        msg = ParsedMessage(content)
        for i, (name, args, cid) in enumerate(calls):
            if i == len(self.ids):
                self.ids.append(cid or new_call_id())
            done = args is not None and args.complete
            if final and args is None:
                text_args = "{}"
            else:
                text_args = args.text if args is not None else ""
            msg.tool_calls.append(ToolCall(name, text_args, self.ids[i], done))
        if final:  # calls cut short (n_predict) are dropped: their arguments are not valid JSON
            msg.tool_calls = [c for c in msg.tool_calls if c.complete or c.arguments == "{}"]
        return msg

    def feed(self, piece: str) -> list[dict]:
        """The OpenAI `delta` objects for a new piece of generated text (none while undecided)."""
        self.text += piece
        return self._deltas(self._parse(final=False))

    def finish(self) -> tuple[ParsedMessage, list[dict]]:
        """The whole message, and the deltas still to send."""
        msg = self._parse(final=True)
        return msg, self._deltas(msg)

    def _deltas(self, msg: ParsedMessage) -> list[dict]:
        out = []
        if len(msg.content) > len(self.sent_content) and msg.content.startswith(self.sent_content):
            out.append({"content": msg.content[len(self.sent_content):]})
            self.sent_content = msg.content
        for i, call in enumerate(msg.tool_calls):
            if i == len(self.sent):
                self.sent.append(ToolCall(call.name, call.arguments, call.id))
                out.append({"tool_calls": [{"index": i, "id": call.id, "type": "function",
                                            "function": {"name": call.name, "arguments": call.arguments}}]})
                continue
            prev = self.sent[i]
            if len(call.arguments) > len(prev.arguments) and call.arguments.startswith(prev.arguments):
                out.append({"tool_calls": [{"index": i, "function": {"arguments": call.arguments[len(prev.arguments):]}}]})
                prev.arguments = call.arguments
        return out
