"""GPTQ (AutoGPTQ v1) checkpoints without torch: bit packing checked by hand for 2/3/4/8 bits, round trips,
checkpoint write -> read, act-order g_idx, group_size -1, lossless Q4_1 conversion, every error, and a toy
GPTQ checkpoint dequantized, converted to GGUF and run."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from workbench.gguf import read_gguf
from workbench.hf.convert import convert_hf
from workbench.hf.gptq_checkpoint import (
    GPTQCheckpointError,
    GPTQConfig,
    GPTQTensor,
    default_g_idx,
    dequantized_state_dict,
    pack_cols,
    pack_rows,
    q4_1_exact_scales,
    q4_1_mismatch,
    read_gptq_checkpoint,
    to_q4_1_blocks,
    unpack_cols,
    unpack_rows,
    write_dequantized_checkpoint,
    write_gptq_checkpoint,
)
from workbench.hf.names import permute_qk
from workbench.hf.safetensors import open_checkpoint, write_safetensors
from workbench.llama import load
from workbench.quant import dequantize

# (codes of one column, the int32 words AutoGPTQ's pack loop makes of them), derived by hand:
HAND = {
    # 2 bits, 16 values per word, value j at bits 2j: 0,1,2,3 -> 0b11_10_01_00 = 0xE4 per byte
    2: ([0, 1, 2, 3] * 4, [0xE4E4E4E4]),
    # 4 bits, 8 per word, value j at bits 4j: 1..8 -> nibbles read from the top 8,7,...,1
    4: ([1, 2, 3, 4, 5, 6, 7, 8], [0x87654321]),
    # 8 bits, 4 per word, value j at bits 8j; 255 fills the top byte (the word is negative as int32)
    8: ([1, 2, 3, 255], [0xFF030201]),
    # 3 bits, 32 values in 3 words, value j at bits 3j of the 96-bit stream w0 | w1 << 32 | w2 << 64:
    #   v0 = 1        -> w0 bit 0
    #   v10 = 0b101   -> bits 30..32: w0 bits 30 (1), 31 (0), w1 bit 0 (1)   (AutoGPTQ: << 30, then >> 2 & 1)
    #   v11 = 1       -> bit 33 = w1 bit 1
    #   v21 = 0b110   -> bits 63..65: w1 bit 31 (0), w2 bits 0, 1 (1, 1)    (AutoGPTQ: << 31, then >> 1 & 3)
    #   v31 = 0b111   -> bits 93..95 = w2 bits 29..31
    # so w0 = 0x40000001, w1 = 0x00000003, w2 = 0xE0000003
    3: ([1] + [0] * 9 + [5, 1] + [0] * 9 + [6] + [0] * 9 + [7], [0x40000001, 0x00000003, 0xE0000003]),
}


def as_int32(words) -> np.ndarray:
    return np.array(words, np.uint32).view(np.int32)


@pytest.mark.parametrize("bits", sorted(HAND))
def test_hand_packed_examples(bits):
    values, words = HAND[bits]
    col = np.array(values, np.uint8)[:, None]
    assert np.array_equal(pack_rows(col, bits), as_int32(words)[:, None])          # qweight direction
    assert np.array_equal(unpack_rows(as_int32(words)[:, None], bits), col)
    assert np.array_equal(pack_cols(col.T, bits), as_int32(words)[None, :])         # qzeros direction
    assert np.array_equal(unpack_cols(as_int32(words)[None, :], bits), col.T)
    # a second column and row are packed independently of the first
    two = np.concatenate([col, col[::-1]], axis=1)
    assert np.array_equal(pack_rows(two, bits)[:, 0], as_int32(words))
    assert np.array_equal(pack_rows(two, bits)[:, 1], pack_rows(col[::-1], bits)[:, 0])


@pytest.mark.parametrize("bits,n,m", [(2, 64, 5), (3, 96, 7), (3, 32, 64), (4, 96, 3), (8, 36, 4)])
def test_pack_round_trips(bits, n, m):
    rng = np.random.default_rng(bits * 1000 + n)
    codes = rng.integers(0, 1 << bits, (n, m)).astype(np.uint8)
    packed = pack_rows(codes, bits)
    assert packed.dtype == np.int32 and packed.shape == (n * bits // 32, m)
    assert np.array_equal(unpack_rows(packed, bits), codes)
    packed_c = pack_cols(codes.T, bits)
    assert packed_c.shape == (m, n * bits // 32)
    assert np.array_equal(packed_c, packed.T)
    assert np.array_equal(unpack_cols(packed_c, bits), codes.T)
    words = rng.integers(-2**31, 2**31, packed.shape).astype(np.int32)               # every word a valid stream
    assert np.array_equal(pack_rows(unpack_rows(words, bits), bits), words)


def test_pack_rejects_bad_codes():
    with pytest.raises(GPTQCheckpointError, match="0..15"):
        pack_rows(np.full((8, 1), 16), 4)
    with pytest.raises(GPTQCheckpointError, match="multiple of 32"):
        pack_rows(np.zeros((48, 1), np.uint8), 3)
    with pytest.raises(GPTQCheckpointError, match="bits=5"):
        pack_rows(np.zeros((32, 1), np.uint8), 5)


# ---------------------------------------------------------------- GPTQTensor

def test_stored_zero_read_as_stored_plus_one():
    # 4 bits, 64 outputs: one qzeros row of 8 words. Word 0 = 0x76543210 holds stored zeros 0..7 (real 1..8);
    # the other words are -1 = 0xFFFFFFFF: stored 15, read as 16 (stored + 1, unmasked, as qlinear_cuda does)
    qzeros = np.array([[0x76543210] + [0xFFFFFFFF] * 7], np.uint32).view(np.int32)
    t = GPTQTensor(np.zeros((8, 64), np.int32), qzeros, np.ones((1, 64), np.float16), np.zeros(64, np.int32), 4, -1)
    assert np.array_equal(t.zeros()[0], np.r_[np.arange(1, 9), np.full(56, 16)])
    assert np.array_equal(t.dequantize()[:, 0], -t.zeros()[0].astype(np.float32))   # codes 0: w = -zero


def reference_dequantize(codes, scales, zeros, g_idx) -> np.ndarray:
    """w[o, i] = scale[g, o] * (q[o, i] - zero[g, o]) column by column (float64: the exact value)."""
    w = np.empty(codes.shape, np.float64)
    for i, g in enumerate(g_idx):
        w[:, i] = scales[g].astype(np.float64) * (codes[:, i].astype(np.float64) - zeros[g])
    return w


def random_tensor(rng, bits, n_out, n_in, group_size, g_idx=None, bias=False, name="t"):
    n_groups = 1 if group_size == -1 else n_in // group_size
    codes = rng.integers(0, 1 << bits, (n_out, n_in))
    zeros = rng.integers(1, 1 << bits, (n_groups, n_out))
    scales = rng.uniform(0.001, 0.05, (n_groups, n_out)).astype(np.float16)
    g_idx = default_g_idx(n_in, group_size) if g_idx is None else g_idx
    b = rng.standard_normal(n_out).astype(np.float16) if bias else None
    t = GPTQTensor.from_codes(codes, scales, zeros, g_idx, bits, group_size, b, name=name)
    return t, codes, scales, zeros


@pytest.mark.parametrize("bits,group_size", [(2, 32), (3, 32), (4, 32), (4, 128), (8, 64), (3, -1), (4, -1)])
def test_tensor_codes_zeros_dequantize(bits, group_size):
    rng = np.random.default_rng(bits + group_size)
    t, codes, scales, zeros = random_tensor(rng, bits, 64, 256, group_size)
    assert t.qweight.shape == (256 * bits // 32, 64) and t.qzeros.shape == (zeros.shape[0], 64 * bits // 32)
    assert np.array_equal(t.codes(), codes) and np.array_equal(t.zeros(), zeros)
    assert np.array_equal(unpack_cols(t.qzeros, bits), zeros - 1)                     # v1: stored = zero - 1
    w = t.dequantize()
    assert w.dtype == np.float32 and w.shape == (64, 256)
    assert np.array_equal(w, reference_dequantize(codes, scales, zeros, t.g_idx))      # exact, not close
    if group_size == -1:
        assert zeros.shape == (1, 64) and not t.g_idx.any()


def test_desc_act_g_idx_permutation():
    rng = np.random.default_rng(7)
    n_in, gs = 128, 32
    order = rng.permutation(n_in)                   # act-order: column order[k] is the k-th quantized
    g_idx = np.empty(n_in, np.int32)
    g_idx[order] = np.arange(n_in) // gs
    t, codes, scales, zeros = random_tensor(rng, 4, 32, n_in, gs, g_idx=g_idx)
    w = t.dequantize()
    assert np.array_equal(w, reference_dequantize(codes, scales, zeros, g_idx))
    assert not np.array_equal(w, reference_dequantize(codes, scales, zeros, default_g_idx(n_in, gs)))
    assert to_q4_1_blocks(t) is None and "g_idx" in q4_1_mismatch(t)


# ---------------------------------------------------------------- checkpoints

TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "vocab_size": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 256, "torch_dtype": "float16", "tie_word_embeddings": False}
LINEARS = {"self_attn.q_proj": (64, 64), "self_attn.k_proj": (32, 64), "self_attn.v_proj": (32, 64),
           "self_attn.o_proj": (64, 64), "mlp.gate_proj": (128, 64), "mlp.up_proj": (128, 64),
           "mlp.down_proj": (64, 128)}


def fake_checkpoint(rng, bits, group_size, desc_act=False):
    """GPTQTensors and float tensors of a 2-layer llama with TINY's dims."""
    linears, others = {}, {"model.embed_tokens.weight": rng.standard_normal((256, 64)).astype(np.float16),
                           "lm_head.weight": rng.standard_normal((256, 64)).astype(np.float16),
                           "model.norm.weight": np.ones(64, np.float16)}
    for layer in range(2):
        for part, (n_out, n_in) in LINEARS.items():
            p = f"model.layers.{layer}.{part}"
            g_idx = None
            if desc_act:
                g_idx = np.empty(n_in, np.int32)
                g_idx[rng.permutation(n_in)] = default_g_idx(n_in, group_size)
            linears[p], *_ = random_tensor(rng, bits, n_out, n_in, group_size, g_idx, bias=part == "self_attn.q_proj",
                                           name=p)
        for norm in ("input_layernorm", "post_attention_layernorm"):
            others[f"model.layers.{layer}.{norm}.weight"] = rng.uniform(0.5, 1.5, 64).astype(np.float16)
    return linears, others


@pytest.mark.parametrize("bits,group_size,desc_act", [(4, 32, False), (3, 32, True), (2, -1, False),
                                                      (8, 64, True)])
def test_checkpoint_round_trip(tmp_path, bits, group_size, desc_act):
    rng = np.random.default_rng(bits)
    linears, others = fake_checkpoint(rng, bits, group_size, desc_act)
    cfg = GPTQConfig(bits, group_size, desc_act, sym=False, damp_percent=0.1, extra={"true_sequential": True})
    write_gptq_checkpoint(tmp_path, cfg, linears, others, hf_config=TINY)
    assert json.loads((tmp_path / "config.json").read_text())["quantization_config"]["quant_method"] == "gptq"
    cfg2, linears2, others2 = read_gptq_checkpoint(tmp_path)
    assert (cfg2.bits, cfg2.group_size, cfg2.desc_act, cfg2.sym, cfg2.damp_percent) == \
        (bits, group_size, desc_act, False, 0.1)
    assert cfg2.extra["true_sequential"] is True
    assert sorted(linears2) == sorted(linears) and sorted(others2) == sorted(others)
    for p, t in linears.items():
        u = linears2[p]
        for part in ("qweight", "qzeros", "scales", "g_idx"):
            assert np.array_equal(getattr(u, part), getattr(t, part)), (p, part)
        assert (u.bias is None) == (t.bias is None)
        assert np.array_equal(u.dequantize(), t.dequantize())
    for n, a in others.items():
        assert np.array_equal(others2[n], a) and others2[n].dtype == a.dtype
    sd = dequantized_state_dict(tmp_path)
    down = linears["model.layers.1.mlp.down_proj"]
    assert np.array_equal(sd["model.layers.1.mlp.down_proj.weight"], down.dequantize())
    assert sd["model.layers.0.self_attn.q_proj.bias"].dtype == np.float32
    assert not any(n.endswith(("qweight", "qzeros", "scales", "g_idx")) for n in sd)
    # the settings may also come only from config.json (GPTQModel, transformers)
    (tmp_path / "quantize_config.json").unlink()
    assert GPTQConfig.from_dir(tmp_path).bits == bits


def test_dequantized_checkpoint_is_fp16_of_exact(tmp_path):
    rng = np.random.default_rng(11)
    linears, others = fake_checkpoint(rng, 4, 32)
    write_gptq_checkpoint(tmp_path / "gptq", GPTQConfig(4, 32, sym=False), linears, others, hf_config=TINY)
    (tmp_path / "gptq" / "tokenizer_config.json").write_text("{}")
    write_dequantized_checkpoint(tmp_path / "gptq", tmp_path / "f16")
    cfg = json.loads((tmp_path / "f16" / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["torch_dtype"] == "float16"
    assert (tmp_path / "f16" / "tokenizer_config.json").is_file()
    assert not (tmp_path / "f16" / "quantize_config.json").exists()
    st = open_checkpoint(tmp_path / "f16")
    w = st["model.layers.0.mlp.gate_proj.weight"]
    assert w.dtype == "F16"
    assert np.array_equal(w.numpy(), linears["model.layers.0.mlp.gate_proj"].dequantize().astype(np.float16))
    with pytest.raises(GPTQCheckpointError, match="not a GPTQ checkpoint"):
        GPTQConfig.from_dir(tmp_path / "f16")                     # no longer a GPTQ folder


# ---------------------------------------------------------------- Q4_1

def test_q4_1_lossless(tmp_path):
    rng = np.random.default_rng(3)
    n_out, n_in = 48, 96
    zeros = rng.integers(1, 16, (n_in // 32, n_out))
    scales = q4_1_exact_scales(rng.uniform(1e-3, 0.05, zeros.shape).astype(np.float16), zeros)
    codes = rng.integers(0, 16, (n_out, n_in))
    t = GPTQTensor.from_codes(codes, scales, zeros, default_g_idx(n_in, 32), 4, 32)
    blocks = to_q4_1_blocks(t)
    assert blocks is not None and blocks.shape == (n_out, n_in // 32 * 20) and q4_1_mismatch(t) is None
    got = dequantize(blocks, "Q4_1", n_in)
    assert np.array_equal(got.view(np.uint32), t.dequantize().view(np.uint32))
    # byte layout: block 0 of row 0 starts with d = scale (fp16), m = -scale*zero, then nibbles j | j+16
    b = blocks[0, :20]
    assert b[:2].view(np.float16)[0] == scales[0, 0]
    assert b[2:4].view(np.float16)[0] == -np.float32(scales[0, 0]) * zeros[0, 0]
    assert b[4] == codes[0, 0] | (codes[0, 16] << 4) and b[19] == codes[0, 15] | (codes[0, 31] << 4)


def test_q4_1_inexact_is_none():
    # 0.01234 rounds to fp16 0x1a51 = 1.1001010001b * 2^-7 (11 significant bits); times 15 = 1111b the
    # product needs 14 bits, more than fp16's 11: m = -scale*zero is not an fp16 value.
    scales = np.full((1, 8), 0.01234, np.float16)
    zeros = np.full((1, 8), 15)
    t = GPTQTensor.from_codes(np.zeros((8, 32), np.uint8), scales, zeros, default_g_idx(32, 32), 4, 32)
    assert to_q4_1_blocks(t) is None and "not an fp16 value" in q4_1_mismatch(t)
    fixed = q4_1_exact_scales(scales, zeros)
    t2 = GPTQTensor.from_codes(np.zeros((8, 32), np.uint8), fixed, zeros, default_g_idx(32, 32), 4, 32)
    assert to_q4_1_blocks(t2) is not None
    t8, *_ = random_tensor(np.random.default_rng(0), 8, 8, 32, 32)
    assert to_q4_1_blocks(t8) is None and "4 bits" in q4_1_mismatch(t8)


def test_q4_1_exact_scales_is_nearest():
    rng = np.random.default_rng(5)
    s = rng.uniform(1e-4, 2.0, 200).astype(np.float16)
    z = rng.integers(0, 17, 200)
    got = q4_1_exact_scales(s, z)
    every = np.arange(0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)   # all finite fp16 >= 0
    for si, zi, gi in zip(s.astype(np.float64), z, got.astype(np.float64)):
        m = every * zi
        with np.errstate(over="ignore"):
            ok = m.astype(np.float16).astype(np.float64) == m
        best = np.abs(every[ok] - si).min()
        assert abs(gi - si) == best and gi * zi == np.float16(gi * zi)
    assert np.array_equal(q4_1_exact_scales(s, 1), s)                                # zero 1: every scale


# ---------------------------------------------------------------- errors

def write_json(path, obj):
    path.write_text(json.dumps(obj))


def small_checkpoint(tmp_path, bits=4, group_size=32):
    t, *_ = random_tensor(np.random.default_rng(0), bits, 32, 64, group_size, name="model.layers.0.mlp.up_proj")
    write_gptq_checkpoint(tmp_path, GPTQConfig(bits, group_size), {"model.layers.0.mlp.up_proj": t},
                          {"model.norm.weight": np.ones(32, np.float16)}, hf_config=TINY)
    return t


def test_missing_quantize_config(tmp_path):
    write_json(tmp_path / "config.json", TINY)
    with pytest.raises(GPTQCheckpointError, match="quantize_config.json.*quantization_config.*found neither"):
        read_gptq_checkpoint(tmp_path)


@pytest.mark.parametrize("patch,message", [
    ({"bits": 5}, "bits=5 is not supported"),
    ({"group_size": 0}, "group_size=0"),
    ({"quant_method": "awq"}, "quant_method is 'awq'"),
    ({"checkpoint_format": "gptq_v2"}, "checkpoint_format 'gptq_v2'"),
])
def test_bad_quantize_config(tmp_path, patch, message):
    small_checkpoint(tmp_path)
    qc = json.loads((tmp_path / "quantize_config.json").read_text())
    write_json(tmp_path / "quantize_config.json", {**qc, **patch})
    with pytest.raises(GPTQCheckpointError, match=message):
        read_gptq_checkpoint(tmp_path)


def test_config_json_other_method(tmp_path):
    small_checkpoint(tmp_path)
    write_json(tmp_path / "config.json", {**TINY, "quantization_config": {"quant_method": "awq", "bits": 4}})
    with pytest.raises(GPTQCheckpointError, match="config.json: quantization_config has quant_method 'awq'"):
        read_gptq_checkpoint(tmp_path)


def test_group_size_not_dividing(tmp_path):
    small_checkpoint(tmp_path)
    qc = json.loads((tmp_path / "quantize_config.json").read_text())
    write_json(tmp_path / "quantize_config.json", {**qc, "group_size": 48})
    with pytest.raises(GPTQCheckpointError, match="up_proj: group_size 48 does not divide in_features 64"):
        read_gptq_checkpoint(tmp_path)


@pytest.mark.parametrize("part,shape,message", [
    ("qweight", (7, 32), r"up_proj.qweight: shape \[7, 32\]"),
    ("qzeros", (2, 3), r"up_proj.qzeros: shape \[2, 3\]"),
    ("scales", (3, 32), r"up_proj.scales: 3 groups, expected 2"),
    ("g_idx", (64,), r"up_proj.g_idx: column 0 is in group 2, outside 0..1"),
])
def test_inconsistent_tensors(tmp_path, part, shape, message):
    small_checkpoint(tmp_path)
    st = {n: s.numpy() for n, s in open_checkpoint(tmp_path).items()}
    name = f"model.layers.0.mlp.up_proj.{part}"
    st[name] = np.full(shape, 2, st[name].dtype)
    write_safetensors(tmp_path / "model.safetensors", st)
    with pytest.raises(GPTQCheckpointError, match=message):
        read_gptq_checkpoint(tmp_path)


def test_missing_part_and_bad_zero(tmp_path):
    small_checkpoint(tmp_path)
    st = {n: s.numpy() for n, s in open_checkpoint(tmp_path).items() if not n.endswith(".scales")}
    write_safetensors(tmp_path / "model.safetensors", st)
    with pytest.raises(GPTQCheckpointError, match="up_proj.qweight has no scales"):
        read_gptq_checkpoint(tmp_path)
    for bad in (0, 16):                           # stored -1 (wrapped) / 15: AutoGPTQ's kernels disagree
        with pytest.raises(GPTQCheckpointError, match="real zeros must be in 1..15"):
            GPTQTensor.from_codes(np.zeros((8, 32), np.uint8), np.ones((1, 8), np.float16), np.full((1, 8), bad),
                                  default_g_idx(32, 32), 4, 32)


# ---------------------------------------------------------------- GPTQ -> float HF -> GGUF -> run

def rtn_quantize(w: np.ndarray, bits: int, gs: int):
    """Round-to-nearest asymmetric quantization per group of `gs` input columns (real zeros 1..2**bits-1)."""
    maxq = (1 << bits) - 1
    g = w.astype(np.float32).reshape(w.shape[0], -1, gs)
    lo, hi = np.minimum(g.min(-1), 0), np.maximum(g.max(-1), 0)
    scale = ((hi - lo) / maxq).astype(np.float16)
    zero = np.clip(np.round(-lo / scale.astype(np.float32)), 1, maxq).astype(np.int64)
    scale = q4_1_exact_scales(scale, zero)
    codes = np.clip(np.round(g / scale[..., None].astype(np.float32)) + zero[..., None], 0, maxq)
    return codes.reshape(w.shape).astype(np.uint8), scale.T, zero.T


def toy_gptq_folder(toy_dir, folder, bits: int = 4, group_size: int = 32, model: str = "tiny-llama"):
    """A toy model as a GPTQ folder: the linears of its blocks (experts too, not the router) rounded to `bits`
    per group of `group_size` (-1: one group), scales that convert to Q4_1 exactly; tokenizer files and config
    copied. Returns the linears."""
    src = toy_dir / model
    folder.mkdir()
    for f in ("tokenizer.model", "tokenizer_config.json", "generation_config.json"):
        shutil.copyfile(src / f, folder / f)
    float_sd = {n: t.numpy() for n, t in open_checkpoint(src).items()}
    linears, others = {}, {}
    for n, w in float_sd.items():
        p = n[:-len(".weight")]
        if n.startswith("model.layers.") and w.ndim == 2 and "norm" not in n and not p.endswith("moe.gate"):
            gs = w.shape[1] if group_size == -1 else group_size
            codes, scales, zeros = rtn_quantize(w, bits, gs)
            linears[p] = GPTQTensor.from_codes(codes, scales, zeros, default_g_idx(w.shape[1], group_size), bits,
                                               group_size, name=p)
        else:
            others[n] = w
    hf_config = json.loads((src / "config.json").read_text())
    write_gptq_checkpoint(folder, GPTQConfig(bits, group_size, sym=False), linears, others, hf_config=hf_config)
    return linears


def test_toy_gptq_converts_and_runs(toy_dir, tmp_path):
    gptq = tmp_path / "tiny-llama-gptq"
    linears = toy_gptq_folder(toy_dir, gptq)
    assert len(linears) == 14
    assert all(to_q4_1_blocks(t) is not None for t in linears.values())     # our scales convert exactly
    out = tmp_path / "tiny-llama"
    write_dequantized_checkpoint(gptq, out)
    gguf = convert_hf(out, tmp_path / "tiny-gptq-{ftype}.gguf", outtype="f16", progress=False)
    with read_gguf(gguf) as gf:
        down = gf.tensor("blk.1.ffn_down.weight").numpy()
        q = gf.tensor("blk.0.attn_q.weight").numpy()
        assert np.array_equal(down, linears["model.layers.1.mlp.down_proj"].dequantize().astype(np.float16))
        assert np.array_equal(q, permute_qk(linears["model.layers.0.self_attn.q_proj"].dequantize(), 4, 4)
                              .astype(np.float16))
        del down, q
    golden = np.load(toy_dir / "golden_tiny-llama_f32.npz")
    tokens = golden["prompt_0_tokens"]
    logits = load(gguf, n_ctx=64).eval(tokens, all_logits=True)
    want = golden["prompt_0_logits"]
    assert logits.shape == want.shape and np.isfinite(logits).all()
    corr = np.corrcoef(logits.ravel(), want.ravel())[0, 1]
    assert 0.9 < corr < 1.0, corr                # 4-bit weights: close to, not equal to, the float model


def test_older_autogptq_file_name(tmp_path):
    # older AutoGPTQ saves <model_file_base_name>.safetensors, e.g. gptq_model-4bit-32g.safetensors
    t = small_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "gptq_model-4bit-32g.safetensors")
    qc = json.loads((tmp_path / "quantize_config.json").read_text())
    write_json(tmp_path / "quantize_config.json", {**qc, "model_file_base_name": "gptq_model-4bit-32g"})
    _, linears, others = read_gptq_checkpoint(tmp_path)
    assert np.array_equal(linears["model.layers.0.mlp.up_proj"].qweight, t.qweight) and list(others) == [
        "model.norm.weight"]
