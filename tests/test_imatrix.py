"""Importance matrix as llama-imatrix computes it (bit for bit against its goldens, dense and MoE), llama.cpp's GGUF
layout (byte for byte) and legacy .dat, and llama-quantize's files made with it (sha256)."""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from workbench.cli import main
from workbench.eval.imatrix import compute_imatrix
from workbench.gguf import read_gguf
from workbench.llama import load
from workbench.quant.imatrix import ImatrixError, load_imatrix, save_imatrix
from workbench.quant.quantize_model import quantize_model
from workbench.text.files import read_prompt_file
from conftest import golden_json

# llama-imatrix -m smollm2-f16.gguf -f botchan.txt -c 512 -b 512 --chunks 16 -t 2
DENSE = "imatrix_smollm2_f16_botchan.gguf"
# llama-imatrix -m tiny-mixtral8-f16.gguf -f botchan.txt -c 256 -b 256 --chunks 8
MOE = "toy/imatrix_tiny-mixtral8_botchan.gguf"
QUANT = "quantize_smollm2_imatrix.json"          # llama-quantize --imatrix DENSE smollm2-f16.gguf OUT FTYPE
FAST_FTYPES = ("Q2_K_S", "Q4_K_M", "IQ2_XXS")    # 3-18 s; the other 11 of QUANT 19-40 s each: WORKBENCH_SLOW=1


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def botchan(shared_data_dir) -> str:
    return read_prompt_file(shared_data_dir / "botchan.txt")     # BOM and CRLFs kept, as llama-imatrix -f


@pytest.fixture(scope="module")
def smol_f16(smollm2_path, tmp_path_factory) -> Path:
    """smollm2-f16.gguf, the goldens' base: the default SmolLM2 Q4_1 requantized to F16 (llama-quantize
    --allow-requantize; byte-identical, see test_quantize_model)."""
    out = tmp_path_factory.mktemp("imatrix") / "smollm2-f16.gguf"
    quantize_model(smollm2_path, out, "F16", allow_requantize=True, progress=False, with_error=False)
    return out


@pytest.fixture(scope="module")
def dense_run(smol_f16, botchan):
    return compute_imatrix(smol_f16, botchan, n_ctx=512, n_batch=512, n_chunks=16, dataset="botchan.txt",
                           progress=False)


@pytest.fixture(scope="module")
def moe_run(toy_dir, botchan):
    return compute_imatrix(toy_dir / "tiny-mixtral8-f16.gguf", botchan, n_ctx=256, n_batch=256, n_chunks=8,
                           dataset="botchan.txt", progress=False)


def differences(ours, golden_path) -> tuple[list[str], float]:
    """Entries whose counts or sums differ from the golden's (first bad value of each), and the largest
    relative difference of any in_sum2 value."""
    g = load_imatrix(golden_path)
    assert sorted(ours.in_sum2) == sorted(g.in_sum2), "not the same entries"
    bad, worst = [], 0.0
    for name, want in g.in_sum2.items():
        got = ours.in_sum2[name]
        if not np.array_equal(ours.counts[name], g.counts[name]):
            bad.append(f"{name}: counts {ours.counts[name].tolist()} vs {g.counts[name].tolist()}")
        rel = np.abs(got.astype(np.float64) - want) / np.maximum(np.abs(want), np.finfo(np.float32).tiny)
        worst = max(worst, float(rel.max()))
        if not np.array_equal(got, want):
            i = np.unravel_index(np.argmax(got != want), got.shape)
            bad.append(f"{name}: {int((got != want).sum())} of {got.size} sums differ, first at {i}: "
                       f"{got[i]!r} vs {want[i]!r}, max rel {rel.max():.2e}")
    return bad, worst


def test_dense_matrix_is_llama_imatrix_bit_for_bit(dense_run, golden_dir):
    bad, worst = differences(dense_run, golden_dir / DENSE)
    assert not bad, f"{len(bad)} of {len(dense_run.in_sum2)} entries differ (max rel {worst:.2e}): {bad[:4]}"
    assert len(dense_run.in_sum2) == 30 * 7 and dense_run.chunk_count == 16 and dense_run.chunk_size == 512


def test_moe_matrix_is_llama_imatrix_bit_for_bit(moe_run, golden_dir):
    bad, worst = differences(moe_run, golden_dir / MOE)
    assert not bad, f"{len(bad)} of {len(moe_run.in_sum2)} entries differ (max rel {worst:.2e}): {bad[:4]}"
    # per layer: q, k, v, output, router, the three expert stacks; every token goes to 2 of the 8 experts
    assert len(moe_run.in_sum2) == 2 * 8 and moe_run.counts["blk.0.attn_q.weight"].tolist() == [8 * 256]
    assert moe_run.in_sum2["blk.1.ffn_down_exps.weight"].shape == (8, 512)
    assert moe_run.counts["blk.0.ffn_gate_exps.weight"].sum() == 8 * 256 * 2
    assert moe_run.data["blk.0.ffn_gate_exps.weight"].shape == (8 * 256,)


@pytest.mark.parametrize("run, golden", [("dense_run", DENSE), ("moe_run", MOE)])
def test_file_layout_is_llama_imatrix_byte_for_byte(run, golden, request, golden_dir, tmp_path):
    ours = tmp_path / "imatrix.gguf"
    save_imatrix(request.getfixturevalue(run), ours)
    got, want = read_gguf(ours), read_gguf(golden_dir / golden)
    assert list(got.metadata.items()) == list(want.metadata.items())    # keys in order, values, datasets as given
    assert [(t.name, t.type, t.shape) for t in got.tensors] == [(t.name, t.type, t.shape) for t in want.tensors]
    assert ours.read_bytes() == (golden_dir / golden).read_bytes()


def test_layout_shapes(moe_run, tmp_path):
    """ggml ne [n, n_mat] and [1, n_mat], trailing 1-dims dropped: dense (n,) and (1,), a stack (8, n), (8, 1)."""
    path = tmp_path / "imatrix.gguf"
    save_imatrix(moe_run, path)
    gf = read_gguf(path)
    names = [t.name for t in gf.tensors]
    entries = sorted(moe_run.in_sum2)                     # by entry name; its in_sum2, then its counts
    assert names == [f"{e}.{part}" for e in entries for part in ("in_sum2", "counts")]
    assert gf.tensor("blk.0.attn_q.weight.in_sum2").shape == (256,)
    assert gf.tensor("blk.0.attn_q.weight.counts").shape == (1,)
    assert gf.tensor("blk.0.ffn_up_exps.weight.in_sum2").shape == (8, 256)
    assert gf.tensor("blk.0.ffn_up_exps.weight.counts").shape == (8, 1)
    assert gf.metadata["general.type"] == "imatrix" and gf.metadata["imatrix.chunk_size"] == 256


def test_gguf_round_trip(moe_run, tmp_path):
    path = tmp_path / "imatrix.gguf"
    save_imatrix(moe_run, path)
    back = load_imatrix(path)
    assert back.datasets == ["botchan.txt"] and back.chunk_count == 8 and back.chunk_size == 256
    for k, v in moe_run.in_sum2.items():
        np.testing.assert_array_equal(back.in_sum2[k], v)
        np.testing.assert_array_equal(back.counts[k], moe_run.counts[k])
        np.testing.assert_array_equal(back.data[k], moe_run.data[k])
    save_imatrix(back, tmp_path / "again.gguf")
    assert (tmp_path / "again.gguf").read_bytes() == path.read_bytes()


def test_legacy_dat_format(tmp_path):
    vals = np.arange(1, 5, dtype=np.float32) * 3  # stored as (mean per call) * ncall
    name = b"blk.0.attn_q.weight"
    raw = struct.pack("<i", 1) + struct.pack("<i", len(name)) + name + struct.pack("<ii", 3, 4) + vals.tobytes()
    raw += struct.pack("<i", 10) + struct.pack("<i", 7) + b"wiki.tx"
    (tmp_path / "old.dat").write_bytes(raw)
    im = load_imatrix(tmp_path / "old.dat")
    np.testing.assert_allclose(im.data["blk.0.attn_q.weight"], vals / 3)
    assert im.chunk_count == 10 and im.datasets == ["wiki.tx"]
    with pytest.raises(ImatrixError, match="no raw sums"):
        save_imatrix(im, tmp_path / "new.gguf")


def _ftype_cases():
    return [pytest.param(f, marks=() if f in FAST_FTYPES else (pytest.mark.slow,))
            for f in (golden_json(QUANT) or {}).get("outputs", [])]


def _quantize_in_folder(folder: Path, base: Path, matrix: Path, ftype: str, g: dict, monkeypatch) -> Path:
    """llama-quantize --imatrix IMATRIX smollm2-f16.gguf OUT FTYPE run in one folder: the matrix under the name
    the golden recorded (quantize.imatrix.file is the path as given)."""
    monkeypatch.chdir(folder)
    if not Path(g["imatrix"]["file"]).exists():
        Path(g["imatrix"]["file"]).symlink_to(matrix)
    out = folder / f"smollm2-{ftype}.gguf"
    quantize_model(base, out.name, ftype, imatrix=g["imatrix"]["file"], progress=False, with_error=False)
    return out


@pytest.mark.parametrize("ftype", _ftype_cases())
def test_quantize_with_the_golden_matrix_is_llama_quantize(ftype, smol_f16, golden_dir, tmp_path, monkeypatch):
    g = json.loads((golden_dir / QUANT).read_text())
    out = _quantize_in_folder(tmp_path, smol_f16, golden_dir / DENSE, ftype, g, monkeypatch)
    assert out.stat().st_size == g["outputs"][ftype]["bytes"]
    assert sha256(out) == g["outputs"][ftype]["sha256"]


def test_quantize_with_our_matrix_is_llama_quantize(dense_run, smol_f16, golden_dir, tmp_path, monkeypatch):
    """Our matrix, saved under the golden's name, makes llama-quantize's file (made with llama-imatrix's)."""
    g = json.loads((golden_dir / QUANT).read_text())
    ours = tmp_path / "ours" / g["imatrix"]["file"]
    ours.parent.mkdir()
    save_imatrix(dense_run, ours)
    out = _quantize_in_folder(ours.parent, smol_f16, ours, "Q2_K_S", g, monkeypatch)
    assert sha256(out) == g["outputs"]["Q2_K_S"]["sha256"]


def test_quantize_with_imatrix_metadata(moe_run, toy_dir, tmp_path):
    path = tmp_path / "imatrix.gguf"
    save_imatrix(moe_run, path)
    dst = tmp_path / "iq2.gguf"
    df = quantize_model(toy_dir / "tiny-mixtral8-f16.gguf", dst, "IQ2_XXS", imatrix=str(path), progress=False)
    md = read_gguf(dst).metadata
    assert md["quantize.imatrix.file"] == str(path) and md["quantize.imatrix.entries_count"] == 16
    assert md["quantize.imatrix.chunks_count"] == 8 and md["quantize.imatrix.dataset"] == "botchan.txt"
    assert "IQ2_XXS" in set(df.new_type)


def test_cli_reads_the_text_as_llama_cpp_and_records_the_path_as_given(toy_dir, shared_data_dir, tmp_path,
                                                                        monkeypatch, capsys):
    """A BOM + CRLF text is not normalised: the CRs are tokens (578 instead of 547 for these 2,000 bytes: 9
    chunks of 64 instead of 8), so the matrix differs from the LF text's."""
    raw = (shared_data_dir / "botchan.txt").read_bytes()[:2000]
    assert raw.startswith(b"\xef\xbb\xbf") and raw.count(b"\r\n") == 37
    (tmp_path / "crlf.txt").write_bytes(raw)
    (tmp_path / "lf.txt").write_bytes(raw.replace(b"\r\n", b"\n"))
    monkeypatch.chdir(tmp_path)
    model = str(toy_dir / "tiny-mixtral8-f16.gguf")
    for given, out in (("./crlf.txt", "crlf.gguf"), ("lf.txt", "lf.gguf")):
        assert main(["imatrix", "-m", model, "-f", given, "-o", out, "-c", "64", "--chunks", "2"]) == 0
    capsys.readouterr()
    crlf, lf = load_imatrix("crlf.gguf"), load_imatrix("lf.gguf")
    assert crlf.datasets == ["./crlf.txt"] and lf.datasets == ["lf.txt"]      # m_params.prompt_file as given
    assert not np.array_equal(crlf.in_sum2["blk.0.attn_q.weight"], lf.in_sum2["blk.0.attn_q.weight"])
    same = compute_imatrix(model, read_prompt_file("crlf.txt"), n_ctx=64, n_chunks=2, progress=False)
    for name in ("blk.0.attn_q.weight", "blk.1.ffn_down_exps.weight"):
        np.testing.assert_array_equal(same.in_sum2[name], crlf.in_sum2[name])

    tokenize = load(model, n_ctx=64).tokenize
    assert [len(tokenize(read_prompt_file(f))) for f in ("crlf.txt", "lf.txt")] == [578, 547]


def test_batches_under_16_tokens_record_only_the_experts(toy_dir, botchan):
    """collect_imatrix skips a dense MUL_MAT of fewer than 16 tokens; MUL_MAT_ID is always collected."""
    with pytest.warns(UserWarning, match="fewer than 64 tokens"):
        im = compute_imatrix(toy_dir / "tiny-mixtral8-f16.gguf", botchan[:3000], n_ctx=64, n_batch=8, n_chunks=2,
                             progress=False)
    stacks = [f"blk.{i}.ffn_{w}_exps.weight" for i in range(2) for w in ("gate", "up", "down")]
    assert sorted(im.in_sum2) == sorted(stacks)
    assert im.counts["blk.0.ffn_up_exps.weight"].sum() == 2 * 64 * 2


def test_refusals(toy_dir, botchan):
    model = toy_dir / "tiny-mixtral8-f16.gguf"
    with pytest.raises(ImatrixError, match="you need at least 1024 tokens"):
        compute_imatrix(model, botchan[:1000], n_ctx=512, progress=False)
    with pytest.raises(ImatrixError, match="parallel sequences"):
        compute_imatrix(model, botchan, n_ctx=256, n_batch=512, progress=False)
