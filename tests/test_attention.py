"""The vectorized F16-cache attention (attention_f16) against the readable spec (ops._attention_job)."""
from __future__ import annotations

import numpy as np
import pytest

from workbench.cpu import ops
from workbench.cpu.attention_f16 import attention_f16, round_f16_inplace
from workbench.cpu.features import hardware_fma
from workbench.cpu.fp16 import FP16_TO_FP32


@pytest.mark.parametrize("T, n_past, D", [(1, 0, 64), (1, 45, 64), (1, 40, 40), (2, 0, 64), (17, 3, 64),
                                          (40, 100, 128), (33, 0, 24)])
def test_attention_f16_is_the_spec(T, n_past, D):
    if not hardware_fma():
        pytest.skip("no hardware fma: the spec kernel is used")
    rng = np.random.default_rng(T * 1000 + n_past)
    H, Hkv = 6, 2
    q = (rng.standard_normal((T, H, D)) * 3).astype(np.float32)
    k = (rng.standard_normal((n_past + T, Hkv * D)) * 2).astype(np.float16)
    v = rng.standard_normal((n_past + T, Hkv * D)).astype(np.float16)
    spec, fast = np.empty((T, H * D), np.float32), np.empty((T, H * D), np.float32)
    ops._attention_serial(q, k.view(np.uint16), v.view(np.uint16), n_past, Hkv, np.float32(D ** -0.5), True,
                          FP16_TO_FP32, spec)
    attention_f16(q, k.view(np.uint16), v.view(np.uint16), n_past, Hkv, np.float32(D ** -0.5), fast)
    bad = np.argwhere(spec != fast)
    assert not len(bad), f"first difference at (token, column) {bad[0]}: {spec[tuple(bad[0])]} vs {fast[tuple(bad[0])]}"


def test_round_f16_inplace_matches_numpy():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.random(20000) ** 12, rng.standard_normal(20000) * 100,
                        [0.0, -0.0, 65504.0, 65519.99, 65520.0, -70000.0, 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -25,
                         2.0 ** -14, 2.0 ** -14 * (1 - 2.0 ** -12)]]).astype(np.float32)
    got = x.copy()
    round_f16_inplace(got, len(got))
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(got, want)


def test_softmax_scores_is_the_spec():
    """The vectorized softmax of attention_f16 equals ops._softmax_inplace(masked_tail=True) bit for bit,
    including scores far below the maximum (ggml_v_expf's scaled path) and -inf (masked)."""
    if not hardware_fma():
        pytest.skip("no hardware fma: the spec kernel is used")
    from workbench.cpu.attention_f16 import softmax_scores
    rng = np.random.default_rng(1)
    for n in (1, 7, 8, 9, 64, 301):
        for spread in (1.0, 30.0, 300.0):
            w = (rng.standard_normal(n) * spread).astype(np.float32)
            if n > 8:
                w[3] = -np.inf
            want = ops._softmax_inplace(w.copy(), n, True)
            got = w.copy()
            softmax_scores(got, n)
            np.testing.assert_array_equal(got, want)


def test_swiglu_vectorized_is_the_spec():
    if not hardware_fma():
        pytest.skip("no hardware fma: the spec kernel is used")
    rng = np.random.default_rng(2)
    for F in (8, 13, 1536):
        g = (rng.standard_normal((5, F)) * 12).astype(np.float32)
        g[0, :3] = [-100.0, 95.0, -0.0]                 # exp(-x) far out of range both ways
        u = rng.standard_normal((5, F)).astype(np.float32)
        np.testing.assert_array_equal(ops._swiglu_vec(g, u), ops._swiglu_spec(g, u))
