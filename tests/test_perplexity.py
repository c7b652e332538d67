"""Perplexity of SmolLM2 Q4_1 on the golden texts against llama-perplexity (within 1e-7 relative, same scored tokens).

One context length per text runs by default (each is a full 8192-token pass); the rest of the golden sweep is
marked slow (WORKBENCH_SLOW=1)."""
from __future__ import annotations

import json

import pytest

from workbench.eval.perplexity import chunks_for_context, perplexity
from conftest import golden_json

# one English and one Chinese case by default; they agree with llama-perplexity to ~1e-7 relative
DEFAULT = {("botchan", 512), ("zh_news", 256)}


def _cases():
    out = []
    for text in ("botchan", "zh_news"):
        for r in (golden_json(f"ppl_smollm2_q4_1_{text}.json") or {}).get("results", []):
            marks = () if (text, r["n_ctx"]) in DEFAULT else (pytest.mark.slow,)
            out.append(pytest.param(text, r["n_ctx"], marks=marks, id=f"{text}-{r['n_ctx']}"))
    return out


@pytest.fixture(scope="module")
def smol(smollm2_path):
    import workbench

    return workbench.load(smollm2_path, n_ctx=8192)


@pytest.mark.parametrize("text, n_ctx", _cases())
def test_ppl_matches_llama_perplexity(text, n_ctx, smol, golden_dir, shared_data_dir):
    g = next(r for r in json.loads((golden_dir / f"ppl_smollm2_q4_1_{text}.json").read_text())["results"]
             if r["n_ctx"] == n_ctx)
    body = (shared_data_dir / f"{text}.txt").read_text(encoding="utf-8")
    assert chunks_for_context(n_ctx) >= g["n_chunk"]
    r = perplexity(smol, body, n_ctx=n_ctx, n_chunks=g["n_chunk"], progress=False)
    assert r.n_tokens_text == g["n_tokens_text"] and r.add_bos == g["add_bos"]
    assert (r.n_chunk, r.n_scored) == (g["n_chunk"], g["n_scored"])
    rel = abs(r.ppl - g["ppl"]) / g["ppl"]
    print(f"{text} n_ctx={n_ctx}: PPL {r.ppl:.4f} vs llama.cpp {g['ppl']:.4f} (rel {rel:.2e}), "
          f"{r.tokens_per_s:.1f} tokens/s")
    assert rel < 1e-7, f"PPL {r.ppl!r} vs llama-perplexity {g['ppl']!r}"
    assert abs(r.ppl_err - g["ppl_err"]) / g["ppl_err"] < 1e-2
