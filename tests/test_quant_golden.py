"""Every case of golden/quant_blocks.npz: workbench.quant.quantize must give ggml_quantize_chunk's bytes.

One test per case in quant_blocks.json (input rows, with or without the importance vector, 21 types). A
format whose module does not exist yet is skipped (not failed); everything else must match byte for byte.
The numpy reference of each format is checked on the first row of every case as well (the slow grid
formats' references only with WORKBENCH_SLOW=1).
"""
from __future__ import annotations


import numpy as np
import pytest

from workbench.gguf import GGMLType
from workbench.quant import dequantize, quantize
from workbench.quant.formats import format_module
from conftest import golden_json

CASES = (golden_json("quant_blocks.json") or {}).get("cases", [])
SLOW_REFERENCE = {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S"}


@pytest.fixture(scope="module")
def golden(golden_dir):
    with np.load(golden_dir / "quant_blocks.npz") as z:
        return {k: z[k] for k in z.files}


def require_module(type_name: str):
    """The format module of a golden case: a missing or renamed one fails (UnknownTypeError), never skips."""
    return format_module(type_name)


def describe_mismatch(got: np.ndarray, expected: np.ndarray, type_size: int) -> str:
    """The first bad block (row, block index), its bytes, and the fraction of bits that differ."""
    if got.shape != expected.shape:
        return f"shape {got.shape} != expected {expected.shape}"
    bad = np.argwhere(got != expected)
    row, col = bad[0]
    blk = col // type_size
    sl = slice(blk * type_size, (blk + 1) * type_size)
    bits = np.unpackbits(got ^ expected).mean()
    return (f"{len(bad)} of {got.size} bytes differ ({bits:.3%} of all bits); first bad block: row {row}, "
            f"block {blk}\n  got      {got[row, sl].tobytes().hex()}\n  expected {expected[row, sl].tobytes().hex()}")


def inputs(golden, case):
    base = case["key"].split("__")[0]
    x = golden[f"{base}__input"]
    imatrix = golden[f"{base}__imatrix"] if case["imatrix"] else None
    expected = golden[case["key"]].reshape(x.shape[0], -1)
    assert x.shape == (case["rows"], case["n_per_row"])
    return x, imatrix, expected


@pytest.mark.parametrize("case", CASES, ids=[c["key"] for c in CASES])
def test_quantize_matches_ggml(golden, case):
    require_module(case["type"])
    x, imatrix, expected = inputs(golden, case)
    got = quantize(x, case["type"], imatrix)
    assert got.dtype == np.uint8
    assert np.array_equal(got, expected), describe_mismatch(got, expected, GGMLType.parse(case["type"]).type_size)


@pytest.mark.parametrize("case", [pytest.param(c, marks=[pytest.mark.slow] if c["type"] in SLOW_REFERENCE else [])
                                  for c in CASES], ids=[c["key"] for c in CASES])
def test_reference_matches_ggml(golden, case):
    mod = require_module(case["type"])
    x, imatrix, expected = inputs(golden, case)
    got = mod.quantize_ref(np.ascontiguousarray(x[:1]), imatrix)     # rows are independent: the first one
    assert np.array_equal(got, expected[:1]), describe_mismatch(got, expected[:1],
                                                                GGMLType.parse(case["type"]).type_size)


@pytest.mark.parametrize("case", [c for c in CASES if not c["imatrix"]], ids=lambda c: c["key"])
def test_dequantize_golden_is_finite_and_close(golden, case):
    """ggml's bytes decode to finite values near the input (a round-trip sanity check on real blocks)."""
    require_module(case["type"])
    x, _, expected = inputs(golden, case)
    y = dequantize(expected, case["type"], x.shape[1])
    assert y.shape == x.shape and np.isfinite(y).all()
    rel = np.sqrt(np.mean((y - x) ** 2) / np.mean(x ** 2))
    bound = 1.0 if case["type"].startswith("TQ") else 0.8   # ternary formats are for ternary weights
    assert rel < bound, f"{case['key']}: relative RMSE {rel:.3f}"
