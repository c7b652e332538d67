"""A GPTQ folder converted to GGUF by `python -m workbench convert`: 4-bit group-32 linears become Q4_1 blocks
with their own codes (the same floats as AutoGPTQ's dequantization, q/k rows permuted as convert permutes them),
other settings are requantized and reported, a float outtype gives the dequantized model, and the file runs."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
from test_gptq_checkpoint import toy_gptq_folder

from workbench.cli import convert as convert_cli
from workbench.gguf import read_gguf
from workbench.gguf.constants import GGMLType, Keys, LlamaFileType
from workbench.hf.convert import ConvertError, convert_hf
from workbench.hf.gptq_checkpoint import write_dequantized_checkpoint
from workbench.hf.gptq_gguf import convert_gptq, is_gptq_folder
from workbench.hf.names import gguf_name, permute_qk
from workbench.llama import load
from workbench.quant import dequantize

N_HEAD, N_KV = 4, 2


def gguf_rows(hf_prefix: str, w: np.ndarray) -> np.ndarray:
    """The rows of an HF linear's weight in GGUF order."""
    if hf_prefix.endswith("q_proj"):
        return permute_qk(w, N_HEAD, N_HEAD)
    if hf_prefix.endswith("k_proj"):
        return permute_qk(w, N_HEAD, N_KV)
    return w


def run_cli(argv) -> int:
    parser = argparse.ArgumentParser()
    convert_cli.configure(parser)
    return convert_cli.run(parser.parse_args(argv))


def test_4bit_g32_folder_converts_to_q4_1_with_its_own_codes(toy_dir, tmp_path, capsys):
    gptq = tmp_path / "gptq"
    linears = toy_gptq_folder(toy_dir, gptq)
    assert is_gptq_folder(gptq) and not is_gptq_folder(toy_dir / "tiny-llama")
    out = tmp_path / "tiny-gptq.gguf"
    assert run_cli([str(gptq), "--outfile", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "14 of 14 GPTQ linears kept their codes exactly (Q4_1); 0 requantized" in printed
    with read_gguf(out) as gf:
        assert gf.metadata.get(Keys.General.FILE_TYPE) == LlamaFileType.Q4_1
        for p, t in linears.items():
            g = gf.tensor(gguf_name(f"{p}.weight"))
            assert g.type == GGMLType.Q4_1, p
            got = dequantize(np.asarray(g.data).reshape(t.out_features, -1), "Q4_1", t.in_features)
            assert np.array_equal(got, gguf_rows(p, t.dequantize())), p         # bit for bit
        assert gf.tensor("token_embd.weight").type == GGMLType.F16
        assert gf.tensor("blk.0.attn_norm.weight").type == GGMLType.F32
    # the same weights as the float conversion of the dequantized folder: logits agree closely
    write_dequantized_checkpoint(gptq, tmp_path / "f16")
    ref = convert_hf(tmp_path / "f16", tmp_path / "ref.gguf", outtype="f32", progress=False)
    tokens = np.load(toy_dir / "golden_tiny-llama_f32.npz")["prompt_0_tokens"]
    got = load(out, n_ctx=64).eval(tokens, all_logits=True)
    want = load(ref, n_ctx=64).eval(tokens, all_logits=True)
    assert np.isfinite(got).all() and np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.999


def test_mixtral_experts_keep_their_codes(toy_dir, tmp_path):
    gptq = tmp_path / "gptq"
    linears = toy_gptq_folder(toy_dir, gptq, model="tiny-mixtral")
    path, report = convert_gptq(gptq, tmp_path / "moe.gguf", progress=False)
    assert len(report) == len(linears) == 2 * (4 + 4 * 3) and all(r["how"] == "exact" for r in report)
    with read_gguf(path) as gf:
        g = gf.tensor("blk.1.ffn_down_exps.weight")
        assert g.type == GGMLType.Q4_1 and tuple(g.shape) == (4, 64, 160)
        stack = np.asarray(g.data).reshape(4, 64, -1)
        for x in range(4):
            t = linears[f"model.layers.1.block_sparse_moe.experts.{x}.w2"]
            assert np.array_equal(dequantize(stack[x], "Q4_1", t.in_features), t.dequantize())
    tokens = np.load(toy_dir / "golden_tiny-llama_f32.npz")["prompt_0_tokens"]
    assert np.isfinite(load(path, n_ctx=64).eval(tokens, all_logits=True)).all()


@pytest.mark.parametrize("bits,group_size,target,why", [(4, -1, GGMLType.Q4_1, "group_size -1"),
                                                        (3, 32, GGMLType.Q4_1, "bits 3"),
                                                        (8, 32, GGMLType.Q8_0, "8-bit codes")])
def test_other_grids_are_requantized_and_reported(toy_dir, tmp_path, bits, group_size, target, why):
    gptq = tmp_path / "gptq"
    linears = toy_gptq_folder(toy_dir, gptq, bits, group_size)
    path, report = convert_gptq(gptq, tmp_path / "out.gguf", progress=False)
    assert len(report) == 14 and all(r["how"] == "requantized" and why in r["why"] for r in report)
    with read_gguf(path) as gf:
        for p, t in linears.items():
            g = gf.tensor(gguf_name(f"{p}.weight"))
            assert g.type == target
            got = dequantize(np.asarray(g.data).reshape(t.out_features, -1), target.name, t.in_features)
            w = gguf_rows(p, t.dequantize())
            err = np.abs(got - w).max()
            assert 0 < err <= 1.05 * np.abs(w).max() / (15 if target == GGMLType.Q4_1 else 254), p    # half a step


def test_float_outtype_is_the_dequantized_model(toy_dir, tmp_path):
    gptq = tmp_path / "gptq"
    toy_gptq_folder(toy_dir, gptq, 4, 32)
    path, report = convert_gptq(gptq, tmp_path / "direct-{ftype}.gguf", outtype="f16", progress=False)
    assert report == [] and path.name == "direct-f16.gguf"
    write_dequantized_checkpoint(gptq, tmp_path / "f16")
    ref = convert_hf(tmp_path / "f16", tmp_path / "ref.gguf", outtype="f16", progress=False)
    with read_gguf(path) as a, read_gguf(ref) as b:
        assert [(t.name, t.type) for t in a.tensors] == [(t.name, t.type) for t in b.tensors]
        for t in a.tensors:
            assert np.array_equal(np.asarray(t.data), np.asarray(b.tensor(t.name).data)), t.name


def test_bad_gptq_folder_is_refused_before_writing(toy_dir, tmp_path):
    gptq = tmp_path / "gptq"
    toy_gptq_folder(toy_dir, gptq)
    (gptq / "quantize_config.json").write_text('{"bits": 5, "group_size": 32}')
    out = tmp_path / "out.gguf"
    with pytest.raises(ConvertError, match="bits=5"):
        convert_gptq(gptq, out, progress=False)
    with pytest.raises(ConvertError, match="outtype"):
        convert_gptq(gptq, out, outtype="q4_0", progress=False)
    assert not out.exists()
