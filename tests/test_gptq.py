"""GPTQ into ggml blocks: the code layouts read off the dequantizers, the kernels against their numpy specs bit for
bit, the error compensation doing its job, valid and reproducible blocks, a whole (toy MoE) model, and bad input
refused before anything is written."""
from __future__ import annotations

import numpy as np
from numba import njit
import pytest

from workbench.cpu.tile import MR, NR, gram_add, tile, tile_ref
from workbench.quant import dequantize, quantize
from workbench.quant.code_bits import CodeLayoutError, code_layout
from workbench.quant.gptq import (
    GPTQError,
    _cholesky_upper,
    _upper_inverse_rows,
    accumulate_hessian,
    accumulate_hessian_ref,
    cholesky_upper_ref,
    damped,
    gptq_quantize,
    inverse_cholesky,
    lazy_update,
    lazy_update_ref,
    symmetric,
    upper_inverse_ref,
)
from workbench.quant.gptq_grid import (
    D_OFFSET,
    block_losses,
    block_losses_ref,
    quantize_columns,
    quantize_columns_ref,
    scale_field,
    search_scale,
    uniform_top,
)

PRIVATE = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"]
BITS = {"Q4_0": 4, "Q4_1": 4, "Q5_0": 5, "Q5_1": 5, "Q8_0": 8, "Q2_K": 2, "Q3_K": 3, "Q4_K": 4, "Q5_K": 5,
        "Q6_K": 6, "IQ4_NL": 4, "IQ4_XS": 4}


def correlated(rows, n, tokens, seed=0):
    """A weight and the H of correlated inputs (what makes error feedback worth it)."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((n, n)) / np.sqrt(n) + np.eye(n)
    x = (rng.standard_normal((tokens, n)) @ mix * (1 + 3 * rng.random(n))).astype(np.float32)
    w = rng.standard_normal((rows, n)).astype(np.float32)
    return w, x


def hessian(x):
    h = np.zeros((x.shape[1], x.shape[1]))
    accumulate_hessian(h, x)
    return np.triu(h) + np.triu(h, 1).T


def output_error(blocks, t, w, h):
    d = dequantize(blocks, t, w.shape[1]).astype(np.float64) - w
    return float(((d @ h) * d).sum())


@pytest.mark.parametrize("t", PRIVATE)
def test_code_layout_reads_writes_and_predicts_every_code(t):
    lay = code_layout(t)
    assert lay.n_bits == BITS[t]
    n = 512
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, n)).astype(np.float32)
    blocks = quantize(x, t, imatrix=np.ones(n, np.float32))
    assert np.array_equal(lay.with_codes(blocks, lay.codes(blocks, n), n), blocks)
    codes = rng.integers(0, 2 ** lay.n_bits, (6, n))
    changed = lay.with_codes(blocks, codes, n)
    assert np.array_equal(lay.codes(changed, n), codes)
    a, b = lay.affine(blocks, n)
    got = dequantize(changed, t, n)
    np.testing.assert_allclose(a * lay.levels[codes] + b, got, rtol=1e-6, atol=1e-7 * np.abs(got).max())
    # the scale bits are untouched: requantizing the codes leaves every other byte as it was
    same_scales = lay.with_codes(changed, lay.codes(blocks, n), n)
    assert np.array_equal(same_scales, blocks)
    # the kernels against their numpy specs, per-row codes and one row for all
    assert np.array_equal(lay.codes(changed, n), lay.codes_ref(changed, n))
    assert np.array_equal(changed, lay.with_codes_ref(blocks, codes, n))
    assert np.array_equal(lay.with_codes(blocks, codes[:1], n), lay.with_codes_ref(blocks, codes[:1], n))


def test_code_layout_of_q4_0_is_its_nibbles():
    lay = code_layout("Q4_0")
    # block_q4_0: fp16 d (bytes 0-1), then weight j < 16 in the low nibble of byte 2 + j, j >= 16 in the high one
    assert lay.byte[:16].tolist() == [[2 + j] * 4 for j in range(16)]
    assert lay.bit[:16].tolist() == [[0, 1, 2, 3]] * 16 and lay.bit[16:].tolist() == [[4, 5, 6, 7]] * 16
    np.testing.assert_allclose(lay.levels, np.arange(16) / 15)


@pytest.mark.parametrize("t", ["IQ3_S", "IQ2_XXS", "TQ1_0", "F16"])
def test_formats_with_shared_codes_have_no_layout(t):
    with pytest.raises(CodeLayoutError):
        code_layout(t)


@pytest.mark.parametrize("t", ["Q4_0", "Q5_1", "Q8_0", "Q2_K", "Q6_K", "IQ4_NL"])
def test_the_uniform_search_finds_the_binary_searchs_level(t):
    """_nearest_step on the grids i / top picks what _nearest_code picks wherever it is sure, and is not sure at the
    levels and midpoints (ties go down) or one float64 step either side of them; beyond both ends and on random
    values it is; IQ4_NL's table is not uniform and keeps the binary search."""
    from workbench.quant.gptq_grid import _nearest_code, _nearest_step

    lay = code_layout(t)
    levels = lay.levels[lay.order]
    top = uniform_top(levels)
    if t == "IQ4_NL":
        assert top == 0
        return
    assert top == len(levels) - 1
    ident = np.arange(len(levels))
    mids = (levels[:-1] + levels[1:]) / 2
    pts = np.concatenate([levels, mids, np.random.default_rng(0).uniform(-0.5, 1.5, 4000), [-1e300, 1e300, -0.0]])
    pts = np.concatenate([pts, np.nextafter(pts, -np.inf), np.nextafter(pts, np.inf)])
    got = [_nearest_step(u, top) for u in pts]
    want = np.array([_nearest_code(u, levels, ident) for u in pts])
    sure = np.array([s for _, s in got])
    idx = np.array([c for c, _ in got])
    assert np.array_equal(idx[sure], want[sure]) and np.array_equal(idx[sure] / top, levels[want[sure]])
    grid = np.zeros(len(pts) // 3, bool)
    grid[:len(levels) + len(mids)] = True
    grid = np.tile(grid, 3)                                  # the levels and midpoints, and a step either side
    assert not sure[grid].any() and sure[~grid].mean() > 0.99


def test_kernels_equal_their_numpy_specs_bit_for_bit():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 37)).astype(np.float32)
    h = hessian(x) + np.eye(37)                  # H, Cholesky and inverse against their specs: the test below
    u = inverse_cholesky(h, 0.0)
    np.testing.assert_allclose(u.T @ u, np.linalg.inv(h), rtol=1e-9, atol=1e-12)
    assert np.array_equal(u, np.triu(u))

    lay = code_layout("Q4_0")
    w = rng.standard_normal((5, 64)).astype(np.float32)
    blocks = quantize(w, "Q4_0")
    aa, bb = lay.affine(blocks, 64)
    codes = lay.codes(blocks, 64)
    aa[0, 3] = 0.0                                              # a block with a zero scale keeps its code
    u32 = u[:32, :32].astype(np.float32).copy()
    ws = [np.ascontiguousarray(w[:, :32]) for _ in range(2)]
    cs = [codes[:, :32].copy() for _ in range(2)]
    errs = [np.zeros((5, 32), np.float32) for _ in range(2)]
    args = (lay.levels, lay.levels[lay.order], lay.order.astype(np.int64))
    quantize_columns_ref(ws[1], u32, aa, bb, cs[1], *args, 0, 32, 0, 32, errs[1])
    for top in (0, uniform_top(lay.levels[lay.order])):                 # the binary search and the uniform one
        wk, ck, ek = np.ascontiguousarray(w[:, :32]), codes[:, :32].copy(), np.zeros((5, 32), np.float32)
        quantize_columns(wk, u32, aa, bb, ck, *args, 0, 32, 0, 32, ek, top)
        assert np.array_equal(wk, ws[1]) and np.array_equal(ck, cs[1]) and np.array_equal(ek, errs[1])
        assert ck[0, 3] == codes[0, 3]
    w2 = [rng.standard_normal((5, 37)).astype(np.float32) for _ in range(1)] * 2
    w2 = [w2[0].copy(), w2[0].copy()]
    e2 = rng.standard_normal((5, 8)).astype(np.float32)
    lazy_update(w2[0], e2, u.astype(np.float32), 4, 12)
    lazy_update_ref(w2[1], e2, u.astype(np.float32), 4, 12)
    assert np.array_equal(w2[0], w2[1])


@pytest.mark.parametrize("n,tokens,rows", [(8, 9, 4), (37, 40, 5), (104, 300, 21), (300, 70, 37)])
def test_tiled_kernels_equal_their_specs_across_panels_chunks_and_edges(n, tokens, rows):
    """Sizes that cross the kernels' blockings: several Cholesky panels and inverse blocks, more tokens than one
    H pass (T_CHUNK), more columns than one lazy-update slab (LAZY_COLS), and partial tiles at the edges."""
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((tokens, n)) * rng.uniform(0.1, 4, n)).astype(np.float32)
    a, b = np.full((n, n), 0.5), np.full((n, n), 0.5)
    accumulate_hessian(a, x)
    accumulate_hessian_ref(b, x)
    assert np.array_equal(np.triu(a), np.triu(b))
    h = symmetric(a) + n * np.eye(n)
    r = h.copy()
    assert _cholesky_upper(r)
    assert np.array_equal(r, cholesky_upper_ref(h))
    inv = np.zeros_like(r)
    _upper_inverse_rows(r, inv)
    assert np.array_equal(inv, upper_inverse_ref(r))
    hr = damped(h, 0.01, 3.0)[::-1, ::-1].copy()               # U = J R^-T J, R from the reversed, damped H
    assert np.array_equal(inverse_cholesky(h, 0.01, 3.0), upper_inverse_ref(cholesky_upper_ref(hr)).T[::-1, ::-1])
    assert np.array_equal(symmetric(a), np.triu(a) + np.triu(a, 1).T)
    u = inverse_cholesky(h, 0.01).astype(np.float32)
    w = rng.standard_normal((rows, n)).astype(np.float32)
    err = rng.standard_normal((rows, 8)).astype(np.float32)
    w1, w2 = w.copy(), w.copy()
    lazy_update(w1, err, u, 0, min(8, n))
    lazy_update_ref(w2, err, u, 0, min(8, n))
    assert np.array_equal(w1, w2) and (n == 8 or not np.array_equal(w1, w))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_register_tile_equals_its_spec_with_negative_strides_and_mixed_types(dtype):
    """The MR x NR tile (its shape is the host's) against tile_ref, k running backwards through strided rows."""
    rng = np.random.default_rng(7)
    lc, la, lb = NR + 11, 2 * MR + 3, NR + 5
    c = rng.standard_normal((MR + 2, lc)).astype(dtype)
    a = rng.standard_normal((9, la)).astype(np.float32)
    b = rng.standard_normal((9, lb)).astype(dtype)
    for sub in (False, True):
        c1, c2 = c.copy(), c.copy()
        tile(c1, 1 * lc + 3, lc, a, 8 * la + 2, -la, 2, b, 8 * lb + 4, -lb, 9, MR, NR, sub)   # k from the last row up
        tile_ref(c2, 1 * lc + 3, lc, a, 8 * la + 2, -la, 2, b, 8 * lb + 4, -lb, 9, sub)
        assert np.array_equal(c1, c2) and not np.array_equal(c1, c)
        untouched = np.ones(c.shape, bool)
        untouched[1:1 + MR, 3:3 + NR] = False
        assert np.array_equal(c1[untouched], c[untouched])


@njit
def _gram(c, ci, ldc, a, ai, a_k, a_r, b, bi, b_k, nk):
    gram_add(c, ci, ldc, a, ai, a_k, a_r, b, bi, b_k, nk)


def test_gram_tile_with_fma_equals_multiply_then_add_for_float32_products():
    """gram_add fuses the multiply and the add: the same bits as tile_ref where the products are exact (float32
    values in float64), and different ones where they are not (so the fma is really there)."""
    rng = np.random.default_rng(8)
    a = rng.standard_normal((64, MR)).astype(np.float32).astype(np.float64)
    b = rng.standard_normal((64, NR)).astype(np.float32).astype(np.float64)
    c = rng.standard_normal((MR, NR))
    c1, c2 = c.copy(), c.copy()
    _gram(c1, 0, NR, a, 0, MR, 1, b, 0, NR, 64)
    tile_ref(c2, 0, NR, a, 0, MR, 1, b, 0, NR, 64, False)
    assert np.array_equal(c1, c2) and not np.array_equal(c1, c)
    a, b = rng.standard_normal((64, MR)), rng.standard_normal((64, NR))      # full float64 products: fma differs
    c1 = rng.standard_normal((MR, NR))
    c2 = c1.copy()
    _gram(c1, 0, NR, a, 0, MR, 1, b, 0, NR, 64)
    tile_ref(c2, 0, NR, a, 0, MR, 1, b, 0, NR, 64, False)
    assert not np.array_equal(c1, c2)


@pytest.mark.parametrize("t", sorted(D_OFFSET))
def test_block_scale_search_equals_its_spec_and_never_loses(t):
    off, scale_b = scale_field(t)
    assert scale_b == (t not in ("Q4_1", "Q5_1"))                          # a separate min stays put
    w, x = correlated(16, 512, 1024, seed=4)
    h = hessian(x)
    u = inverse_cholesky(h, 0.01).astype(np.float32)
    lay = code_layout(t)
    levels = lay.levels[lay.order]
    bs = lay.type.block_size
    j0, j1 = 256, 256 + bs
    blk = quantize(np.ascontiguousarray(w[:, j0:j1]), t, imatrix=np.diag(h)[j0:j1].astype(np.float32))
    a, b = lay.affine(blk, bs)
    ratio = np.array([1.0, 0.9, 0.97, 1.04, 1.12])[:, None] * np.ones(16)
    ratio[2, 3] = 0.0                                           # a zero scale: every weight rounds to b
    losses = [np.full(ratio.shape, np.nan) for _ in range(2)]
    block_losses_ref(w, u, j0, j1, a, b, ratio, scale_b, levels, losses[1])
    for top in {0, uniform_top(levels)}:                                # the binary search and the uniform one
        block_losses(w, u, j0, j1, a, b, ratio, scale_b, levels, losses[0], top)
        assert np.array_equal(losses[0], losses[1]) and np.isfinite(losses[0]).all()

    def own_loss(bl):
        aa, bb = lay.affine(bl, bs)
        out = np.empty((1, 16))
        block_losses(w, u, j0, j1, aa, bb, np.ones((1, 16)), scale_b, levels, out)
        return out[0]

    found, fa, fb = search_scale(blk, a, b, lay, w, u, j0, j1)
    ra, rb = lay.affine(found, bs)
    assert np.array_equal(fa, ra) and np.array_equal(fb, rb)               # the grid of the bytes returned
    changed = (found != blk).any(axis=1)
    keep = np.ones(found.shape[1], bool)
    keep[off:off + 2] = False
    assert np.array_equal(found[:, keep], blk[:, keep])                    # only the fp16 d can change
    assert changed.any() and (own_loss(found)[changed] < own_loss(blk)[changed]).all()
    assert np.array_equal(own_loss(found)[~changed], own_loss(blk)[~changed])


@pytest.mark.parametrize("t", ["Q4_0", "Q5_1", "Q4_K", "Q3_K", "Q6_K", "IQ4_NL", "IQ4_XS"])
def test_gptq_lowers_the_output_error_and_writes_valid_blocks(t):
    w, x = correlated(24, 256, 1024)
    h = hessian(x)
    imp = np.diag(h).astype(np.float32)
    rtn = quantize(w, t, imatrix=imp)
    ours = gptq_quantize(w, h, t)
    assert ours.shape == rtn.shape and ours.dtype == np.uint8
    assert np.isfinite(dequantize(ours, t, 256)).all()
    assert output_error(ours, t, w, h) < 0.9 * output_error(rtn, t, w, h)
    again = gptq_quantize(w, h, t)
    assert np.array_equal(ours, again)                          # deterministic
    for lazy in (16, 64, 512):              # the lazy block (inside a super-block, a few blocks, all) is no input
        assert np.array_equal(gptq_quantize(w, h, t, block_size=lazy), ours), lazy
    ordered = gptq_quantize(w, h, t, act_order=True, block_size=64)
    assert output_error(ordered, t, w, h) < output_error(rtn, t, w, h)


def test_gptq_with_a_zero_error_budget_is_rounding_on_the_first_grid():
    # a weight already on a Q8_0 grid comes back unchanged: nothing to compensate
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal((8, 64)).astype(np.float32)
    blocks = quantize(w0, "Q8_0")
    w = dequantize(blocks, "Q8_0", 64)
    h = hessian(rng.standard_normal((256, 64)).astype(np.float32))
    assert np.array_equal(gptq_quantize(w, h, "Q8_0"), quantize(w, "Q8_0"))


def test_bad_inputs_are_refused_with_the_problem_named():
    w, x = correlated(4, 64, 256)
    h = hessian(x)
    dead = h.copy()
    dead[5, :] = dead[:, 5] = 0.0
    with pytest.raises(GPTQError, match="never activated"):
        gptq_quantize(w, dead, "Q4_0", name="blk.0.attn_q.weight")
    with pytest.raises(GPTQError, match="shape"):
        gptq_quantize(w, h[:32, :32], "Q4_0")
    with pytest.raises(GPTQError, match="NaN"):
        gptq_quantize(w, h * np.nan, "Q4_0")
    with pytest.raises(GPTQError, match="block size"):
        gptq_quantize(w[:, :48], h[:48, :48], "Q4_0")
    with pytest.raises(GPTQError, match="damp"):
        gptq_quantize(w, h, "Q4_0", damp=-1)
    with pytest.raises(GPTQError, match="positive definite"):
        inverse_cholesky(-np.eye(4), 0.0)
    with pytest.raises(CodeLayoutError):
        gptq_quantize(w, h, "IQ2_XXS")


# ------------------------------------------------------------------------------------ a whole model

@pytest.fixture(scope="module")
def toy_moe(toy_dir):
    return toy_dir / "tiny-mixtral-f16.gguf"


@pytest.fixture(scope="module")
def calibration(shared_data_dir):
    from workbench.text.files import read_prompt_file

    return read_prompt_file(shared_data_dir / "botchan.txt")[:20000]


def test_gptq_model_has_llama_quantizes_types_and_runs(toy_moe, calibration, tmp_path):
    from workbench.eval.gptq_model import gptq_quantize_model
    from workbench.gguf import read_gguf
    from workbench.llama import load
    from workbench.quant.imatrix import Imatrix
    from workbench.quant.quantize_model import quantize_model

    dst = tmp_path / "gptq.Q4_0.gguf"
    report = gptq_quantize_model(toy_moe, dst, "Q4_0", calibration, n_ctx=64, n_chunks=4, progress=False,
                                 dataset="botchan")
    rtn = tmp_path / "rtn.Q4_0.gguf"
    fake = Imatrix({t.name: np.ones(t.shape[-1] * (t.shape[0] if len(t.shape) == 3 else 1), np.float32)
                    for t in read_gguf(toy_moe).tensors if t.name.startswith("blk.") and len(t.shape) >= 2})
    quantize_model(toy_moe, rtn, "Q4_0", imatrix=fake, progress=False)
    ours, ref = read_gguf(dst), read_gguf(rtn)
    assert [(t.name, t.type, tuple(t.shape)) for t in ours.tensors] == \
        [(t.name, t.type, tuple(t.shape)) for t in ref.tensors]
    assert ours.metadata["quantize.gptq.n_tokens"] == 256 and ours.metadata["quantize.gptq.dataset"] == "botchan"
    assert set(report.method) <= {"gptq", "gptq+rtn", "rtn"} and (report.method.str.contains("gptq")).sum() >= 10
    m = load(dst, n_ctx=64)
    logits = m.logits(np.arange(3, 20))
    assert np.isfinite(logits).all()


def test_gptq_model_refuses_bad_input_before_writing(toy_moe, calibration, tmp_path):
    from workbench.eval.gptq_model import gptq_quantize_model
    from workbench.quant.quantize_model import QuantizeError, quantize_model

    dst = tmp_path / "out.gguf"
    with pytest.raises(QuantizeError, match="calibration text gives"):
        gptq_quantize_model(toy_moe, dst, "Q4_0", calibration[:300], n_ctx=64, progress=False)
    with pytest.raises(QuantizeError, match="damp"):
        gptq_quantize_model(toy_moe, dst, "Q4_0", calibration, n_ctx=64, damp=float("nan"), progress=False)
    with pytest.raises(QuantizeError, match="ftype|file type|Q9"):
        gptq_quantize_model(toy_moe, dst, "Q9_X", calibration, n_ctx=64, progress=False)
    q8 = tmp_path / "q8.gguf"
    quantize_model(toy_moe, q8, "Q8_0", progress=False)
    with pytest.raises(QuantizeError, match="float weights"):
        gptq_quantize_model(q8, dst, "Q4_0", calibration, n_ctx=64, progress=False)
    assert not dst.exists()


def test_cli_quantize_method_gptq(toy_moe, calibration, tmp_path, capsys):
    from workbench.cli import main
    from workbench.gguf import read_gguf

    text = tmp_path / "calib.txt"
    text.write_text(calibration, encoding="utf-8")
    dst = tmp_path / "cli.gguf"
    assert main(["quantize", str(toy_moe), str(dst), "IQ4_NL", "--method", "gptq", "--calibration", str(text),
                 "--chunks", "4", "--ctx", "64", "--act-order", "--damp", "0.05"]) == 0
    gf = read_gguf(dst)
    assert gf.metadata["quantize.gptq.act_order"] and abs(gf.metadata["quantize.gptq.damp"] - 0.05) < 1e-6
    assert "by GPTQ" in capsys.readouterr().out
    assert main(["quantize", str(toy_moe), str(tmp_path / "x.gguf"), "Q4_0", "--method", "gptq"]) != 0
    assert "--calibration" in capsys.readouterr().err
    assert not (tmp_path / "x.gguf").exists()


def test_shrink_moves_gptq_toward_rounding_with_the_importance_matrix():
    """shrink = 0 is plain GPTQ; a huge shrink leaves almost no off-diagonal H, hence almost no error feedback:
    the blocks become those of the format's own quantizer weighted by diag H (rtn + imatrix)."""
    w, x = correlated(16, 256, 1024, seed=3)
    h = hessian(x)
    imp = (np.diag(h) / np.diag(h).max()).astype(np.float32)
    rtn = quantize(w, "Q4_K", imatrix=imp)
    plain, far = (gptq_quantize(w, h, "Q4_K", shrink=s) for s in (0.0, 1e9))
    assert np.mean(far == rtn) > 0.999 and np.mean(plain == rtn) < 0.9
    with pytest.raises(GPTQError, match="shrink"):
        gptq_quantize(w, h, "Q4_K", shrink=-1.0)


def test_gptq_checkpoint_model_holds_the_checkpoint_grid_and_its_size(toy_moe, calibration, tmp_path):
    """A whole (toy MoE) model onto a 4-bit group-32 checkpoint grid: every matrix row takes at most 16 values
    per group of 32 columns (per group of g_idx with act-order), the rest of the model is the source's, the
    reported size is the packed checkpoint's, and the dequantized model runs."""
    from workbench.eval.gptq_checkpoint_model import gptq_checkpoint_model
    from workbench.gguf import read_gguf
    from workbench.llama import load

    for ao in (False, True):
        dst = tmp_path / f"ck{ao}.gguf"
        ck = gptq_checkpoint_model(toy_moe, dst, calibration, bits=4, group_size=32, act_order=ao, n_ctx=64,
                                   n_chunks=4, progress=False)
        src, out = read_gguf(toy_moe), read_gguf(dst)
        want = 0
        for s, o in zip(src.tensors, out.tensors):
            assert (s.name, tuple(s.shape)) == (o.name, tuple(o.shape))
            if s.name in set(ck.report.name):
                w = o.numpy().astype(np.float32).reshape(-1, s.shape[-1])
                n_in, n_out = w.shape[1], w.shape[0]
                if not ao:
                    per_group = [len(np.unique(g)) for g in w.reshape(n_out, n_in // 32, 32).reshape(-1, 32)]
                    assert max(per_group) <= 16
                assert max(len(np.unique(r)) for r in w) <= 16 * n_in // 32
                assert not np.array_equal(w, s.numpy().astype(np.float32).reshape(w.shape))
                want += n_in * n_out // 2 + (n_in // 32) * (n_out // 2 + 2 * n_out) + 4 * n_in * (n_out // (
                    s.shape[1] if len(s.shape) == 3 else n_out))
            else:
                assert np.array_equal(np.asarray(o.data), np.asarray(s.data))
                want += 2 * int(np.prod(s.shape))
        assert ck.checkpoint_bytes == want and out.metadata["quantize.gptq.act_order"] == ao
        assert np.isfinite(load(dst, n_ctx=64).logits(np.arange(3, 20))).all()


def test_gptq_checkpoint_folder_reads_back_as_the_model_measured(toy_moe, calibration, tmp_path):
    """The checkpoint folder of a whole (toy MoE) model: read back and converted (as floats, and with --outtype
    auto to Q4_1 blocks), its matrices are the very values of the F16 GGUF the KLD was measured on."""
    from workbench.eval.gptq_checkpoint_model import gptq_checkpoint_model
    from workbench.gguf import read_gguf
    from workbench.hf.gptq_checkpoint import read_gptq_checkpoint
    from workbench.hf.gptq_gguf import convert_gptq

    dst, folder = tmp_path / "ck.gguf", tmp_path / "gptq"
    ck = gptq_checkpoint_model(toy_moe, dst, calibration, bits=4, group_size=32, n_ctx=64, n_chunks=4,
                               progress=False, checkpoint_dir=folder)
    cfg, linears, others = read_gptq_checkpoint(folder)
    assert (cfg.bits, cfg.group_size, cfg.desc_act, cfg.sym) == (4, 32, False, False)
    assert any(".experts.3.w2" in p for p in linears) and "model.embed_tokens.weight" in others
    floats, _ = convert_gptq(folder, tmp_path / "f16.gguf", outtype="f16", progress=False)
    q4, report = convert_gptq(folder, tmp_path / "q4.gguf", progress=False)
    assert len(report) == len(linears) and all(r["how"] == "exact" for r in report)
    with read_gguf(dst) as want, read_gguf(floats) as got, read_gguf(q4) as q:
        for name in set(ck.report.name) | {"token_embd.weight"}:
            assert np.array_equal(np.asarray(got.tensor(name).data), np.asarray(want.tensor(name).data)), name
        for name in ("blk.0.attn_q.weight", "blk.1.ffn_down_exps.weight"):
            t = q.tensor(name)
            n_in = t.shape[-1]
            deq = dequantize(np.asarray(t.data).reshape(-1, n_in // 32 * 20), "Q4_1", n_in).astype(np.float16)
            assert np.array_equal(deq.reshape(t.shape), want.tensor(name).numpy()), name
