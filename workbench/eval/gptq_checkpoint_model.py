"""A whole model as a GPTQ checkpoint would hold it (AutoGPTQ's uniform grid: bits, group size, act-order), to
measure GPTQ checkpoints against GGUF files at model level.

The blocks run in GPTQ's sequential mode (workbench.eval.gptq_model.sequential_blocks); each matrix of a block is
quantized by workbench.hf.gptq_write.gptq_tensor, per expert for a MoE stack, under the H of its inputs. The result
is written as an F16 GGUF of the dequantized weights: float16 of each checkpoint tensor's exact values, which is
the fp16 weight AutoGPTQ / GPTQModel dequantize to, so the perplexity and KLD of that file are the checkpoint's.
token_embd, the norms and output.weight stay as in the source (AutoGPTQ leaves the embeddings and lm_head float).

A 4-bit, group-32, asymmetric checkpoint without act-order takes the scales that make it ggml Q4_1 blocks exactly
(gptq_tensor's q4_1_exact). With `checkpoint_dir` the checkpoint itself is written too, as a GPTQ v1 folder (workbench.hf.gptq_write): what
`convert` reads back (a 4-bit group-32 one, to Q4_1 blocks with the same values).

The report gives the checkpoint's own size, what a user downloads: qweight, qzeros, scales and g_idx of every
quantized matrix, the other tensors in fp16.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.eval.gptq_model import FLOAT_TYPES, calibration_inputs, matrices, sequential_blocks
from workbench.gguf import GGUFValueType as VT
from workbench.gguf import TensorInfo
from workbench.gguf.constants import GGMLType, LlamaFileType
from workbench.gguf.writer import GGUFWriter
from workbench.hf.gptq_checkpoint import GPTQConfig
from workbench.hf.gptq_write import gptq_tensor, write_checkpoint_folder
from workbench.llama import load
from workbench.llama.weights import Weight
from workbench.quant.gptq import SHRINK
from workbench.quant.quantize_model import QuantizeError, quantized_metadata, to_f32


@dataclass
class CheckpointModel:
    path: Path                  # the F16 GGUF of the dequantized checkpoint
    checkpoint_bytes: int       # the GPTQ checkpoint's tensors: packed matrices + fp16 rest
    n_params: int
    report: pd.DataFrame        # per matrix: name, rows_seen, seconds

    @property
    def bpw(self) -> float:
        return 8 * self.checkpoint_bytes / self.n_params


def packed_bytes(t) -> int:
    """Bytes of one GPTQ linear as stored: qweight, qzeros, scales (fp16), g_idx."""
    return t.qweight.nbytes + t.qzeros.nbytes + t.scales.astype(np.float16).nbytes + t.g_idx.nbytes


def gptq_checkpoint_model(src, dst, calibration: str, *, bits: int = 4, group_size: int = 128,
                          act_order: bool = False, sym: bool = False, damp: float = 0.01, shrink: float = SHRINK,
                          n_ctx: int = 512, n_chunks: int | None = 32, progress: bool = True,
                          checkpoint_dir=None) -> CheckpointModel:
    """Quantize every matrix of the float GGUF `src`'s blocks onto the GPTQ checkpoint grid (bits 2/3/4/8,
    group_size or -1, act-order / desc_act, sym) and write the dequantized model to the F16 GGUF `dst` (and the
    checkpoint folder to `checkpoint_dir` when given)."""
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve():
        raise QuantizeError(f"destination {dst} is the source file: choose another output path")
    model = load(src, n_ctx=n_ctx, flash_attn=True)
    gf = model.gguf                  # one memory map: each matrix's pages are released once it is quantized
    by_name = {t.name: t for t in gf.tensors}
    bad = [t.name for t in gf.tensors if t.type not in FLOAT_TYPES]
    if bad:
        raise QuantizeError(f"{bad[0]} is {by_name[bad[0]].type.name}: a GPTQ checkpoint is made from float weights "
                            f"(F32, F16, BF16); convert the model to F16 first")
    x = calibration_inputs(model, calibration, n_ctx, n_chunks)
    q4_1 = bits == 4 and group_size == 32 and not sym and not act_order     # scales that convert to Q4_1 exactly
    done: dict[str, np.ndarray] = {}
    packed: dict[str, int] = {}
    kept: dict[str, list] = {}
    report = []

    def quantize_matrix(w: Weight, attr: str, hs) -> Weight:
        t0 = time.perf_counter()
        full = to_f32(by_name[w.name])
        out = np.empty(full.shape, np.float16)
        packed[w.name], seen = 0, []
        for name, part, _, h, n_rows in matrices(w, full, hs, attr):
            if h is None:
                raise QuantizeError(f"{name}: no calibration token reached it (an expert the router never "
                                    f"chose): use a longer or more varied calibration text")
            t = gptq_tensor(np.ascontiguousarray(full[part]), h, bits, group_size, sym=sym, act_order=act_order,
                            damp=damp, shrink=shrink, name=name, q4_1_exact=q4_1)
            out[part] = t.dequantize().astype(np.float16)
            packed[w.name] += packed_bytes(t)
            if checkpoint_dir is not None:
                kept.setdefault(w.name, []).append(t)
            seen.append(n_rows)
        gf.release(by_name[w.name])
        done[w.name] = out
        report.append({"name": w.name, "rows_seen": int(min(seen)), "seconds": time.perf_counter() - t0})
        return Weight(w.name, GGMLType.F16, w.shape, out.view(np.uint8), w.is_expert, w.quantize_act)

    sequential_blocks(model, x, quantize_matrix, desc=f"gptq {bits}-bit g{group_size}", progress=progress)
    n_params = sum(int(np.prod(t.shape)) for t in gf.tensors)
    ckpt = sum(packed.values()) + 2 * sum(int(np.prod(t.shape)) for t in gf.tensors if t.name not in packed)
    md = quantized_metadata(gf.metadata, LlamaFileType.F16)
    for k, v, vt in [("quantize.gptq.bits", bits, VT.UINT32), ("quantize.gptq.group_size", group_size, VT.INT32),
                     ("quantize.gptq.act_order", bool(act_order), VT.BOOL), ("quantize.gptq.sym", bool(sym), VT.BOOL),
                     ("quantize.gptq.checkpoint_bytes", ckpt, VT.UINT64)]:
        md.set(k, v, vt)
    infos = [TensorInfo(t.name, GGMLType.F16 if t.name in done else t.type, t.shape) for t in gf.tensors]
    with GGUFWriter(dst, md, infos, alignment=gf.alignment) as wr:
        for t in gf.tensors:
            wr.write_tensor(t.name, done.get(t.name, t.data))
    gf.close()
    if checkpoint_dir is not None:
        write_checkpoint_folder(dst, checkpoint_dir, GPTQConfig(bits, group_size, bool(act_order), bool(sym), damp),
                                kept)
    return CheckpointModel(dst, ckpt, n_params, pd.DataFrame(report))


__all__ = ["CheckpointModel", "gptq_checkpoint_model", "packed_bytes"]
