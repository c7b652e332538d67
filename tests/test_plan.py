"""workbench.plan: per-tensor types against llama.cpp's own snapshot, file sizes against real files, shape errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import LLAMA_CPP_HINT, llama_cpp_source

from workbench.plan import PlanError, Shape, best_ftype, max_context, plan, plan_table

SCHEMA = "tests/snapshots/meta-llama-3.1-70b-instruct.schema"
LLAMA31_70B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192,
               "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
               "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072,
               "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False,
               "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 8192, "rope_type": "llama3"}}
MIXTRAL_8X7B = "n_embd=4096,n_ff=14336,n_layer=32,n_head=32,n_head_kv=8,n_vocab=32000,n_expert=8,n_expert_used=2"


def _read_schema(path: Path) -> dict[str, tuple[str, dict[str, str]]]:
    sections, cur = {}, None
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            name, default = line[1:].split("] ")
            cur = sections[name] = (default, {})
        else:
            tensor, t = line.split()
            cur[1][tensor] = t
    return sections


def test_types_match_llama_cpp_snapshot_for_llama31_70b(tmp_path):
    path = llama_cpp_source(SCHEMA)
    if path is None:
        pytest.skip(f"llama.cpp source with {SCHEMA} not found ({LLAMA_CPP_HINT})")
    (tmp_path / "config.json").write_text(json.dumps(LLAMA31_70B))
    sections = {k: v for k, v in _read_schema(path).items() if k != "MXFP4_MOE"}
    results = plan(tmp_path / "config.json", list(sections), n_ctx=512)
    for r in results:
        name = "F32" if r["ftype"] == "F32" else r["ftype"]
        default, overrides = sections[name]
        quantizable = [t for t in r["tensors"] if len(t["shape"]) >= 2]  # the snapshot's mock tensors
        bad = [(t["name"], t["type"], overrides.get(t["name"], default)) for t in quantizable
               if t["type"] != overrides.get(t["name"], default)]
        assert not bad, f"{name}: {len(bad)} tensors differ, first {bad[:3]}"
        assert set(overrides) <= {t["name"] for t in quantizable}, f"{name}: snapshot names tensors we lack"


def test_file_size_from_header_equals_real_files(smollm2_path, golden_dir):
    gold = json.loads((golden_dir / "quantize_smollm2.json").read_text())
    outs = gold["outputs"] + [gold["base"]]
    # the base and every output differ from the Q4_1 source only in general.file_type's value: same header size
    results = plan(smollm2_path, [o["ftype"] for o in outs])
    assert len(gold["outputs"]) == 17
    for r, o in zip(results, outs):
        assert r["file_bytes"] == o["bytes"], (o["ftype"], r["file_bytes"], o["bytes"])
        assert [(t["name"], t["type"].upper()) for t in r["tensors"]] == \
            [(t["name"], t["type"].upper()) for t in o["tensors"]], o["ftype"]
    assert plan(smollm2_path, "Q4_1")[0]["file_bytes"] == smollm2_path.stat().st_size


def test_file_size_toy_models(toy_dir):
    gold = json.loads((toy_dir / "quantize_tiny-mixtral8.json").read_text())["outputs"]
    base = toy_dir / "tiny-mixtral8-f16.gguf"
    for r, o in zip(plan(base, [o["ftype"] for o in gold]), gold):
        assert r["file_bytes"] == o["bytes"], o["ftype"]
    for name in ("tiny-mixtral8", "tiny-mixtral"):
        f = toy_dir / f"{name}-f16.gguf"
        assert plan(f, "F16")[0]["file_bytes"] == f.stat().st_size
    # a HF folder: the converter's own metadata makes the header exact, = llama.cpp's conversion
    r = plan(toy_dir / "tiny-mixtral", "F16")[0]
    assert r["header_exact"] and r["file_bytes"] == (toy_dir / "tiny-mixtral-f16.gguf").stat().st_size


def test_reads_only_the_header(smollm2_path, monkeypatch):
    """read_gguf maps the file and parses only the header; the plan copies names/types/shapes (never .data)
    and closes the map before returning."""
    import workbench.plan as wp

    seen = []
    real = wp.read_gguf

    def spy(p):
        gf = real(p)
        seen.append(gf)
        return gf
    monkeypatch.setattr(wp, "read_gguf", spy)
    r = plan(smollm2_path, "Q4_K_M")[0]
    assert r["file_bytes"] > 0 and seen and seen[0]._buffer is None


@pytest.mark.parametrize("shape, field", [
    ("n_embd=4096,n_ff=11008,n_layer=32,n_head=30,n_vocab=32000", "n_head"),
    ("n_embd=4096,n_ff=11008,n_layer=32,n_head=32,n_head_kv=5,n_vocab=32000", "n_head_kv"),
    ("n_embd=4096,n_ff=11008,n_layer=32,n_head=32", "n_vocab"),
    ("n_embd=4096,n_ff=0,n_layer=32,n_head=32,n_vocab=32000", "n_ff"),
    ("n_embd=4096,n_ff=11008,n_layer=32,n_head=32,n_vocab=32000,n_expert=8", "n_expert"),
    ("n_embd=4096,n_ff=11008,n_layer=32,n_head=32,n_vocab=32000,n_heads=3", "n_heads"),
    ({"architectures": ["GPT2LMHeadModel"], "n_embd": 768}, "architectures"),
    ({"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 11008,
      "num_hidden_layers": 32, "num_attention_heads": 32}, "vocab_size"),
])
def test_bad_shapes_name_the_field(shape, field):
    with pytest.raises(PlanError, match=field):
        plan(shape, "Q4_K_M")


def test_real_sizes_and_inverse_questions():
    llama2_7b = Shape(n_embd=4096, n_ff=11008, n_layer=32, n_head=32, n_head_kv=32, n_vocab=32000)
    r = {x["ftype"]: x for x in plan(llama2_7b, ["Q4_K_M", "Q8_0", "F16"], n_ctx=4096)}
    assert 6.7e9 < r["F16"]["n_params"] < 6.8e9
    assert abs(r["Q4_K_M"]["file_bytes"] / 1e9 - 4.08) < 0.05  # TheBloke's llama-2-7b.Q4_K_M.gguf: 4.08 GB
    assert r["Q4_K_M"]["memory"]["kv_cache"] == 2 * 32 * 4096 * 4096 * 2  # 2 GiB of f16 K and V
    df = plan_table(MIXTRAL_8X7B, ["Q4_K_M"], n_ctx=4096)
    # TheBloke's mixtral-8x7b Q4_K_M (Dec 2023): 26.44 GB; today's rules give 8-expert models Q8_0 attn_k/attn_v,
    # Q5_K attn_output and Q6_K for half the ffn_down_exps layers: 28.45 GB
    assert 28.3 < df.file_GB[0] < 28.6
    best = best_ftype(llama2_7b, 8.0, n_ctx=4096)
    assert best is not None and best["memory"]["llama_need"] <= 8e9
    assert plan(llama2_7b, best["ftype"], n_ctx=4096)[0]["file_bytes"] >= r["Q4_K_M"]["file_bytes"]
    c = max_context(llama2_7b, "Q4_K_M", 8.0)
    assert c % 256 == 0 and 0 < c <= 4096
