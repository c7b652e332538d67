"""The vectorized dequantize kernels == the numpy references (dequantize_ref), bit for bit, on random bytes.

Random bytes reach every level, every scale pattern (subnormal, inf, NaN fp16 scales included) and every
packing corner that quantized data may never produce. Where a NaN meets another NaN the payload that wins
depends on operand order, so NaN positions must agree and every other value must match bit for bit. F16 is
a pure conversion: all 65536 patterns must match numpy's cast exactly (signaling NaNs stay signaling).
Also: the cached fast path of workbench.quant.dequantize validates like the first call.
"""
import numpy as np
import pytest

from workbench.gguf import GGMLType
from workbench.quant import QuantInputError, dequantize
from workbench.quant.formats import format_module

# every format whose module has its own dequantize kernel (not the reference itself)
KERNEL_TYPES = ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
                "Q6_K", "Q8_K", "TQ1_0", "TQ2_0", "IQ4_NL", "IQ4_XS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS",
                "IQ3_S", "IQ1_S", "IQ1_M"]


def assert_same(got, ref, what):
    assert got.shape == ref.shape and got.dtype == np.float32, what
    nan_g, nan_r = np.isnan(got), np.isnan(ref)
    bad = (nan_g != nan_r) | (~nan_r & (got.view(np.uint32) != ref.view(np.uint32)))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise AssertionError(f"{what}: {int(bad.sum())} values differ, first at row {r}, column {c}: "
                             f"{got[r, c]!r} vs reference {ref[r, c]!r}")


@pytest.mark.parametrize("name", KERNEL_TYPES)
def test_kernel_matches_reference_on_random_bytes(name):
    t = GGMLType[name]
    mod = format_module(t)
    assert mod.dequantize is not mod.dequantize_ref
    rng = np.random.default_rng(int(t))
    for rows, blocks_per_row in ((1, 1), (3, 5), (7, 16)):
        n = t.block_size * blocks_per_row
        blocks = rng.integers(0, 256, (rows, t.row_bytes(n)), dtype=np.uint8)
        with np.errstate(all="ignore"):
            ref = mod.dequantize_ref(blocks, n)
        assert_same(mod.dequantize(blocks, n), ref, f"{name} {rows}x{n}")
        assert_same(dequantize(blocks, t, n), ref, f"{name} {rows}x{n} through workbench.quant.dequantize")


@pytest.mark.parametrize("name", KERNEL_TYPES)
def test_kernel_matches_reference_on_finite_scales(name):
    """Random bytes with every fp16 NaN/inf pattern replaced: all values compared bit for bit."""
    t = GGMLType[name]
    mod = format_module(t)
    n = t.block_size * 8
    blocks = np.random.default_rng(100 + int(t)).integers(0, 256, (4, t.row_bytes(n)), dtype=np.uint8)
    with np.errstate(all="ignore"):
        ref = mod.dequantize_ref(blocks, n)
    keep = np.isfinite(ref).all(axis=1)
    got = mod.dequantize(blocks, n)
    assert np.array_equal(got[keep].view(np.uint32), ref[keep].view(np.uint32))


def test_f16_every_pattern_exact():
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).reshape(16, 4096)
    got = dequantize(h.view(np.uint8), "F16", 4096)
    ref = h.view(np.float16).astype(np.float32)
    bad = np.nonzero(got.view(np.uint32).ravel() != ref.view(np.uint32).ravel())[0]
    assert bad.size == 0, f"F16 pattern {bad[0]:#06x}: {got.ravel()[bad[0]].view(np.uint32):#010x} " \
                          f"vs numpy {ref.ravel()[bad[0]].view(np.uint32):#010x}"


@pytest.mark.parametrize("name", ["F16", "BF16"])
@pytest.mark.parametrize("n", [31, 32, 100, 4099])
def test_per_element_formats_whole_runs_and_tails(name, n):
    """F16 / BF16 rows go through vector code 32 values at a time and finish the last n % 32 one by one:
    rows of random bits (NaN / inf patterns in some runs, none in others) of widths around that split."""
    mod = format_module(GGMLType[name])
    bits = np.random.default_rng(n).integers(0, 1 << 16, (3, n), dtype=np.uint16)
    bits[1, : n // 2] &= 0xBBFF                      # runs without an exponent-31 pattern: the plain path
    blocks = bits.view(np.uint8)
    ref = mod.dequantize_ref(blocks, n)
    assert_same(mod.dequantize(blocks, n), ref, f"{name} 3x{n}")
    assert_same(dequantize(blocks[1:], name, n), ref[1:], f"{name} rows 1: (a view not at the array's start)")


def test_fast_path_still_validates():
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    from workbench.quant import quantize
    q = quantize(x, "Q4_0")
    y = dequantize(q, GGMLType.Q4_0, 64)              # resolves and caches Q4_0
    assert np.array_equal(dequantize(q, GGMLType.Q4_0, 64), y)
    assert np.array_equal(dequantize(np.asfortranarray(q), GGMLType.Q4_0, 64), y)     # non-contiguous
    assert np.array_equal(dequantize(q[1], GGMLType.Q4_0, 64), y[1:2])                 # one row, 1-D
    assert np.array_equal(dequantize(q, GGMLType.Q4_0, np.int64(64)), y)
    with pytest.raises(QuantInputError, match="36 bytes"):
        dequantize(q[:, :-1], GGMLType.Q4_0, 64)
    with pytest.raises(QuantInputError, match="uint8"):
        dequantize(q.view(np.int8), GGMLType.Q4_0, 64)
    with pytest.raises(QuantInputError, match="multiple"):
        dequantize(q, GGMLType.Q4_0, 65)
    with pytest.raises(QuantInputError):
        dequantize(q, GGMLType.Q4_0, 0)


def test_vector_kernels_on_a_cpu_without_avx2_or_f16c():
    """The dequantize kernels use pshufb (IQ4 levels) and vcvtph2ps (fp16) only where the CPU has them; the
    portable code (a chain of selects, an exact integer fp16 conversion), compiled in a subprocess for a
    generic x86-64 CPU, gives the reference's bits too (F16: all 65536 patterns, NaN payloads included)."""
    import os
    import subprocess
    import sys
    code = (
        "import numpy as np\n"
        "from workbench.cpu.ir import has_avx2, has_f16c\n"
        "from workbench.quant.formats import format_module\n"
        "from workbench.gguf import GGMLType\n"
        "assert not has_avx2() and not has_f16c()\n"
        "for name in ('IQ4_NL', 'IQ4_XS', 'Q4_1', 'Q5_0', 'Q8_0', 'Q4_K', 'Q6_K', 'IQ3_S', 'IQ1_S', 'IQ2_XXS', 'IQ1_M',\n"
        "             'BF16'):\n"
        "    t = GGMLType[name]; mod = format_module(t); n = 512\n"
        "    b = np.random.default_rng(5).integers(0, 256, (3, t.row_bytes(n)), dtype=np.uint8)\n"
        "    with np.errstate(all='ignore'):\n"
        "        got, ref = mod.dequantize(b, n), mod.dequantize_ref(b, n)\n"
        "    same = (got.view(np.uint32) == ref.view(np.uint32)) | (np.isnan(got) & np.isnan(ref))\n"
        "    assert same.all(), name\n"
        "h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).reshape(16, 4096)\n"
        "got = format_module(GGMLType.F16).dequantize(h.view(np.uint8), 4096)\n"
        "assert np.array_equal(got.view(np.uint32), h.view(np.float16).astype(np.float32).view(np.uint32))\n"
        "print('ok')\n")
    env = {**os.environ, "NUMBA_CPU_NAME": "generic"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
