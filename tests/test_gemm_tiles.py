"""workbench.cpu.gemm_tiles / gemm_q8_0: the many-token integer tiles (rows x tokens) of repacked Q4_0 / Q4_K, tiled
Q6_K and Q8_0, each variant this host can run (portable; AVX2; AVX-512 VNNI) against the readable spec kernels, bit
for bit."""
import numpy as np
import pytest

from workbench.gguf import GGMLType
from workbench.cpu import gemm_q8_0, gemm_tiles, repack, tiled, vec_dot
from workbench.cpu.act_quant import prepare_activations
from workbench.cpu.features import has_avx2
from workbench.quant import quantize


def _case(wtype, N, K, T, seed):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((N, K)).astype(np.float32)
    W[:, :8] *= 4.0                                   # uneven magnitudes: scales and mins differ per block
    x = (rng.standard_normal((T, K)) * rng.uniform(0.1, 3.0, (T, 1))).astype(np.float32)
    x[0] = np.where(np.arange(K) % 3 == 0, -1.0, 1.0)  # every |q_x| = 127: the int16 bound of the AVX2 variant
    return quantize(W, wtype), x


def _act(wtype, x):
    return prepare_activations(x, GGMLType.Q8_0 if wtype == GGMLType.Q4_0 else GGMLType.Q8_K,
                               32 if wtype == GGMLType.Q4_0 else 256, True, with_ints=True)


def _same_bits(got, want, kind):
    bad = np.argwhere(got.view(np.uint32) != want.view(np.uint32))
    assert bad.size == 0, f"{kind}: {len(bad)} outputs differ, first (t, r) {tuple(bad[0])}"


def _gemm_kinds():
    """The gemm_tiles variants this host can run (VNNI-512 and AVX2 only where the CPU has them)."""
    kinds = ["portable"]
    if has_avx2():
        kinds.append("avx2")
    if gemm_tiles.variant() == "vnni512":
        kinds.append("vnni512")
    return kinds


@pytest.mark.parametrize("kind", _gemm_kinds())
@pytest.mark.parametrize("N,K,T", [(16, 320, 1), (32, 64, 7), (48, 512, 13), (16, 32, 8)])
def test_q4_0_gemm_tiles_equal_spec(kind, N, K, T):
    """gemm_tiles's tiled Q4_0 product (nibbles unpacked per tile of rows, integer sums by vpdpbusd / vpmaddubsw,
    8 * block sums subtracted) gives the one-token spec's bits for every token, padded token tiles included;
    extreme activations (+-127 everywhere) reach the int16 bound of the AVX2 variant."""
    rows, x = _case(GGMLType.Q4_0, N=N, K=K, T=T, seed=N + T)
    _, _, xq, dx = _act(GGMLType.Q4_0, x)
    want = np.empty((T, N), np.float32)
    repack.b32_q8_0(rows, K, repack.LUT_Q4_0, xq, dx, want)
    got = np.full((T, N), np.nan, np.float32)
    assert gemm_tiles.q4_0_gemm(rows, K, xq, dx, got, 2, kind)
    assert kind == gemm_tiles.variant() or ("q4_0", kind) in gemm_tiles.GENERATED   # not the host's variant again
    _same_bits(got, want, kind)


def test_q4_0_gemm_declines_partial_row_tiles():
    rows, x = _case(GGMLType.Q4_0, N=8, K=64, T=4, seed=1)
    _, _, xq, dx = _act(GGMLType.Q4_0, x)
    out = np.zeros((4, 8), np.float32)
    assert not gemm_tiles.q4_0_gemm(rows, 64, xq, dx, out, 2, "vnni512")     # 16-row tiles: 8 rows decline
    assert not out.any()
    np.testing.assert_array_equal(repack.matmul(rows, GGMLType.Q4_0, 64, x, vectorized=True),
                                  repack.matmul(rows, GGMLType.Q4_0, 64, x, vectorized=False))


@pytest.mark.parametrize("kind", _gemm_kinds())
@pytest.mark.parametrize("gemm_order", [True, False], ids=["gemm", "gemv"])
@pytest.mark.parametrize("N,K,T", [(16, 256, 1), (32, 512, 6), (48, 768, 9)])
def test_q4_K_gemm_tiles_equal_spec(kind, gemm_order, N, K, T):
    """gemm_tiles's tiled Q4_K product gives repack.q4_K_q8_K's bits: the gemm's fma pair per two sub-blocks
    (gemm_order) or the gemv's per super-block, for every token of a padded token tile."""
    rows, x = _case(GGMLType.Q4_K, N=N, K=K, T=T, seed=N + T)
    _, _, xq, dx = _act(GGMLType.Q4_K, x)
    want = np.empty((T, N), np.float32)
    repack.q4_K_q8_K(rows, K, xq, dx, T if gemm_order else 0, want)
    got = np.full((T, N), np.nan, np.float32)
    assert gemm_tiles.q4_K_gemm(rows, K, xq, dx, got, 2, gemm_order, kind)
    assert kind == gemm_tiles.variant() or ("q4_K gemm" if gemm_order else "q4_K gemv", kind) in gemm_tiles.GENERATED
    _same_bits(got, want, kind)


@pytest.mark.parametrize("kind", _gemm_kinds())
@pytest.mark.parametrize("N,K,T", [(16, 256, 8), (32, 512, 9), (48, 768, 17)])
def test_q6_K_gemm_tiles_equal_tiled_spec(kind, N, K, T):
    """gemm_tiles' Q6_K product gives the bits of tiled.kquant_q8_K's tiled path (ggml's tiled.cpp, 8 tokens or
    more): per super-block the integer sum with the -32 offset, d_w * s1, fma with d_x."""
    rows, x = _case(GGMLType.Q6_K, N=N, K=K, T=T, seed=N + T)
    want = tiled.matmul(rows, GGMLType.Q6_K, K, x, vector=False)
    _, _, xq, dx = _act(GGMLType.Q6_K, x)
    got = np.full((T, N), np.nan, np.float32)
    assert gemm_tiles.q6_K_gemm(rows, K, xq, dx, got, 2, kind)
    assert kind == gemm_tiles.variant() or ("q6_K", kind) in gemm_tiles.GENERATED
    _same_bits(got, want, kind)
    np.testing.assert_array_equal(tiled.matmul(rows, GGMLType.Q6_K, K, x), want)    # the dispatch takes the tiles


@pytest.mark.skipif(gemm_tiles.variant() != "vnni512", reason="the Q8_0 pair tiles need AVX-512 VNNI")
@pytest.mark.parametrize("N,K,T", [(5, 64, 3), (9, 96, 17), (16, 512, 8), (3, 32, 2), (37, 16384, 21)])
def test_q8_0_pair_tiles_equal_vec_dot(N, K, T):
    """gemm_tiles' Q8_0 product (two tokens per 512-bit vector, weights as w + 128 with the -128 * sum(x) start)
    gives ggml_vec_dot_q8_0_q8_0's bits (vec_dot.q8_0_q8_0) for every (row, token): row and token remainders,
    token blocks (K = 16384), and the extreme weights -128 and 127 included."""
    rows, x = _case(GGMLType.Q8_0, N=N, K=K, T=T, seed=N + T)
    rows.reshape(N, K // 32, 34)[0, 0, 2:6] = [0x80, 0x7F, 0x80, 0x81]
    _, _, xq, dx = _act(GGMLType.Q4_0, x)
    want = np.empty((T, N), np.float32)
    vec_dot.q8_0_q8_0(rows, K, xq, dx, want)
    got = np.full((T, N), np.nan, np.float32)
    assert gemm_q8_0.q8_0_gemm(rows, K, xq, dx, got, 2)
    _same_bits(got, want, "vnni512")


@pytest.mark.skipif(gemm_tiles.variant() != "vnni512", reason="the Q8_0 row-pair gemv needs AVX-512 VNNI")
@pytest.mark.parametrize("N,K,strided", [(8, 64, False), (13, 4096, False), (1, 96, False), (21, 512, True)])
def test_q8_0_gemv_row_pairs_equal_vec_dot(N, K, strided):
    """gemm_q8_0's one-token kernel (two rows per 512-bit vector, 8 rows per call, the last group partial) gives
    ggml_vec_dot_q8_0_q8_0's bits for every row, the extreme weights included, rows read through a view."""
    rows, x = _case(GGMLType.Q8_0, N=2 * N if strided else N, K=K, T=1, seed=N)
    rows.reshape(-1, K // 32, 34)[0, 0, 2:6] = [0x80, 0x7F, 0x80, 0x81]
    rows = rows[::2] if strided else rows
    _, _, xq, dx = _act(GGMLType.Q4_0, x)
    want = np.empty((1, N), np.float32)
    vec_dot.q8_0_q8_0(np.ascontiguousarray(rows), K, xq, dx, want)
    got = np.full(N, np.nan, np.float32)
    gemm_q8_0.q8_0_matvec_vnni(rows, K, x[0], got)
    _same_bits(got[None], want, "vnni512")
