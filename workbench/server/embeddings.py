"""/embedding (llama-server's own shape) and /v1/embeddings (OpenAI's), as handle_embeddings_impl.

    POST /embedding     {"content": "text" | ["a", "b"] | [token ids], "embd_normalize": 2}
        -> [{"index": 0, "embedding": [[...]]}, ...]   (one row when pooled, one per token for pooling "none")
    POST /v1/embeddings {"input": ..., "model": "any", "encoding_format": "float" | "base64"}
        -> {"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "model", "usage"}

Inputs are tokenized with BOS and special tokens (tokenize_input_subprompt); each takes a slot while it runs.
Pooled vectors are normalized with `embd_normalize` (default 2, Euclidean, as llama-server); pooling "none"
is not OpenAI-compatible (400), as in llama-server.
"""
from __future__ import annotations

import base64

import numpy as np
from starlette.responses import JSONResponse

from workbench.llama.embed import EmbeddingError, embed
from workbench.server.engine import APIError, Engine, read_json, run_in_slot, tokens_of


def input_prompts(engine: Engine, value) -> list[list[int]]:
    """Token lists of an input: a string, a list of token ids, or a list of strings / token-id lists."""
    def one(p, where: str) -> list[int]:
        tokens = tokens_of(engine, p, where)
        if tokens is None:
            raise APIError(400, f"{where} must be a string or a list of token ids")
        return tokens

    if isinstance(value, list) and value and not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        prompts = [one(p, f"input[{i}]") for i, p in enumerate(value)]
    else:
        prompts = [one(value, "input")]
    if not prompts or any(len(p) == 0 for p in prompts):
        raise APIError(400, "Input content cannot be empty")
    return prompts


async def compute(engine: Engine, prompts: list[list[int]], normalize: int) -> list[np.ndarray]:
    out = []
    for tokens in prompts:
        try:
            out.append(await run_in_slot(engine, lambda slot, t=tokens: embed(slot.model, t, engine.pooling, normalize)))
        except EmbeddingError as e:
            raise APIError(400, str(e))
    return out


def _normalize_field(body: dict) -> int:
    n = body.get("embd_normalize", 2)
    if not isinstance(n, int) or isinstance(n, bool):
        raise APIError(400, "field 'embd_normalize' must be an integer")
    return n


async def embedding(engine: Engine, request) -> JSONResponse:
    """llama-server's /embedding: "content" (or "input"), the raw list of {index, embedding}."""
    body = await read_json(request)
    if "content" in body:
        value = body["content"]
    elif "input" in body:
        value = body["input"]
    else:
        raise APIError(400, "\"input\" or \"content\" must be provided")
    vecs = await compute(engine, input_prompts(engine, value), _normalize_field(body))
    return JSONResponse([{"index": i, "embedding": np.atleast_2d(v).astype(np.float32).tolist()}
                         for i, v in enumerate(vecs)])


async def v1_embeddings(engine: Engine, request) -> JSONResponse:
    """OpenAI's /v1/embeddings (format_embeddings_response_oaicompat)."""
    if engine.pooling == "none":
        raise APIError(400, "Pooling type 'none' is not OAI compatible. Please use a different pooling type "
                            "(start the server with pooling='mean', 'cls' or 'last')")
    body = await read_json(request)
    if "input" not in body:
        raise APIError(400, "\"input\" must be provided")
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise APIError(400, "The format to return the embeddings in. Can be either float or base64")
    prompts = input_prompts(engine, body["input"])
    vecs = await compute(engine, prompts, _normalize_field(body))
    data = []
    for i, v in enumerate(vecs):
        v = np.asarray(v, np.float32)
        item = {"object": "embedding", "index": i,
                "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") if fmt == "base64"
                else v.tolist()}
        if fmt == "base64":
            item["encoding_format"] = "base64"
        data.append(item)
    n = sum(len(p) for p in prompts)
    return JSONResponse({"object": "list", "data": data, "model": body.get("model") or engine.alias,
                         "usage": {"prompt_tokens": n, "total_tokens": n}})
