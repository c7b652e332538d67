"""Quantization error of single tensors, beyond what quantize_model reports: the penalty of requantizing an
already quantized source, and what an importance matrix (llama-imatrix's mean squared activations) buys
on the real layer-0 activations."""
from __future__ import annotations

import numpy as np
import pandas as pd

from workbench.eval.activations import layer0_activations
from workbench.gguf import TensorInfo, read_gguf
from workbench.quant import dequantize, quantize


def rel_rmse(x: np.ndarray, y: np.ndarray) -> float:
    """RMS(x - y) / RMS(x)."""
    return float(np.sqrt(np.mean((x - y) ** 2)) / max(np.sqrt(np.mean(x ** 2)), 1e-30))


def tensor_f32(t: TensorInfo) -> np.ndarray:
    """A 2-D GGUF tensor dequantized to float32 (n_rows, n_per_row)."""
    return dequantize(t.rows(), t.type, t.n_per_row)


def requant_errors(model_path, targets=("Q4_1", "Q4_0", "Q5_1", "Q5_0", "Q8_0"), tensors=None) -> pd.DataFrame:
    """Relative RMSE of quantizing the (dequantized, F16-rounded) tensors of `model_path` again to each target
    type (default: the 2-D tensors of blk.0). Re-quantizing Q4_1 data to Q4_1 reproduces its 16 levels almost
    exactly; 5-bit types put 32 levels on a different grid, so they add error although they have more bits."""
    gf = read_gguf(model_path)
    picked = [t for t in gf.tensors if len(t.shape) == 2 and (tensors is None or t.name in tensors)]
    if tensors is None:
        picked = [t for t in picked if t.name.startswith("blk.0.")]
    rows = []
    for t in picked:
        # through F16 as the F16 base stores it (Q4_1 -> F16 -> target)
        x = tensor_f32(t).astype(np.float16).astype(np.float32)
        row = {"tensor": t.name, "source_type": t.type.name}
        for target in targets:
            row[f"->{target}"] = rel_rmse(x, dequantize(quantize(x, target), target, x.shape[1]))
        rows.append(row)
    return pd.DataFrame(rows)


def imatrix_comparison(model_path, text: str, tensor: str = "blk.0.attn_q.weight", type: str = "IQ4_NL",
                       n_tokens: int = 256) -> pd.DataFrame:
    """Quantize one tensor without and with an importance vector (mean squared activation per input column,
    what llama-imatrix accumulates) and measure both the plain weight error and the error of the layer's
    output on the real activations (what the importance weighting optimizes). SmolLM2 rows have 576 columns,
    so 256-column types (IQ4_XS, k-quants) do not apply to it: the default is IQ4_NL (blocks of 32)."""
    h = layer0_activations(model_path, text, n_tokens)
    w = tensor_f32(next(t for t in read_gguf(model_path).tensors if t.name == tensor))
    imp = np.mean(h.astype(np.float64) ** 2, axis=0).astype(np.float32)
    rows = []
    for name, im in (("no imatrix", None), ("imatrix (layer-0 activations)", imp)):
        wq = dequantize(quantize(w, type, imatrix=im), type, w.shape[1])
        rows.append({"quantization": f"{type}, {name}", "weight_rel_rmse": rel_rmse(w, wq),
                     "output_rel_rmse": rel_rmse(h @ w.T, h @ wq.T)})
    return pd.DataFrame(rows)
