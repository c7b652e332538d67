"""The one-token kernels written as LLVM vector code (workbench.cpu.vec_dot_kquants, repack_gemv, and the Q5_0 /
Q5_1 ones of vec_dot_q5) must give, bit for bit, the sums of the scalar statements of ggml's AVX2 order
(tiled.kquant_q8_K with tiled=False, repack.q4_K_q8_K with n_gemm=0 and b32_q8_0, vec_dot_q5.q5_0_q8_0 /
q5_1_q8_1), with ggml's x86 instructions and with the portable integer code, on random block bytes (every bit
pattern of quants and scales), extreme fp16 scales, odd row counts and strided rows; and tiled / repack.matmul
must route few tokens through them."""
from __future__ import annotations

import numpy as np
import pytest

from workbench.gguf import GGMLType
from workbench.cpu import tiled as ek
from workbench.cpu import vec_dot_q5 as el
from workbench.cpu import repack as er
from workbench.cpu import repack_gemv
from workbench.cpu import vec_dot_kquants as lk
from workbench.cpu.act_quant import prepare_activations, q8_K_token, vec_dot_type
from workbench.cpu.features import has_avx2

# where each type keeps its fp16 scales (d, and dmin where it has one) inside a block
_F16_AT = {GGMLType.Q6_K: (208,), GGMLType.Q4_K: (0, 2), GGMLType.Q5_K: (0, 2), GGMLType.Q3_K: (108,),
           GGMLType.Q2_K: (80, 82), GGMLType.IQ4_XS: (0,), GGMLType.Q4_0: (0,), GGMLType.IQ4_NL: (0,),
           GGMLType.Q5_0: (0,), GGMLType.Q5_1: (0, 2)}
TYPES = list(_F16_AT)
_MATVEC = {**lk.MATVEC, **repack_gemv.MATVEC, **el.MATVEC}
_KERNELS = {t: _MATVEC[t.name][::-1] for t in TYPES}      # (portable, AVX2)
_EXTREMES = np.array([65504.0, -65504.0, 6e-8, -6e-8, 0.0, 1.0, -2.5e-3, 1e-4], np.float16)


def _random_rows(wtype, N, K, seed):
    """Random block bytes; the fp16 scales random normal * 0.02, with one block per row of extreme ones."""
    rng = np.random.default_rng(seed)
    nb = K // wtype.block_size
    rows = rng.integers(0, 256, (N, nb, wtype.type_size), dtype=np.uint8)
    for o in _F16_AT[wtype]:
        d = (rng.standard_normal((N, nb)) * 0.02).astype(np.float16)
        d[:, rng.integers(0, nb)] = rng.choice(_EXTREMES, N)
        rows[:, :, o:o + 2] = d.view(np.uint8).reshape(N, nb, 2)
    return rows.reshape(N, -1)


def _activations(K, seed, T=1):
    x = np.random.default_rng(seed).standard_normal((T, K)).astype(np.float32)
    x[:, :7] *= 40                                   # an outlier, as real activations have
    if K >= 1024:
        x[:, 256:512] = 0.0                          # a block of zeros (d = 0)
        x[:, 512:768] *= np.float32(1e-30)
        x[:, 768:1024] *= np.float32(1e15)
    return x


def _spec(wtype, rows, K, x):
    """The scalar statement of ggml's order on prepare_activations' Q8_K values, token by token."""
    T = x.shape[0]
    out = np.empty((T, rows.shape[0]), np.float32)
    if wtype in (GGMLType.Q5_0, GGMLType.Q5_1):
        _, s, xq, dx = prepare_activations(x, vec_dot_type(wtype), 32, True, with_ints=True)
        if wtype == GGMLType.Q5_0:
            el.q5_0_q8_0(np.ascontiguousarray(rows), K, xq, dx, out)
        else:
            el.q5_1_q8_1(np.ascontiguousarray(rows), K, xq, dx, s, out)
        return out
    if wtype in (GGMLType.Q4_0, GGMLType.IQ4_NL):
        _, _, xq, dx = prepare_activations(x, GGMLType.Q8_0, 32, True, with_ints=True)
        er.b32_q8_0(np.ascontiguousarray(rows), K, er._B32[wtype], xq, dx, out)
        return out
    if wtype == GGMLType.Q4_K:
        _, _, xq, dx = prepare_activations(x, GGMLType.Q8_K, 256, True, with_ints=True)
        er.q4_K_q8_K(np.ascontiguousarray(rows), K, xq, dx, 0, out)
        return out
    _, _, xq, dx = prepare_activations(x, GGMLType.Q8_K, 16, True, with_ints=True)
    xq32 = xq.astype(np.int32)
    bs = xq32.reshape(T, K // 16, 16).sum(axis=2, dtype=np.int32)
    ek.kquant_q8_K(np.ascontiguousarray(rows), ek._KIND[wtype], K, xq32, np.ascontiguousarray(xq32.T),
                   np.ascontiguousarray(dx.T), np.ascontiguousarray(bs.T), False, out)
    return out


def _check(got, ref):
    bad = np.flatnonzero(~((got == ref) | (np.isnan(got) & np.isnan(ref))))
    if bad.size:
        i = bad[0]
        raise AssertionError(f"{bad.size} rows differ, first row {i}: {got[i]!r} vs {ref[i]!r} "
                             f"(diff {abs(float(got[i]) - float(ref[i])):.3g})")


@pytest.mark.parametrize("avx2", [False, True])
@pytest.mark.parametrize("wtype", TYPES)
@pytest.mark.parametrize("N,K", [(1, 256), (7, 512), (64, 1536), (129, 4096), (9, 576)])
def test_matvec_equals_scalar_order(wtype, N, K, avx2):
    if avx2 and not has_avx2():
        pytest.skip("no AVX2 on this host")
    if K % wtype.block_size:
        pytest.skip("K is not a multiple of the block size")
    rows = _random_rows(wtype, N, K, seed=N * 7 + K)
    for seed in range(2):
        x = _activations(K, seed=K + seed)
        ref = _spec(wtype, rows, K, x)[0]
        got = np.full(N, np.nan, np.float32)
        _KERNELS[wtype][avx2](rows, K, x[0], got)
        _check(got, ref)


@pytest.mark.parametrize("wtype", TYPES)
def test_quantized_blocks_and_strided_rows(wtype):
    """Real quantized blocks (workbench.quant); for Q6_K and Q4_K read through a view of every other row
    (one more compilation per kernel: the other types share the same row addressing)."""
    from workbench.quant import quantize
    K = 1024
    W = np.random.default_rng(5).standard_normal((40, K)).astype(np.float32)
    rows = quantize(W, wtype)
    rows = rows[::2] if wtype in (GGMLType.Q6_K, GGMLType.Q4_K) else rows[:20]
    x = _activations(K, seed=6)
    ref = _spec(wtype, rows, K, x)[0]
    for kernel in _KERNELS[wtype][:2 if has_avx2() else 1]:
        got = np.empty(rows.shape[0], np.float32)
        kernel(rows, K, x[0], got)
        _check(got, ref)


@pytest.mark.parametrize("N,strided", [(16, False), (37, False), (130, True)])
def test_q4_0_gemv_variants(N, strided):
    """Every Q4_0 gemv this host can run (16 rows per vector on AVX-512 VNNI, 4 rows with AVX2's instructions,
    portable) gives the scalar order's bits: whole 16-row groups, 4-row groups after them, a tail of 1-3 rows,
    rows read through a view."""
    from workbench.cpu import gemm_tiles
    K = 1024
    rows = _random_rows(GGMLType.Q4_0, 2 * N if strided else N, K, seed=N)
    rows = rows[::2] if strided else rows
    kernels = [repack_gemv.q4_0_matvec_portable] + ([repack_gemv.q4_0_matvec_avx2] if has_avx2() else []) + \
        ([repack_gemv.q4_0_matvec_vnni] if gemm_tiles.variant() == "vnni512" else [])
    _all_kernels_agree(GGMLType.Q4_0, rows, K, kernels)


@pytest.mark.parametrize("N,strided", [(16, False), (37, True)])
def test_q4_K_gemv_variants(N, strided):
    """The Q4_K gemv with 16 rows per vector (AVX-512 hosts), beside the one-row kernels: the scalar order's bits,
    with a tail of single rows after the 16-row groups, and rows read through a view."""
    from workbench.cpu import gemm_tiles
    K = 1024
    rows = _random_rows(GGMLType.Q4_K, 2 * N if strided else N, K, seed=N)
    rows = rows[::2] if strided else rows
    kernels = [repack_gemv.q4_K_matvec_portable] + ([repack_gemv.q4_K_matvec_avx2] if has_avx2() else []) + \
        ([repack_gemv.q4_K_matvec_avx512] if gemm_tiles.variant() == "vnni512" else [])
    _all_kernels_agree(GGMLType.Q4_K, rows, K, kernels)


def _all_kernels_agree(wtype, rows, K, kernels):
    N = rows.shape[0]
    for seed in range(2):
        x = _activations(K, seed=seed)
        x[0, 32:64] = 127.0 / 4                      # a block of equal activations: |q| = 127 everywhere
        ref = _spec(wtype, rows, K, x)[0]
        for kernel in kernels:
            got = np.full(N, np.nan, np.float32)
            kernel(rows, K, x[0], got)
            _check(got, ref)


@pytest.mark.parametrize("seed", range(3))
def test_q8_K_token_is_quantize_row_q8_K(seed):
    """q8_K_token gives prepare_activations' int8 values and scales, and block_q8_K's bsums (per 16)."""
    x = _activations(1536, seed)
    x[0, 1100] = -x[0, 1024:1280].max() * 2         # the largest |x| negative in one block
    x[0, 1300] = 7.0
    x[0, 1301] = -7.0                                # +max and -max: the first one wins
    _, _, xq, dx = prepare_activations(x, GGMLType.Q8_K, 16, True, with_ints=True)
    q, d, bs16, bs32 = q8_K_token(x[0])
    np.testing.assert_array_equal(q, xq[0])
    np.testing.assert_array_equal(d, dx[0])
    np.testing.assert_array_equal(bs16, xq[0].astype(np.int32).reshape(-1, 16).sum(axis=1))
    np.testing.assert_array_equal(bs32, xq[0].astype(np.int32).reshape(-1, 32).sum(axis=1))


@pytest.mark.parametrize("T,wtype", [(1, GGMLType.Q6_K), (3, GGMLType.Q5_K), (7, GGMLType.Q6_K),
                                     (2, GGMLType.Q2_K), (1, GGMLType.IQ4_XS), (1, GGMLType.Q3_K)])
def test_kquants_matmul_few_tokens(T, wtype):
    """tiled.matmul below 8 tokens (vec_dot token by token) goes through the vector kernel and
    keeps the spec's bits; close to the float product of the dequantized rows."""
    from workbench.quant import dequantize
    K, N = 1536, 48
    rows = _random_rows(wtype, N, K, seed=T)
    x = np.random.default_rng(T).standard_normal((T, K)).astype(np.float32)
    got = ek.matmul(rows, wtype, K, x)
    for t in range(T):
        _check(got[t], _spec(wtype, rows, K, x[t:t + 1])[0])
    exact = x.astype(np.float64) @ dequantize(rows, wtype, K).astype(np.float64).T
    assert np.abs(got - exact).max() <= 0.02 * np.abs(exact).max()


@pytest.mark.parametrize("T,mul_mat_id,wtype", [(1, False, GGMLType.Q4_K), (3, False, GGMLType.Q4_K),
                                                (2, True, GGMLType.Q4_K), (1, False, GGMLType.Q4_0),
                                                (2, False, GGMLType.IQ4_NL)])
def test_repack_matmul_few_tokens(T, mul_mat_id, wtype):
    """repack.matmul below 4 tokens (all gemv) goes through the vector kernel: same bits as the
    scalar kernel (vectorized=False keeps the spec path)."""
    K, N = 512, 24
    rows = _random_rows(wtype, N, K, seed=11 + T)
    x = np.random.default_rng(T).standard_normal((T, K)).astype(np.float32)
    got = er.matmul(rows, wtype, K, x, mul_mat_id)
    ref = er.matmul(rows, wtype, K, x, mul_mat_id, vectorized=False)
    for t in range(T):
        _check(got[t], ref[t])
    assert lk.matvec(rows, "IQ2_XXS", 512, x, got) is False    # no kernel: the caller's own path
