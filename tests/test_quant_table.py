"""The quant table: the SmolLM2 table against llama-perplexity's (quant_table_smollm2.json): one quant_table call
over all 17 ftypes of the F16 base (itself the requantized Q4_1 file, as llama_model_quantize made it; slow, 18
perplexity + KLD passes of 8192 tokens: WORKBENCH_SLOW=1); its noise-floor rows and within-noise marks (on
constructed rows and on a toy model); the per-tensor error heatmap's layout."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from workbench.eval import plots
from workbench.eval.bench import llama_cpp_available
from workbench.eval.tables import floor_level, mark_within_noise, noise_note, quant_table, write_table
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
    df = df[df.kind != "noise floor"].assign(ftype=lambda d: d.ftype.replace({"base": "F16"}))
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


# --- the noise floor and the within-noise marks --------------------------------------------------------

def _rows(*rows):
    return pd.DataFrame([{"ftype": f, "kind": k, "kld_mean": m, "kld_err": e} for f, k, m, e in rows])


def test_within_noise_marks_on_constructed_rows():
    df = _rows(("base", "base", 0.0, 0.0),
               ("noise: a", "noise floor", 1e-4, 1e-5),     # floor: max(1e-4 + 2e-5, 5e-5 + 2e-5) = 1.2e-4
               ("noise: b", "noise floor", 5e-5, 1e-5),
               ("clear", "quant", 2e-4, 3e-5),                # 2e-4 - 6e-5 = 1.4e-4 > 1.2e-4: clearly above
               ("edge", "quant", 2e-4, 4.5e-5),               # 2e-4 - 9e-5 = 1.1e-4 <= 1.2e-4: within noise
               ("under", "quant", 1e-4, 0.0),
               ("far", "quant", 0.05, 0.002))
    marked = mark_within_noise(df, sigmas=2.0)
    assert floor_level(df, 2.0) == pytest.approx(1.2e-4)
    assert dict(zip(marked.ftype, marked.within_noise)) == {
        "base": True, "noise: a": True, "noise: b": True, "clear": False, "edge": True, "under": True, "far": False}
    # one sigma: "edge" (2e-4 - 4.5e-5 = 1.55e-4 > floor 1.1e-4) becomes clearly above
    assert not mark_within_noise(df, sigmas=1.0).set_index("ftype").within_noise["edge"]
    # without floor rows the floor is zero: only a KLD indistinguishable from 0 is within noise
    bare = mark_within_noise(df[df.kind != "noise floor"], sigmas=2.0).set_index("ftype").within_noise
    assert bare["base"] and not bare["under"] and not bare["edge"] and not bare["far"]
    with pytest.raises(ValueError, match="kld_err"):
        mark_within_noise(df.drop(columns=["kld_err"]))


def test_markdown_marks_within_noise_rows(tmp_path):
    df = mark_within_noise(_rows(("base", "base", 0.0, 0.0), ("noise: a", "noise floor", 1e-4, 1e-5),
                                 ("Q8_0", "quant", 1.1e-4, 1e-5), ("Q2_K", "quant", 0.3, 0.01)))
    csv, md = write_table(df, tmp_path / "t", notes=noise_note(df))
    lines = md.read_text(encoding="utf-8").splitlines()
    row = {ln.split("|")[1].strip(): ln for ln in lines if ln.startswith("| ") and "ftype" not in ln}
    assert row["Q8_0"].rstrip(" |").endswith("≈") and not row["Q2_K"].rstrip(" |").endswith("≈")
    assert any(ln.startswith("≈ within noise") and "0.00012" in ln for ln in lines)
    assert pd.read_csv(csv).within_noise.tolist() == [True, True, True, False]


def test_quant_table_has_noise_floor_rows(toy_dir, shared_data_dir, tmp_path):
    text = (shared_data_dir / "botchan.txt").read_text(encoding="utf-8")[:6000]
    df = quant_table(toy_dir / "tiny-mixtral-f16.gguf", ["Q4_0"], text, n_ctx=64, n_chunks=2, out_dir=tmp_path,
                     with_speed=False, reports_dir=tmp_path)
    floor = df[df.kind == "noise floor"]
    expected = {"noise: attention order", "noise: f32 activations"} | (
        {"noise: llama.cpp (this host)"} if llama_cpp_available() else set())
    assert set(floor.ftype) == expected
    assert list(df.kind) == ["base"] + ["noise floor"] * len(expected) + ["quant"]
    # the same model computed another valid way stays close to itself; a 4-bit file does not
    assert (floor.kld_mean >= 0).all() and (floor.kld_mean < 1e-3).all() and (floor.same_top_p > 0.99).all()
    q4 = df.set_index("ftype").loc["Q4_0"]
    assert q4.kld_mean > 10 * floor.kld_mean.max()
    assert df.within_noise.tolist() == mark_within_noise(df.drop(columns=["within_noise"])).within_noise.tolist()
    assert df.within_noise.iloc[0] and not q4.within_noise
    assert "≈ within noise" in (tmp_path / "quant_table.md").read_text(encoding="utf-8")


# --- the per-tensor error heatmap --------------------------------------------------------------------

def test_heatmap_layers_in_numeric_order_one_panel_per_ftype():
    rng = np.random.default_rng(0)
    kinds = ["ffn_down", "attn_k", "attn_q", "ffn_up", "attn_output", "attn_v", "ffn_gate"]
    names = sorted(f"blk.{i}.{k}.weight" for i in range(12) for k in kinds) + ["token_embd.weight",
                                                                              "output_norm.weight"]
    ftypes = ["Q8_0", "Q4_K_M", "Q4_0"]
    errors = pd.DataFrame([{"name": n, "ftype": ft, "rel_rmse": 0.0 if "norm" in n else rng.uniform(1e-3, 1e-1)}
                           for ft in ftypes for n in names])
    fig = plots.tensor_error_heatmap(errors)
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title() for ax in panels] == ftypes
    rows = [t.get_text() for t in panels[0].get_yticklabels()]
    assert rows == [f"blk.{i}" for i in range(12)] + [plots.GLOBAL_ROW]
    cols = [t.get_text() for t in panels[0].get_xticklabels()]
    assert cols == ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "token_embd"]
    assert len({ax.get_images()[0].get_clim() for ax in panels}) == 1          # one colour scale
    assert len(fig.axes) == len(panels) + 1                                    # and one colorbar
    assert min(t.get_fontsize() for t in panels[0].get_yticklabels()) >= 9
    assert fig.get_size_inches()[0] <= 10
    # cell (blk.10, ffn_down) of the Q4_0 panel holds that tensor's error
    want = errors[(errors.ftype == "Q4_0") & (errors.name == "blk.10.ffn_down.weight")].rel_rmse.item()
    assert panels[2].get_images()[0].get_array()[10, 6] == pytest.approx(np.log10(want))
    plots.pyplot().close(fig)
