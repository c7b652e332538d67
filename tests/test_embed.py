"""Embeddings (workbench.llama.embed) against llama.cpp: pooling sums in ggml_vec_dot_f32's order,
common_embd_normalize, the model's default pooling, a fresh context that leaves the chat cache alone, clear
errors; and, where llama-cpp-python is installed, bit-equal vectors from llama.cpp itself."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from workbench.gguf import GGUFValueType, read_gguf, write_gguf
from workbench.llama.embed import (POOLING_TYPE_KEY, EmbeddingError, default_pooling, embed, mean_rows,
                                   normalize_embedding, pool)
from workbench.llama.model import N_UBATCH, load

f32 = np.float32


# --- independent references, in Python scalars -------------------------------------------------------

def round_f32(x: Fraction) -> np.float32:
    """x rounded once to the nearest float32 (ties to even)."""
    f = f32(float(x))                       # within one float32 step of the answer
    cands = [np.nextafter(f, f32(-np.inf)), f, np.nextafter(f, f32(np.inf))]
    best = min(cands, key=lambda c: (abs(Fraction(float(c)) - x), int(np.array(c).view(np.int32)) & 1))
    return f32(best)


def fma_ref(a, b, c) -> np.float32:
    return round_f32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))


def vec_dot_f32_ref(x, y) -> np.float32:
    """ggml_vec_dot_f32 on AVX2 as compiled by GCC: sum[4] x 8 fma lanes over whole chunks of 32, reduce, then
    the tail in a float: groups of 4 products rounded and added in order, the last n % 4 as fmas."""
    n = len(x)
    n32 = n - n % 32
    lanes = [f32(0)] * 32
    for i in range(n32):
        lanes[i % 32] = fma_ref(x[i], y[i], lanes[i % 32])
    s = [[lanes[8 * j + k] for k in range(8)] for j in range(4)]
    s0 = [(s[0][k] + s[2][k]) + (s[1][k] + s[3][k]) for k in range(8)]
    acc = ((s0[0] + s0[4]) + (s0[1] + s0[5])) + ((s0[2] + s0[6]) + (s0[3] + s0[7]))
    n4 = n32 + (n - n32) // 4 * 4
    for i in range(n32, n4):
        acc = f32(acc + f32(x[i] * y[i]))
    for i in range(n4, n):
        acc = fma_ref(x[i], y[i], acc)
    return f32(acc)


def normalize_ref(v, p: int) -> np.ndarray:
    """common_embd_normalize written as its C loops, in Python doubles."""
    v = [f32(x) for x in v]
    if p == -1:
        total = 1.0
    elif p == 0:
        total = max([abs(float(x)) for x in v] + [0.0]) / 32760.0
    elif p == 2:
        total = 0.0
        for x in v:
            total += float(f32(x * x))
        total = math.sqrt(total)
    else:
        total = 0.0
        for x in v:
            total += math.pow(abs(float(x)), p)
        total = math.pow(total, 1.0 / p)
    scale = f32(1.0 / total) if total > 0.0 else f32(0.0)
    return np.array([f32(x * scale) for x in v], np.float32)


# --- pooling and normalization math --------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3, 5, 9, 31, 32, 33, 38, 64, 67, 100])
def test_mean_pooling_sums_like_vec_dot_f32(n):
    rng = np.random.default_rng(n)
    h = (rng.standard_normal((n, 6)) * rng.choice([0.1, 3.0, 40.0], (n, 6))).astype(np.float32)
    inv = f32(1) / f32(n)
    ours = mean_rows(h, inv)
    ref = np.array([vec_dot_f32_ref(h[:, e], [inv] * n) for e in range(h.shape[1])], np.float32)
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_allclose(ours, h.astype(np.float64).mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(pool(h, "mean"), ours)


def test_mean_pooling_order_is_not_a_plain_sum():
    """The emulation is not a disguised np.mean: over many random cases the summation order shows."""
    rng = np.random.default_rng(0)
    h = (rng.standard_normal((45, 256)) * 20).astype(np.float32)
    ours = mean_rows(h, f32(1) / f32(45))
    assert (ours != h.astype(np.float64).mean(axis=0).astype(np.float32)).any()


def test_cls_and_last_pick_rows():
    h = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(pool(h, "cls"), h[0])
    np.testing.assert_array_equal(pool(h, "last"), h[-1])
    with pytest.raises(EmbeddingError, match="max"):
        pool(h, "max")


@pytest.mark.parametrize("p", [-1, 0, 1, 2, 3, 5])
def test_normalize_matches_common_embd_normalize(p):
    rng = np.random.default_rng(p + 10)
    v = (rng.standard_normal(97) * 3).astype(np.float32)
    out = normalize_embedding(v, p)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, normalize_ref(v, p))
    norm = {-1: None, 0: np.abs(out).max() / 32760.0, 1: np.abs(out).sum(), 2: np.sqrt((out.astype(np.float64) ** 2).sum()),
            3: (np.abs(out.astype(np.float64)) ** 3).sum() ** (1 / 3), 5: (np.abs(out.astype(np.float64)) ** 5).sum() ** 0.2}[p]
    if norm is None:
        np.testing.assert_array_equal(out, v)
    else:
        assert abs(norm - 1.0) < 1e-5


def test_normalize_zero_vector_overflow_and_bad_values():
    for p in (-1, 0, 1, 2, 4):
        np.testing.assert_array_equal(normalize_embedding(np.zeros(5, np.float32), p), 0.0)
    # a p-norm that overflows a double: llama.cpp's 1.0 / inf gives a zero vector, not an error
    np.testing.assert_array_equal(normalize_embedding(np.full(4, 10.0, np.float32), 400), 0.0)
    for bad in (-2, True, 1.5, "2", None):
        with pytest.raises(EmbeddingError, match="normalize"):
            normalize_embedding(np.ones(3, np.float32), bad)


# --- a toy model: fresh context, default pooling, errors ----------------------------------------------

@pytest.fixture(scope="module")
def toy(toy_dir):
    return load(toy_dir / "tiny-mixtral-f16.gguf", n_ctx=64)


@pytest.fixture(scope="module")
def toy_tokens(toy_dir):
    return np.load(toy_dir / "golden_tiny-mixtral_f16.npz")["prompt_0_tokens"]


def test_hidden_states_are_what_the_logits_project(toy, toy_tokens):
    """Model.hidden_states is the tensor the output matmul reads (result_norm), from a fresh context."""
    h = toy.hidden_states(toy_tokens)
    assert h.shape == (len(toy_tokens), toy.config.n_embd) and h.dtype == np.float32
    np.testing.assert_array_equal(toy.weights.output.mul(h), toy.logits(toy_tokens))
    assert toy.n_past == 0


def test_embed_pools_the_hidden_states(toy, toy_tokens):
    h = toy.hidden_states(toy_tokens)
    np.testing.assert_array_equal(embed(toy, toy_tokens, "none"), h)
    np.testing.assert_array_equal(embed(toy, toy_tokens, "none", normalize=0), h)   # raw, as llama-server
    inv = f32(1) / f32(len(toy_tokens))
    np.testing.assert_array_equal(embed(toy, toy_tokens, "mean", -1), mean_rows(h, inv))
    np.testing.assert_array_equal(embed(toy, toy_tokens, "MEAN"), normalize_embedding(mean_rows(h, inv), 2))
    np.testing.assert_array_equal(embed(toy, toy_tokens, "cls", 1), normalize_ref(h[0], 1))
    last = embed(toy, list(toy_tokens), "last")
    np.testing.assert_array_equal(last, normalize_ref(h[-1], 2))
    assert last.shape == (toy.config.n_embd,)
    np.testing.assert_array_equal(embed(toy, toy_tokens), h)          # no pooling_type key: none


def test_embed_does_not_disturb_the_chat_context(toy, toy_tokens):
    toy.reset()
    toy.eval(toy_tokens[:6])
    before = toy.n_past
    embed(toy, toy_tokens[3:], "mean")
    assert toy.n_past == before
    with_embed = toy.eval(toy_tokens[6:9], all_logits=True)
    toy.reset()
    toy.eval(toy_tokens[:6])
    without = toy.eval(toy_tokens[6:9], all_logits=True)
    toy.reset()
    np.testing.assert_array_equal(with_embed, without)


@pytest.mark.parametrize("value, expected", [(0, "none"), (1, "mean"), (2, "cls"), (3, "last"), (-1, "none"),
                                             (4, "rank")])
def test_default_pooling_from_the_gguf(toy_dir, tmp_path, value, expected):
    path = with_pooling(toy_dir / "tiny-mixtral-f16.gguf", tmp_path / "pooled.gguf", value)
    model = load(path, n_ctx=32)
    assert default_pooling(model) == expected
    if expected == "rank":
        with pytest.raises(EmbeddingError, match="rank"):
            embed(model, [1, 2, 3])
    else:
        out = embed(model, [1, 2, 3])
        assert out.shape == ((3, model.config.n_embd) if expected == "none" else (model.config.n_embd,))


def test_unknown_default_pooling(toy_dir, tmp_path):
    model = load(with_pooling(toy_dir / "tiny-mixtral-f16.gguf", tmp_path / "bad.gguf", 9), n_ctx=32)
    with pytest.raises(EmbeddingError, match="pooling_type"):
        default_pooling(model)


def test_bad_inputs(toy_dir, toy, toy_tokens):
    with pytest.raises(EmbeddingError, match="no tokens"):
        embed(toy, [], "mean")
    with pytest.raises(EmbeddingError, match="n_ctx=64"):
        embed(toy, [1] * 65, "last")
    with pytest.raises(EmbeddingError, match="vocabulary"):
        embed(toy, [1, toy.n_vocab], "mean")
    for bad in ("max", "rank", 1, ""):
        with pytest.raises(EmbeddingError, match="pooling"):
            embed(toy, toy_tokens, bad)
    for bad in (-3, False, 2.0):
        with pytest.raises(EmbeddingError, match="normalize"):
            embed(toy, toy_tokens, "mean", bad)
    big = load(toy_dir / "tiny-mixtral-f16.gguf", n_ctx=N_UBATCH + 8)
    for pooling in ("none", "mean", "cls"):              # one physical batch, as llama-server (only 'last' splits)
        with pytest.raises(EmbeddingError, match="physical batch"):
            embed(big, [1] * (N_UBATCH + 1), pooling)
    assert toy.n_past == 0


def with_pooling(src, dst, value):
    """A copy of the GGUF `src` with `{arch}.pooling_type` set to `value` (uint32 as llama.cpp's converter,
    int32 for the negative UNSPECIFIED)."""
    gf = read_gguf(src)
    md = gf.metadata.copy()
    md.set(POOLING_TYPE_KEY.format(arch=md["general.architecture"]), value,
           GGUFValueType.INT32 if value < 0 else GGUFValueType.UINT32)
    write_gguf(dst, md, gf.tensors)
    return dst


# --- llama.cpp itself (llama-cpp-python, where installed) --------------------------------------------

TEXTS = {"Hello world, this is an embedding test.": ("none", "mean", "cls", "last"),     # 9 tokens: all tail
         "The quick brown fox jumps over the lazy dog " * 5: ("mean",)}                # 45: lanes, then tail
POOLING_IDS = {"none": 0, "mean": 1, "cls": 2, "last": 3}


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return load(smollm2_path, n_ctx=512)


@pytest.mark.parametrize("pooling", ["none", "mean", "cls", "last"])
def test_bit_equal_to_llama_cpp_smollm2(llama_cpp, smollm2, smollm2_path, pooling):
    """Measured: max |difference| 0 (bit-equal) for every pooling, raw; the normalized ones within 1e-7 of
    llama-cpp-python's own normalization (it divides by numpy's norm in double, llama-server does not)."""
    ref = llama_cpp.Llama(model_path=str(smollm2_path), embedding=True, pooling_type=POOLING_IDS[pooling],
                          n_ctx=512, verbose=False)
    for text in [t for t, poolings in TEXTS.items() if pooling in poolings]:
        tokens = ref.tokenize(text.encode("utf-8"))
        want = np.array(ref.embed(text, normalize=False), np.float32)
        got = embed(smollm2, tokens, pooling, normalize=-1)
        assert got.shape == want.shape
        diff = np.abs(got - want).max()
        assert diff == 0, f"{pooling} {len(tokens)} tokens: max |difference| {diff:.3g}"
        if pooling != "none":
            normed = np.array(ref.embed(text, normalize=True), np.float32)
            np.testing.assert_allclose(normalize_embedding(got, 2), normed, rtol=0, atol=1e-7)


def test_bit_equal_to_llama_cpp_toy(llama_cpp, toy_dir, toy, toy_tokens):
    path = str(toy_dir / "tiny-mixtral-f16.gguf")
    for pooling, pid in POOLING_IDS.items():
        ref = llama_cpp.Llama(model_path=path, embedding=True, pooling_type=pid, n_ctx=64, verbose=False)
        ref._ctx.kv_cache_clear()
        for tokens in (list(toy_tokens), list(toy_tokens) * 3):      # 13 tokens: all tail; 39: lanes + tail
            want = embed_tokens(llama_cpp, ref, tokens, pooling)
            got = embed(toy, tokens, pooling, normalize=-1)
            assert np.abs(got - want).max() == 0, f"{pooling} {len(tokens)} tokens"


def embed_tokens(llama_cpp, ref, tokens, pooling):
    """llama.cpp's raw embedding of a token list (Llama.embed only takes text)."""
    ref._ctx.kv_cache_clear()
    batch = ref._batch
    batch.reset()
    batch.add_sequence(tokens, 0, True)
    ref._ctx.decode(batch)
    n_embd = ref.n_embd()
    if pooling == "none":
        ptr = llama_cpp.llama_get_embeddings(ref._ctx.ctx)
        return np.array([ptr[i * n_embd:(i + 1) * n_embd] for i in range(len(tokens))], np.float32)
    return np.array(llama_cpp.llama_get_embeddings_seq(ref._ctx.ctx, 0)[:n_embd], np.float32)
