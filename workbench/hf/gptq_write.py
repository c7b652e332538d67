"""GPTQ onto AutoGPTQ's own grid: one linear quantized by our GPTQ (workbench.quant.gptq's column loop and
kernels) into the uniform `bits`-bit grid of a GPTQ checkpoint, as AutoGPTQ's GPTQ.fasterquant does:

    per group of `group_size` input columns (in processing order), when its first column comes up, per output row:
    xmin = min(0, min w), xmax = max(0, max w) (sym: xmax = max(|xmin|, xmax), xmin = -xmax); both 0 -> -1, +1
    scale = (xmax - xmin) / maxq  stored as fp16;  zero = round(-xmin / scale) (sym: (maxq + 1) / 2)
    q = clamp(round(w / scale) + zero, 0, maxq), w ~ scale * (q - zero)

The scale is rounded to fp16 before the columns are rounded on it, so the checkpoint holds the grid the error
feedback used (AutoGPTQ rounds with the float32 scale and stores its fp16). A real zero of 0 is stored as 1: the
v1 format cannot hold 0 (workbench.hf.gptq_checkpoint.GPTQTensor.from_codes). `q4_1_exact=True` (4 bits,
group 32, asymmetric, no act-order) also moves each scale to the nearest fp16 value whose Q4_1 conversion is
exact (q4_1_exact_scales), so the checkpoint converts to GGUF Q4_1 blocks without a change of value.

write_checkpoint_folder writes a whole model's tensors as a GPTQ v1 folder under their Hugging Face names.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from workbench.gguf import read_gguf
from workbench.hf.export import hf_config, hf_tensors, write_side_files
from workbench.hf.gptq_checkpoint import (
    GPTQCheckpointError,
    GPTQConfig,
    GPTQTensor,
    q4_1_exact_scales,
    write_gptq_checkpoint,
)
from workbench.hf.names import hf_name, unpermute_qk
from workbench.quant.gptq import SHRINK, check_hessian, prepare, run_columns


def find_params(x: np.ndarray, maxq: int, sym: bool) -> tuple[np.ndarray, np.ndarray]:
    """AutoGPTQ's Quantizer.find_params per row of x (rows, cols): (scale float16, zero int)."""
    xmin = np.minimum(x.min(axis=1), 0).astype(np.float32)
    xmax = np.maximum(x.max(axis=1), 0).astype(np.float32)
    if sym:
        xmax = np.maximum(np.abs(xmin), xmax)
        xmin = np.where(xmin < 0, -xmax, xmin)
    both = (xmin == 0) & (xmax == 0)
    xmin, xmax = np.where(both, -1, xmin), np.where(both, 1, xmax)
    scale = ((xmax - xmin) / maxq).astype(np.float16)
    scale = np.where(scale == 0, np.float16(6e-8), scale)           # below fp16's range: the smallest subnormal
    if sym:
        zero = np.full(len(x), (maxq + 1) // 2)
    else:
        zero = np.clip(np.round(-xmin / scale.astype(np.float32)), 1, maxq).astype(np.int64)
    return scale, zero


def gptq_tensor(w: np.ndarray, h: np.ndarray, bits: int, group_size: int = 128, *, sym: bool = False,
                act_order: bool = False, damp: float = 0.01, block_size: int = 128, q4_1_exact: bool = False,
                shrink: float = SHRINK, name: str = "weight") -> GPTQTensor:
    """Quantize w (out, in) float32 under H (in, in) into a GPTQTensor (bits 2/3/4/8, group_size or -1)."""
    w = np.asarray(w, np.float32)
    rows, n = w.shape
    if bits not in (2, 3, 4, 8):
        raise GPTQCheckpointError(f"{name}: bits={bits} is not one of 2, 3, 4, 8")
    group = n if group_size == -1 else int(group_size)
    if group <= 0 or n % group:
        raise GPTQCheckpointError(f"{name}: group_size {group_size} does not divide in_features {n}")
    if q4_1_exact and not (bits == 4 and group == 32 and not sym and not act_order):
        raise GPTQCheckpointError(f"{name}: q4_1_exact needs 4 bits, group 32, asymmetric, no act-order")
    check_hessian(h, n, name)
    maxq = (1 << bits) - 1
    perm, u = prepare(h, damp, act_order, shrink)
    work = np.ascontiguousarray(w[:, perm])
    a, b = np.zeros((rows, n)), np.zeros((rows, n))
    codes = np.zeros((rows, n), np.uint16)
    scales = np.empty((n // group, rows), np.float16)
    zeros = np.empty((n // group, rows), np.int64)
    step = max(1, block_size)
    unit = group

    def block_start(j0, j1):                # j0 is a group's first column (unit = group)
        g = j0 // group
        scale, zero = find_params(work[:, j0:j0 + group], maxq, sym)
        if q4_1_exact:
            scale = q4_1_exact_scales(scale, zero)
        scales[g], zeros[g] = scale, zero
        s32 = scale.astype(np.float64)
        a[:, j0:j0 + group] = s32[:, None]
        b[:, j0:j0 + group] = (-s32 * zero)[:, None]

    levels = np.arange(maxq + 1, dtype=np.float64)
    run_columns(work, u, a, b, codes, levels, np.arange(maxq + 1), step, unit, block_start)
    final = np.empty_like(codes)
    final[:, perm] = codes
    g_idx = np.empty(n, np.int32)
    g_idx[perm] = np.arange(n) // group
    return GPTQTensor.from_codes(final, scales, zeros, g_idx, bits, group_size, name=name)


def rows_taken(t: GPTQTensor, idx: np.ndarray, name: str) -> GPTQTensor:
    """t with its output rows in the order idx (row i of the result is row idx[i] of t), renamed."""
    return GPTQTensor.from_codes(t.codes()[idx], t.scales[:, idx], t.zeros()[:, idx], t.g_idx, t.bits, t.group_size,
                                 None if t.bias is None else t.bias[idx], name=name)


def write_checkpoint_folder(gguf_path, out_dir, config: GPTQConfig, tensors: dict[str, list[GPTQTensor]]) -> Path:
    """A GPTQ v1 folder for the model of the float GGUF `gguf_path` whose matrices `tensors` holds as GPTQ
    tensors (GGUF name -> one per matrix, one per expert for a stack; rows in GGUF order): the linears under their
    Hugging Face names, q/k rows back in HF order, every other tensor float16 from the GGUF, config.json with the
    quantization_config, quantize_config.json, the tokenizer and generation config. Returns out_dir."""
    out = Path(out_dir)
    with read_gguf(gguf_path) as gf:
        cfg = hf_config(gf)
        cfg["torch_dtype"] = "float16"
        floats = hf_tensors(gf, cfg, "f16")
        heads = {"q_proj": (cfg["num_attention_heads"],) * 2,
                 "k_proj": (cfg["num_attention_heads"], cfg["num_key_value_heads"])}
        linears: dict[str, GPTQTensor] = {}
        for gname, parts in tensors.items():
            hf = hf_name(gname)
            for x, t in enumerate(parts):
                name = hf.format(xid=x) if "{xid}" in hf else hf
                prefix = name[:-len(".weight")]
                h = heads.get(prefix.rsplit(".", 1)[-1])
                idx = unpermute_qk(np.arange(t.out_features), *h) if h else np.arange(t.out_features)
                linears[prefix] = rows_taken(t, idx, prefix)
                floats.pop(name)
        others = {n: lz.load() for n, lz in floats.items()}
        out.mkdir(parents=True, exist_ok=True)
        write_side_files(gf, cfg, out)
    write_gptq_checkpoint(out, config, linears, others, hf_config=cfg)
    return out
