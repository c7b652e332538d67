"""IQ4 / ternary / grid quantization formats against ggml's bytes (golden/quant_blocks.npz).

Calls the format modules directly (workbench.quant.types.<type>), so it does not depend on the dispatcher.
Checks: numba quantize == ggml_quantize_chunk bytes; the reference == the same bytes on a few
super-blocks; dequantize == gguf.quants.dequantize; formats that ggml refuses without an imatrix refuse;
the neighbour maps built from the gguf grids follow ggml's iq2xs_init_impl / iq3xs_init_impl rule.
"""
import importlib

import numpy as np
import pytest

from workbench.quant.iq_grids import GRID_SPECS, grid

TYPES = ["IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "IQ3_XXS", "IQ3_S", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M"]
GRID_TYPES = TYPES[4:]
CASES = ["normal_outliers", "uniform", "heavy_tail", "smollm2_blk0_ffn_down"]
REF_COLUMNS = 1024  # the numpy references run on the first rows x 1024 columns only
REF_ROWS = 2


@pytest.fixture(scope="module")
def golden(golden_dir):
    with np.load(golden_dir / "quant_blocks.npz") as z:
        return {k: z[k] for k in z.files}


def module(type_name):
    return importlib.import_module(f"workbench.quant.types.{type_name.lower()}")


def describe_mismatch(got, expected, type_size):
    """First bad block (row, block), its bytes, and the fraction of differing bits."""
    got = got.reshape(expected.shape)
    bad = np.argwhere(got != expected)
    row, col = bad[0]
    blk = col // type_size
    sl = slice(blk * type_size, (blk + 1) * type_size)
    bits = np.unpackbits(got ^ expected).mean()
    return (f"{len(bad)} of {got.size} bytes differ ({bits:.2%} of bits); first bad block row {row} block {blk}:\n"
            f"  got      {got[row, sl].tobytes().hex()}\n  expected {expected[row, sl].tobytes().hex()}")


def golden_params():
    for t in TYPES:
        for c in CASES:
            for imx in (False, True):
                yield pytest.param(c, t, imx, id=f"{c}-{t}{'-imatrix' if imx else ''}")


@pytest.mark.parametrize("case,type_name,use_imatrix", list(golden_params()))
def test_quantize_matches_ggml(golden, case, type_name, use_imatrix):
    key = f"{case}__{type_name}" + ("__imatrix" if use_imatrix else "")
    if key not in golden:
        pytest.skip(f"{key}: ggml needs an imatrix for {type_name}")
    x = golden[f"{case}__input"]
    imatrix = golden[f"{case}__imatrix"] if use_imatrix else None
    m = module(type_name)
    expected = golden[key].reshape(x.shape[0], -1)
    got = m.quantize(x, imatrix)
    assert got.dtype == np.uint8 and got.shape == expected.shape
    assert np.array_equal(got, expected), describe_mismatch(got, expected, m.TYPE_SIZE)


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("use_imatrix", [False, True], ids=["plain", "imatrix"])
def test_reference_matches_kernel_and_ggml(golden, type_name, use_imatrix):
    m = module(type_name)
    if m.NEEDS_IMATRIX and not use_imatrix:
        pytest.skip("needs imatrix")
    for case in CASES:
        x = golden[f"{case}__input"][:REF_ROWS, :REF_COLUMNS]
        imatrix = golden[f"{case}__imatrix"][:REF_COLUMNS] if use_imatrix else None
        key = f"{case}__{type_name}" + ("__imatrix" if use_imatrix else "")
        row_bytes = REF_COLUMNS // m.BLOCK * m.TYPE_SIZE
        expected = golden[key].reshape(golden[f"{case}__input"].shape[0], -1)[:REF_ROWS, :row_bytes]
        ref = m.quantize_ref(x, imatrix)
        assert np.array_equal(ref, m.quantize(x, imatrix)), f"{case}: " + describe_mismatch(
            ref, m.quantize(x, imatrix), m.TYPE_SIZE)
        assert np.array_equal(ref, expected), f"{case}: " + describe_mismatch(ref, expected, m.TYPE_SIZE)


@pytest.mark.parametrize("type_name", TYPES)
def test_dequantize_matches_gguf(golden, type_name):
    gguf_quants = pytest.importorskip("gguf.quants")
    from gguf import GGMLQuantizationType

    m = module(type_name)
    qtype = GGMLQuantizationType[type_name]
    for case in CASES:
        n = golden[f"{case}__input"].shape[1]
        for key in (f"{case}__{type_name}", f"{case}__{type_name}__imatrix"):
            if key not in golden:
                continue
            blocks = golden[key].reshape(-1, n // m.BLOCK * m.TYPE_SIZE)
            want = gguf_quants.dequantize(blocks, qtype).reshape(-1, n)
            for fn in (m.dequantize, m.dequantize_ref):
                got = fn(blocks, n)
                assert got.dtype == np.float32 and got.shape == want.shape
                bad = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
                assert bad.size == 0, (f"{key} {fn.__name__}: {bad.size} values differ, first at flat index "
                                       f"{bad[0]}: got {got.flat[bad[0]]!r} want {want.flat[bad[0]]!r}")


@pytest.mark.parametrize("type_name", TYPES)
def test_argument_errors(type_name):
    m = module(type_name)
    x = np.ones((2, m.BLOCK), np.float32)
    with pytest.raises(ValueError):
        m.quantize(np.ones((2, m.BLOCK + 1), np.float32), None if not m.NEEDS_IMATRIX else np.ones(m.BLOCK + 1))
    with pytest.raises(ValueError):
        m.quantize(x, np.ones(m.BLOCK - 1, np.float32))
    if m.NEEDS_IMATRIX:
        with pytest.raises(ValueError, match="imatrix"):
            m.quantize(x, None)
    with pytest.raises(ValueError):
        m.dequantize(np.zeros((1, m.TYPE_SIZE + 1), np.uint8), m.BLOCK)


@pytest.mark.parametrize("type_name", TYPES)
def test_zero_and_tiny_blocks(type_name):
    """All-zero and sub-epsilon blocks must not divide by zero and must decode to zeros."""
    m = module(type_name)
    x = np.zeros((2, 2 * m.BLOCK), np.float32)
    x[1, m.BLOCK:] = 1e-20
    imatrix = np.ones(2 * m.BLOCK, np.float32)
    for imx in (None, imatrix) if not m.NEEDS_IMATRIX else (imatrix,):
        q = m.quantize(x, imx)
        assert np.array_equal(q, m.quantize_ref(x, imx))
        assert np.all(np.abs(m.dequantize(q, 2 * m.BLOCK)) <= 1e-19)


@pytest.mark.parametrize("type_name", GRID_TYPES)
def test_grid_neighbour_lists(type_name):
    """Spot-check kmap/neighbours against a direct transcription of ggml's init loop on sampled points."""
    g = grid(type_name)
    _, bits, kmap_size, nwant = GRID_SPECS["IQ1_S" if type_name == "IQ1_M" else type_name]
    G, n = g.pos.shape
    assert g.kmap.shape == (kmap_size,)
    on = np.flatnonzero(g.kmap >= 0)
    assert len(on) == G and np.array_equal(np.sort(g.kmap[on]), np.arange(G))
    rng = np.random.default_rng(0)
    for u in rng.choice(np.flatnonzero(g.kmap < 0), 40, replace=False):
        levels = (u >> (bits * np.arange(n))) & ((1 << bits) - 1)
        d2 = ((g.pos.astype(np.int64) - (2 * levels + 1)) ** 2).sum(axis=1)
        order = sorted(range(G), key=lambda j: (d2[j], j))
        keep = sorted(set(d2))[:nwant]
        want = [j for j in order if d2[j] in keep]
        start = -g.kmap[u] - 1
        got = list(g.neighbours[start + 1:start + 1 + g.neighbours[start]])
        assert got == want, f"{type_name}: neighbours of point {u} differ"


@pytest.mark.parametrize("type_name", TYPES)
def test_dequantize_arbitrary_bytes_matches_gguf(type_name):
    """Every bit pattern decodes as gguf.quants decodes it (NaN payloads aside), not only ggml's output."""
    gguf_quants = pytest.importorskip("gguf.quants")
    from gguf import GGMLQuantizationType

    m = module(type_name)
    n = 2 * m.BLOCK if m.BLOCK == 256 else 512
    blocks = np.random.default_rng(1).integers(0, 256, (4, n // m.BLOCK * m.TYPE_SIZE), dtype=np.uint8)
    with np.errstate(all="ignore"):
        want = gguf_quants.dequantize(blocks, GGMLQuantizationType[type_name]).reshape(4, n)
        got = m.dequantize(blocks, n)
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    bad = np.flatnonzero(~same)
    assert bad.size == 0, f"{bad.size} values differ, first at {bad[0]}: {got.flat[bad[0]]!r} vs {want.flat[bad[0]]!r}"


@pytest.mark.parametrize("type_name", TYPES)
def test_empty_input(type_name):
    m = module(type_name)
    x = np.zeros((0, 2 * m.BLOCK), np.float32)
    imatrix = np.ones(2 * m.BLOCK, np.float32)
    row_bytes = 2 * m.TYPE_SIZE
    for fn in (m.quantize, m.quantize_ref):
        assert fn(x, imatrix).shape == (0, row_bytes)
    for fn in (m.dequantize, m.dequantize_ref):
        assert fn(np.zeros((0, row_bytes), np.uint8), 2 * m.BLOCK).shape == (0, 2 * m.BLOCK)
