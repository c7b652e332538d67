"""An HTTP server with llama-server's endpoints (/completion, /tokenize, /detokenize, /embedding, /health,
/props) and the OpenAI-compatible ones (/v1/models, /v1/completions, /v1/chat/completions, /v1/embeddings),
on starlette + uvicorn.

The slots, request parsing and the generation loop are in engine.py, the OpenAI endpoints in
openai_compat.py (tool calls: tools.py), embeddings in embeddings.py. /completion takes llama-server's
`grammar` (GBNF) and `json_schema`. Any model name is accepted, as llama-server does when it serves one
model. Errors are JSON like llama-server's: {"error": {"code", "message", "type"}}; the server keeps serving.
"""
from __future__ import annotations

import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from workbench.gguf import Keys
from workbench.llama.generate import Event
from workbench.llama.sampling import SamplingParams
from workbench.server.embeddings import embedding, v1_embeddings
from workbench.server.engine import (CANCELLED, APIError, Engine, chain, error_response, first_event, grammar_from,
                                     prompt_tokens, read_json, run_generation, sampling_from, sse, timings_json)
from workbench.server.openai_compat import v1_chat, v1_completions

__all__ = ["APIError", "Engine", "build_app"]


def settings_json(engine: Engine, params: SamplingParams, n_predict: int, stop, seed) -> dict:
    return {"n_ctx": engine.model.n_ctx, "n_predict": n_predict, "model": engine.alias, "seed": seed,
            "temperature": params.temperature, "top_k": params.top_k, "top_p": params.top_p,
            "min_p": params.min_p, "typical_p": params.typical_p, "repeat_penalty": params.repeat_penalty,
            "repeat_last_n": params.repeat_last_n, "frequency_penalty": params.frequency_penalty,
            "presence_penalty": params.presence_penalty, "stop": list(stop)}


# ---------------------------------------------------------------------------------------------- endpoints

def build_app(engine: Engine, api_key: str | None = None) -> Starlette:

    async def health(request):
        return JSONResponse({"status": "ok"})

    async def props(request):
        return JSONResponse({
            "default_generation_settings": settings_json(engine, SamplingParams(), -1, [], 0xFFFFFFFF),
            "total_slots": len(engine.slots), "model_path": engine.model.gguf.path, "model_alias": engine.alias,
            "chat_template": engine.metadata.get(Keys.Tokenizer.CHAT_TEMPLATE, ""), "n_ctx": engine.model.n_ctx,
            "pooling": engine.pooling, "build_info": "llm-workbench"})

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
        if "prompt" not in body:
            raise APIError(400, "field 'prompt' is required")
        tokens = prompt_tokens(engine, body["prompt"])
        params, n_predict, stop, seed = sampling_from(body, engine.defaults())
        grammar = grammar_from(body.get("grammar"), body.get("json_schema"))
        n_probs = body.get("n_probs", 0) or 0
        gen = run_generation(engine, request, tokens, params, n_predict, stop, seed,
                             cache_prompt=body.get("cache_prompt", True), n_probs=n_probs, grammar=grammar)
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
            first = await first_event(gen)  # errors before the stream starts become proper HTTP errors

            async def stream():
                probs = []
                async for slot_id, ev in chain(first, gen):
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
        return JSONResponse(CANCELLED, 499)

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

    def bound(handler):  # the endpoints that live in their own modules take the engine first
        return lambda request: handler(engine, request)

    post = ["POST"]
    routes = [Route("/health", guarded(health)), Route("/props", guarded(props)),
              Route("/v1/models", guarded(models)), Route("/models", guarded(models)),
              Route("/tokenize", guarded(tokenize), methods=post),
              Route("/detokenize", guarded(detokenize), methods=post),
              Route("/completion", guarded(completion), methods=post),
              Route("/completions", guarded(completion), methods=post),
              Route("/v1/completions", guarded(bound(v1_completions)), methods=post),
              Route("/v1/chat/completions", guarded(bound(v1_chat)), methods=post),
              Route("/chat/completions", guarded(bound(v1_chat)), methods=post),
              Route("/embedding", guarded(bound(embedding)), methods=post),
              Route("/embeddings", guarded(bound(embedding)), methods=post),
              Route("/v1/embeddings", guarded(bound(v1_embeddings)), methods=post)]
    return Starlette(routes=routes)
