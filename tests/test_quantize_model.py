"""Whole-model quantization against llama-quantize: per-tensor types, file sha256, bad input."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from workbench.gguf import read_gguf
from workbench.quant.mixes import plan_types
from workbench.quant.quantize_model import QuantizeError, model_shape, quantize_model
from conftest import golden_json

SMOL = "quantize_smollm2.json"
TOY = "toy/quantize_tiny-mixtral8.json"


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 22):
            h.update(b)
    return h.hexdigest()


def golden(golden_dir, name):
    return json.loads((golden_dir / name).read_text())


def explain_mismatch(path, expected_tensors) -> str:
    gf = read_gguf(path)
    got = {t.name: (t.type.name, hashlib.sha256(bytes(t.data)).hexdigest()) for t in gf.tensors}
    bad = [f"{e['name']}: {got.get(e['name'], ('missing', ''))[0]} vs {e['type']}" for e in expected_tensors
           if got.get(e["name"]) != (e["type"], e["sha256"])]
    return f"{len(bad)} of {len(expected_tensors)} tensors differ, first: {bad[:3]}"


@pytest.fixture(scope="module")
def smol_base(smollm2_path, tmp_path_factory, golden_dir):
    """llama-quantize --allow-requantize SmolLM2-Q4_1 base.gguf F16 (must equal the golden base)."""
    out = tmp_path_factory.mktemp("quant") / "smollm2.F16.gguf"
    quantize_model(smollm2_path, out, "F16", allow_requantize=True, progress=False, with_error=False)
    return out


def test_type_plans_match_llama_quantize(smollm2_path, golden_dir):
    g = golden(golden_dir, SMOL)
    gf = read_gguf(smollm2_path)
    for out in [g["base"]] + g["outputs"]:
        plans = plan_types(gf.tensors, model_shape(gf.metadata), out["ftype"])
        assert [(p.name, p.dst_type.name) for p in plans] == [(t["name"], t["type"]) for t in out["tensors"]], out["ftype"]


def test_type_plans_match_llama_quantize_on_8_experts(golden_dir):
    g = golden(golden_dir, TOY)
    gf = read_gguf(golden_dir / "toy" / "tiny-mixtral8-f16.gguf")
    for out in g["outputs"]:
        plans = plan_types(gf.tensors, model_shape(gf.metadata), out["ftype"])
        assert [(p.name, p.dst_type.name) for p in plans] == [(t["name"], t["type"]) for t in out["tensors"]], out["ftype"]


def test_f16_base_is_byte_identical(smol_base, golden_dir):
    assert sha256(smol_base) == golden(golden_dir, SMOL)["base"]["sha256"]


def _smol_cases():
    return [o["ftype"] for o in (golden_json(SMOL) or {}).get("outputs", [])]


@pytest.mark.parametrize("ftype", _smol_cases())
def test_smollm2_ftype_is_byte_identical(ftype, smol_base, golden_dir, tmp_path):
    out = next(o for o in golden(golden_dir, SMOL)["outputs"] if o["ftype"] == ftype)
    dst = tmp_path / out["file"]
    quantize_model(smol_base, dst, ftype, progress=False, with_error=False)
    assert dst.stat().st_size == out["bytes"]
    if sha256(dst) != out["sha256"]:
        pytest.fail(explain_mismatch(dst, out["tensors"]))


@pytest.mark.parametrize("ftype", ["Q4_K_M", "Q3_K_M", "Q2_K", "Q5_K_S", "IQ4_XS", "Q6_K"])
def test_tiny_mixtral8_ftype_is_byte_identical(ftype, golden_dir, tmp_path):
    out = next(o for o in golden(golden_dir, TOY)["outputs"] if o["ftype"] == ftype)
    dst = tmp_path / out["file"]
    quantize_model(golden_dir / "toy" / "tiny-mixtral8-f16.gguf", dst, ftype, progress=False, with_error=False)
    if sha256(dst) != out["sha256"]:
        pytest.fail(explain_mismatch(dst, out["tensors"]))


def test_chunked_rows_are_byte_identical(golden_dir, tmp_path, monkeypatch):
    """Chunks of 100 rows (not a divisor of an expert's 512, so chunks end at expert boundaries too) give the
    llama-quantize bytes and the same error report as whole tensors."""
    import workbench.quant.quantize_model as qm

    out = next(o for o in golden(golden_dir, TOY)["outputs"] if o["ftype"] == "Q4_K_M")
    src = golden_dir / "toy" / "tiny-mixtral8-f16.gguf"
    whole = quantize_model(src, tmp_path / "whole.gguf", "Q4_K_M", progress=False)
    monkeypatch.setattr(qm, "CHUNK_BYTES", 4 * 256 * 100)
    dst = tmp_path / out["file"]
    chunked = quantize_model(src, dst, "Q4_K_M", progress=False)
    if sha256(dst) != out["sha256"]:
        pytest.fail(explain_mismatch(dst, out["tensors"]))
    np.testing.assert_allclose(chunked.rel_rmse, whole.rel_rmse, rtol=1e-9)


def test_report_and_metadata(golden_dir, tmp_path):
    dst = tmp_path / "q8.gguf"
    df = quantize_model(golden_dir / "toy" / "tiny-mixtral8-f16.gguf", dst, "Q8_0", progress=False)
    assert set(df.columns) >= {"name", "old_type", "new_type", "old_bytes", "new_bytes", "rel_rmse"}
    q = df[df.new_type == "Q8_0"]
    assert len(q) > 0 and (q.rel_rmse > 0).all() and (q.rel_rmse < 0.01).all()
    md = read_gguf(dst).metadata
    assert list(md)[-2:] == ["general.quantization_version", "general.file_type"]
    assert md["general.file_type"] == 7 and md["general.quantization_version"] == 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(ftype="Q4_K_XL"), "unknown ftype"),
    (dict(ftype="Q4_0"), "requantizing is disabled"),
    (dict(ftype="IQ2_XXS", allow_requantize=True), "importance matrix"),
    (dict(ftype="Q4_0", allow_requantize=True, imatrix={"blk.0.attn_q.weight": np.ones(7, np.float32)}), "another model"),
])
def test_bad_requests_fail_before_writing(smollm2_path, tmp_path, kwargs, message):
    dst = tmp_path / "out.gguf"
    ftype = kwargs.pop("ftype")
    with pytest.raises(QuantizeError, match=message):
        quantize_model(smollm2_path, dst, ftype, progress=False, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_destination_equal_to_source_is_refused(tmp_path, golden_dir):
    import shutil
    src = tmp_path / "m.gguf"
    shutil.copy(golden_dir / "toy" / "tiny-mixtral8-f16.gguf", src)
    with pytest.raises(QuantizeError, match="is the source"):
        quantize_model(src, src, "Q8_0", progress=False)
    assert sha256(src) == sha256(golden_dir / "toy" / "tiny-mixtral8-f16.gguf")
