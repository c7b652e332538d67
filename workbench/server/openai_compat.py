"""The OpenAI-compatible endpoints: /v1/completions and /v1/chat/completions, as llama-server serves them.

Chat requests take llama-server's extensions to OpenAI's fields (oaicompat_chat_params_parse):
`response_format` {"type": "json_object"} (any object), {"type": "json_object", "schema": {...}} or
{"type": "json_schema", "json_schema": {"schema": {...}}} constrains the answer to the schema; `grammar` /
`json_schema` pass a GBNF grammar / a schema directly; `tools`, `tool_choice` and `parallel_tool_calls` ask
for tool calls in the template's format (tools.py), answered as `message.tool_calls` with finish_reason
"tool_calls", or streamed as `delta.tool_calls` pieces (id, type and name first, then the arguments text).
"""
from __future__ import annotations

import time
import uuid

from starlette.responses import JSONResponse, StreamingResponse

from workbench.gguf import Keys
from workbench.text.chat import ChatTemplateError, TemplateCaps, render_chat, stop_strings, template_caps
from workbench.text.grammar import GrammarError
from workbench.server.engine import (CANCELLED, APIError, Engine, chain, first_event, grammar_from, prompt_tokens,
                                     read_json, run_generation, sampling_from, sse, timings_json)
from workbench.server.tools import (ToolCallParser, ToolRequest, ToolRequestError, detect_format,
                                    parse_tool_request, prepare_messages, tool_grammar)

# llama.cpp's built-in (non-Jinja) formats know nothing of tools
BUILTIN_CAPS = TemplateCaps(supports_tools=False, supports_tool_calls=False, supports_parallel_tool_calls=False)


def response_format_schema(body: dict):
    """The JSON schema asked for by `response_format` or `json_schema` (None: unconstrained)."""
    schema = body.get("json_schema")
    if schema is not None and body.get("grammar"):
        raise APIError(400, "Cannot use both json_schema and grammar")
    rf = body.get("response_format")
    if rf is not None:
        if not isinstance(rf, dict):
            raise APIError(400, "field 'response_format' must be an object with a 'type'")
        kind = rf.get("type", "")
        if kind == "json_object":
            if "schema" in rf or not schema:
                schema = rf.get("schema") or {}
        elif kind == "json_schema":
            wrapper = rf.get("json_schema") or {}
            schema = wrapper.get("schema", {}) if isinstance(wrapper, dict) else None
            if not isinstance(schema, (dict, bool)):
                raise APIError(400, "response_format.json_schema.schema must be a JSON schema object")
        elif kind not in ("", "text"):
            raise APIError(400, f"response_format type must be one of \"text\", \"json_object\" or "
                                f"\"json_schema\", but got: {kind!r}")
    if isinstance(schema, dict) and not schema:
        schema = {"type": "object"}   # an absent or empty schema means any object
    return schema


def template_source(engine: Engine) -> str:
    if engine.chat_template == "gguf":
        return engine.metadata.get(Keys.Tokenizer.CHAT_TEMPLATE, "") or ""
    return engine.chat_template if "{" in engine.chat_template else ""


async def v1_completions(engine: Engine, request):
    body = await read_json(request)
    if "prompt" not in body:
        raise APIError(400, "field 'prompt' is required")
    tokens = prompt_tokens(engine, body["prompt"])
    body.setdefault("max_tokens", 16)
    grammar = grammar_from(body.get("grammar"), body.get("json_schema"))
    return await openai_response(engine, request, body, tokens, chat=False, grammar=grammar)


async def v1_chat(engine: Engine, request):
    body = await read_json(request)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise APIError(400, "field 'messages' must be a non-empty list of {role, content} objects")
    schema = response_format_schema(body)
    source = template_source(engine)
    caps = template_caps(source) if source else BUILTIN_CAPS
    try:
        req = parse_tool_request(body, detect_format(source), caps.supports_parallel_tool_calls)
        if req.active and body.get("grammar"):
            raise APIError(400, "Cannot use custom grammar constraints with tools.")
        if engine.modelfile and engine.modelfile.template:
            if req.active:
                raise APIError(400, "tools need the GGUF's chat template; this server renders a Modelfile TEMPLATE")
            system = next((m.get("content") for m in messages if m.get("role") == "system"), None)
            user = [m.get("content") or "" for m in messages if m.get("role") == "user"]
            text = engine.modelfile.render(user[-1] if user else "", system=system)
        else:
            tools = req.tools if req.tools and caps.supports_tools else None
            text = render_chat(prepare_messages(messages, req, caps), engine.chat_template,
                               metadata=engine.metadata, tools=tools)
        grammar = tool_grammar(req, schema) if req.active else grammar_from(body.get("grammar"), schema)
    except (ChatTemplateError, ToolRequestError, KeyError) as e:
        raise APIError(400, f"cannot apply the chat template: {e}" if isinstance(e, (ChatTemplateError, KeyError))
                       else str(e))
    except GrammarError as e:
        raise APIError(400, f"tools: {e}")
    tokens = engine.tokenizer.tokenize(text, add_special=True, parse_special=True)
    return await openai_response(engine, request, body, tokens, chat=True, grammar=grammar, tool_request=req)


async def openai_response(engine: Engine, request, body, tokens, chat: bool, grammar=None,
                          tool_request: ToolRequest | None = None):
    params, n_predict, stop, seed = sampling_from(body, engine.defaults())
    if chat:
        stop = stop + [s for s in stop_strings(engine.chat_template, engine.metadata) if s not in stop]
        if engine.modelfile:
            stop += [s for s in engine.modelfile.parameters.get("stop", []) if s not in stop]
    gen = run_generation(engine, request, tokens, params, n_predict, stop, seed, grammar=grammar)
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    obj = "chat.completion" if chat else "text_completion"
    parser = ToolCallParser(tool_request if tool_request is not None and tool_request.active else None)

    def finish(ev, msg=None):
        if msg is not None and msg.tool_calls:
            return "tool_calls"
        return "stop" if ev.stop_type in ("eos", "word") else "length"

    def usage(ev):
        return {"prompt_tokens": len(tokens), "completion_tokens": len(ev.tokens),
                "total_tokens": len(tokens) + len(ev.tokens)}

    def chunk(choice: dict, **extra) -> bytes:
        return sse({"id": rid, "object": obj + (".chunk" if chat else ""), "created": created, "model": engine.alias,
                    "choices": [{"index": 0, "finish_reason": None, **choice}], **extra})

    if body.get("stream"):
        first = await first_event(gen)

        async def stream():
            if chat:
                yield chunk({"delta": {"role": "assistant", "content": None}})
            async for _, ev in chain(first, gen):
                if ev.done:
                    msg, deltas = parser.finish()
                    for d in deltas if chat else []:
                        yield chunk({"delta": d})
                    yield chunk({"finish_reason": finish(ev, msg), **({"delta": {}} if chat else {"text": ""})},
                                usage=usage(ev), timings=timings_json(ev.timings))
                    yield b"data: [DONE]\n\n"
                elif chat:
                    for d in parser.feed(ev.text):
                        yield chunk({"delta": d})
                elif ev.text:
                    yield chunk({"text": ev.text, "logprobs": None})
        return StreamingResponse(stream(), media_type="text/event-stream")

    async for _, ev in gen:
        if ev.done:
            msg, _ = parser.finish()
            if chat:
                message = {"role": "assistant", "content": msg.content if msg.content or not msg.tool_calls else None}
                if msg.tool_calls:
                    message["tool_calls"] = [c.as_json() for c in msg.tool_calls]
                choice = {"message": message}
            else:
                choice = {"text": msg.content, "logprobs": None}
            return JSONResponse({"id": rid, "object": obj, "created": created, "model": engine.alias,
                                 "choices": [{"index": 0, "finish_reason": finish(ev, msg), **choice}],
                                 "usage": usage(ev), "timings": timings_json(ev.timings)})
        parser.text += ev.text
    return JSONResponse(CANCELLED, 499)
