"""workbench.cpu.vec_dot_q5: Q5_0 / Q5_1 weights in the float order of ggml_vec_dot_q5_0_q8_0 /
ggml_vec_dot_q5_1_q8_1 (AVX2) and tinyBLAS_Q0_AVX<block_q5_0>. Checked here against a numpy spec of that
order (bit for bit), against the float product (closeness), batch against one token, and the fallbacks.
(Bit-equality with llama.cpp itself is checked by /work/diag/mmcheck.py, which needs llama-cpp-python.)"""
from __future__ import annotations

import json

import numpy as np
import pytest

from workbench.gguf import GGMLType
from workbench.cpu import features, vec_dot_q5
from workbench.cpu.act_quant import prepare_activations, vec_dot_type
from workbench.cpu.features import hardware_fma

TYPES = [GGMLType.Q5_0, GGMLType.Q5_1]


@pytest.fixture(scope="module")
def golden_rows(golden_dir):
    """llama.cpp's own Q5_0 / Q5_1 blocks: {type name: [(rows (N, row_bytes), n_per_row), ...]}."""
    z = np.load(golden_dir / "quant_blocks.npz")
    out = {}
    for c in json.loads((golden_dir / "quant_blocks.json").read_text())["cases"]:
        if c["type"] in ("Q5_0", "Q5_1") and c["n_per_row"] in (1536, 4096):
            out.setdefault(c["type"], []).append((z[c["key"]].reshape(c["rows"], -1), c["n_per_row"]))
    return out


def _random_rows(wtype, N, K, seed):
    """Random block bytes (every qh / nibble pattern) with finite fp16 scales (and mins)."""
    rng = np.random.default_rng(seed)
    bs = wtype.type_size
    rows = rng.integers(0, 256, (N, K // 32, bs), dtype=np.uint8)
    n_half = 2 if wtype == GGMLType.Q5_1 else 1           # d, [m] at the start of the block
    scales = (rng.standard_normal((N, K // 32, n_half)) * 0.01).astype(np.float16)
    rows[:, :, :2 * n_half] = scales.view(np.uint8).reshape(N, K // 32, 2 * n_half)
    return rows.reshape(N, -1)


def _unpack(rows, wtype, K):
    """Integer weights (N, K/32, 32), scales d and mins m (N, K/32) float32, straight from block_q5_0/_1."""
    N = rows.shape[0]
    b = rows.reshape(N, K // 32, wtype.type_size)
    d = b[:, :, 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    has_m = wtype == GGMLType.Q5_1
    m = b[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float32) if has_m else np.zeros_like(d)
    p = 4 if has_m else 2
    qh = b[:, :, p:p + 4].copy().view("<u4")[..., 0].astype(np.int64)
    qs = b[:, :, p + 4:p + 20].astype(np.int64)
    hi = (qh[..., None] >> np.arange(32)) & 1                 # bit j of qh: 5th bit of element j
    q = np.concatenate([qs & 15, qs >> 4], axis=2) | (hi << 4)
    return q - (0 if has_m else 16), d, m


def _fma(a, b, c):
    """_mm256_fmadd_ps lane by lane: the float64 product of two floats is exact, one rounding to float32."""
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float32)


def _spec(rows, wtype, K, x):
    """ggml's order in numpy: per block acc_lane = fma(d_w * d_x, sum of 4 products, acc_lane),
    summs = fma(m_w, s_x, summs) (Q5_1); hsum_float_8(acc) + summs."""
    _, s, xq, dx = prepare_activations(x, vec_dot_type(wtype), 32, True, with_ints=True)
    q, d, m = _unpack(rows, wtype, K)
    T, N = x.shape[0], rows.shape[0]
    xqb = xq.reshape(T, K // 32, 8, 4).astype(np.int64)
    acc = np.zeros((T, N, 8), np.float32)
    summs = np.zeros((T, N), np.float32)
    for b in range(K // 32):
        lanes = np.einsum("nlk,tlk->tnl", q[:, b].reshape(N, 8, 4), xqb[:, b]).astype(np.float32)
        dd = (dx[:, b][:, None] * d[:, b][None, :]).astype(np.float32)
        acc = _fma(dd[..., None], lanes, acc)
        if wtype == GGMLType.Q5_1:
            summs = _fma(m[:, b][None, :], s[:, b][:, None], summs)
    a = acc.transpose(2, 0, 1)
    return (((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))) + summs


def _first_bad(ours, ref):
    bad = np.argwhere(ours.view(np.uint32) != ref.view(np.uint32))
    if bad.size == 0:
        return ""
    t, n = bad[0]
    return (f"{len(bad)} differing outputs, first at token {t} row {n}: {ours[t, n]!r} vs {ref[t, n]!r}, "
            f"max |diff| {np.abs(ours - ref).max():.3g}")


@pytest.mark.parametrize("T", [1, 2, 6])
@pytest.mark.parametrize("wtype", TYPES, ids=lambda t: t.name)
def test_golden_blocks_match_spec_and_float_product(golden_rows, wtype, T):
    from workbench.quant import dequantize

    for rows, K in golden_rows[wtype.name]:
        x = np.random.default_rng(K + T).standard_normal((T, K)).astype(np.float32)
        ours = vec_dot_q5.matmul(rows, wtype, K, x)
        spec = _spec(rows, wtype, K, x)
        msg = _first_bad(ours, spec)
        assert not msg, f"{wtype.name} K={K} T={T}: kernel vs ggml-order spec: {msg}"
        # (a) close to the float product of the activations as ggml quantizes them and the weights
        xh, s, _, _ = prepare_activations(x, vec_dot_type(wtype), 32, True, with_ints=True)
        w = np.asarray(dequantize(rows, wtype, K), np.float64)
        ref = xh.astype(np.float64) @ w.T
        if wtype == GGMLType.Q5_1:    # ggml uses the stored fp16 s of Q8_1 for the min term, not sum(xhat)
            _, _, m = _unpack(rows, wtype, K)
            ref += (s - xh.reshape(T, K // 32, 32).sum(axis=2, dtype=np.float64)) @ m.T.astype(np.float64)
        err = np.abs(ours - ref).max() / np.abs(ref).max()
        assert err < 1e-5, f"{wtype.name} K={K} T={T}: off the float product by {err:.2e} (relative)"


@pytest.mark.parametrize("wtype", TYPES, ids=lambda t: t.name)
def test_random_blocks_all_bit_patterns(wtype):
    """Every nibble / qh pattern, extreme activations (amax of a block hits +-127 exactly)."""
    K, N, T = 320, 13, 5
    rows = _random_rows(wtype, N, K, 7)
    x = np.random.default_rng(8).standard_normal((T, K)).astype(np.float32)
    x[:, ::37] *= 50.0
    ours = vec_dot_q5.matmul(rows, wtype, K, x)
    msg = _first_bad(ours, _spec(rows, wtype, K, x))
    assert not msg, f"{wtype.name}: {msg}"


@pytest.mark.parametrize("wtype", TYPES, ids=lambda t: t.name)
def test_batch_equals_single_tokens(wtype):
    """ggml uses one order for every batch size (Q5_0: tinyBLAS = vec_dot; Q5_1: vec_dot only), so the
    token-vectorized batch kernel must give the one-token kernel's sums bit for bit; mul_mat_id too."""
    K, N, T = 576, 23, 9
    rows = _random_rows(wtype, N, K, 11)
    x = np.random.default_rng(12).standard_normal((T, K)).astype(np.float32)
    batch = vec_dot_q5.matmul(rows, wtype, K, x)
    single = np.concatenate([vec_dot_q5.matmul(rows, wtype, K, x[t:t + 1]) for t in range(T)])
    msg = _first_bad(batch, single)
    assert not msg, f"{wtype.name} batch vs one token: {msg}"
    np.testing.assert_array_equal(vec_dot_q5.matmul(rows, wtype, K, x, mul_mat_id=True), batch)
    if hardware_fma():        # the two kernels directly, on the same T tokens
        _, s, xq, dx = prepare_activations(x, vec_dot_type(wtype), 32, True, with_ints=True)
        spec = np.empty((T, N), np.float32)
        if wtype == GGMLType.Q5_0:
            vec_dot_q5.q5_0_q8_0(rows, K, xq, dx, spec)
        else:
            vec_dot_q5.q5_1_q8_1(rows, K, xq, dx, s, spec)
        np.testing.assert_array_equal(batch, spec)


@pytest.mark.parametrize("wtype", TYPES, ids=lambda t: t.name)
def test_without_hardware_fma(monkeypatch, wtype):
    """Where 'contract' gives no fused multiply-add, the fma32 spec kernels serve every batch size."""
    K, N = 192, 6
    rows = _random_rows(wtype, N, K, 21)
    monkeypatch.setattr(features, "hardware_fma", lambda: False)
    for T in (1, 4):
        x = np.random.default_rng(22 + T).standard_normal((T, K)).astype(np.float32)
        msg = _first_bad(vec_dot_q5.matmul(rows, wtype, K, x), _spec(rows, wtype, K, x))
        assert not msg, f"{wtype.name} T={T} (fma32 kernels): {msg}"


def test_dispatch_from_matmul_raw():
    from workbench.llama.matmul import matmul_raw

    rows = _random_rows(GGMLType.Q5_1, 5, 64, 3)
    x = np.random.default_rng(4).standard_normal((3, 64)).astype(np.float32)
    np.testing.assert_array_equal(matmul_raw(rows, GGMLType.Q5_1, 64, x), vec_dot_q5.matmul(rows, GGMLType.Q5_1, 64, x))


def test_shapes_and_fallbacks():
    x = np.zeros((2, 64), np.float32)
    rows = _random_rows(GGMLType.Q5_0, 3, 64, 1)
    assert vec_dot_q5.matmul(rows, GGMLType.Q4_0, 64, x) is None            # not our type
    assert vec_dot_q5.matmul(rows, GGMLType.Q5_1, 64, x) is None            # row width of another type
    assert vec_dot_q5.matmul(rows[:, :30], GGMLType.Q5_0, 48, x[:, :48]) is None   # K not a multiple of 32
    assert vec_dot_q5.matmul(rows, GGMLType.Q5_0, 64, x[:, :32]) is None   # activations of another width
    assert vec_dot_q5.matmul(rows, GGMLType.Q5_0, 64, x[0]) is None        # not (T, K)
    assert vec_dot_q5.matmul(rows, GGMLType.Q5_0, 64, x[:0]).shape == (0, 3)
    assert vec_dot_q5.matmul(rows[:0], GGMLType.Q5_0, 64, x).shape == (2, 0)
    y = vec_dot_q5.matmul(rows, GGMLType.Q5_0, 64, x)                       # zero activations
    assert y.shape == (2, 3) and y.dtype == np.float32 and not y.any()
    assert set(vec_dot_q5.SUPPORTED) == set(TYPES)
