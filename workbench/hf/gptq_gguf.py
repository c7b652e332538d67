"""A GPTQ checkpoint folder -> GGUF, keeping GPTQ's codes where ggml has the same grid.

    path, report = convert_gptq("models/Llama-2-7B-GPTQ-4bit-32g", "llama-2-7b-gptq.gguf")

`--outtype auto` (`python -m workbench convert GPTQ_DIR`): a linear stored with 4 bits, group size 32 and no
act-order becomes ggml Q4_1 blocks holding its own codes (d = scale, m = -scale * zero; to_q4_1_blocks), so
llama.cpp multiplies with exactly the weights the GPTQ kernel does, where every -scale * zero is an fp16 value.
Any other linear (group 128, act-order, 2/3 bits, an inexact block) is dequantized (GPTQTensor.dequantize) and
requantized with llama-quantize's rounding, to Q4_1 (8-bit checkpoints: Q8_0); the report says which tensors and
why. Embeddings, norms and an unquantized lm_head are converted as `convert` does from the float16 checkpoint.
A float outtype (f16, bf16, f32, q8_0) converts the dequantized model as `convert` converts any float folder.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from workbench.gguf.constants import GGMLType, LlamaFileType
from workbench.hf.config import load_hparams
from workbench.hf.convert import OUTTYPES, ConvertError, plan_tensors, write_plan
from workbench.hf.gptq_checkpoint import (
    HF_CONFIG,
    QUANTIZE_CONFIG,
    GPTQCheckpointError,
    GPTQTensor,
    q4_1_conversion,
    read_gptq_checkpoint,
)
from workbench.quant import quantize


def is_gptq_folder(path) -> bool:
    """Whether `path` holds a GPTQ checkpoint's settings (quantize_config.json, or config.json's
    quantization_config naming gptq); the checkpoint itself is validated when read."""
    path = Path(path)
    if (path / QUANTIZE_CONFIG).is_file():
        return True
    try:
        q = json.loads((path / HF_CONFIG).read_text()).get("quantization_config")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(q, dict) and str(q.get("quant_method", "")).lower() == "gptq"


@dataclass
class _Source:
    """What convert's planner reads of a checkpoint tensor, for a GPTQ linear's dequantized weight or a stored
    float tensor."""

    shape: tuple[int, ...]
    dtype: str
    file: Path
    load: Callable[[], np.ndarray]

    def numpy(self) -> np.ndarray:
        return self.load()


def _blocks(t: GPTQTensor, target: GGMLType, report: list[dict], name: str) -> Callable[[], np.ndarray]:
    def run() -> np.ndarray:
        exact, why = q4_1_conversion(t) if target == GGMLType.Q4_1 else \
            (None, f"{t.name}: {t.bits}-bit codes have no exact ggml grid")
        if exact is not None:
            report.append({"name": name, "type": target.name, "how": "exact", "why": ""})
            return exact
        report.append({"name": name, "type": target.name, "how": "requantized", "why": why})
        return quantize(np.ascontiguousarray(t.dequantize(), np.float32), target)
    return run


def convert_gptq(gptq_dir, outfile, outtype: str = "auto", progress: bool = True) -> tuple[Path, list[dict]]:
    """Write the GGUF of a GPTQ folder (see the module docstring). Returns (path, report): one row per
    quantized linear, in the order written: name, type, how ("exact" or "requantized"), why."""
    gptq_dir, outfile = Path(gptq_dir), Path(outfile)
    outtype = outtype.lower()
    if outtype != "auto" and outtype not in OUTTYPES:
        raise ConvertError(f"outtype {outtype!r} is not one of auto, {', '.join(OUTTYPES)}")
    try:
        config, linears, others = read_gptq_checkpoint(gptq_dir)
    except GPTQCheckpointError as e:
        raise ConvertError(str(e)) from None
    hp = load_hparams(gptq_dir)
    target = GGMLType.Q8_0 if config.bits == 8 else GGMLType.Q4_1
    tensors: dict[str, _Source] = {}
    stored: dict[str, tuple[GGMLType, Callable[[], np.ndarray]]] = {}
    report: list[dict] = []
    for p, t in linears.items():
        tensors[f"{p}.weight"] = _Source((t.out_features, t.in_features), "F32", gptq_dir, t.dequantize)
        if t.bias is not None:
            tensors[f"{p}.bias"] = _Source(t.bias.shape, "F16", gptq_dir, lambda b=t.bias: b)
        if outtype == "auto" and t.in_features % target.block_size == 0:
            stored[f"{p}.weight"] = (target, _blocks(t, target, report, f"{p}.weight"))
    for n, a in others.items():
        if n in tensors:
            raise ConvertError(f"{gptq_dir}: tensor {n!r} is stored as float but is also a GPTQ linear's")
        tensors[n] = _Source(a.shape, "F32" if a.dtype == np.float32 else "F16", gptq_dir, lambda a=a: a)
    if outtype == "auto":
        ftype, ftype_type = (LlamaFileType.Q8_0 if target == GGMLType.Q8_0 else LlamaFileType.Q4_1), GGMLType.F16
    else:
        ftype, ftype_type = OUTTYPES[outtype]
    plan = plan_tensors(gptq_dir, hp, ftype_type, tensors=dict(sorted(tensors.items())), stored=stored)
    return write_plan(gptq_dir, hp, ftype, plan, outfile, progress), report


__all__ = ["convert_gptq", "is_gptq_folder"]
