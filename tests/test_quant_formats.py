"""Format modules: numba kernel == numpy reference, dequantize == gguf.quants.dequantize (bit for bit),
error vs bits per weight, the format table, the shared fp16/bf16/rounding helpers, and bad-input errors.

Parametrized over every format module that exists (workbench/quant/<type>.py), so formats added later are
checked too.
"""
from __future__ import annotations

import importlib.util

import gguf
import numpy as np
import pytest

from workbench.gguf import GGMLType
from workbench.quant import QuantInputError, UnknownTypeError, dequantize, format_table, quantize
from workbench.cpu import fp16
from workbench.quant import rounding
from workbench.quant.formats import format_module, module_name

FOUND = [t for t in GGMLType if importlib.util.find_spec(module_name(t)) is not None]
BLOCK_TYPES = [t for t in FOUND if t.block_size > 1]
FLOAT_TYPES = [t for t in FOUND if t.block_size == 1]
GRID_TYPES = {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S"}   # slow references
ids = [t.name for t in FOUND]


def sample(rows: int, n: int, seed: int) -> np.ndarray:
    """Awkward rows: gaussian with outliers, all-zero / constant / tiny / all-negative blocks."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, n)).astype(np.float32)
    x[0, rng.integers(0, n, 4)] *= 20                  # outliers
    x[0, :32] = 0                                      # an all-zero block
    if rows > 1:                                       # quarters of row 1 (a whole super-block when n = 1024)
        q = n // 4
        x[1, :q] = 0.5                                 # constant
        x[1, q:2 * q] = rng.random(q).astype(np.float32) * 1e-20     # tiny values
        x[1, 2 * q:] = -np.abs(x[1, 2 * q:])           # all negative
    return x


def gguf_type(t: GGMLType):
    return gguf.GGMLQuantizationType[t.name]


@pytest.mark.parametrize("t", FOUND, ids=ids)
def test_kernel_matches_reference(t):
    mod = format_module(t)
    n = 256 if t.name in GRID_TYPES else 1024
    x = sample(2, n, seed=int(t))
    imatrix = np.random.default_rng(1).random(n).astype(np.float32) + 0.01
    for im in ([imatrix] if mod.NEEDS_IMATRIX else [None, imatrix]):
        q = mod.quantize(x, im)
        ref = mod.quantize_ref(x, im)
        assert q.shape == (2, t.row_bytes(n)) and q.dtype == np.uint8
        if not np.array_equal(q, ref):
            bad = np.argwhere(q != ref)[0]
            pytest.fail(f"{t.name} imatrix={im is not None}: kernel != reference at row {bad[0]}, "
                        f"byte {bad[1]} (block {bad[1] // t.type_size})")
        y, y_ref = mod.dequantize(q, n), mod.dequantize_ref(q, n)
        assert y.dtype == np.float32 and y.shape == x.shape
        assert np.array_equal(y.view(np.uint32), y_ref.view(np.uint32)), f"{t.name}: dequantize != reference"


LEGACY_AND_K = [t for t in BLOCK_TYPES if t.name[0] == "Q"]


@pytest.mark.parametrize("t", LEGACY_AND_K, ids=lambda t: t.name)
@pytest.mark.parametrize("scale", [1e-39, 1e-30, 1e30], ids=["subnormal", "tiny", "huge"])
def test_extreme_magnitudes_kernel_matches_reference(t, scale):
    """Scales that under/overflow (1/d = inf on subnormal blocks) must still follow ggml's arithmetic."""
    mod = format_module(t)
    n = 256 if t.block_size == 256 else 64
    x = (np.random.default_rng(7).standard_normal((2, n)) * scale).astype(np.float32)
    imatrix = np.random.default_rng(8).random(n).astype(np.float32) + 0.01
    for im in ([imatrix] if mod.NEEDS_IMATRIX else [None, imatrix]):
        with np.errstate(all="ignore"):
            ref = mod.quantize_ref(x, im)
        assert np.array_equal(mod.quantize(x, im), ref), f"{t.name} x{scale:g} imatrix={im is not None}"


IN_GGUF = [t for t in FOUND if t.name in gguf.GGMLQuantizationType.__members__]


@pytest.mark.parametrize("t", IN_GGUF, ids=lambda t: t.name)
def test_dequantize_matches_gguf(t):
    if t == GGMLType.F32:
        pytest.skip("F32 is not a quantized type in gguf.quants")
    n = 512
    x = sample(3, n, seed=100 + int(t))
    imatrix = np.random.default_rng(2).random(n).astype(np.float32) + 0.01
    q = quantize(x, t, imatrix if format_module(t).NEEDS_IMATRIX else None)
    try:
        expected = gguf.quants.dequantize(q, gguf_type(t))
    except NotImplementedError:
        pytest.skip(f"the gguf package has no dequantize for {t.name}")
    got = dequantize(q, t, n)
    expected = np.asarray(expected, dtype=np.float32).reshape(got.shape)
    same = got.view(np.uint32) == expected.view(np.uint32)
    assert same.all(), f"{t.name}: first difference at {np.argwhere(~same)[0]}, got {got[~same][0]!r} " \
                       f"expected {expected[~same][0]!r}"


@pytest.mark.parametrize("t", FOUND, ids=ids)
def test_error_shrinks_with_bits(t):
    """Relative RMSE on gaussian rows is below C * 2^-bpw (C = 4 covers 1.56 .. 8.5 bpw formats)."""
    n = 1024
    x = np.random.default_rng(3).standard_normal((4, n)).astype(np.float32)
    imatrix = np.ones(n, np.float32)
    im = imatrix if format_module(t).NEEDS_IMATRIX else None
    y = dequantize(quantize(x, t, im), t, n)
    rel = float(np.sqrt(np.mean((y - x) ** 2) / np.mean(x ** 2)))
    if t == GGMLType.F32:
        assert rel == 0
    elif t == GGMLType.F16:
        assert rel < 2.0 ** -11
    elif t == GGMLType.BF16:
        assert rel < 2.0 ** -8
    elif t in (GGMLType.TQ1_0, GGMLType.TQ2_0):
        assert rel < 0.9                                   # ternary: made for ternary weights, not gaussians
    else:
        assert 0 < rel < 4 * 2.0 ** -t.bits_per_weight, f"{t.name}: relative RMSE {rel:.4f} at {t.bits_per_weight} bpw"


def test_imatrix_lowers_weighted_error():
    """With a very uneven importance vector the weighted error drops for the imatrix-aware formats."""
    rng = np.random.default_rng(4)
    n = 1024
    x = rng.standard_normal((8, n)).astype(np.float32)
    imatrix = np.exp(3 * rng.standard_normal(n)).astype(np.float32)
    for name in ["Q4_0", "Q4_1", "Q5_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]:
        err = [float(np.sum(imatrix * (dequantize(quantize(x, name, im), name, n) - x) ** 2))
               for im in (None, imatrix)]
        assert err[1] < err[0], f"{name}: weighted error {err[1]:.4g} with imatrix, {err[0]:.4g} without"


@pytest.mark.parametrize("rows,n", [(150, 32), (70, 64), (3, 224), (5, 4096)])
def test_q4_0_blocks_batched_across_rows_equal_the_reference(rows, n):
    """Q4_0's imatrix search takes the blocks of several short rows side by side (GPTQ's one block per row) and one
    row at a time when rows are long; either way each block's bytes are quantize_row_q4_0_impl's (the numpy
    reference)."""
    from workbench.quant.types import q4_0

    x = sample(rows, n, seed=rows)
    im = np.exp(2 * np.random.default_rng(rows).standard_normal(n)).astype(np.float32)
    assert np.array_equal(quantize(x, "Q4_0", im), q4_0.quantize_ref(x, im))


# ------------------------------------------------------------------------------------ format table
def test_format_table():
    df = format_table()
    assert list(df["type"]) == [t.name for t in GGMLType]
    for _, row in df.iterrows():
        t = GGMLType[row["type"]]
        assert row["block_size"] == t.block_size and row["bytes_per_block"] == t.type_size
        assert row["bits_per_weight"] == pytest.approx(8 * t.type_size / t.block_size)
    have = set(df.loc[df["has_quantize"], "type"])
    assert {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1",
            "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K"} <= have
    needs = set(df.loc[df["needs_imatrix"], "type"])
    assert needs == {"IQ2_XXS", "IQ2_XS", "IQ1_S"}         # ggml_quantize_requires_imatrix


# ------------------------------------------------------------------------------------ shared helpers
def special_floats() -> np.ndarray:
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 2 ** 32, 200_000, dtype=np.uint64).astype(np.uint32)
    # halfway cases of fp16 and bf16 rounding, subnormals, the overflow edge
    half_edges = (np.arange(1 << 16, dtype=np.uint32) << 13) | (1 << 12)
    extra = np.array([0.0, -0.0, 65504, 65519.99, 65520, 1e-8, 6e-8, -6e-5, np.inf, -np.inf, np.nan], np.float32)
    return np.concatenate([bits.view(np.float32), half_edges.view(np.float32), extra])


def test_fp16_conversion_matches_numpy_rounding():
    f = special_floats()
    f = f[~np.isnan(f)]
    got = np.array([fp16.fp32_to_fp16(v) for v in f[:5000]], dtype=np.uint16)
    assert np.array_equal(got, fp16.fp32_to_fp16_np(f[:5000]))
    # the whole array through the F16 kernel
    q = format_module("F16").quantize(f[None, :], None).view(np.uint16)[0]
    assert np.array_equal(q, fp16.fp32_to_fp16_np(f))


def test_round_fp16_rows_matches_numpy():
    """The parallel kernel that rounds F16 matmul activations gives numpy's bits, every half and its
    neighbours, NaN, infinities and overflow included."""
    f = np.concatenate([special_floats(), np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
                        .astype(np.float32)])
    f = np.concatenate([f, np.nextafter(f, np.float32(np.inf)), np.nextafter(f, np.float32(-np.inf))])
    f = f[: len(f) // 7 * 7].reshape(7, -1)
    got, want = fp16.round_fp16_rows(f), fp16.round_fp16_np(f)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    assert np.array_equal(got[ok].view(np.uint32), want[ok].view(np.uint32))


def test_bf16_kernel_matches_reference_with_nan():
    f = special_floats()[None, :]
    mod = format_module("BF16")
    assert np.array_equal(mod.quantize(f, None), mod.quantize_ref(f, None))
    nan_bits = mod.quantize(np.array([[np.nan]], np.float32), None).view(np.uint16)[0, 0]
    assert nan_bits & 0x7FC0 == 0x7FC0                      # quiet NaN


def test_nearest_int_rounds_half_to_even():
    v = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.49999, 1e6 + 0.5, -4194303], np.float32)
    expected = np.rint(v).astype(np.int32)
    assert np.array_equal(rounding.nearest_int_np(v), expected)
    assert [rounding.nearest_int(np.float32(a)) for a in v] == list(expected)
    r = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997], np.float32)
    assert list(rounding.roundf_np(r)) == [1, 2, 3, -1, -3, 0]                    # C roundf
    assert [rounding.roundf(np.float32(a)) for a in r] == [1, 2, 3, -1, -3, 0]


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("call,match", [
    (lambda: quantize(np.zeros((2, 64), np.float64), "Q4_0"), "float32"),
    (lambda: quantize(np.zeros((2, 2, 64), np.float32), "Q4_0"), "2-D"),
    (lambda: quantize(np.zeros((2, 48), np.float32), "Q4_0"), "multiple of its block size 32"),
    (lambda: quantize(np.zeros((2, 288), np.float32), "Q4_K"), "multiple of its block size 256"),
    (lambda: quantize(np.full((2, 64), np.nan, np.float32), "Q8_0"), "non-finite"),
    (lambda: quantize(np.array([[0.0] * 31 + [np.inf]], np.float32), "Q8_0"), "non-finite"),
    (lambda: quantize(np.zeros((2, 64), np.float32), "Q4_K"), "multiple"),
    (lambda: quantize(np.zeros((2, 256), np.float32), "Q4_K", np.ones(255, np.float32)), "imatrix"),
    (lambda: quantize(np.zeros((2, 256), np.float32), "Q4_K", np.full(256, np.nan, np.float32)), "imatrix"),
    (lambda: quantize(np.zeros((2, 256), np.float32), "Q9_9"), "unknown"),
    (lambda: quantize(np.zeros((2, 256), np.float32), 12345), "unknown"),
    (lambda: dequantize(np.zeros((2, 17), np.uint8), "Q4_0", 32), "18 bytes"),
    (lambda: dequantize(np.zeros((2, 18), np.float32), "Q4_0", 32), "uint8"),
    (lambda: dequantize(np.zeros((2, 18), np.uint8), "Q4_0", 33), "multiple"),
])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_missing_imatrix_is_refused():
    needing = [t for t in FOUND if format_module(t).NEEDS_IMATRIX]
    assert needing, "IQ2_XXS, IQ2_XS and IQ1_S need an importance matrix: their modules must say so"
    with pytest.raises(QuantInputError, match="importance matrix"):
        quantize(np.ones((1, 256), np.float32), needing[0])


def test_type_without_module():
    with pytest.raises(UnknownTypeError, match="no quantization module"):
        quantize(np.ones((1, 256), np.int32).astype(np.float32), GGMLType.I8)   # integer tensors: no format


def test_accepts_names_types_and_one_row():
    x = np.random.default_rng(6).standard_normal(256).astype(np.float32)
    a = quantize(x, "q4_k")
    b = quantize(x[None], GGMLType.Q4_K)
    assert np.array_equal(a, b) and a.shape == (1, 144)
    assert np.array_equal(dequantize(a[0], "Q4_K", 256), dequantize(b, GGMLType.Q4_K, 256))
