"""Grammar cost: mask time per token, and constrained vs unconstrained generation time per token.

    .venv/bin/python bench/bench_grammar.py [model.gguf]

Prints the mask time (mean, p50, p99) over a JSON-schema generation on the model's vocabulary, the
generation time per token with and without the grammar (the ratio must stay <= 1.3), and the CPU.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import grammar_reference as ref  # noqa: E402
from workbench.llama.generate import generate  # noqa: E402
from workbench.llama.model import load  # noqa: E402
from workbench.llama.sampling import SamplingParams  # noqa: E402
from workbench.text.grammar import Grammar  # noqa: E402


ROUNDS = 9


def cpu() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")
    return f"{name}; avx512f: {'yes' if 'avx512f' in out else 'no'}"


def per_token_ms(model, prompt, grammar, n: int) -> tuple[float, list[int]]:
    final = None
    for ev in generate(model, model.tokenizer, prompt, n_predict=n, cache_prompt=False,
                       params=SamplingParams(temperature=0.0), seed=1, grammar=grammar):
        if ev.done:
            final = ev
    t = final.timings
    return t.predicted_ms / max(t.predicted_n, 1), final.tokens


def main(path: Path = ref.MODEL) -> None:
    model = load(path, n_ctx=512)
    tok = model.tokenizer
    grammar = Grammar.from_json_schema(ref.PERSON)
    prompt = ref.prompt_tokens(tok, model.gguf.metadata, ref.PROMPTS[0])
    # mask time along the constrained answer (every step, as if each draw were refused)
    _, tokens = per_token_ms(model, prompt, grammar, 48)
    m, times = grammar.matcher(tok), []
    for t in tokens:
        t0 = time.perf_counter()
        m.allowed()
        times.append(1e3 * (time.perf_counter() - t0))
        m.accept(t)
    times = np.array(times)
    print(f"vocab {tok.n_vocab}, {len(times)} masks: mean {times.mean():.3f} ms, p50 {np.percentile(times, 50):.3f} ms, "
          f"p99 {np.percentile(times, 99):.3f} ms")
    runs = {"unconstrained": [], "constrained": []}
    for _ in range(ROUNDS):  # interleaved, so a busy moment of the machine hits both
        for label, g in (("unconstrained", None), ("constrained", grammar)):
            runs[label].append(per_token_ms(model, prompt, g, len(tokens))[0])
    runs = {k: float(np.median(v)) for k, v in runs.items()}
    for label, ms in runs.items():
        print(f"{label}: {ms:.2f} ms/token (median of {ROUNDS} interleaved runs of {len(tokens)} tokens)")
    print(f"ratio constrained/unconstrained: {runs['constrained'] / runs['unconstrained']:.3f}")
    print("CPU:", cpu())


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ref.MODEL)
