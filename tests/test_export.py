"""GGUF -> Hugging Face export, checked by converting back (convert_hf) and comparing with the source."""
from __future__ import annotations

import hashlib
import importlib.util

import numpy as np
import pytest

from conftest import load_json
from workbench.gguf import read_gguf, write_gguf
from workbench.hf.convert import convert_hf
from workbench.hf.export import ExportError, dequantize_tensor, export_hf
from workbench.hf.names import gguf_name, hf_name, permute_qk, unpermute_qk

VOCAB_KEYS = ["tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
              "tokenizer.ggml.scores", "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id",
              "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
              "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token", "tokenizer.chat_template"]


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


ROUND_TRIPS = [("tiny-mixtral", "f16", "f16", 5 * 10**9), ("tiny-mixtral", "f32", "f32", 2_000_000),
               ("tiny-mixtral", "f32", "q8_0", 5 * 10**9), ("tiny-mixtral8", "f16", "f16", 5 * 10**9)]


@pytest.mark.parametrize("model,dtype,outtype,shard", ROUND_TRIPS)
def test_sentencepiece_round_trip_is_byte_identical(toy_dir, tmp_path, model, dtype, outtype, shard):
    """llama.cpp's <model>-f16.gguf -> HF (tokenizer.model rebuilt; maybe sharded) -> convert == llama.cpp's
    conversion of the original HF folder (tiny-mixtral8 ships no HF folder: its f16 GGUF is the reference)."""
    hf = export_hf(toy_dir / f"{model}-f16.gguf", tmp_path / model, dtype=dtype, max_shard_bytes=shard)
    assert (hf / "model.safetensors.index.json").is_file() == (shard < 10**9)
    out = convert_hf(hf, tmp_path / "rt.gguf", outtype=outtype, progress=False)
    want = load_json(toy_dir / "manifest" / f"{model}-{outtype}.json")["sha256"]
    assert sha256(out) == want


def test_rebuilt_tokenizer_model_tokenizes_like_the_original(toy_dir, tmp_path):
    from sentencepiece import SentencePieceProcessor

    export_hf(toy_dir / "tiny-mixtral-f16.gguf", tmp_path / "hf", dtype="f16")
    original, rebuilt = SentencePieceProcessor(), SentencePieceProcessor()
    original.LoadFromFile(str(toy_dir / "tiny-mixtral" / "tokenizer.model"))
    rebuilt.LoadFromFile(str(tmp_path / "hf" / "tokenizer.model"))
    assert rebuilt.vocab_size() == original.vocab_size()
    for text in ["Hello world, this is a test of the toy model.", "介绍一下北京", "def f(x): return x * 2",
                 "  spaces\tand\nnewlines 🦙 ✅ 3.14159"]:
        assert rebuilt.EncodeAsIds(text) == original.EncodeAsIds(text), text
    for i in (0, 1, 2, 3, 100, 31999):
        assert (rebuilt.IsControl(i), rebuilt.IsByte(i), rebuilt.IsUnknown(i)) == \
               (original.IsControl(i), original.IsByte(i), original.IsUnknown(i))


def test_smollm2_round_trip(smollm2_path, tmp_path):
    """SmolLM2 (BPE vocab, tied embeddings, Q4_1/Q8_0) -> HF f16 -> convert f16: every tensor equals the
    source dequantized and rounded to f16; vocab, merges, template and special tokens are unchanged."""
    hf = export_hf(smollm2_path, tmp_path / "SmolLM2", dtype="f16")
    assert (hf / "tokenizer.json").is_file() and not (hf / "tokenizer.model").exists()
    out = convert_hf(hf, tmp_path / "rt.gguf", outtype="f16", progress=False)
    with read_gguf(smollm2_path) as src, read_gguf(out) as rt:
        assert [t.name for t in rt.tensors] == [t.name for t in src.tensors]
        assert "output.weight" not in rt  # tied embeddings stay tied
        for t in src.tensors:
            want = dequantize_tensor(t).astype(np.float16).astype(np.float32)
            got = dequantize_tensor(rt.tensor(t.name))
            bad = np.argwhere(got != want)
            assert not len(bad), f"{t.name}: {len(bad)} values differ, first at {bad[0]}: {got[tuple(bad[0])]} " \
                                 f"vs {want[tuple(bad[0])]}"
        for k in VOCAB_KEYS:
            assert (k in rt.metadata) == (k in src.metadata), k
            if k in src.metadata:
                a, b = src.metadata[k], rt.metadata[k]
                same = a == b if isinstance(a, (str, int, float, bool)) else np.array_equal(np.asarray(a), np.asarray(b))
                assert same, f"{k} differs after the round trip"
        for k in ["general.name", "general.basename", "general.finetune", "general.size_label", "llama.block_count",
                  "llama.context_length", "llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon"]:
            assert rt.metadata[k] == src.metadata[k], k


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers not installed")
def test_transformers_loads_export(smollm2_path, tmp_path):
    import torch
    import transformers

    import workbench

    hf = export_hf(smollm2_path, tmp_path / "SmolLM2", dtype="f32")
    tok = transformers.AutoTokenizer.from_pretrained(hf)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf)
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == workbench.load(smollm2_path).tokenize(text, add_special=False, parse_special=True)
    with torch.no_grad():
        theirs = model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
    assert theirs.shape == (len(ids), 49152)
    # same tokens in the workbench (on the source GGUF, F32 KV, exact activations): the exported weights are
    # the dequantized source, so only the engines' arithmetic differs
    ours = workbench.load(smollm2_path, n_ctx=256, cache_type="f32", quantize_act=False).logits(ids)
    assert (ours.argmax(-1) == theirs.argmax(-1)).mean() >= 0.9
    assert np.abs(ours - theirs).max() < 0.05, np.abs(ours - theirs).max()


def test_qk_permutation_is_inverted():
    w = np.arange(4 * 16 * 3, dtype=np.float32).reshape(4 * 16, 3)
    for n_head, n_kv in ((4, 4), (8, 4)):
        p = permute_qk(w, n_head, n_kv)
        assert not np.array_equal(p, w)
        np.testing.assert_array_equal(unpermute_qk(p, n_head, n_kv), w)
    # within a head of 4 rows, HF halves [r0 r1 | i0 i1] become interleaved pairs [r0 i0 r1 i1]
    np.testing.assert_array_equal(permute_qk(np.arange(4.0)[:, None], 1)[:, 0], [0, 2, 1, 3])


@pytest.mark.parametrize("name", ["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                                  "model.layers.3.self_attn.k_proj.weight", "model.layers.0.mlp.down_proj.weight",
                                  "model.layers.1.block_sparse_moe.gate.weight",
                                  "model.layers.12.post_attention_layernorm.weight"])
def test_tensor_names_invert(name):
    assert hf_name(gguf_name(name)) == name


def test_export_refuses_other_architectures(tmp_path):
    path = tmp_path / "gpt2.gguf"
    write_gguf(path, {"general.architecture": "gpt2"}, [])
    with pytest.raises(ExportError, match="gpt2"):
        export_hf(path, tmp_path / "out")
