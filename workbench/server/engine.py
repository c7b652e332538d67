"""The server's engine: the model, its slots, request parsing shared by every endpoint, and the generation loop.

Requests wait for one of `n_parallel` slots (each slot is a KV cache over the shared, memory-mapped weights,
keeping its last prompt so a request with the same prefix reuses it); a bounded number may wait, beyond that
the server answers 503. Work (a generation, an embedding) runs in a worker thread holding the slot, so two
requests never touch the same model state; a client that disconnects cancels its generation and frees the slot.
"""
from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse

from workbench.llama.embed import default_pooling
from workbench.llama.generate import ContextOverflowError, generate
from workbench.llama.sampling import SamplingError, SamplingParams
from workbench.text.grammar import Grammar, GrammarError


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
    """The model, its tokenizer and the slots; one instance per server.

    pooling: the embedding pooling (llama-server's --pooling); None takes the model's own (default_pooling).
    Any model name in a request is accepted, as llama-server does when it serves one model."""

    def __init__(self, model, n_parallel: int = 1, chat_template: str = "gguf", alias: str | None = None,
                 max_queue: int = 64, modelfile=None, pooling: str | None = None):
        self.model = model
        self.tokenizer = model.tokenizer
        self.metadata = model.gguf.metadata
        self.chat_template = chat_template
        self.modelfile = modelfile
        self.pooling = pooling or default_pooling(model)
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

    def defaults(self) -> dict:
        """Sampling defaults from the Modelfile's PARAMETER lines."""
        return dict(self.modelfile.parameters) if self.modelfile else {}


# ---------------------------------------------------------------------------------------------- parsing

_TYPES = {"n_predict": int, "max_tokens": int, "max_completion_tokens": int, "temperature": (int, float),
          "top_k": int, "top_p": (int, float), "min_p": (int, float), "typical_p": (int, float),
          "repeat_penalty": (int, float), "repeat_last_n": int,
          "frequency_penalty": (int, float), "presence_penalty": (int, float), "seed": int, "stream": bool,
          "n_probs": int, "cache_prompt": bool, "n_keep": int, "id_slot": int, "grammar": str}


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
    n_predict = get("n_predict", get("max_tokens", get("max_completion_tokens", -1)))
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


def grammar_from(grammar: str | None = None, json_schema=None) -> Grammar | None:
    """The Grammar of a request's `grammar` (GBNF) or `json_schema` field; a bad one is a 400 whose message
    gives the position of the error (llama-server's params_from_json_cmpl: json_schema is converted only
    when no grammar is given)."""
    try:
        if grammar:
            return Grammar.from_gbnf(grammar)
        if json_schema is not None:
            if not isinstance(json_schema, (dict, bool)):
                raise APIError(400, "\"json_schema\": must be a JSON schema object")
            return Grammar.from_json_schema(json_schema)
    except GrammarError as e:
        raise APIError(400, f"\"{'grammar' if grammar else 'json_schema'}\": {e}")
    return None


def tokens_of(engine: Engine, value, where: str = "") -> list[int] | None:
    """A string (tokenized as llama-server does) or a list of in-vocabulary token ids; None for anything else.
    An out-of-vocabulary id is a 400 (prefixed with `where`)."""
    if isinstance(value, str):
        return engine.tokenizer.tokenize(value, add_special=True, parse_special=True)
    if isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        bad = [t for t in value if not 0 <= t < engine.tokenizer.n_vocab]
        if bad:
            raise APIError(400, (f"{where}: " if where else "") + f"token id {bad[0]} is outside the vocabulary "
                                f"(n_vocab={engine.tokenizer.n_vocab})")
        return list(value)
    return None


def prompt_tokens(engine: Engine, prompt) -> list[int]:
    tokens = tokens_of(engine, prompt)
    if tokens is not None:
        return tokens
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt_tokens(engine, prompt[0])
    raise APIError(400, "field 'prompt' must be a string or a list of token ids")


# ---------------------------------------------------------------------------------------------- running

async def take_slot(engine: Engine) -> Slot:
    if engine.waiting >= engine.max_queue:
        raise APIError(503, "server busy: too many queued requests, retry later", "unavailable_error")
    free = engine.free_slots()
    engine.waiting += 1
    try:
        return await free.get()
    finally:
        engine.waiting -= 1


async def run_in_slot(engine: Engine, work):
    """work(slot) in a worker thread while holding a free slot (embeddings: never beside a generation on it)."""
    slot = await take_slot(engine)
    try:
        return await asyncio.get_running_loop().run_in_executor(None, work, slot)
    finally:
        engine.free_slots().put_nowait(slot)


async def run_generation(engine: Engine, request: Request, tokens: list[int], params, n_predict, stop, seed,
                         cache_prompt: bool = True, n_probs: int = 0, grammar: Grammar | None = None):
    """Async iterator of (slot id, generate() event) for one request, on a free slot; cancels on disconnect."""
    if len(tokens) >= engine.model.n_ctx:
        raise APIError(400, f"the request exceeds the available context size: {len(tokens)} prompt tokens, "
                            f"n_ctx {engine.model.n_ctx}", "exceed_context_size_error")
    if not tokens:
        raise APIError(400, "the prompt is empty")
    slot = await take_slot(engine)
    free = engine.free_slots()
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()
    extra = {"grammar": grammar} if grammar is not None else {}

    def work():
        try:
            history = slot.history
            slot.history = []  # unknown while running; set again when done
            for ev in generate(slot.model, engine.tokenizer, tokens, n_predict=n_predict, params=params, seed=seed,
                               stop=stop, cancel=cancel, cache_prompt=cache_prompt, history=history,
                               n_probs=n_probs, **extra):
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


async def first_event(gen):
    """Pull the first event before the response starts, so that early errors are HTTP errors."""
    try:
        return await gen.__anext__()
    except StopAsyncIteration:
        return None


async def chain(first, gen):
    if first is not None:
        yield first
    async for item in gen:
        yield item


def timings_json(t) -> dict:
    d = t.as_dict()
    return {"prompt_n": d["prompt_n"], "prompt_ms": d["prompt_ms"],
            "prompt_per_token_ms": d["prompt_ms"] / d["prompt_n"] if d["prompt_n"] else 0.0,
            "prompt_per_second": d["prompt_per_second"], "predicted_n": d["predicted_n"],
            "predicted_ms": d["predicted_ms"],
            "predicted_per_token_ms": d["predicted_ms"] / d["predicted_n"] if d["predicted_n"] else 0.0,
            "predicted_per_second": d["predicted_per_second"], "cache_n": d["cache_n"]}


def sse(obj) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode("utf-8")


CANCELLED = {"error": {"code": 499, "message": "client disconnected", "type": "cancelled"}}
