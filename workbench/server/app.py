"""An HTTP server with llama-server's endpoints (/completion, /tokenize, /detokenize, /health, /props) and
the OpenAI-compatible ones (/v1/models, /v1/completions, /v1/chat/completions), on starlette + uvicorn.

Requests wait for one of `n_parallel` slots (each slot is a KV cache over the shared, memory-mapped weights,
keeping its last prompt so a request with the same prefix reuses it); a bounded number may wait, beyond that
the server answers 503. Generation runs in a worker thread; a client that disconnects cancels it and frees
its slot. Errors are JSON like llama-server's: {"error": {"code", "message", "type"}}.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from workbench.gguf import Keys
from workbench.text.chat import ChatTemplateError, render_chat, stop_strings
from workbench.llama.generate import ContextOverflowError, Event, generate
from workbench.llama.sampling import SamplingError, SamplingParams


class APIError(Exception):
    def __init__(self, code: int, message: str, type_: str = "invalid_request_error"):
        super().__init__(message)
        self.code, self.message, self.type = code, message, type_


def error_response(code: int, message: str, type_: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "type": type_}}, status_code=code)


@dataclass
class Slot:
    id: int
    model: object
    history: list = field(default_factory=list)   # tokens currently in this slot's KV cache


class Engine:
    """The model, its tokenizer and the slots; one instance per server."""

    def __init__(self, model, n_parallel: int = 1, chat_template: str = "gguf", alias: str | None = None,
                 max_queue: int = 64, modelfile=None):
        self.model = model
        self.tokenizer = model.tokenizer
        self.metadata = model.gguf.metadata
        self.chat_template = chat_template
        self.modelfile = modelfile
        self.alias = alias or (model.gguf.path.rsplit("/", 1)[-1] if model.gguf.path else "model")
        self.slots = [Slot(i, model if i == 0 else model.fork()) for i in range(max(1, n_parallel))]
        self.max_queue = max_queue
        self.waiting = 0
        self._free: asyncio.Queue | None = None

    def free_slots(self) -> asyncio.Queue:
        if self._free is None:  # created lazily inside the running event loop
            self._free = asyncio.Queue()
            for s in self.slots:
                self._free.put_nowait(s)
        return self._free

    def check_model_name(self, name) -> None:
        if name in (None, "") or not isinstance(name, str):
            return
        stem = self.alias.rsplit(".gguf", 1)[0]
        if name not in (self.alias, stem, "default", "workbench"):
            raise APIError(404, f"model '{name}' not found; this server serves '{self.alias}'", "not_found_error")


# ---------------------------------------------------------------------------------------------- parsing

_TYPES = {"n_predict": int, "max_tokens": int, "temperature": (int, float), "top_k": int, "top_p": (int, float),
          "min_p": (int, float), "typical_p": (int, float), "repeat_penalty": (int, float), "repeat_last_n": int,
          "frequency_penalty": (int, float), "presence_penalty": (int, float), "seed": int, "stream": bool,
          "n_probs": int, "cache_prompt": bool, "n_keep": int, "id_slot": int}


async def read_json(request: Request) -> dict:
    try:
        body = json.loads(await request.body() or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"malformed JSON body: {e}")
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    for k, t in _TYPES.items():
        v = body.get(k)
        if v is not None and (not isinstance(v, t) or (t is not bool and isinstance(v, bool))):
            names = t.__name__ if isinstance(t, type) else "number"
            raise APIError(400, f"field '{k}' must be of type {names}, got {type(v).__name__}")
    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))):
        raise APIError(400, "field 'stop' must be a string or a list of strings")
    return body


def sampling_from(body: dict, defaults: dict) -> tuple[SamplingParams, int, list[str], int]:
    """SamplingParams, n_predict, stop strings, seed from a request body (llama-server field names)."""
    get = lambda k, d: body[k] if body.get(k) is not None else defaults.get(k, d)  # noqa: E731
    n_predict = get("n_predict", get("max_tokens", -1))
    if n_predict < -1:
        raise APIError(400, f"n_predict must be >= -1 (-1: until a stop or the context is full), got {n_predict}")
    try:
        params = SamplingParams(temperature=float(get("temperature", 0.8)), top_k=int(get("top_k", 40)),
                                top_p=float(get("top_p", 0.95)), min_p=float(get("min_p", 0.05)),
                                typical_p=float(get("typical_p", 1.0)),
                                repeat_penalty=float(get("repeat_penalty", 1.0)),
                                repeat_last_n=int(get("repeat_last_n", 64)),
                                frequency_penalty=float(get("frequency_penalty", 0.0)),
                                presence_penalty=float(get("presence_penalty", 0.0)))
    except SamplingError as e:
        raise APIError(400, str(e))
    stop = body.get("stop", defaults.get("stop", []))
    stop = [stop] if isinstance(stop, str) else list(stop or [])
    seed = get("seed", 0xFFFFFFFF)
    if not -1 <= seed < 2**32:
        raise APIError(400, f"seed must be a 32-bit unsigned integer or -1, got {seed}")
    return params, n_predict, stop, (0xFFFFFFFF if seed == -1 else seed)


def prompt_tokens(engine: Engine, prompt) -> list[int]:
    if isinstance(prompt, str):
        return engine.tokenizer.tokenize(prompt, add_special=True, parse_special=True)
    if isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        bad = [t for t in prompt if not 0 <= t < engine.tokenizer.n_vocab]
        if bad:
            raise APIError(400, f"token id {bad[0]} is outside the vocabulary (n_vocab={engine.tokenizer.n_vocab})")
        return list(prompt)
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt_tokens(engine, prompt[0])
    raise APIError(400, "field 'prompt' must be a string or a list of token ids")


# ---------------------------------------------------------------------------------------------- running

async def run_generation(engine: Engine, request: Request, tokens: list[int], params, n_predict, stop, seed,
                         cache_prompt: bool = True, n_probs: int = 0):
    """Async iterator of generate() events for one request, on a free slot; cancels on disconnect."""
    if len(tokens) >= engine.model.n_ctx:
        raise APIError(400, f"the request exceeds the available context size: {len(tokens)} prompt tokens, "
                            f"n_ctx {engine.model.n_ctx}", "exceed_context_size_error")
    if not tokens:
        raise APIError(400, "the prompt is empty")
    if engine.waiting >= engine.max_queue:
        raise APIError(503, "server busy: too many queued requests, retry later", "unavailable_error")
    free = engine.free_slots()
    engine.waiting += 1
    try:
        slot = await free.get()
    finally:
        engine.waiting -= 1
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()

    def work():
        try:
            history = slot.history
            slot.history = []  # unknown while running; set again when done
            for ev in generate(slot.model, engine.tokenizer, tokens, n_predict=n_predict, params=params, seed=seed,
                               stop=stop, cancel=cancel, cache_prompt=cache_prompt, history=history,
                               n_probs=n_probs):
                loop.call_soon_threadsafe(events.put_nowait, ev)
                if ev.done:
                    slot.history = (tokens + ev.tokens)[: slot.model.n_past]
        except BaseException as e:  # delivered to the request
            slot.model.reset()
            loop.call_soon_threadsafe(events.put_nowait, e)
        finally:
            loop.call_soon_threadsafe(free.put_nowait, slot)

    worker = loop.run_in_executor(None, work)
    try:
        while True:
            try:
                ev = await asyncio.wait_for(events.get(), timeout=0.25)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    cancel.set()
                    return
                continue
            if isinstance(ev, BaseException):
                if isinstance(ev, ContextOverflowError):
                    raise APIError(400, str(ev), "exceed_context_size_error")
                raise ev
            yield slot.id, ev
            if ev.done:
                return
    finally:
        cancel.set()
        await asyncio.shield(worker)


def timings_json(t) -> dict:
    d = t.as_dict()
    return {"prompt_n": d["prompt_n"], "prompt_ms": d["prompt_ms"],
            "prompt_per_token_ms": d["prompt_ms"] / d["prompt_n"] if d["prompt_n"] else 0.0,
            "prompt_per_second": d["prompt_per_second"], "predicted_n": d["predicted_n"],
            "predicted_ms": d["predicted_ms"],
            "predicted_per_token_ms": d["predicted_ms"] / d["predicted_n"] if d["predicted_n"] else 0.0,
            "predicted_per_second": d["predicted_per_second"], "cache_n": d["cache_n"]}


def settings_json(engine: Engine, params: SamplingParams, n_predict: int, stop, seed) -> dict:
    return {"n_ctx": engine.model.n_ctx, "n_predict": n_predict, "model": engine.alias, "seed": seed,
            "temperature": params.temperature, "top_k": params.top_k, "top_p": params.top_p,
            "min_p": params.min_p, "typical_p": params.typical_p, "repeat_penalty": params.repeat_penalty,
            "repeat_last_n": params.repeat_last_n, "frequency_penalty": params.frequency_penalty,
            "presence_penalty": params.presence_penalty, "stop": list(stop)}


def sse(obj) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode("utf-8")


# ---------------------------------------------------------------------------------------------- endpoints

def build_app(engine: Engine, api_key: str | None = None) -> Starlette:

    def defaults() -> dict:
        return dict(engine.modelfile.parameters) if engine.modelfile else {}

    async def health(request):
        return JSONResponse({"status": "ok"})

    async def props(request):
        return JSONResponse({
            "default_generation_settings": settings_json(engine, SamplingParams(), -1, [], 0xFFFFFFFF),
            "total_slots": len(engine.slots), "model_path": engine.model.gguf.path, "model_alias": engine.alias,
            "chat_template": engine.metadata.get(Keys.Tokenizer.CHAT_TEMPLATE, ""), "n_ctx": engine.model.n_ctx,
            "build_info": "llm-workbench"})

    async def models(request):
        return JSONResponse({"object": "list", "data": [{
            "id": engine.alias, "object": "model", "created": int(time.time()), "owned_by": "llm-workbench",
            "meta": {"n_vocab": engine.tokenizer.n_vocab, "n_ctx_train": engine.model.config.n_ctx_train,
                     "n_params": None}}]})

    async def tokenize(request):
        body = await read_json(request)
        content = body.get("content")
        if not isinstance(content, str):
            raise APIError(400, "field 'content' must be a string")
        add_special = body.get("add_special", False)
        ids = engine.tokenizer.tokenize(content, add_special=bool(add_special), parse_special=bool(body.get("parse_special", True)))
        if body.get("with_pieces"):
            return JSONResponse({"tokens": [{"id": t, "piece": engine.tokenizer.detokenize([t])} for t in ids]})
        return JSONResponse({"tokens": ids})

    async def detokenize(request):
        body = await read_json(request)
        toks = body.get("tokens", [])
        if not isinstance(toks, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in toks):
            raise APIError(400, "field 'tokens' must be a list of token ids")
        if any(not 0 <= t < engine.tokenizer.n_vocab for t in toks):
            raise APIError(400, f"token ids must be in [0, {engine.tokenizer.n_vocab})")
        return JSONResponse({"content": engine.tokenizer.detokenize(toks)})

    async def completion(request):
        body = await read_json(request)
        engine.check_model_name(body.get("model"))
        if "prompt" not in body:
            raise APIError(400, "field 'prompt' is required")
        tokens = prompt_tokens(engine, body["prompt"])
        params, n_predict, stop, seed = sampling_from(body, defaults())
        n_probs = body.get("n_probs", 0) or 0
        gen = run_generation(engine, request, tokens, params, n_predict, stop, seed,
                             cache_prompt=body.get("cache_prompt", True), n_probs=n_probs)
        settings = settings_json(engine, params, n_predict, stop, seed)

        def final(slot_id, ev: Event, content: str, probs) -> dict:
            out = {"content": content, "tokens": ev.tokens, "id_slot": slot_id, "stop": True, "model": engine.alias,
                   "tokens_predicted": len(ev.tokens), "tokens_evaluated": len(tokens),
                   "generation_settings": settings, "prompt": body["prompt"] if isinstance(body["prompt"], str) else "",
                   "has_new_line": "\n" in content, "truncated": ev.truncated,
                   "stop_type": {"eos": "eos", "word": "word", "limit": "limit"}.get(ev.stop_type, "none"),
                   "stopping_word": ev.stopping_word, "tokens_cached": ev.timings.cached_n + len(ev.tokens),
                   "timings": timings_json(ev.timings)}
            if n_probs:
                out["completion_probabilities"] = probs
            return out

        if body.get("stream"):
            first = await _first(gen)  # errors before the stream starts become proper HTTP errors

            async def stream():
                probs = []
                async for slot_id, ev in _chain(first, gen):
                    if ev.done:
                        yield sse(final(slot_id, ev, "", probs))
                    else:
                        chunk = {"content": ev.text, "tokens": [ev.token] if ev.token is not None else [],
                                 "stop": False, "id_slot": slot_id}
                        if n_probs and ev.probs:
                            chunk["completion_probabilities"] = ev.probs
                        yield sse(chunk)
            return StreamingResponse(stream(), media_type="text/event-stream")

        text, probs = [], []
        async for slot_id, ev in gen:
            if ev.done:
                return JSONResponse(final(slot_id, ev, "".join(text), probs))
            text.append(ev.text)
            probs.extend(ev.probs or [])
        return JSONResponse({"error": {"code": 499, "message": "client disconnected", "type": "cancelled"}}, 499)

    async def v1_completions(request):
        body = await read_json(request)
        engine.check_model_name(body.get("model"))
        if "prompt" not in body:
            raise APIError(400, "field 'prompt' is required")
        tokens = prompt_tokens(engine, body["prompt"])
        body.setdefault("max_tokens", 16)
        return await _openai(request, body, tokens, chat=False)

    async def v1_chat(request):
        body = await read_json(request)
        engine.check_model_name(body.get("model"))
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise APIError(400, "field 'messages' must be a non-empty list of {role, content} objects")
        for m in messages:
            if isinstance(m.get("content"), list):  # OpenAI content parts: keep the text ones
                m["content"] = "".join(p.get("text", "") for p in m["content"] if isinstance(p, dict))
        try:
            if engine.modelfile and engine.modelfile.template:
                system = next((m["content"] for m in messages if m.get("role") == "system"), None)
                user = [m["content"] for m in messages if m.get("role") == "user"]
                text = engine.modelfile.render(user[-1] if user else "", system=system)
            else:
                text = render_chat(messages, engine.chat_template, metadata=engine.metadata)
        except (ChatTemplateError, KeyError) as e:
            raise APIError(400, f"cannot apply the chat template: {e}")
        tokens = engine.tokenizer.tokenize(text, add_special=True, parse_special=True)
        return await _openai(request, body, tokens, chat=True)

    async def _openai(request, body, tokens, chat: bool):
        params, n_predict, stop, seed = sampling_from(body, defaults())
        if chat:
            stop = stop + [s for s in stop_strings(engine.chat_template, engine.metadata) if s not in stop]
            if engine.modelfile:
                stop += [s for s in engine.modelfile.parameters.get("stop", []) if s not in stop]
        gen = run_generation(engine, request, tokens, params, n_predict, stop, seed)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"

        def finish(ev):
            return "stop" if ev.stop_type in ("eos", "word") else "length"

        def usage(ev):
            return {"prompt_tokens": len(tokens), "completion_tokens": len(ev.tokens),
                    "total_tokens": len(tokens) + len(ev.tokens)}

        if body.get("stream"):
            first = await _first(gen)

            async def stream():
                if chat:
                    yield sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": engine.alias,
                               "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                            "finish_reason": None}]})
                async for _, ev in _chain(first, gen):
                    if ev.done:
                        last = {"id": rid, "object": obj + (".chunk" if chat else ""), "created": created,
                                "model": engine.alias, "usage": usage(ev), "timings": timings_json(ev.timings),
                                "choices": [{"index": 0, "finish_reason": finish(ev),
                                             **({"delta": {}} if chat else {"text": ""})}]}
                        yield sse(last)
                        yield b"data: [DONE]\n\n"
                    else:
                        piece = {"delta": {"content": ev.text}} if chat else {"text": ev.text}
                        yield sse({"id": rid, "object": obj + (".chunk" if chat else ""), "created": created,
                                   "model": engine.alias, "choices": [{"index": 0, "finish_reason": None, **piece}]})
            return StreamingResponse(stream(), media_type="text/event-stream")

        text = []
        async for _, ev in gen:
            if ev.done:
                content = "".join(text)
                choice = ({"message": {"role": "assistant", "content": content}} if chat
                          else {"text": content, "logprobs": None})
                return JSONResponse({"id": rid, "object": obj, "created": created, "model": engine.alias,
                                     "choices": [{"index": 0, "finish_reason": finish(ev), **choice}],
                                     "usage": usage(ev), "timings": timings_json(ev.timings)})
            text.append(ev.text)
        return JSONResponse({"error": {"code": 499, "message": "client disconnected", "type": "cancelled"}}, 499)

    def guarded(handler):
        async def wrapped(request: Request):
            if api_key and request.url.path != "/health":
                auth = request.headers.get("authorization", "")
                given = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
                if given != api_key:
                    return error_response(401, "Invalid API Key", "authentication_error")
            try:
                return await handler(request)
            except APIError as e:
                return error_response(e.code, e.message, e.type)
            except (ValueError, TypeError) as e:  # bad values that slipped past the field checks
                return error_response(400, str(e), "invalid_request_error")
            except Exception as e:  # the server keeps serving
                return error_response(500, f"{type(e).__name__}: {e}", "server_error")
        return wrapped

    routes = [Route("/health", guarded(health)), Route("/props", guarded(props)),
              Route("/v1/models", guarded(models)), Route("/models", guarded(models)),
              Route("/tokenize", guarded(tokenize), methods=["POST"]),
              Route("/detokenize", guarded(detokenize), methods=["POST"]),
              Route("/completion", guarded(completion), methods=["POST"]),
              Route("/completions", guarded(completion), methods=["POST"]),
              Route("/v1/completions", guarded(v1_completions), methods=["POST"]),
              Route("/v1/chat/completions", guarded(v1_chat), methods=["POST"]),
              Route("/chat/completions", guarded(v1_chat), methods=["POST"])]
    return Starlette(routes=routes)


async def _first(gen):
    """Pull the first event before the response starts, so that early errors are HTTP errors."""
    try:
        return await gen.__anext__()
    except StopAsyncIteration:
        return None


async def _chain(first, gen):
    if first is not None:
        yield first
    async for item in gen:
        yield item
