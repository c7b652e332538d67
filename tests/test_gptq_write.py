"""Our GPTQ into AutoGPTQ's grid: the checkpoint holds exactly the weights the error feedback chose, it beats
plain rounding on the same grid, act-order and group -1 are written as AutoGPTQ writes them, and 4-bit g32
asymmetric tensors convert to Q4_1 blocks without a change of value."""
from __future__ import annotations

import numpy as np
import pytest

from workbench.hf.gptq_checkpoint import (
    GPTQCheckpointError,
    GPTQTensor,
    default_g_idx,
    to_q4_1_blocks,
)
from workbench.hf.gptq_write import find_params, gptq_tensor
from workbench.quant import dequantize
from workbench.quant.gptq import accumulate_hessian


def problem(rows=32, n=128, tokens=512, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((n, n)) / np.sqrt(n) + np.eye(n)
    x = (rng.standard_normal((tokens, n)) @ mix * (1 + 3 * rng.random(n))).astype(np.float32)
    h = np.zeros((n, n))
    accumulate_hessian(h, x)
    return rng.standard_normal((rows, n)).astype(np.float32), np.triu(h) + np.triu(h, 1).T


def rtn(w, bits, group, sym=False):
    """Plain rounding on the same grid (no error feedback)."""
    maxq = (1 << bits) - 1
    n = w.shape[1]
    codes = np.empty(w.shape, np.int64)
    scales, zeros = [], []
    for g in range(n // group):
        cols = slice(g * group, (g + 1) * group)
        s, z = find_params(w[:, cols], maxq, sym)
        codes[:, cols] = np.clip(np.round(w[:, cols] / s.astype(np.float32)[:, None]) + z[:, None], 0, maxq)
        scales.append(s)
        zeros.append(z)
    return GPTQTensor.from_codes(codes, np.array(scales), np.array(zeros), default_g_idx(n, group), bits, group)


def err(t, w, h):
    d = t.dequantize().astype(np.float64) - w
    return float(((d @ h) * d).sum())


@pytest.mark.parametrize("bits,group,sym", [(4, 32, False), (3, 32, False), (8, 128, True), (2, -1, False)])
def test_gptq_checkpoint_tensor_beats_rounding_on_the_same_grid(bits, group, sym):
    w, h = problem()
    ours = gptq_tensor(w, h, bits, group, sym=sym)
    ref = rtn(w, bits, w.shape[1] if group == -1 else group, sym)
    assert err(ours, w, h) < 0.95 * err(ref, w, h)
    assert ours.codes().max() <= (1 << bits) - 1


def test_act_order_groups_follow_the_processing_order():
    w, h = problem()
    t = gptq_tensor(w, h, 4, 32, act_order=True)
    order = np.argsort(-np.diag(h), kind="stable")
    assert np.array_equal(t.g_idx[order], np.arange(128) // 32)
    assert not np.array_equal(t.g_idx, default_g_idx(128, 32))
    assert err(t, w, h) < err(rtn(w, 4, 32), w, h)


def test_4bit_g32_asymmetric_converts_to_q4_1_losslessly():
    w, h = problem(rows=32, n=96)
    t = gptq_tensor(w, h, 4, 32, q4_1_exact=True)
    blocks = to_q4_1_blocks(t)
    assert blocks is not None
    assert np.array_equal(dequantize(blocks, "Q4_1", 96), t.dequantize())


def test_bad_settings_are_refused():
    w, h = problem(rows=32, n=64)
    with pytest.raises(GPTQCheckpointError, match="bits"):
        gptq_tensor(w, h, 5, 32)
    with pytest.raises(GPTQCheckpointError, match="group_size"):
        gptq_tensor(w, h, 4, 48)
    with pytest.raises(GPTQCheckpointError, match="q4_1_exact"):
        gptq_tensor(w, h, 4, 32, act_order=True, q4_1_exact=True)
