"""Text generation: the loop llama-cli / llama-server run (evaluate the prompt, sample, feed back, stop).

`generate()` yields events as tokens arrive: text pieces (UTF-8 safe, with stop strings held back until it is
clear they are not the start of one), then a final event with the stop reason and timings. It reuses a common
prompt prefix already in the model's KV cache (llama-server's cache_prompt), and either refuses a prompt that
does not fit the context or, when asked, drops the oldest tokens after `n_keep` (llama.cpp's context shift).
With a `grammar` (workbench.text.grammar.Grammar) every token is sampled as common_sampler_sample does with
a grammar, and generation stops (stop_type "eos") once the grammar can take nothing but end-of-generation.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from workbench.cpu.libm import log_softmax_64
from workbench.llama.sampling import LlamaRNG, Sampler, SamplingParams
from workbench.text.chat import render_chat, stop_strings
from workbench.text.grammar import Grammar
from workbench.text.tokenizer import StreamDecoder


class ContextOverflowError(ValueError):
    """The prompt (plus what is to be generated) does not fit the context."""


@dataclass
class Timings:
    prompt_n: int = 0            # prompt tokens actually evaluated (after prefix reuse)
    prompt_ms: float = 0.0
    predicted_n: int = 0
    predicted_ms: float = 0.0
    cached_n: int = 0            # prompt tokens reused from the cache

    @property
    def prompt_per_second(self) -> float:
        return 1e3 * self.prompt_n / self.prompt_ms if self.prompt_ms else 0.0

    @property
    def predicted_per_second(self) -> float:
        return 1e3 * self.predicted_n / self.predicted_ms if self.predicted_ms else 0.0

    def as_dict(self) -> dict:
        return {"prompt_n": self.prompt_n, "prompt_ms": self.prompt_ms,
                "prompt_per_second": self.prompt_per_second, "predicted_n": self.predicted_n,
                "predicted_ms": self.predicted_ms, "predicted_per_second": self.predicted_per_second,
                "cache_n": self.cached_n}


@dataclass
class Event:
    """A streamed piece (`text`, `token`), or the final event (`done=True`, stop reason, timings)."""

    text: str = ""
    token: int | None = None
    done: bool = False
    stop_type: str = ""          # "eos", "word", "limit", "cancelled"
    stopping_word: str = ""
    tokens: list[int] = field(default_factory=list)
    timings: Timings | None = None
    truncated: bool = False
    probs: list | None = None    # with n_probs: [{id, token, logprob, bytes, top_logprobs}] for this piece


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    a_arr, b_arr = np.asarray(a[:n]), np.asarray(b[:n])
    diff = np.nonzero(a_arr != b_arr)[0]
    return int(diff[0]) if len(diff) else n


def _stop_hit(text: str, stops: Sequence[str]) -> tuple[int, str] | None:
    """Earliest full stop string in text: (position, word)."""
    best = None
    for s in stops:
        i = text.find(s)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, s)
    return best


def _partial_stop(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of a stop string (held back)."""
    keep = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                keep = max(keep, k)
                break
    return keep


def token_probs(tokenizer, logits: np.ndarray, tok: int, n: int) -> list[dict]:
    """llama-server's completion_probabilities entry: the chosen token's log-prob and the top n."""
    logp = log_softmax_64(np.asarray(logits, np.float64))

    def entry(t: int) -> dict:
        piece = tokenizer.token_to_piece(int(t))
        return {"id": int(t), "token": piece.decode("utf-8", errors="replace"), "logprob": float(logp[t]),
                "bytes": list(piece)}

    top = np.argsort(-logp, kind="stable")[:n]
    return [{**entry(tok), "top_logprobs": [entry(t) for t in top]}]


def generate(model, tokenizer, prompt: Sequence[int], n_predict: int = 128, params: SamplingParams | None = None,
             seed: int = 0xFFFFFFFF, stop: Sequence[str] = (), cancel: threading.Event | None = None,
             cache_prompt: bool = True, context_shift: bool = False, n_keep: int = 0,
             history: Sequence[int] | None = None, n_probs: int = 0,
             grammar: Grammar | None = None) -> Iterator[Event]:
    """Generate up to n_predict tokens (-1: until the context is full or a stop) after `prompt`."""
    params = params or SamplingParams()
    prompt = [int(t) for t in prompt]
    if not prompt:
        raise ValueError("prompt is empty: give at least one token")
    n_ctx = model.n_ctx
    truncated = False
    if len(prompt) >= n_ctx:
        if not context_shift:
            raise ContextOverflowError(f"the prompt has {len(prompt)} tokens but the context holds {n_ctx} "
                                       f"(use a larger n_ctx or context_shift=True)")
        # keep the first n_keep tokens and the most recent half of the context (llama.cpp's truncation)
        keep = min(n_keep, n_ctx // 2)
        tail = n_ctx // 2
        prompt = prompt[:keep] + prompt[-tail:]
        truncated = True
    if seed == 0xFFFFFFFF or seed < 0:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    sampler = Sampler(params, LlamaRNG(seed))
    matcher = grammar.matcher(tokenizer) if grammar is not None else None
    timings = Timings()

    # reuse the cached prefix (at least the last prompt token is evaluated to get fresh logits)
    cached = list(history) if history is not None else []
    reuse = common_prefix(cached, prompt) if cache_prompt else 0
    reuse = min(reuse, len(prompt) - 1)
    if model.n_past != reuse:
        model.truncate(reuse) if reuse else model.reset()
    timings.cached_n = reuse
    t0 = time.perf_counter()
    logits = model.eval(prompt[reuse:])
    timings.prompt_n = len(prompt) - reuse
    timings.prompt_ms = 1e3 * (time.perf_counter() - t0)

    tokens = list(prompt)
    out_tokens: list[int] = []
    decoder = StreamDecoder(tokenizer)
    pending = ""           # decoded text not yet emitted (could be the start of a stop string)
    stop_type, word = "limit", ""
    t1 = time.perf_counter()
    limit = n_predict if n_predict >= 0 else n_ctx
    while len(out_tokens) < limit:
        if cancel is not None and cancel.is_set():
            stop_type = "cancelled"
            break
        tok = sampler.sample(logits, tokens, matcher)
        probs = token_probs(tokenizer, logits, tok, n_probs) if n_probs > 0 else None
        if matcher is not None:
            matcher.accept(tok)
        if tokenizer.is_eog(tok):
            stop_type = "eos"
            break
        tokens.append(tok)
        out_tokens.append(tok)
        pending += decoder.feed(tok)
        hit = _stop_hit(pending, stop)
        if hit:
            pending, stop_type, word = pending[:hit[0]], "word", hit[1]
            break
        hold = _partial_stop(pending, stop)
        emit, pending = pending[:len(pending) - hold], pending[len(pending) - hold:]
        if emit or probs:
            yield Event(text=emit, token=tok, probs=probs)
        if matcher is not None and matcher.is_finished():
            stop_type = "eos"  # (llama.cpp would sample the only allowed token next: an EOG)
            break
        if len(out_tokens) >= limit:
            break
        if model.n_past >= n_ctx:
            if not context_shift:
                stop_type = "limit"
                break
            keep = min(n_keep, n_ctx // 2)
            discard = (model.n_past - keep) // 2
            kept = tokens[:keep] + tokens[keep + discard:]
            model.reset()
            if len(kept) > 1:
                model.eval(kept[:-1])       # the last kept token is `tok`, evaluated below
            tokens = kept
            truncated = True
        logits = model.eval([tok])
    timings.predicted_n = len(out_tokens)
    timings.predicted_ms = 1e3 * (time.perf_counter() - t1)
    tail = pending + (decoder.flush() if stop_type != "word" else "")
    if stop_type != "word":
        hit = _stop_hit(tail, stop)
        if hit:
            tail, stop_type, word = tail[:hit[0]], "word", hit[1]
    if tail:
        yield Event(text=tail)
    yield Event(done=True, stop_type=stop_type, stopping_word=word, tokens=out_tokens, timings=timings,
                truncated=truncated)


def chat(model, messages, template: str = "gguf", stream: bool = True, max_tokens: int = 256,
         seed: int = 0xFFFFFFFF, stop: Sequence[str] = (), cancel: threading.Event | None = None,
         modelfile=None, grammar: Grammar | None = None, **sampling) -> Iterator[Event] | tuple[str, Event]:
    """Render `messages` with the chat template, generate the assistant's answer.

    stream=True yields Events (text pieces, then the final one with timings); stream=False returns
    (text, final event). `sampling`: SamplingParams fields (temperature, top_k, top_p, min_p, ...).
    `grammar` constrains the answer (e.g. Grammar.from_json_schema(schema) for JSON mode)."""
    md = model.gguf.metadata
    if modelfile is not None and modelfile.template:
        system = next((m["content"] for m in messages if m["role"] == "system"), None)
        user = [m["content"] for m in messages if m["role"] == "user"]
        text = modelfile.render(user[-1] if user else "", system=system)
        stops = list(stop) + list(modelfile.parameters.get("stop", []))
        sampling = {**{k: v for k, v in modelfile.parameters.items() if k in SamplingParams.__dataclass_fields__},
                    **sampling}
    else:
        text = render_chat(messages, template, metadata=md)
        stops = list(stop) + [s for s in stop_strings(template, md) if s not in stop]
    prompt = model.tokenizer.tokenize(text, add_special=True, parse_special=True)
    history = getattr(model, "_chat_history", None)
    if history is not None and len(history) != model.n_past:  # the cache was used elsewhere meanwhile
        history = None
    events = generate(model, model.tokenizer, prompt, n_predict=max_tokens, params=SamplingParams(**sampling),
                      seed=seed, stop=stops, cancel=cancel, history=history, grammar=grammar)

    def run():
        for ev in events:
            if ev.done:
                model._chat_history = (prompt + ev.tokens)[: model.n_past]
            yield ev

    if stream:
        return run()
    pieces, final = [], None
    for ev in run():
        if ev.done:
            final = ev
        else:
            pieces.append(ev.text)
    return "".join(pieces), final
