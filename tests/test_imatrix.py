"""Importance matrix: computed from activations, llama.cpp's GGUF and legacy .dat layouts, used by quantize_model."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from workbench.gguf import read_gguf
from workbench.quant.imatrix import compute_imatrix, load_imatrix, save_imatrix
from workbench.quant.quantize_model import quantize_model


@pytest.fixture(scope="module")
def toy_imatrix(toy_dir, shared_data_dir):
    text = (shared_data_dir / "botchan.txt").read_text(encoding="utf-8")[:30000]
    return compute_imatrix(toy_dir / "tiny-mixtral8-f16.gguf", text, n_ctx=64, n_chunks=4, dataset="botchan.txt",
                           progress=False)


def test_entries_counts_and_values(toy_imatrix):
    im = toy_imatrix
    # per layer: q, k, v, output, router, and the three expert stacks
    assert len(im.data) == 2 * 8 and "blk.1.ffn_down_exps.weight" in im.data
    dense = im.raw["blk.0.attn_q.weight"]
    assert dense.counts.tolist() == [4 * 64] and dense.sum2.shape == (1, 256)
    stack = im.raw["blk.0.ffn_gate_exps.weight"]
    assert stack.sum2.shape == (8, 256) and stack.counts.sum() == 4 * 64 * 2  # top-2 routing
    assert im.data["blk.0.ffn_gate_exps.weight"].shape == (8 * 256,)
    assert (im.data["blk.0.attn_q.weight"] > 0).all()


def test_gguf_round_trip_and_layout(toy_imatrix, tmp_path):
    path = tmp_path / "imatrix.gguf"
    save_imatrix(toy_imatrix, path)
    gf = read_gguf(path)
    assert gf.metadata["general.type"] == "imatrix" and gf.metadata["imatrix.chunk_count"] == 4
    t = gf.tensor("blk.0.ffn_up_exps.weight.in_sum2")
    assert t.shape == (8, 256) and gf.tensor("blk.0.ffn_up_exps.weight.counts").shape == (8, 1)
    back = load_imatrix(path)
    assert back.datasets == ["botchan.txt"]
    for k, v in toy_imatrix.data.items():
        np.testing.assert_allclose(back.data[k], v, rtol=1e-6)


def test_legacy_dat_format(tmp_path):
    vals = np.arange(1, 5, dtype=np.float32) * 3  # stored as (mean per call) * ncall
    name = b"blk.0.attn_q.weight"
    raw = struct.pack("<i", 1) + struct.pack("<i", len(name)) + name + struct.pack("<ii", 3, 4) + vals.tobytes()
    raw += struct.pack("<i", 10) + struct.pack("<i", 7) + b"wiki.tx"
    (tmp_path / "old.dat").write_bytes(raw)
    im = load_imatrix(tmp_path / "old.dat")
    np.testing.assert_allclose(im.data["blk.0.attn_q.weight"], vals / 3)
    assert im.chunk_count == 10 and im.datasets == ["wiki.tx"]


def test_quantize_with_imatrix(toy_imatrix, toy_dir, tmp_path):
    path = tmp_path / "imatrix.gguf"
    save_imatrix(toy_imatrix, path)
    dst = tmp_path / "iq2.gguf"
    df = quantize_model(toy_dir / "tiny-mixtral8-f16.gguf", dst, "IQ2_XXS", imatrix=path, progress=False)
    md = read_gguf(dst).metadata
    assert md["quantize.imatrix.file"] == str(path) and md["quantize.imatrix.entries_count"] == 16
    assert md["quantize.imatrix.chunks_count"] == 4 and md["quantize.imatrix.dataset"] == "botchan.txt"
    assert "IQ2_XXS" in set(df.new_type)
