"""Perplexity under linear RoPE scaling (llama.cpp's --rope-freq-scale, `load(..., rope_freq_scale=...)`),
below and beyond the training context."""
from __future__ import annotations

import pandas as pd

from workbench.eval.perplexity import perplexity
from workbench.llama import load


def rope_scaling_table(model_path, text: str, contexts, scales=(1.0, 0.5), n_chunks: int = 2) -> pd.DataFrame:
    """PPL for each (context, freq_scale): linear scaling 0.5 stretches the trained positions over 2x the
    context; it costs a little below the training length and is what keeps PPL sane beyond it."""
    rows = []
    for n_ctx in contexts:
        for s in scales:
            m = load(model_path, n_ctx=n_ctx, rope_freq_scale=s)
            r = perplexity(m, text, n_ctx=n_ctx, n_chunks=n_chunks, progress=False)
            rows.append({"n_ctx": n_ctx, "freq_scale": s, "label": f"rope freq_scale {s}", "ppl": r.ppl,
                         "ppl_err": r.ppl_err})
    return pd.DataFrame(rows)
