"""The llama / Mixtral forward pass against llama.cpp's logits (goldens), routing against transformers,
the incremental KV-cache API, and clear errors for bad files and too-long prompts."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from workbench.cpu.features import hardware_fma
from workbench.gguf import read_gguf, write_gguf
from workbench.llama.config import ConfigError
from workbench.llama.forward import RopeTables
from workbench.llama.kv_cache import ContextError
from workbench.llama.model import load
from workbench.llama.weights import WeightError

PROMPTS = [0, 1, 2]


def log_softmax(a):
    a = a.astype(np.float64)
    a = a - a.max(axis=-1, keepdims=True)
    return a - np.log(np.exp(a).sum(axis=-1, keepdims=True))


def kl_div(ref, ours):
    """KL(ref || ours) per position, natural log."""
    lp, lq = log_softmax(ref), log_softmax(ours)
    return (np.exp(lp) * (lp - lq)).sum(axis=-1)


def first_bad(diff, tol):
    """'position i: |dlogit| x' for the first position over tol (for assertion messages)."""
    per_pos = diff.max(axis=1)
    i = int(np.argmax(per_pos > tol))
    return f"first bad position {i}: max |dlogit| {per_pos[i]:.3g} (tolerance {tol})"


# --- toy models: llama.cpp's logits to within F16 rounding, expert choice as transformers --------------

@pytest.fixture(scope="module")
def converted(toy_dir, tmp_path_factory):
    """f32 GGUFs of the HF toy folders, made by our converter (skip when it does not exist yet)."""
    convert = pytest.importorskip("workbench.hf.convert")
    if not hasattr(convert, "convert_hf"):
        pytest.skip("workbench.hf.convert.convert_hf not available")
    out = tmp_path_factory.mktemp("toy_f32")
    return lambda name: convert.convert_hf(toy_dir / name, out / f"{name}-f32.gguf", "f32", progress=False)


# (gguf, golden, cache type, tolerance on max |dlogit|). Measured: 0 (bit-exact) for tiny-mixtral and
# tiny-mixtral8 f16 and tiny-llama, ~3e-6 for tiny-mixtral f32 + F32 KV.
TOY_CASES = [
    ("tiny-mixtral-f16.gguf", "golden_tiny-mixtral_f16.npz", "f16", 1e-3),
    ("tiny-mixtral8-f16.gguf", "golden_tiny-mixtral8_f16.npz", "f16", 1e-3),
    ("tiny-llama", "golden_tiny-llama_f32.npz", "f16", 1e-4),
    ("tiny-mixtral", "golden_tiny-mixtral_f32_kvf32.npz", "f32", 2e-5),   # README: F32 all the way ~1e-5
]


@pytest.mark.parametrize("gguf_name,golden,cache_type,tol", TOY_CASES, ids=[c[1][7:-4] for c in TOY_CASES])
def test_toy_logits_and_routing(toy_dir, converted, gguf_name, golden, cache_type, tol):
    path = toy_dir / gguf_name if gguf_name.endswith(".gguf") else converted(gguf_name)
    model = load(path, n_ctx=256, cache_type=cache_type)
    z = np.load(toy_dir / golden)
    for i in PROMPTS:
        tokens, ref = z[f"prompt_{i}_tokens"], z[f"prompt_{i}_logits"]
        logits, routing = model.logits(tokens, capture_routing=True)
        assert logits.shape == ref.shape and logits.dtype == np.float32
        diff = np.abs(logits - ref)
        assert diff.max() <= tol, f"prompt {i}: {first_bad(diff, tol)}"
        if f"prompt_{i}_experts" in z:
            want = np.sort(z[f"prompt_{i}_experts"], axis=2)          # (layers, n, 2) from transformers
            got = np.sort(routing.experts, axis=2)
            same = (want == got).all(axis=2)
            assert same.all(), f"prompt {i}: routing differs at (layer, position) {np.argwhere(~same)[0]}"
            order = np.argsort(routing.experts, axis=2)
            w = np.take_along_axis(routing.weights, order, axis=2)
            w_ref = np.take_along_axis(z[f"prompt_{i}_expert_weights"], np.argsort(z[f"prompt_{i}_experts"], axis=2), axis=2)
            assert np.abs(w - w_ref).max() < 5e-3
            np.testing.assert_allclose(routing.weights.sum(axis=2), 1.0, rtol=1e-5)


def test_expert_used_override(toy_dir):
    path = toy_dir / "tiny-mixtral-f16.gguf"
    tokens = np.load(toy_dir / "golden_tiny-mixtral_f16.npz")["prompt_0_tokens"]
    one = load(path, n_ctx=64, n_expert_used=1)
    assert one.config.n_expert_used == 1
    logits1, routing = one.logits(tokens, capture_routing=True)
    assert routing.experts.shape == (one.config.n_layer, len(tokens), 1)
    np.testing.assert_array_equal(routing.weights, 1.0)
    logits2 = load(path, n_ctx=64).logits(tokens)
    assert np.abs(logits1 - logits2).max() > 1e-2         # fewer experts: a different model
    with pytest.raises(ConfigError, match="n_expert_used"):
        load(path, n_expert_used=5)


def test_rope_freq_scale_override(toy_dir):
    """load(..., rope_freq_scale=s) as llama.cpp's --rope-freq-scale: the same logits as patching the loaded
    config and rebuilding the RoPE tables (what the notebooks did before), and bad values refused."""
    path = toy_dir / "tiny-mixtral-f16.gguf"
    tokens = np.load(toy_dir / "golden_tiny-mixtral_f16.npz")["prompt_0_tokens"]
    scaled = load(path, n_ctx=64, rope_freq_scale=0.5)
    assert scaled.config.rope_freq_scale == 0.5
    patched = load(path, n_ctx=64)
    patched.config = dataclasses.replace(patched.config, rope_freq_scale=0.5)
    patched.rope = RopeTables(patched.config, patched.weights.rope_freqs)
    logits = scaled.logits(tokens)
    np.testing.assert_array_equal(logits, patched.logits(tokens))
    assert np.abs(logits - load(path, n_ctx=64).logits(tokens)).max() > 1e-3   # scaling changes the model
    for bad in (0, -0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="rope_freq_scale"):
            load(path, rope_freq_scale=bad)


# --- incremental API -------------------------------------------------------------------------------

def test_incremental_matches_batch(toy_dir):
    z = np.load(toy_dir / "golden_tiny-mixtral_f16.npz")
    tokens = z["prompt_0_tokens"]
    model = load(toy_dir / "tiny-mixtral-f16.gguf", n_ctx=32)
    full = model.logits(tokens)
    assert model.n_past == 0                                   # logits() leaves the cache alone
    first = model.eval(tokens[:5], all_logits=True)
    steps = [model.eval(tokens[i:i + 1]) for i in range(5, len(tokens))]
    assert model.n_past == len(tokens)
    np.testing.assert_allclose(first, full[:5], atol=1e-4)
    np.testing.assert_allclose(np.stack(steps), full[5:], atol=1e-3)
    # rollback: drop the last 3 tokens and feed them again the same way: the same logits
    model.truncate(len(tokens) - 3)
    again = [model.eval(tokens[i:i + 1]) for i in range(len(tokens) - 3, len(tokens))]
    np.testing.assert_array_equal(np.stack(again), np.stack(steps[-3:]))
    model.truncate(len(tokens) - 3)                            # as one batch: other kernels, same values
    np.testing.assert_allclose(model.eval(tokens[-3:], all_logits=True), full[-3:], atol=1e-3)
    model.reset()
    assert model.n_past == 0
    np.testing.assert_array_equal(model.eval(tokens[:5], all_logits=True), first)


def test_context_overflow(toy_dir):
    model = load(toy_dir / "tiny-mixtral-f16.gguf", n_ctx=8)
    with pytest.raises(ContextError, match="n_ctx"):
        model.logits(np.ones(9, np.int64))
    model.eval(np.ones(6, np.int64))
    with pytest.raises(ContextError, match="8"):
        model.eval(np.ones(3, np.int64))
    assert model.n_past == 6                                    # a refused eval changes nothing
    with pytest.raises(ValueError, match="vocabulary"):
        model.eval([32000])


# --- bad files -------------------------------------------------------------------------------------

def _rewrite(src, dst, drop=None, arch=None):
    gf = read_gguf(src)
    md = gf.metadata.copy()
    if arch:
        md.set("general.architecture", arch)
    write_gguf(dst, md, [t for t in gf.tensors if t.name != drop])


def test_bad_files(toy_dir, tmp_path):
    src = toy_dir / "tiny-mixtral-f16.gguf"
    _rewrite(src, tmp_path / "missing.gguf", drop="blk.1.ffn_up_exps.weight")
    with pytest.raises(WeightError, match="blk.1.ffn_up_exps.weight"):
        load(tmp_path / "missing.gguf")
    _rewrite(src, tmp_path / "arch.gguf", arch="gpt2")
    with pytest.raises(ConfigError, match="gpt2"):
        load(tmp_path / "arch.gguf")


# --- the real model: SmolLM2-135M Q4_1 -------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return load(smollm2_path, n_ctx=1024)


@pytest.fixture(scope="module")
def smollm2_golden(golden_dir):
    return np.load(golden_dir / "logits_smollm2_q4_1.npz")


# Measured: bit-equal to llama.cpp (argmax 108/108, max |dlogit| 0) wherever numba emits hardware fma.
# This needs llama.cpp's float sums bit for bit (workbench/cpu/simd.py): with float sums in any other order,
# Q8 activation roundings flip and the flips spread through the 30 layers (mean KL ~6e-3, argmax ~97%).
SMOL_MIN_ARGMAX = 0.99
SMOL_MAX_MEAN_KL = 1e-3
SMOL_MAX_DLOGIT = 1e-3


def test_smollm2_logits(smollm2, smollm2_golden):
    argmax, kls, maxdiff = [], [], 0.0
    for i in PROMPTS:
        tokens, ref = smollm2_golden[f"prompt_{i}_tokens"], smollm2_golden[f"prompt_{i}_logits"]
        logits = smollm2.logits(tokens)
        argmax.append(logits.argmax(axis=1) == ref.argmax(axis=1))
        kls.append(kl_div(ref, logits))
        maxdiff = max(maxdiff, float(np.abs(logits - ref).max()))
    argmax, kls = np.concatenate(argmax), np.concatenate(kls)
    print(f"SmolLM2 Q4_1: argmax agreement {argmax.mean():.4f} over {argmax.size} positions, "
          f"mean KL {kls.mean():.2e}, max KL {kls.max():.2e}, max |dlogit| {maxdiff:.3f}")
    assert argmax.mean() >= SMOL_MIN_ARGMAX, f"argmax agreement {argmax.mean():.3f}; first miss at {np.argmin(argmax)}"
    assert kls.mean() <= SMOL_MAX_MEAN_KL, f"mean KL {kls.mean():.2e}; worst position {np.argmax(kls)}"
    assert maxdiff <= SMOL_MAX_DLOGIT, f"max |dlogit| {maxdiff:.3g}"
    if hardware_fma():  # Q4_1 and Q8_0 dots, attention and norms all follow ggml's float order
        assert maxdiff == 0.0, f"max |dlogit| {maxdiff:.3g}: no longer bit-equal to llama.cpp"


def test_smollm2_greedy(smollm2, golden_dir):
    """Prompt + llama.cpp's greedy continuation in one batch: our argmax predicts its next token."""
    cases = json.loads((golden_dir / "greedy_smollm2_q4_1.json").read_text())
    hits = []
    for case in cases:
        prompt, greedy = case["prompt_tokens"], case["greedy_tokens"]
        logits = smollm2.logits(prompt + greedy[:-1])
        pred = logits[len(prompt) - 1:].argmax(axis=1)
        hits.append(pred == np.asarray(greedy))
    hits = np.concatenate(hits)
    print(f"SmolLM2 greedy: {hits.mean():.4f} of {hits.size} steps")
    # not bit-equal by construction: llama.cpp generated these one token at a time, here they are one batch (other
    # kernels, other roundings), so a near tie may flip; test_smollm2_greedy_incremental repeats its calls exactly
    assert hits.mean() >= 0.9, f"greedy agreement {hits.mean():.3f}, first miss at step {np.argmin(hits)}"


def test_smollm2_greedy_incremental(smollm2, golden_dir):
    """As llama.cpp generated them: the prompt in one batch, then one token per eval through the KV cache."""
    cases = json.loads((golden_dir / "greedy_smollm2_q4_1.json").read_text())
    hits = []
    for case in cases[:2]:
        smollm2.reset()
        logits = smollm2.eval(case["prompt_tokens"])
        for tok in case["greedy_tokens"]:
            hits.append(int(logits.argmax()) == tok)
            logits = smollm2.eval([tok])          # feed llama.cpp's token even after a miss
    hits = np.array(hits)
    print(f"SmolLM2 incremental greedy: {hits.mean():.4f} of {hits.size} steps")
    need = 1.0 if hardware_fma() else 0.9       # llama.cpp's calls repeated, logits bit-equal: every step agrees
    assert hits.mean() >= need, f"incremental greedy agreement {hits.mean():.3f}, first miss at step {np.argmin(hits)}"
