"""workbench.cpu.vec_dot_ir / vec_dot_avx2 / sgemm_f16: the Q4_1, Q8_0 and F16 kernels written as LLVM vector code
must give, bit for bit, the sums of the scalar statements of ggml's order (cpu/vec_dot.py), on random block bytes
(every nibble and int8 pattern), odd row and token counts and the row lengths SmolLM2 and 7B models use."""
from __future__ import annotations

import numpy as np
import pytest

from workbench.gguf import GGMLType
from workbench.cpu.act_quant import prepare_activations, q8_lanes, vec_dot_type
from workbench.cpu.vec_dot import q4_1_q8_1, q8_0_q8_0
from workbench.cpu.vec_dot_avx2 import q4_1_matmul_avx2, q4_1_matvec_avx2, q8_0_matmul_avx2, q8_0_matvec_avx2
from workbench.cpu.sgemm_f16 import _f16_matmul, f16_matmul, f16_matvec
from workbench.cpu.vec_dot_ir import lane_order, q4_1_matvec, q8_0_matvec
from workbench.cpu.features import has_avx2, host_feature
from workbench.llama.matmul import matmul_raw


def _random_rows(wtype, N, K, seed):
    """Random block bytes with finite fp16 scales (d, and m for Q4_1) at the start of each block."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, 256, (N, K // 32, wtype.type_size), dtype=np.uint8)
    n_half = 2 if wtype == GGMLType.Q4_1 else 1
    scales = (rng.standard_normal((N, K // 32, n_half)) * 0.02).astype(np.float16)
    rows[:, :, :2 * n_half] = scales.view(np.uint8).reshape(N, K // 32, 2 * n_half)
    return rows.reshape(N, -1)


def _activations(wtype, K, seed):
    x = np.random.default_rng(seed).standard_normal((1, K)).astype(np.float32)
    x[0, :7] *= 40                                     # an outlier block, as real activations have
    _, s, xq, dx = prepare_activations(x, vec_dot_type(wtype), 32, True, with_ints=True)
    return x, s, xq, dx


def test_lane_order():
    xq = np.arange(64, dtype=np.int8)[None]
    xl = lane_order(xq)
    assert xl.shape == (1, 2, 4, 8) and xl.dtype == np.float32
    assert xl[0, 1, 2, 3] == 32 + 4 * 3 + 2            # [t, b, k, l] = x[32 b + 4 l + k]


_MATVEC = {(GGMLType.Q4_1, False): q4_1_matvec, (GGMLType.Q4_1, True): q4_1_matvec_avx2,
           (GGMLType.Q8_0, False): q8_0_matvec, (GGMLType.Q8_0, True): q8_0_matvec_avx2}


def _spec(wtype, rows, K, x):
    """exact_dots' scalar statement of ggml's order on prepare_activations' Q8 values."""
    _, s, xq, dx = prepare_activations(x, vec_dot_type(wtype), 32, True, with_ints=True)
    ref = np.empty((1, rows.shape[0]), np.float32)
    if wtype == GGMLType.Q4_1:
        q4_1_q8_1(rows, K, xq, dx, s, ref)
    else:
        q8_0_q8_0(np.ascontiguousarray(rows), K, xq, dx, ref)
    return ref[0]


@pytest.mark.parametrize("avx2", [False, True])
@pytest.mark.parametrize("wtype", [GGMLType.Q4_1, GGMLType.Q8_0])
@pytest.mark.parametrize("N,K", [(1, 32), (7, 64), (129, 576), (64, 1536), (33, 4096)])
def test_matvec_equals_scalar_order(wtype, N, K, avx2):
    if avx2 and not has_avx2():
        pytest.skip("no AVX2 on this host")
    rows = _random_rows(wtype, N, K, seed=N * 7 + K)
    if wtype == GGMLType.Q8_0:
        rows.reshape(N, K // 32, 34)[0, 0, 2:6] = [0x80, 0x7F, 0x80, 0x81]   # -128 weights: psign's edge
    x, _, _, _ = _activations(wtype, K, seed=K)
    ref = _spec(wtype, rows, K, x)
    got = np.full(N, np.nan, np.float32)
    _MATVEC[wtype, avx2](rows, K, x[0], got)
    assert np.isfinite(ref).all()
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("wtype", [GGMLType.Q4_1, GGMLType.Q8_0])
def test_matmul_raw_one_token_is_the_matvec(wtype):
    """matmul_raw's one-token path (generation) gives the same bits as the scalar spec and stays close to
    the float product of the dequantized rows."""
    N, K = 96, 576
    rows = _random_rows(wtype, N, K, seed=3)
    x, _, _, _ = _activations(wtype, K, seed=4)
    got = matmul_raw(rows, wtype, K, x)
    np.testing.assert_array_equal(got[0], _spec(wtype, rows, K, x))
    from workbench.quant import dequantize
    exact = x.astype(np.float64) @ dequantize(rows, wtype, K).astype(np.float64).T
    assert np.abs(got - exact).max() <= 0.02 * np.abs(exact).max()


def test_rows_with_a_stride():
    """A view of every other row (a row stride bigger than the row) reads the right bytes."""
    K = 64
    rows = _random_rows(GGMLType.Q8_0, 20, K, seed=9)
    x, _, _, _ = _activations(GGMLType.Q8_0, K, seed=10)
    ref = _spec(GGMLType.Q8_0, rows[::2], K, x)
    for avx2 in (False, True) if has_avx2() else (False,):
        got = np.empty(10, np.float32)
        _MATVEC[GGMLType.Q8_0, avx2](rows[::2], K, x[0], got)
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("wtype", [GGMLType.Q4_1, GGMLType.Q8_0])
def test_q8_lanes_is_quantize_row_q8(wtype, seed):
    """q8_lanes gives prepare_activations' integers (also in lane order), scales and block sums, on blocks
    with an outlier, all zeros, and tiny or huge values."""
    x = np.random.default_rng(seed).standard_normal((1, 576)).astype(np.float32)
    x[0, :7] *= 40
    x[0, 32:64] = 0.0
    x[0, 64:96] *= np.float32(1e-30)
    x[0, 96:128] *= np.float32(1e30)
    _, s, xq, dx = prepare_activations(x, vec_dot_type(wtype), 32, True, with_ints=True)
    xqq, xl, dl, sl = q8_lanes(x[0], 1 if wtype == GGMLType.Q4_1 else 0)
    np.testing.assert_array_equal(xqq, xq[0])
    np.testing.assert_array_equal(xl, lane_order(xq)[0])
    np.testing.assert_array_equal(dl, dx[0])
    np.testing.assert_array_equal(sl, s[0])


def test_half_to_float_is_exact():
    """ir.half_to_float (read by the attention kernels on the fp16 cache), through _keys_by_row."""
    from workbench.cpu.attention_f16 import _keys_by_row
    v = np.concatenate([np.random.default_rng(1).standard_normal(1000) * 300,
                        [0.0, -0.0, 6e-8, -6e-8, 65504, np.inf, -np.inf, np.nan]]).astype(np.float16)
    bits = v.view(np.uint16).reshape(-1, 8)
    n = bits.shape[0] - 1
    got = _keys_by_row(bits, n)
    want = v.astype(np.float32).reshape(-1, 8)[:-1].T
    assert got.shape == (8, -(-n // 16) * 16)                     # keys padded to whole vectors of 16 with zeros
    np.testing.assert_array_equal(got[:, :n].view(np.uint32), want.view(np.uint32))
    assert not got[:, n:].any()


@pytest.mark.parametrize("N,K", [(1, 32), (9, 40), (130, 576), (33, 1536), (5, 4100)])
def test_f16_matvec_is_vec_dot_f16(N, K):
    """f16_matvec == float_rows_exact's ggml_vec_dot_f16 order bit for bit (tails K % 32 included)."""
    if not has_avx2():
        pytest.skip("no AVX2 on this host")
    from workbench.cpu.vec_dot import float_rows_exact
    rng = np.random.default_rng(N + K)
    W = (rng.standard_normal((N, K)) * 0.05).astype(np.float16)
    x = rng.standard_normal((1, K)).astype(np.float32) * 3
    xh, _ = prepare_activations(x, GGMLType.F16, K, True)
    ref = np.empty((1, N), np.float32)
    float_rows_exact(W.view(np.uint8), int(GGMLType.F16), K, xh, ref, False)
    got = np.full(N, np.nan, np.float32)
    f16_matvec(W.view(np.uint16), K, x[0], got)
    np.testing.assert_array_equal(got, ref[0])
    np.testing.assert_array_equal(matmul_raw(W.view(np.uint8), GGMLType.F16, K, x), ref)


@pytest.mark.parametrize("wtype", [GGMLType.Q4_1, GGMLType.Q8_0])
@pytest.mark.parametrize("T,N,K", [(2, 5, 32), (7, 33, 64), (8, 16, 576), (19, 40, 1536), (21, 9, 16384)])
def test_matmul_avx2_is_one_token_order_per_token(wtype, T, N, K):
    """Prompt batches (tokens in tiles of _RN plus a tail): every (token, row) sum equals the scalar spec."""
    if not has_avx2():
        pytest.skip("no AVX2 on this host")
    rows = _random_rows(wtype, N, K, seed=T * N)
    if wtype == GGMLType.Q8_0:
        rows.reshape(N, K // 32, 34)[0, 0, 2:6] = [0x80, 0x7F, 0x80, 0x81]
    x = np.random.default_rng(T).standard_normal((T, K)).astype(np.float32)
    x[:, :5] *= 30
    _, s, xq, dx = prepare_activations(x, vec_dot_type(wtype), 32, True, with_ints=True)
    ref = np.empty((T, N), np.float32)
    got = np.full((T, N), np.nan, np.float32)
    if wtype == GGMLType.Q4_1:
        q4_1_q8_1(rows, K, xq, dx, s, ref)
        q4_1_matmul_avx2(rows, K, xq, dx, s, got, 2)
    else:
        q8_0_q8_0(rows, K, xq, dx, ref)
        q8_0_matmul_avx2(rows, K, xq, dx, got, 2)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(matmul_raw(rows, wtype, K, x), ref)


@pytest.mark.parametrize("T,N,K", [(2, 1, 8), (5, 3, 40), (9, 17, 576), (12, 8, 1536), (19, 11, 64), (21, 9, 8192)])
def test_f16_matmul_is_tinyblas_order(T, N, K):
    """f16_matmul (tiles of 2 rows x 4 tokens plus odd rows / tokens; on AVX-512 tiles of 4 rows x 8 tokens, two
    rows per 512-bit vector; blocks of tokens when K is large) == float_rows_batch bit for bit."""
    if not has_avx2():
        pytest.skip("no AVX2 on this host")
    from workbench.cpu.vec_dot import float_rows_batch
    rng = np.random.default_rng(T * 100 + N)
    W = (rng.standard_normal((N, K)) * 0.05).astype(np.float16)
    x = rng.standard_normal((T, K)).astype(np.float32) * 3
    xh, _ = prepare_activations(x, GGMLType.F16, K, True)
    ref = np.empty((T, N), np.float32)
    float_rows_batch(W.view(np.uint8), int(GGMLType.F16), K, np.ascontiguousarray(xh.T), ref)
    got = np.full((T, N), np.nan, np.float32)
    f16_matmul(W.view(np.uint16), K, xh, got, 2)
    np.testing.assert_array_equal(got, ref)
    if host_feature("avx512f"):                     # both tile families on an AVX-512 host
        got = np.full((T, N), np.nan, np.float32)
        _f16_matmul(W.view(np.uint16), K, xh, got, 2)
        np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(matmul_raw(W.view(np.uint8), GGMLType.F16, K, x), ref)
