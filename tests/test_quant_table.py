"""The SmolLM2 quant table against llama-perplexity's (quant_table_smollm2.json): one quant_table call over
all 17 ftypes of the F16 base (itself the requantized Q4_1 file, as llama_model_quantize made it).

Slow (18 perplexity + KLD passes of 8192 tokens): WORKBENCH_SLOW=1."""
from __future__ import annotations

import json

import pytest

from workbench.eval.tables import quant_table
from workbench.quant.quantize_model import quantize_model

PPL_REL = 0.01     # acceptance: PPL within 1%
KLD_REL = 0.05     # acceptance: mean KLD within 5%


@pytest.mark.slow
def test_quant_table_matches_llama_perplexity(smollm2_path, golden_dir, shared_data_dir, tmp_path):
    golden = json.loads((golden_dir / "quant_table_smollm2.json").read_text())
    rows = {r["ftype"]: r for r in golden["rows"]}
    base = tmp_path / "smollm2.F16.gguf"
    quantize_model(smollm2_path, base, "F16", allow_requantize=True, progress=False, with_error=False)
    ftypes = [f for f in rows if f != "F16"]
    text = (shared_data_dir / golden["text"]).read_text(encoding="utf-8")
    df = quant_table(base, ftypes, text, n_ctx=golden["n_ctx"], n_chunks=golden["n_chunk"], out_dir=tmp_path,
                     flash_attn=False,  # the golden table was made through llama-cpp-python: no flash attention
                     with_speed=False, reports_dir=tmp_path)
    df["ftype"] = df["ftype"].replace({"base": "F16"})
    bad = []
    for r in df.to_dict("records"):
        g = rows[r["ftype"]]
        ppl_rel = abs(r["ppl"] - g["ppl"]) / g["ppl"]
        kld_rel = abs(r["kld_mean"] - g["kld_mean"]) / g["kld_mean"] if g["kld_mean"] else abs(r["kld_mean"])
        print(f"{r['ftype']:>7}: bytes {r['file_bytes']} vs {g['bytes']}  PPL {r['ppl']:.4f} vs {g['ppl']:.4f} "
              f"({ppl_rel:.2e})  KLD {r['kld_mean']:.5f} vs {g['kld_mean']:.5f} ({kld_rel:.2e})  "
              f"same top p {r['same_top_p']:.4f} vs {g['same_top_p']:.4f}")
        if r["file_bytes"] != g["bytes"] or ppl_rel > PPL_REL or kld_rel > KLD_REL:
            bad.append(r["ftype"])
    assert not bad, f"rows off llama.cpp's table: {bad}"
