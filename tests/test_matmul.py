"""workbench.llama.matmul: row decoders bit-exact against gguf-py, products against a numpy spec of ggml's
vec_dot (activation quantization included), generic fallback, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from workbench.gguf import GGMLType
from workbench.cpu.to_float import NATIVE_TYPES
from workbench.llama.matmul import MatmulError, get_rows, matmul_raw, vec_dot_type

gq = pytest.importorskip("gguf.quants")
from gguf import GGMLQuantizationType as QT  # noqa: E402

QUANT_NATIVE = [t for t in NATIVE_TYPES if t.block_size > 1]


@pytest.fixture(scope="module")
def golden_blocks(golden_dir):
    """First golden case of each type: ggml's own quantized bytes (rows, row_bytes) and n_per_row."""
    z = np.load(golden_dir / "quant_blocks.npz")
    out = {}
    for c in json.loads((golden_dir / "quant_blocks.json").read_text())["cases"]:
        if c["type"] not in out and not c["imatrix"]:
            out[c["type"]] = (z[c["key"]].reshape(c["rows"], -1), c["n_per_row"])
    return out


def _reference_rows(rows, wtype, K):
    return gq.dequantize(rows, QT[wtype.name]).reshape(rows.shape[0], K).astype(np.float32)


@pytest.mark.parametrize("wtype", QUANT_NATIVE, ids=lambda t: t.name)
def test_decode_matches_gguf_py(golden_blocks, wtype):
    rows, K = golden_blocks[wtype.name]
    ref = _reference_rows(rows, wtype, K)
    ours = get_rows(rows, wtype, K, np.arange(rows.shape[0]))
    bad = np.argwhere(ours.view(np.uint32) != ref.view(np.uint32))
    assert bad.size == 0, (f"{wtype.name}: first differing value at row/col {tuple(bad[0])} "
                           f"(block {bad[0][1] // wtype.block_size}): {ours[tuple(bad[0])]} vs {ref[tuple(bad[0])]}")


def _quantize_act_spec(x, act):
    """numpy spec of ggml's activation quantization (quantize_row_q8_0/q8_1 AVX2, quantize_row_q8_K_ref):
    returns the dequantized activations and, for Q8_1, the stored block sums s = fp16(d * sum(q))."""
    bs = act.block_size
    xb = x.reshape(x.shape[0], -1, bs).astype(np.float32)
    if act == GGMLType.Q8_K:
        idx = np.abs(xb).argmax(axis=2)
        vmax = np.take_along_axis(xb, idx[..., None], axis=2)
        with np.errstate(divide="ignore"):
            iscale = np.where(vmax != 0, np.float32(-127.0) / vmax, np.float32(0)).astype(np.float32)
        q = np.minimum(np.rint(iscale * xb), 127)
        d = np.where(vmax != 0, np.float32(1.0) / iscale, 0).astype(np.float32)
        return (q * d).reshape(x.shape), None
    amax = np.abs(xb).max(axis=2, keepdims=True)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        iscale = np.where(amax > 0, np.float32(127) / amax, 0).astype(np.float32)
    q = np.rint(xb * iscale)
    dh = d.astype(np.float16).astype(np.float32)
    s = (q.sum(axis=2, keepdims=True) * d).astype(np.float16).astype(np.float32)
    return (q * dh).reshape(x.shape), s[..., 0]


def _product_spec(rows, wtype, K, x):
    """y = x @ W^T as ggml's vec_dot computes it, in float64: sum(d q xhat) + min * (s or sum xhat)."""
    act = vec_dot_type(wtype)
    w = _reference_rows(rows, wtype, K).astype(np.float64)
    if act in (GGMLType.F32, GGMLType.F16, GGMLType.BF16):
        xh = x.astype(np.float16).astype(np.float32) if act == GGMLType.F16 else x
        return xh.astype(np.float64) @ w.T
    xh, s = _quantize_act_spec(x, act)
    y = xh.astype(np.float64) @ w.T
    if act == GGMLType.Q8_1:   # ggml uses the stored fp16 s for the min term instead of sum(xhat)
        blocks = rows.reshape(rows.shape[0], K // 32, -1)
        m = blocks[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float64)   # block_q4_1/q5_1: d, m, ...
        sum_xh = xh.reshape(x.shape[0], K // 32, 32).sum(axis=2, dtype=np.float64)
        y += (s.astype(np.float64) - sum_xh) @ m.T
    return y


@pytest.mark.parametrize("T", [1, 5])
@pytest.mark.parametrize("wtype", QUANT_NATIVE, ids=lambda t: t.name)
def test_matmul_matches_vec_dot_spec(golden_blocks, wtype, T):
    rows, K = golden_blocks[wtype.name]
    x = np.random.default_rng(T).standard_normal((T, K)).astype(np.float32)
    exact = x.astype(np.float64) @ _reference_rows(rows, wtype, K).astype(np.float64).T
    y0 = matmul_raw(rows, wtype, K, x, quantize_act=False)
    err0 = np.abs(y0 - exact).max() / np.abs(exact).max()
    assert err0 < 1e-5, f"{wtype.name} T={T}: float product off by {err0:.2e} (relative)"
    spec = _product_spec(rows, wtype, K, x)
    y = matmul_raw(rows, wtype, K, x)
    err = np.abs(y - spec).max() / np.abs(spec).max()
    assert err < 1e-5, f"{wtype.name} T={T}: quantized-activation product off the spec by {err:.2e}"
    # the activation quantization is visible: the spec differs from the exact product
    assert np.abs(spec - exact).max() / np.abs(exact).max() > 1e-4


@pytest.mark.parametrize("wtype", [GGMLType.F32, GGMLType.F16, GGMLType.BF16], ids=lambda t: t.name)
def test_float_weights(wtype):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((7, 64)).astype(np.float32)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    if wtype == GGMLType.F32:
        raw, wf, xf = w.view(np.uint8), w, x
    elif wtype == GGMLType.F16:
        raw = w.astype(np.float16).view(np.uint8)
        wf, xf = w.astype(np.float16).astype(np.float32), x.astype(np.float16).astype(np.float32)
    else:
        raw = (w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)   # truncated bf16 weights
        wf = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(7, 64)
        u = x.view(np.uint32).astype(np.uint64)       # ggml_compute_fp32_to_bf16: round to nearest even
        xf = (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)
    y = matmul_raw(raw.reshape(7, -1), wtype, 64, x)
    np.testing.assert_allclose(y, xf.astype(np.float64) @ wf.T.astype(np.float64), rtol=1e-5, atol=1e-5)


def test_generic_fallback_matches_native(golden_blocks):
    """A type routed through workbench.quant.dequantize gives the same product as a native one would."""
    quant = pytest.importorskip("workbench.quant")
    if not hasattr(quant, "dequantize"):
        pytest.skip("workbench.quant.dequantize not available yet")
    for name in ("IQ4_NL", "IQ4_XS", "TQ2_0"):
        if name in golden_blocks:
            rows, K = golden_blocks[name]
            wtype = GGMLType[name]
            try:
                ref = _reference_rows(rows, wtype, K)
                wq = quant.dequantize(rows, wtype, K)
            except (NotImplementedError, KeyError, ValueError):
                continue
            np.testing.assert_array_equal(wq, ref)
            x = np.random.default_rng(1).standard_normal((2, K)).astype(np.float32)
            y = matmul_raw(rows, wtype, K, x, quantize_act=False)
            exact = x.astype(np.float64) @ ref.T.astype(np.float64)
            assert np.abs(y - exact).max() / np.abs(exact).max() < 1e-5
            return
    pytest.skip("no fallback type available in workbench.quant")


def test_errors():
    rows = np.zeros((4, 18), np.uint8)
    with pytest.raises(MatmulError, match="blk.0.attn_q.weight"):
        matmul_raw(rows, GGMLType.Q4_0, 32, np.zeros((1, 64), np.float32), name="blk.0.attn_q.weight")
    with pytest.raises(MatmulError, match="multiple"):
        matmul_raw(rows, GGMLType.Q4_0, 48, np.zeros((1, 48), np.float32))


@pytest.mark.parametrize("wtype", [GGMLType.Q4_1, GGMLType.Q8_0, GGMLType.F16, GGMLType.F32], ids=lambda t: t.name)
def test_batch_equals_single_token_sums(golden_blocks, wtype):
    """The batched Q4_1 / Q8_0 kernels reproduce ggml_vec_dot_q4_1_q8_1 / _q8_0_q8_0's sums bit for bit, like
    the one-token kernels (float weights: tinyBLAS and vec_dot orders differ, so only closeness is expected)."""
    if wtype in (GGMLType.Q4_1, GGMLType.Q8_0):
        rows, K = golden_blocks[wtype.name]
    else:
        K = 256
        w = np.random.default_rng(3).standard_normal((6, K)).astype(np.float32)
        rows = (w.astype(np.float16) if wtype == GGMLType.F16 else w).view(np.uint8).reshape(6, -1)
    x = np.random.default_rng(4).standard_normal((5, K)).astype(np.float32)
    batch = matmul_raw(rows, wtype, K, x)
    single = np.concatenate([matmul_raw(rows, wtype, K, x[t:t + 1]) for t in range(5)])
    if wtype in (GGMLType.Q4_1, GGMLType.Q8_0):
        np.testing.assert_array_equal(batch, single)
    else:
        np.testing.assert_allclose(batch, single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("wtype", [GGMLType.F16, GGMLType.BF16, GGMLType.F32], ids=lambda t: t.name)
def test_float_batch_kernel_is_the_spec(wtype):
    """The token-vectorized tinyBLAS kernel (hardware fma) gives float_rows_exact's sums bit for bit."""
    from workbench.cpu.act_quant import round_bf16
    from workbench.cpu.features import hardware_fma
    from workbench.cpu.vec_dot import float_rows_batch, float_rows_exact

    if not hardware_fma():
        pytest.skip("no hardware fma: the batch kernel is not used")
    rng = np.random.default_rng(5)
    K, N, T = 200, 7, 9
    w = rng.standard_normal((N, K)).astype(np.float32)
    if wtype == GGMLType.F16:
        rows = w.astype(np.float16).view(np.uint8).reshape(N, -1)
    elif wtype == GGMLType.BF16:
        rows = (round_bf16(w).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(N, -1)
    else:
        rows = w.view(np.uint8).reshape(N, -1)
    x = rng.standard_normal((T, K)).astype(np.float32)
    spec, fast = np.empty((T, N), np.float32), np.empty((T, N), np.float32)
    float_rows_exact(rows, int(wtype), K, x, spec, True)
    float_rows_batch(rows, int(wtype), K, np.ascontiguousarray(x.T), fast)
    np.testing.assert_array_equal(fast, spec)
