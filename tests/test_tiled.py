"""workbench.cpu.tiled: the AVX2 vec_dot / tiled sums of Q6_K, Q5_K, Q3_K, IQ4_XS, Q2_K against a numpy spec.

The spec below decodes the blocks with vectorized numpy (independently of the numba decoder; the decode
is itself checked against workbench.quant.dequantize) and writes ggml's float structure plainly:
  vec_dot (ggml_vec_dot_*_q8_K, AVX2, < 8 tokens): lane k of a super-block = the products of elements
      32c + 4k .. +3 (Q6_K: unsigned q, minus q8sclsub), acc_k = fma(d_y * d_w, lane, acc_k), hsum_float_8
      (+ summs = fma(-d_y * dmin_w, mins . bsums, summs) for Q5_K; Q2_K: a mins fma per lane first)
  tiled (tiled_run_microtile_avx2, >= 8 tokens): res = d_w * s1 (Q5_K / Q2_K: fnmadd dmin_w * s2),
      out = fma(res, d_y, out)
The bit-equality with llama.cpp itself is checked by /work/diag/mmcheck.py (needs llama-cpp-python).
"""
import numpy as np
import pytest

from workbench.gguf import GGMLType
from workbench.cpu import tiled as ek
from workbench.cpu.act_quant import prepare_activations
from workbench.cpu.features import contracted, hardware_fma
from workbench.quant import dequantize

TYPES = [GGMLType.Q6_K, GGMLType.Q5_K, GGMLType.Q3_K, GGMLType.IQ4_XS, GGMLType.Q2_K]
KV = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int64)


def _f16(b, o):
    return b[:, o:o + 2].copy().view(np.float16)[:, 0].astype(np.float32)


def decode(blocks, wtype):
    """blocks (nb, type_size) -> (q (nb, 256) int64 as the AVX2 kernel multiplies it, scale per element
    (nb, 256), d, dmin, mins per 16 elements (nb, 16))."""
    nb = blocks.shape[0]
    q = np.zeros((nb, 256), np.int64)
    dmin = np.zeros(nb, np.float32)
    mins = np.zeros((nb, 16), np.int64)
    if wtype == GGMLType.Q6_K:
        ql, qh = blocks[:, :128].astype(np.int64), blocks[:, 128:192].astype(np.int64)
        for n in range(2):
            lo, hi, h = ql[:, 64 * n:64 * n + 32], ql[:, 64 * n + 32:64 * n + 64], qh[:, 32 * n:32 * n + 32]
            for j, (nib, sh) in enumerate([(lo & 15, 0), (hi & 15, 2), (lo >> 4, 4), (hi >> 4, 6)]):
                q[:, 128 * n + 32 * j:128 * n + 32 * j + 32] = nib | (((h >> sh) & 3) << 4)
        sc = np.repeat(blocks[:, 192:208].view(np.int8).astype(np.int64), 16, axis=1)
        return q, sc, _f16(blocks, 208), dmin, mins
    if wtype == GGMLType.Q5_K:
        s = blocks[:, 4:16].astype(np.int64)
        scs = np.zeros((nb, 8), np.int64)
        for j in range(8):
            if j < 4:
                scs[:, j], mins[:, 2 * j] = s[:, j] & 63, s[:, j + 4] & 63
            else:
                scs[:, j] = (s[:, j + 4] & 15) | ((s[:, j - 4] >> 6) << 4)
                mins[:, 2 * j] = (s[:, j + 4] >> 4) | ((s[:, j] >> 6) << 4)
            mins[:, 2 * j + 1] = mins[:, 2 * j]
        qh, qs = blocks[:, 16:48].astype(np.int64), blocks[:, 48:176].astype(np.int64)
        for j in range(4):
            b = qs[:, 32 * j:32 * j + 32]
            q[:, 64 * j:64 * j + 32] = (b & 15) + (((qh >> (2 * j)) & 1) << 4)
            q[:, 64 * j + 32:64 * j + 64] = (b >> 4) + (((qh >> (2 * j + 1)) & 1) << 4)
        return q, np.repeat(scs, 32, axis=1), _f16(blocks, 0), _f16(blocks, 2), mins
    if wtype == GGMLType.Q3_K:
        hm, qs = blocks[:, :32].astype(np.int64), blocks[:, 32:96].astype(np.int64)
        aux = blocks[:, 96:108].copy().view("<u4").astype(np.int64)       # the kmask unpacking, on words
        k1, k2 = 0x03030303, 0x0F0F0F0F
        words = np.stack([(aux[:, 0] & k2) | (((aux[:, 2] >> 0) & k1) << 4),
                          (aux[:, 1] & k2) | (((aux[:, 2] >> 2) & k1) << 4),
                          ((aux[:, 0] >> 4) & k2) | (((aux[:, 2] >> 4) & k1) << 4),
                          ((aux[:, 1] >> 4) & k2) | (((aux[:, 2] >> 6) & k1) << 4)], axis=1).astype("<u4")
        scs = words.view(np.uint8).astype(np.int64) - 32
        for n in range(2):
            for j in range(4):
                low = (qs[:, 32 * n:32 * n + 32] >> (2 * j)) & 3
                high = (hm >> (4 * n + j)) & 1
                q[:, 128 * n + 32 * j:128 * n + 32 * j + 32] = low - 4 * (1 - high)
        return q, np.repeat(scs, 16, axis=1), _f16(blocks, 108), dmin, mins
    if wtype == GGMLType.Q2_K:
        qs = blocks[:, 16:80].astype(np.int64)
        for n in range(2):
            for j in range(4):
                q[:, 128 * n + 32 * j:128 * n + 32 * j + 32] = (qs[:, 32 * n:32 * n + 32] >> (2 * j)) & 3
        sc = np.repeat(blocks[:, :16].astype(np.int64) & 15, 16, axis=1)
        return q, sc, _f16(blocks, 80), _f16(blocks, 82), blocks[:, :16].astype(np.int64) >> 4
    sh = blocks[:, 2:4].copy().view("<u2")[:, 0].astype(np.int64)
    sl, qs = blocks[:, 4:8].astype(np.int64), blocks[:, 8:136].astype(np.int64)
    ls = np.stack([((sl[:, ib // 2] >> (4 * (ib % 2))) & 15) | (((sh >> (2 * ib)) & 3) << 4) for ib in range(8)], 1)
    for ib in range(8):
        q[:, 32 * ib:32 * ib + 16] = KV[qs[:, 16 * ib:16 * ib + 16] & 15]
        q[:, 32 * ib + 16:32 * ib + 32] = KV[qs[:, 16 * ib:16 * ib + 16] >> 4]
    return q, np.repeat(ls - 32, 32, axis=1), _f16(blocks, 0), dmin, mins


def _fma(a, b, c):
    return np.float32(np.float64(np.float32(a)) * np.float64(np.float32(b)) + np.float64(np.float32(c)))


def spec(rows, wtype, K, x, tiled):
    """ggml's sums, plainly (see the module docstring)."""
    _, _, xq, dy = prepare_activations(x, GGMLType.Q8_K, 16, True, with_ints=True)
    xq = xq.astype(np.int64)
    T, N, nb = x.shape[0], rows.shape[0], K // 256
    bsums = xq.reshape(T, K // 16, 16).sum(axis=2)
    out = np.zeros((T, N), np.float32)
    blocks = rows.reshape(N * nb, wtype.type_size)
    q, sc, d, dmin, mins = (a.reshape((N, nb) + a.shape[1:]) for a in decode(blocks, wtype))
    for r in range(N):
        for t in range(T):
            acc = np.zeros(8, np.float32)
            summs = np.float32(0)
            for b in range(nb):
                prod = (sc[r, b] * q[r, b] * xq[t, 256 * b:256 * b + 256]).reshape(8, 8, 4)
                lanes = prod.sum(axis=(0, 2))                  # lane k: elements 32c + 4k .. 4k+3
                bs = bsums[t, 16 * b:16 * b + 16]
                if wtype == GGMLType.Q6_K:                     # q8sclsub
                    lanes = lanes - 32 * (bs * sc[r, b, ::16]).reshape(8, 2).sum(axis=1)
                mb = mins[r, b] * bs                           # min * bsums per 16 (Q5_K: a min per 32)
                m = int(mb.sum())
                if tiled:
                    res = np.float32(d[r, b] * np.float32(lanes.sum()))
                    if wtype in (GGMLType.Q5_K, GGMLType.Q2_K):
                        res = _fma(-dmin[r, b], np.float32(m), res)
                    acc[0] = _fma(res, dy[t, b], acc[0])
                else:
                    dd = np.float32(dy[t, b] * d[r, b])
                    if wtype == GGMLType.Q2_K:                 # the mins, lane k = sub-blocks 2k, 2k+1
                        for k in range(8):
                            acc[k] = _fma(np.float32(-dy[t, b] * dmin[r, b]), np.float32(mb[2 * k] + mb[2 * k + 1]), acc[k])
                    for k in range(8):
                        acc[k] = _fma(dd, np.float32(lanes[k]), acc[k])
                    if wtype == GGMLType.Q5_K:
                        summs = _fma(np.float32(-dy[t, b] * dmin[r, b]), np.float32(m), summs)
            if tiled:
                out[t, r] = acc[0]
            else:
                out[t, r] = np.float32(((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))) + summs
    return out


_D_OFFSETS = {GGMLType.Q6_K: (208,), GGMLType.Q5_K: (0, 2), GGMLType.Q3_K: (108,), GGMLType.IQ4_XS: (0,),
              GGMLType.Q2_K: (80, 82)}


def _weights(wtype, N=8, K=512, seed=0):
    """Random blocks: every bit pattern of quants and scales is a valid block; only the fp16 d / dmin are
    set to finite positive values (quantizing random floats would only reach part of the patterns)."""
    rng = np.random.default_rng(seed)
    nb = K // 256
    raw = rng.integers(0, 256, (N, nb, wtype.type_size), dtype=np.uint8)
    for o in _D_OFFSETS[wtype]:
        d = rng.uniform(1e-4, 1e-2, (N, nb)).astype(np.float16)
        raw[:, :, o:o + 2] = d.view(np.uint8).reshape(N, nb, 2)
    return raw.reshape(N, nb * wtype.type_size)


def _acts(T, K=512, seed=1):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((T, K)) * rng.uniform(0.1, 5.0, (T, 1))).astype(np.float32)
    x[0, 100] = 40.0                                           # an outlier, as in real activations
    if T > 2:
        x[2, 256:] = 0.0                                       # an all-zero Q8_K block (d = 0)
    return x


def _first_bad(a, b):
    bad = np.argwhere(a != b)
    return f"first bad (token, row) {tuple(bad[0])}: {a[tuple(bad[0])]!r} vs {b[tuple(bad[0])]!r}, {len(bad)} differ"


@pytest.mark.parametrize("wtype", TYPES, ids=lambda t: t.name)
def test_decode_matches_dequantize(wtype):
    rows = _weights(wtype, N=4)
    q, sc, d, dmin, mins = decode(rows.reshape(-1, wtype.type_size), wtype)
    if wtype == GGMLType.Q6_K:
        q = q - 32
    y = d[:, None] * sc.astype(np.float32) * q.astype(np.float32)
    if wtype in (GGMLType.Q5_K, GGMLType.Q2_K):
        y = y - dmin[:, None] * np.repeat(mins, 16, axis=1).astype(np.float32)
    ref = dequantize(rows, wtype, 512).reshape(-1, 256)
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("T", [3, 9])
@pytest.mark.parametrize("wtype", TYPES, ids=lambda t: t.name)
def test_kernel_matches_spec_bit_for_bit(wtype, T):
    rows, x = _weights(wtype), _acts(T)
    ours = ek.matmul(rows, wtype, 512, x)
    ref = spec(rows, wtype, 512, x, tiled=T >= ek.TILED_MIN_BATCH)
    assert np.array_equal(ours, ref), _first_bad(ours, ref)


@pytest.mark.parametrize("T", [1, 5, 12])
@pytest.mark.parametrize("wtype", TYPES, ids=lambda t: t.name)
def test_close_to_float_reference(wtype, T):
    rows, x = _weights(wtype, N=16, seed=2), _acts(T, seed=3)
    ours = ek.matmul(rows, wtype, 512, x)
    xh, _ = prepare_activations(x, GGMLType.Q8_K, 16, True)
    ref = xh.astype(np.float64) @ dequantize(rows, wtype, 512).astype(np.float64).T
    err = np.abs(ours - ref) / (np.abs(xh).astype(np.float64) @ np.abs(dequantize(rows, wtype, 512)).T + 1e-30)
    assert err.max() < 1e-5, f"max relative error {err.max():.3g} at {np.unravel_index(err.argmax(), err.shape)}"


@pytest.mark.parametrize("wtype", TYPES, ids=lambda t: t.name)
def test_tokens_are_independent(wtype):
    """Both ggml paths sum each token on its own: a batch equals its tokens one by one (same path)."""
    rows, x = _weights(wtype, seed=4), _acts(10, seed=5)
    for T in (5, 10):                       # vec_dot, tiled
        batch = ek.matmul(rows, wtype, 512, x[:T])
        tiled = T >= ek.TILED_MIN_BATCH
        _, _, xq, dx = prepare_activations(x[:T], GGMLType.Q8_K, 16, True, with_ints=True)
        xq = xq.astype(np.int32)
        bs = xq.reshape(T, 32, 16).sum(axis=2, dtype=np.int32)
        for t in range(T):
            one = np.empty((1, rows.shape[0]), np.float32)
            ek.kquant_q8_K(rows, ek._KIND[wtype], 512, xq[t:t + 1], np.ascontiguousarray(xq[t:t + 1].T),
                           np.ascontiguousarray(dx[t:t + 1].T), np.ascontiguousarray(bs[t:t + 1].T), tiled, one)
            assert np.array_equal(one[0], batch[t]), f"T={T} token {t}: " + _first_bad(one, batch[t:t + 1])
        # mul_mat_id takes the same kernels for the tokens routed to one expert
        assert np.array_equal(ek.matmul(rows, wtype, 512, x[:T], mul_mat_id=True), batch)


def test_fallbacks():
    rows = _weights(GGMLType.Q6_K)
    x = _acts(2)
    assert ek.matmul(rows, GGMLType.Q4_K, 512, x) is None              # not handled here
    assert ek.matmul(np.zeros((8, GGMLType.Q8_0.row_bytes(512)), np.uint8), GGMLType.Q8_0, 512, x) is None
    assert ek.matmul(rows[:, :-1], GGMLType.Q6_K, 512, x) is None       # rows do not match K
    assert ek.matmul(rows, GGMLType.Q6_K, 768, np.zeros((2, 768), np.float32)) is None
    assert set(ek.SUPPORTED) <= set(TYPES)
    empty = ek.matmul(rows, GGMLType.Q6_K, 512, np.zeros((0, 512), np.float32))
    assert empty.shape == (0, rows.shape[0])


def test_fma_exact():
    """fma_exact is a correctly rounded fma: equal to the hardware one where 'contract' gives it, and right
    on the double-rounding trap (a*b + c exactly halfway after rounding to double)."""
    a = np.float32(1 + 2.0 ** -12)
    assert ek.fma_exact(a, a, np.float32(-(1 + 2.0 ** -11))) == np.float32(2.0 ** -24)
    # (1 + 2^-23)(1 - 2^-23) + (2^24 + 2) = 2^24 + 3 - 2^-46: the double sum rounds to the float midpoint
    # 2^24 + 3, which ties to 2^24 + 4; the exact value is below it, so the fma gives 2^24 + 2
    x, y, c = np.float32(1 + 2.0 ** -23), np.float32(1 - 2.0 ** -23), np.float32(2.0 ** 24 + 2)
    assert np.float32(np.float64(x) * np.float64(y) + np.float64(c)) == np.float32(2.0 ** 24 + 4)
    assert ek.fma_exact(x, y, c) == np.float32(2.0 ** 24 + 2)
    assert ek.fma_exact(-x, y, -c) == np.float32(-(2.0 ** 24 + 2))
    if hardware_fma():
        rng = np.random.default_rng(6)
        v = rng.standard_normal((3, 20000)).astype(np.float32)
        v[2] *= np.float32(1e-3)
        for a, b, c in v.T:
            assert ek.fma_exact(a, b, c) == contracted(a, b, c)
