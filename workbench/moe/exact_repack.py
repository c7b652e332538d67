"""PLACEHOLDER (being written): exact ggml sums for more weight types. SUPPORTED lists the types handled."""
from __future__ import annotations

SUPPORTED = ()


def matmul(rows, wtype, K, x, mul_mat_id=False):
    """(T, N) float32 bit-equal to ggml-cpu's mul_mat on AVX2, or None when not handled."""
    return None
