"""The one matmul dispatch table (workbench/llama/matmul.py): which ggml path a product takes, and for every
(weight type, path) our fast kernel against its readable statement, bit for bit, on random blocks."""
from __future__ import annotations

import numpy as np
import pytest

from workbench.gguf import GGMLType as T
from workbench.llama import matmul as mm
from workbench.quant import quantize

# tokens that put a product on each path (REPACK: one group of 4 for the gemm and 2 more for the gemv)
TOKENS = {mm.VEC_DOT: 1, mm.SGEMM: 5, mm.REPACK: 6, mm.TILED: 9}


def _case(wtype, path, seed=0, n_rows=16, K=512):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n_rows, K)).astype(np.float32)
    rows = quantize(w, wtype) if wtype != T.F32 else w.view(np.uint8)
    n = TOKENS[path]
    x = rng.standard_normal((n, K)).astype(np.float32)
    return rows, K, x


@pytest.mark.parametrize("key", sorted(mm.KERNELS, key=lambda k: (k[0].name, k[1])),
                         ids=lambda k: f"{k[0].name}-{k[1]}")
def test_fast_kernel_equals_its_spec(key):
    wtype, path = key
    kernel = mm.KERNELS[key]
    for mul_mat_id in ((False, True) if path == mm.VEC_DOT else (False,)):
        rows, K, x = _case(wtype, path)
        if mul_mat_id:
            x = np.concatenate([x, x[::-1] * 0.5])             # an expert's tokens: vec_dot for each
        assert mm.ggml_path(wtype, x.shape[0], rows.shape[0], mul_mat_id) == path
        fast = kernel(rows, wtype, K, x, np.empty((x.shape[0], rows.shape[0]), np.float32), mul_mat_id)
        spec = kernel(rows, wtype, K, x, np.empty((x.shape[0], rows.shape[0]), np.float32), mul_mat_id, spec=True)
        assert fast.dtype == np.float32 and fast.shape == (x.shape[0], rows.shape[0])
        np.testing.assert_array_equal(fast.view(np.uint32), spec.view(np.uint32))
        # and matmul_raw runs exactly this kernel
        np.testing.assert_array_equal(mm.matmul_raw(rows, wtype, K, x, mul_mat_id=mul_mat_id), fast)


def test_every_type_with_ggml_sums_has_a_kernel_for_each_of_its_paths():
    for wtype in T:
        for n_tokens in (1, 2, 4, 7, 8, 64):
            for mul_mat_id in (False, True):
                path = mm.ggml_path(wtype, n_tokens, 64, mul_mat_id)
                assert path == mm.DECODED or (wtype, path) in mm.KERNELS, (wtype.name, n_tokens, path)


@pytest.mark.parametrize("wtype, n_tokens, n_rows, mul_mat_id, path", [
    (T.Q4_1, 1, 64, False, "vec_dot"),      # no tinyBLAS case for Q4_1: vec_dot at any batch
    (T.Q4_1, 512, 64, False, "vec_dot"),
    (T.Q8_0, 1, 64, False, "vec_dot"),
    (T.Q8_0, 2, 64, False, "sgemm"),        # tinyBLAS_Q0_AVX from 2 tokens
    (T.Q8_0, 2, 64, True, "vec_dot"),       # ggml_mul_mat_id never calls llamafile_sgemm
    (T.F16, 2, 64, False, "sgemm"),
    (T.F16, 1, 64, False, "vec_dot"),
    (T.Q5_0, 3, 64, False, "sgemm"),
    (T.Q5_1, 3, 64, False, "vec_dot"),
    (T.Q4_0, 3, 64, False, "repack"),       # repacked at load when rows % 8 == 0 (repack.cpp)
    (T.Q4_0, 3, 60, False, "decoded"),      # not repacked: tinyBLAS / vec_dot, which we do not reproduce
    (T.Q4_K, 1, 64, True, "repack"),
    (T.IQ4_NL, 512, 64, False, "repack"),
    (T.Q6_K, 7, 64, False, "vec_dot"),      # ggml_tiled_min_batch is 8
    (T.Q6_K, 8, 64, False, "tiled"),
    (T.Q2_K, 8, 64, True, "tiled"),         # mul_mat_id: 8 tokens routed to one expert
    (T.IQ2_XS, 1, 64, False, "decoded"),
])
def test_path_as_ggml_chooses(wtype, n_tokens, n_rows, mul_mat_id, path):
    assert mm.ggml_path(wtype, n_tokens, n_rows, mul_mat_id) == path


def test_the_comparison_can_fail():
    """A kernel that is one ulp off somewhere is caught by the comparison used above."""
    rows, K, x = _case(T.Q8_0, mm.VEC_DOT)
    good = mm.KERNELS[T.Q8_0, mm.VEC_DOT](rows, T.Q8_0, K, x, np.empty((1, 16), np.float32), False)
    bad = good.copy()
    bad.view(np.uint32)[0, 3] += 1
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(bad.view(np.uint32), good.view(np.uint32))
