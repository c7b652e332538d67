"""HF -> GGUF conversion against llama.cpp's convert_hf_to_gguf.py outputs (toy goldens), plus bad inputs
and the numpy-only safetensors reader/writer."""
from __future__ import annotations

import hashlib
import json
import shutil
import struct

import numpy as np
import pytest

from conftest import load_json
from workbench.gguf import read_gguf
from workbench.hf.convert import convert_hf
from workbench.hf.safetensors import (
    SafetensorsError, bf16_to_f32, f32_to_bf16, open_checkpoint, read_header, write_safetensors, write_sharded,
)

CASES = [(m, t) for m in ("tiny-llama", "tiny-mixtral") for t in ("f32", "f16", "q8_0")]


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_of(path, golden: dict) -> dict:
    """Our file in the golden manifest's format (array values cut to the golden's head length)."""
    heads = {kv["key"]: len(kv["value"]["head"]) for kv in golden["kv"] if isinstance(kv["value"], dict)}
    kvs = []
    with read_gguf(path) as gf:
        for k, v in gf.metadata.items():
            t = gf.metadata.types[k]
            if isinstance(t, tuple):
                elem = t[1].name
                kvs.append({"key": k, "type": f"ARRAY[{elem}]", "value": {
                    "array_of": elem, "len": len(v), "head": [x.item() if hasattr(x, "item") else x
                                                             for x in list(v[:heads.get(k, 5)])]}})
            else:
                kvs.append({"key": k, "type": t.name, "value": v})
        tensors = [{"name": t.name, "type": t.type.name, "shape": list(t.ne), "n_bytes": int(t.data.nbytes),
                    "data_offset": gf.data_offset + int(t.offset)} for t in gf.tensors]
    return {"kv": kvs, "tensors": tensors}


def first_difference(ours: dict, golden: dict) -> str | None:
    """The first KV (in order) or tensor whose key, type, value, shape or offset differs."""
    for i, (a, b) in enumerate(zip(ours["kv"], golden["kv"])):
        if (a["key"], a["type"], a["value"]) != (b["key"], b["type"], b["value"]):
            return f"KV #{i}: ours {a} != llama.cpp {b}"
    if len(ours["kv"]) != len(golden["kv"]):
        return f"{len(ours['kv'])} KVs, llama.cpp has {len(golden['kv'])}"
    fields = ("name", "type", "shape", "n_bytes", "data_offset")
    for i, (a, b) in enumerate(zip(ours["tensors"], golden["tensors"])):
        if any(a[f] != b[f] for f in fields):
            return f"tensor #{i}: ours {a} != llama.cpp { {f: b[f] for f in fields} }"
    if len(ours["tensors"]) != len(golden["tensors"]):
        return f"{len(ours['tensors'])} tensors, llama.cpp has {len(golden['tensors'])}"
    return None


@pytest.mark.parametrize("model,outtype", CASES, ids=[f"{m}-{t}" for m, t in CASES])
def test_convert_matches_llama_cpp(toy_dir, tmp_path, model, outtype):
    out = tmp_path / f"{model}-{outtype}.gguf"
    convert_hf(toy_dir / model, out, outtype=outtype, progress=False)
    want = load_json(toy_dir / "convert_reference.json")[model][outtype]
    got = sha256(out)
    golden = load_json(toy_dir / "manifest" / f"{model}-{outtype}.json")
    diff = first_difference(manifest_of(out, golden), golden)  # metadata/layout first: the readable diff
    assert diff is None, f"sha256 {got} vs llama.cpp {want}; first difference: {diff}"
    assert got == want, "same metadata and layout, different tensor data"


def toy_copy(toy_dir, tmp_path, model="tiny-llama"):
    """A writable copy of a toy folder under the same folder name (general.name comes from it)."""
    dst = tmp_path / model
    shutil.copytree(toy_dir / model, dst)
    return dst


def test_sharded_checkpoint_converts_identically(toy_dir, tmp_path):
    src = toy_dir / "tiny-llama"
    dst = tmp_path / "tiny-llama"
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, dst / f.name)
    arrays = {n: t.raw() for n, t in open_checkpoint(src).items()}
    shards = write_sharded(dst, arrays, max_shard_bytes=1_500_000)
    assert len(shards) > 2 and (dst / "model.safetensors.index.json").is_file()
    out = tmp_path / "out.gguf"
    convert_hf(dst, out, outtype="f32", progress=False)
    assert sha256(out) == load_json(toy_dir / "convert_reference.json")["tiny-llama"]["f32"]


def _expect_failure(model_dir, tmp_path, match, outtype="f16"):
    out = tmp_path / "out" / "model.gguf"
    out.parent.mkdir(exist_ok=True)
    with pytest.raises(ValueError, match=match):
        convert_hf(model_dir, out, outtype=outtype, progress=False)
    assert list(out.parent.iterdir()) == [], "a failed conversion left files behind"


def test_folder_without_config(toy_dir, tmp_path):
    d = toy_copy(toy_dir, tmp_path)
    (d / "config.json").unlink()
    _expect_failure(d, tmp_path, "config.json")


def test_unsupported_architecture(toy_dir, tmp_path):
    d = toy_copy(toy_dir, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["GPTNeoXForCausalLM"]
    (d / "config.json").write_text(json.dumps(cfg))
    _expect_failure(d, tmp_path, "GPTNeoXForCausalLM")


def test_unexpected_shape(toy_dir, tmp_path):
    d = toy_copy(toy_dir, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 128
    (d / "config.json").write_text(json.dumps(cfg))
    _expect_failure(d, tmp_path, r"model\.safetensors.*mlp\.down_proj")


def test_bad_tokenizer_model(toy_dir, tmp_path):
    d = toy_copy(toy_dir, tmp_path)
    (d / "tokenizer.model").write_bytes(b"this is not a sentencepiece model" * 10)
    _expect_failure(d, tmp_path, "tokenizer.model")


def test_truncated_safetensors(toy_dir, tmp_path):
    d = toy_copy(toy_dir, tmp_path)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    _expect_failure(d, tmp_path, r"model\.safetensors.*truncated")


def test_missing_shard(toy_dir, tmp_path):
    d = toy_copy(toy_dir, tmp_path)
    arrays = {n: t.raw().copy() for n, t in open_checkpoint(d).items()}
    (d / "model.safetensors").unlink()
    shards = write_sharded(d, arrays, max_shard_bytes=3_000_000)
    shards[1].unlink()
    _expect_failure(d, tmp_path, shards[1].name)


# ------------------------------------------------------------------ safetensors

def test_safetensors_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x32 = rng.standard_normal((3, 5)).astype(np.float32)
    x16 = rng.standard_normal((4,)).astype(np.float16)
    b16 = f32_to_bf16(x32)
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {"a": x32, "b": x16, "c": b16}, metadata={"format": "pt"}, bf16={"c"})
    tensors, meta = read_header(path)
    assert meta == {"format": "pt"} and [tensors[n].dtype for n in "abc"] == ["F32", "F16", "BF16"]
    np.testing.assert_array_equal(tensors["a"].numpy(), x32)
    np.testing.assert_array_equal(tensors["b"].numpy(), x16)
    np.testing.assert_array_equal(tensors["c"].raw(), b16)
    # bf16 keeps the top 16 bits, rounded to nearest even
    np.testing.assert_allclose(tensors["c"].numpy(), x32, rtol=2 ** -8)
    assert (8 + struct.unpack("<Q", path.read_bytes()[:8])[0]) % 8 == 0


def test_bf16_rounding_and_nan():
    x = np.array([1.0, 1.00390625, 1.01171875, -2.5, np.inf, np.nan], dtype=np.float32)
    bits = f32_to_bf16(x)
    # 1 + 2^-8 is a tie -> even (1.0); 1 + 3*2^-8 is a tie -> even (1 + 2^-6)
    assert list(bits[:5]) == [0x3F80, 0x3F80, 0x3F82, 0xC020, 0x7F80]
    assert np.isnan(bf16_to_f32(bits[5:])).all()


def _write_raw(path, header: dict, data: bytes):
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)


@pytest.mark.parametrize("header,data,match", [
    ({"w": {"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "unknown dtype"),
    ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "do not match"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "truncated"),
])
def test_safetensors_errors_name_the_file(tmp_path, header, data, match):
    path = tmp_path / "bad.safetensors"
    _write_raw(path, header, data)
    with pytest.raises(SafetensorsError, match=f"bad.safetensors.*{match}"):
        read_header(path)


def test_safetensors_header_beyond_file(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(SafetensorsError, match="bad.safetensors.*beyond the end"):
        read_header(path)
    path.write_bytes(b"\1\2")
    with pytest.raises(SafetensorsError, match="bad.safetensors.*truncated"):
        read_header(path)


# ------------------------------------------------------------------ BPE pre-tokenizer detection

def test_pre_tokenizer_hash_of_smollm2(smollm2_path):
    """Our byte-level BPE tokenization of llama.cpp's check string hashes to llama.cpp's 'smollm' entry."""
    from workbench.hf.bpe_pre import pre_from_hash
    from workbench.hf.export import tokenizer_json

    with read_gguf(smollm2_path) as gf:
        tj = tokenizer_json(gf.metadata)
    assert pre_from_hash(tj) == "smollm"
    # a different vocabulary tokenizes differently: unknown hash, no name
    vocab = tj["model"]["vocab"]
    vocab["Ġ("], vocab["Ġ)"] = vocab["Ġ)"], vocab["Ġ("]
    assert pre_from_hash(tj) is None


def test_bpe_building_blocks():
    from workbench.hf.bpe_pre import bpe, pre_tokenize, translate_pattern

    pat = translate_pattern(r"[^\s\p{L}]+|\p{L}+")
    assert pat.findall("héllo, 世界!") == ["héllo", ",", "世界", "!"]
    ranks = {("a", "b"): 0, ("ab", "c"): 1, ("b", "c"): 2}
    assert bpe("abc", ranks) == ["abc"] and bpe("bca", ranks) == ["bc", "a"]
    spec = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                  {"type": "ByteLevel", "add_prefix_space": False}]}
    assert pre_tokenize("hi 42", spec) == ["hi", "Ġ", "4", "2"]


def test_unknown_bpe_pre_tokenizer_is_an_error(tmp_path):
    from workbench.hf.vocab import VocabError, detect_pre

    tj = {"normalizer": {"type": "NFKC"}, "pre_tokenizer": {"type": "Whitespace"},
          "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}
    with pytest.raises(VocabError, match="tokenizer.json.*not recognized"):
        detect_pre(tj, tmp_path / "tokenizer.json")


def _llama2_tokenizer_json(eos_last=False):
    added = [{"id": i, "content": c, "special": True} for i, c in enumerate(["<unk>", "<s>", "</s>"])]
    single = [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}] + \
        ([{"SpecialToken": {"id": "</s>", "type_id": 0}}] if eos_last else [])
    return {"added_tokens": added, "post_processor": {"type": "TemplateProcessing", "single": single, "pair": []},
            "model": {"type": "BPE", "byte_fallback": True, "vocab": {}, "merges": []}}


@pytest.mark.parametrize("eos_token,eos_last,want", [
    ("</s>", False, [("tokenizer.ggml.bos_token_id", 1), ("tokenizer.ggml.eos_token_id", 2),
                     ("tokenizer.ggml.unknown_token_id", 0), ("tokenizer.ggml.padding_token_id", 5),
                     ("tokenizer.ggml.add_bos_token", True), ("tokenizer.ggml.add_eos_token", False)]),
    # llama.cpp quirk: an AddedToken dict never equals the template's "</s>": it is kept as EOT too
    ({"content": "</s>", "special": True}, True, [
        ("tokenizer.ggml.bos_token_id", 1), ("tokenizer.ggml.eos_token_id", 2),
        ("tokenizer.ggml.unknown_token_id", 0), ("tokenizer.ggml.eot_token_id", 2),
        ("tokenizer.ggml.padding_token_id", 5), ("tokenizer.ggml.add_bos_token", True),
        ("tokenizer.ggml.add_eos_token", True)]),
])
def test_special_tokens_from_tokenizer_json(tmp_path, eos_token, eos_last, want):
    from workbench.hf.special_vocab import special_metadata

    (tmp_path / "tokenizer.json").write_text(json.dumps(_llama2_tokenizer_json(eos_last)))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": {"content": "<s>"}, "eos_token": eos_token, "unk_token": "<unk>", "add_bos_token": True,
         "add_eos_token": False, "chat_template": "{{ x }}"}))
    (tmp_path / "config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 5}))
    got = special_metadata(tmp_path, n_vocab=32000)
    assert [(k, v) for k, v, _ in got] == want + [("tokenizer.chat_template", "{{ x }}")]


def test_auto_outtype_follows_checkpoint_dtype(toy_dir, tmp_path):
    """f16 weights -> auto picks F16 (same file as --outtype f16); bf16 weights -> BF16."""
    out = convert_hf(toy_dir / "tiny-llama", tmp_path / "auto.gguf", outtype="auto", progress=False)
    assert sha256(out) == load_json(toy_dir / "convert_reference.json")["tiny-llama"]["f16"]
    d = toy_copy(toy_dir, tmp_path)
    src = open_checkpoint(d)
    arrays = {n: f32_to_bf16(t.numpy().astype(np.float32)) for n, t in src.items()}
    write_safetensors(d / "model.safetensors", arrays, bf16=set(arrays))
    out = convert_hf(d, tmp_path / "bf16.gguf", outtype="auto", progress=False)
    with read_gguf(out) as gf, read_gguf(tmp_path / "auto.gguf") as ref:
        assert gf.metadata["general.file_type"] == 32
        for t in gf.tensors:
            want = ref.tensor(t.name).numpy().astype(np.float32)
            if t.type.name == "BF16":
                np.testing.assert_array_equal(np.frombuffer(t.data, "<u2").reshape(t.shape), f32_to_bf16(want))
            else:  # 1-D norms stay F32: bf16 widened exactly
                assert t.type.name == "F32"
                np.testing.assert_array_equal(t.numpy(), bf16_to_f32(f32_to_bf16(want)))


def test_q8_0_falls_back_to_f16_for_odd_rows():
    from workbench.gguf.constants import GGMLType
    from workbench.hf.convert import tensor_type

    assert tensor_type("blk.0.attn_q.weight", (64, 64), GGMLType.Q8_0) == GGMLType.Q8_0
    assert tensor_type("blk.0.ffn_down.weight", (64, 40), GGMLType.Q8_0) == GGMLType.F16
    assert tensor_type("blk.0.ffn_gate_inp.weight", (4, 64), GGMLType.Q8_0) == GGMLType.F32
    assert tensor_type("blk.0.attn_norm.weight", (64,), GGMLType.F16) == GGMLType.F32
    assert tensor_type("blk.0.attn_q.bias", (64,), GGMLType.F16) == GGMLType.F32


def test_cli_names_the_output_like_llama_cpp(toy_dir, tmp_path, capsys):
    import argparse

    from workbench.cli import convert as convert_cli

    parser = argparse.ArgumentParser()
    convert_cli.configure(parser)
    args = parser.parse_args([str(toy_dir / "tiny-llama"), "--outfile", str(tmp_path), "--outtype", "f16",
                              "--no-progress"])
    assert convert_cli.run(args) == 0
    out = tmp_path / "Tiny-Llama-4.2M-F16.gguf"
    assert str(out) in capsys.readouterr().out
    assert sha256(out) == load_json(toy_dir / "convert_reference.json")["tiny-llama"]["f16"]


# ------------------------------------------------------------------ general.* metadata heuristics

MODEL_IDS = [("Mistral/Mixtral-8x7B-Instruct-v0.1", 0), ("Mixtral-8x7B-v0.1", 0), ("Mixtral", 0),
             ("NousResearch/Meta-Llama-3-8B", 0), ("Qwen1.5-MoE-A2.7B-Chat", 0),
             ("microsoft/Phi-3-mini-4k-instruct", 4 * 10**9), ("delphi-suite/stories-llama2-50k", 50 * 10**3),
             ("smallcloudai/Refact-1_6B-fim", 0), ("bigscience/bloom-7b1-petals", 0),
             ("internlm/internlm2_5-7b-chat-1m", 7 * 10**9), ("SparseLLM/relu-100B", 1340 * 10**6),
             ("mistralai/-Mistral--Nemo-Base-2407-", 0), ("Llama-3-Instruct-abliteration-LoRA-8B", -1234),
             ("HuggingFaceTB/SmolLM2-135M-Instruct", 134_515_008), ("tiny-llama", 4_218_944), ("./models", 0)]


@pytest.mark.parametrize("model_id,total", MODEL_IDS)
def test_model_id_heuristics_match_gguf_py(model_id, total):
    gguf = pytest.importorskip("gguf")
    from workbench.hf.model_card import id_to_title, model_id_components

    assert model_id_components(model_id, total) == gguf.Metadata.get_model_id_components(model_id, total)
    assert id_to_title(model_id) == gguf.Metadata.id_to_title(model_id)


def test_model_card_metadata_matches_gguf_py(tmp_path):
    """README front matter + config _name_or_path + generation config -> the same general.* as gguf-py."""
    gguf = pytest.importorskip("gguf")
    from workbench.hf.model_card import general_metadata

    d = tmp_path / "my-Model-7B-chat"
    d.mkdir()
    (d / "README.md").write_text("---\nlicense: [apache-2.0, mit]\nlanguage:\n- en\n- no\nbase_model: "
                                 "mistralai/Mistral-7B-v0.1\ndatasets:\n- https://huggingface.co/datasets/x/y\n"
                                 "tags: [chat]\npipeline_tag: text-generation\nmodel_creator: Someone\n---\nhi\n")
    (d / "config.json").write_text(json.dumps({"_name_or_path": "org/My-Model-7B-Chat-v2"}))
    (d / "generation_config.json").write_text(json.dumps({"temperature": 0.7, "top_k": 40, "top_p": 0.9}))
    shapes = {"token_embd.weight": (1000, 64), "blk.0.attn_q.weight": (64, 64)}
    ours = general_metadata(d, shapes)
    ref = gguf.Metadata.load(None, d, None, 1000 * 64 + 64 * 64)
    ref.size_label = ref.size_label or gguf.size_label(1000 * 64 + 64 * 64, 1000 * 64 + 64 * 64, 0, 0)
    writer = gguf.GGUFWriter(path=None, arch="llama")
    ref.set_gguf_meta_model(writer)
    want = [(k, v.value) for k, v in writer.kv_data[0].items() if k != "general.architecture"]
    assert [(k, v) for k, v, _ in ours] == want


def test_normalizer_flags_follow_the_chat_template(tmp_path):
    from workbench.hf.special_vocab import special_metadata

    tj = {"normalizer": {"type": "Sequence", "normalizers": [
        {"type": "BertNormalizer", "lowercase": False, "strip_accents": None}, {"type": "Lowercase"}]}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(tj))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "t"}))
    assert [(k, v) for k, v, _ in special_metadata(tmp_path, None)] == [
        ("tokenizer.chat_template", "t"), ("tokenizer.ggml.normalizer.lowercase", True)]


# ------------------------------------------------------------------ independent references in gguf-py

def test_tensor_names_match_gguf_py(toy_dir):
    gguf = pytest.importorskip("gguf")
    from workbench.hf.names import expert_gguf_name, gguf_name

    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    names = [n for m in ("tiny-llama", "tiny-mixtral") for n in open_checkpoint(toy_dir / m)
             if ".experts." not in n] + ["model.layers.1.self_attn.q_proj.bias"]
    for n in names:
        assert gguf_name(n) == tmap.get_name(n, try_suffixes=(".weight", ".bias")), n
    for w in ("w1", "w2", "w3"):
        assert expert_gguf_name(1, w) == tmap.get_name(f"layers.1.feed_forward.experts.{w}.weight",
                                                       try_suffixes=(".weight",))


def test_bf16_matches_gguf_py():
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal(1000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 1000),
                        np.array([0.0, -0.0, np.inf, -np.inf, 3.4e38, 1e-45], dtype=np.float32)]).astype(np.float32)
    want = gguf.quants.quantize(x, gguf.GGMLQuantizationType.BF16).view("<u2")
    np.testing.assert_array_equal(f32_to_bf16(x), want)


@pytest.mark.parametrize("scaling,want_keys", [
    ({"type": "linear", "factor": 2.0}, {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 2.0}),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512, "beta_fast": 32.0},
     {"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0,
      "llama.rope.scaling.original_context_length": 512, "llama.rope.scaling.yarn_beta_fast": 32.0}),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 64}, {}),
])
def test_rope_scaling(toy_dir, tmp_path, scaling, want_keys):
    d = toy_copy(toy_dir, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["rope_scaling"] = scaling
    (d / "config.json").write_text(json.dumps(cfg))
    out = convert_hf(d, tmp_path / "r.gguf", outtype="f16", progress=False)
    with read_gguf(out) as gf:
        got = {k: v for k, v in gf.metadata.items() if k.startswith("llama.rope.scaling")}
        assert got == want_keys
        keys = list(gf.metadata)  # scaling keys sit between head_count_kv and rope.freq_base
        assert all(keys.index("llama.attention.head_count_kv") < keys.index(k) < keys.index("llama.rope.freq_base")
                   for k in got)
        if scaling.get("rope_type") == "llama3":
            t = gf.tensors[0]
            assert (t.name, t.type.name, t.shape) == ("rope_freqs.weight", "F32", (8,))
            f = t.numpy()
            assert f[0] == 1.0 and f[-1] == 8.0 and np.all(np.diff(f) >= 0)
        else:
            assert "rope_freqs.weight" not in gf


def test_codellama_vocab_gets_eot(toy_dir, tmp_path):
    d = toy_copy(toy_dir, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["vocab_size"] = 32016
    (d / "config.json").write_text(json.dumps(cfg))
    arrays = {n: t.raw() for n, t in open_checkpoint(d).items()}
    for n in ("model.embed_tokens.weight", "lm_head.weight"):
        arrays[n] = np.concatenate([arrays[n], np.zeros((16, 64), np.float16)])
    write_safetensors(d / "model.safetensors", arrays)
    out = convert_hf(d, tmp_path / "c.gguf", outtype="f16", progress=False)
    with read_gguf(out) as gf:
        keys = list(gf.metadata)
        assert gf.metadata["tokenizer.ggml.eot_token_id"] == 32010 and keys[-1] == "tokenizer.ggml.eot_token_id"
        assert gf.metadata["tokenizer.ggml.tokens"][32010] == "[PAD32010]"
