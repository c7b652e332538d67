"""workbench.cpu.repack: ggml-cpu's repacked AVX2 kernels for Q4_0 / IQ4_NL / Q4_K weights (gemv + gemm of 4 tokens).

The bit-equality with llama.cpp itself is checked with llama-cpp-python by /work/diag/mmcheck.py (not in CI);
here: the kernels against a float reference, against a numpy transcription of ggml's float order, the
token-vectorized kernels against the one-token spec kernels, and the shapes llama.cpp does not repack.
"""
import numpy as np
import pytest

from workbench.gguf import GGMLType
from workbench.cpu import repack
from workbench.cpu.act_quant import prepare_activations
from workbench.cpu.features import hardware_fma
from workbench.quant import dequantize, quantize

TYPES = [GGMLType.Q4_0, GGMLType.IQ4_NL, GGMLType.Q4_K]


def _case(wtype, N=16, K=512, T=7, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((N, K)).astype(np.float32)
    W[:, :8] *= 4.0                                   # uneven magnitudes: scales and mins differ per block
    x = (rng.standard_normal((T, K)) * rng.uniform(0.1, 3.0, (T, 1))).astype(np.float32)
    return quantize(W, wtype), x


def _act(wtype, x):
    return prepare_activations(x, GGMLType.Q8_K if wtype == GGMLType.Q4_K else GGMLType.Q8_0,
                               256 if wtype == GGMLType.Q4_K else 32, True, with_ints=True)


def _fma(a, b, c):
    return np.float32(np.float64(a) * np.float64(b) + np.float64(c))


def _order_reference(rows, wtype, K, x):
    """numpy transcription of ggml's float order (see the module docstring), token by token."""
    _, _, xq, dx = _act(wtype, x)
    T, N = x.shape[0], rows.shape[0]
    out = np.empty((T, N), np.float32)
    f16 = lambda b: b.copy().view(np.float16).astype(np.float32)   # noqa: E731
    xq = xq.astype(np.int64)
    if wtype != GGMLType.Q4_K:
        lut = repack.LUT_Q4_0 if wtype == GGMLType.Q4_0 else repack.LUT_IQ4_NL
        blk = rows.reshape(N, K // 32, 18)
        d = f16(blk[:, :, :2]).reshape(N, K // 32)
        qs = blk[:, :, 2:]
        q = lut[np.concatenate([qs & 15, qs >> 4], axis=2)].astype(np.int64).reshape(N, K)
        isum = (q.reshape(N, 1, K // 32, 32) * xq.reshape(1, T, K // 32, 32)).sum(-1)   # (N, T, nb)
        for r in range(N):
            for t in range(T):
                acc = np.float32(0)
                for b in range(K // 32):
                    acc = _fma(np.float32(isum[r, t, b]), d[r, b] * dx[t, b], acc)
                out[t, r] = acc
        return out
    nb = K // 256
    blk = rows.reshape(N, nb, 144)
    d, dmin = f16(blk[:, :, 0:2]).reshape(N, nb), f16(blk[:, :, 2:4]).reshape(N, nb)
    s = blk[:, :, 4:16].astype(np.int64)
    sc = np.concatenate([s[:, :, 0:4] & 63, (s[:, :, 8:12] & 15) | ((s[:, :, 0:4] >> 6) << 4)], axis=2)
    mn = np.concatenate([s[:, :, 4:8] & 63, (s[:, :, 8:12] >> 4) | ((s[:, :, 4:8] >> 6) << 4)], axis=2)
    qs = blk[:, :, 16:].reshape(N, nb, 4, 32).astype(np.int64)
    q = np.stack([qs & 15, qs >> 4], axis=3).reshape(N, nb, 8, 32)               # sub-block j = 2p + h
    xs = xq.reshape(T, nb, 8, 32)
    dot = np.einsum("nbjl,tbjl->ntbj", q, xs) * sc[:, None]                      # sc_j * isum_j
    mins = xs.sum(-1)[None] * mn[:, None]                                        # m_j * bsum_j
    n_gemm = T - T % 4
    for r in range(N):
        for t in range(T):
            step = 2 if t < n_gemm else 8
            acc = accm = np.float32(0)
            for b in range(nb):
                for j0 in range(0, 8, step):
                    acc = _fma(np.float32(dot[r, t, b, j0:j0 + step].sum()), d[r, b] * dx[t, b], acc)
                    accm = _fma(np.float32(mins[r, t, b, j0:j0 + step].sum()), dmin[r, b] * dx[t, b], accm)
            out[t, r] = acc - accm
    return out


@pytest.mark.parametrize("wtype", TYPES, ids=lambda t: t.name)
def test_close_to_float_reference(wtype):
    rows, x = _case(wtype)
    K = x.shape[1]
    xh = _act(wtype, x)[0]
    ref = xh.astype(np.float64) @ dequantize(rows, wtype, K).astype(np.float64).T
    got = repack.matmul(rows, wtype, K, x)
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < 1e-4, f"{wtype.name}: relative error {err:.3g}, first bad {np.unravel_index(np.abs(got - ref).argmax(), ref.shape)}"


@pytest.mark.parametrize("T", [1, 5, 8])
@pytest.mark.parametrize("wtype", TYPES, ids=lambda t: t.name)
def test_spec_kernel_follows_ggml_order(wtype, T):
    rows, x = _case(wtype, N=8, T=T, seed=T)
    K = x.shape[1]
    want = _order_reference(rows, wtype, K, x)
    got = repack.matmul(rows, wtype, K, x, vectorized=False)
    bad = np.argwhere(got != want)
    assert bad.size == 0, f"{wtype.name} T={T}: {len(bad)} outputs differ, first (t, r) {tuple(bad[0])}, " \
                          f"diff {np.abs(got - want).max():.3g}"


@pytest.mark.skipif(not hardware_fma(), reason="the vectorized kernels need a hardware fma")
@pytest.mark.parametrize("T", [1, 3, 4, 7, 13])
@pytest.mark.parametrize("wtype", TYPES, ids=lambda t: t.name)
def test_vectorized_equals_spec(wtype, T):
    rows, x = _case(wtype, N=24, K=768 if wtype == GGMLType.Q4_K else 320, T=T, seed=10 + T)
    K = x.shape[1]
    a = repack.matmul(rows, wtype, K, x, vectorized=True)
    b = repack.matmul(rows, wtype, K, x, vectorized=False)
    bad = np.argwhere(a != b)
    assert bad.size == 0, f"{wtype.name} T={T}: first differing (t, r) {tuple(bad[0])}, diff {np.abs(a - b).max():.3g}"


@pytest.mark.parametrize("wtype", TYPES, ids=lambda t: t.name)
def test_gemm_groups_and_gemv_remainder(wtype):
    """Tokens 0..3 of a 6-token batch go through the gemm, tokens 4 and 5 through the gemv: the same as a
    4-token batch and as single tokens. (Q4_0/IQ4_NL: gemm and gemv share one order, so any split agrees.)"""
    rows, x = _case(wtype, N=16, T=6, seed=3)
    K = x.shape[1]
    full = repack.matmul(rows, wtype, K, x)
    np.testing.assert_array_equal(full[:4], repack.matmul(rows, wtype, K, x[:4]))
    for t in (4, 5):
        np.testing.assert_array_equal(full[t], repack.matmul(rows, wtype, K, x[t:t + 1])[0])
    if wtype != GGMLType.Q4_K:
        np.testing.assert_array_equal(full[0], repack.matmul(rows, wtype, K, x[:1])[0])


@pytest.mark.parametrize("wtype", TYPES, ids=lambda t: t.name)
def test_experts_go_token_by_token(wtype):
    """mul_mat_id (MoE experts): every token through the one-token kernel, as repack's forward_mul_mat_id
    (checked against llama.cpp: a Q4_0 tiny-mixtral8 gives bit-equal logits)."""
    rows, x = _case(wtype, N=16, T=6, seed=4)
    K = x.shape[1]
    experts = repack.matmul(rows, wtype, K, x, mul_mat_id=True)
    single = np.concatenate([repack.matmul(rows, wtype, K, x[t:t + 1]) for t in range(6)])
    np.testing.assert_array_equal(experts, single)


def test_not_repacked_cases_return_none():
    rows, x = _case(GGMLType.Q4_0, N=12, K=64, T=2)
    assert repack.matmul(rows, GGMLType.Q4_0, 64, x) is None            # 12 rows: not a multiple of 8
    rows, x = _case(GGMLType.Q4_0, N=8, K=64, T=2)
    assert repack.matmul(rows, GGMLType.Q4_1, 64, x) is None            # not a repacked type here
    assert repack.matmul(rows, GGMLType.Q4_0, 64, x[:0]).shape == (0, 8)
    assert set(repack.SUPPORTED) == set(TYPES)

