"""Quantize a whole GGUF model like `llama-quantize` (`llama_model_quantize_impl`): same tensor types, same
metadata updates, same file bytes.

Per tensor: keep the bytes when the type does not change, else dequantize to F32 (F16/BF16/any quant type) and
quantize to the target type, each expert of a 3-D tensor with its own slice of the importance matrix.
Streaming: the source is memory-mapped and read a chunk of rows at a time, each chunk's pages released once
quantized, so what is resident is one chunk of float32 rows and the tensor being written; the output is written
atomically (temporary file + rename).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from workbench.gguf import GGUFFile, GGUFValueType as VT, Keys, TensorInfo, read_gguf
from workbench.gguf.constants import QUANTIZATION_VERSION, GGMLType, LlamaFileType, key
from workbench.gguf.writer import GGUFWriter
from workbench.quant import dequantize, quantize
from workbench.quant.imatrix import Imatrix, load_imatrix
from workbench.quant.mixes import ModelShape, TensorPlan, plan_types

SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")


class QuantizeError(ValueError):
    """The requested quantization cannot be done (bad ftype, missing imatrix, requantization, ...)."""


def model_shape(metadata) -> ModelShape:
    arch = metadata.get(Keys.General.ARCHITECTURE)
    if arch is None:
        raise QuantizeError(f"{Keys.General.ARCHITECTURE} missing: not a model file")

    def get(template, default=None):
        v = metadata.get(key(template, arch), default)
        if v is None:
            raise QuantizeError(f"{key(template, arch)} missing from the model metadata")
        return int(v) if not isinstance(v, np.ndarray) else int(v.max())

    return ModelShape(arch=arch, n_layer=get(Keys.LLM.BLOCK_COUNT), n_head=get(Keys.Attention.HEAD_COUNT),
                      n_head_kv=get(Keys.Attention.HEAD_COUNT_KV, metadata.get(key(Keys.Attention.HEAD_COUNT, arch))),
                      n_expert=get(Keys.LLM.EXPERT_COUNT, 0))


def quantized_metadata(metadata, ftype: LlamaFileType, imat=None):
    """The metadata llama-quantize writes: the source's, split keys dropped, then the quantization version,
    the file type and (with an importance matrix) its quantize.imatrix.* keys set last (gguf_set_val_* on an
    existing key moves it to the end, as llama-quantize's output shows)."""
    md = metadata.copy()
    for k in SPLIT_KEYS:
        md.pop(k, None)
        md.types.pop(k, None)
    for k, v, vt in [(Keys.General.QUANTIZATION_VERSION, QUANTIZATION_VERSION, VT.UINT32),
                     (Keys.General.FILE_TYPE, int(ftype), VT.UINT32)] + (imat.metadata_items() if imat else []):
        md.pop(k, None)
        md.types.pop(k, None)
        md.set(k, v, vt)
    return md


def to_f32(t: TensorInfo, rows: slice = slice(None)) -> np.ndarray:
    """llama_tensor_dequantize_impl: the tensor as float32 rows (n_rows, n_per_row), or those rows of it. F16 goes
    through the format's own vector kernel, rows in parallel (numpy's single-threaded cast was half the time of a
    7B Q4_0 quantize)."""
    if t.type == GGMLType.F32:
        return t.numpy().reshape(-1, t.n_per_row)[rows]
    if t.type == GGMLType.BF16:
        return (t.numpy().reshape(-1, t.n_per_row)[rows].astype(np.uint32) << 16).view(np.float32)
    return dequantize(np.ascontiguousarray(t.rows()[rows]), t.type, t.n_per_row)


def imatrix_size(t: TensorInfo) -> int:
    """Values an importance entry needs: one per column, per expert of a 3-D stack."""
    return t.n_per_row * (t.shape[0] if len(t.shape) == 3 else 1)


def imatrix_values(imat, t: TensorInfo) -> np.ndarray | None:
    """The importance entry for tensor t when its size fits, else None."""
    vec = imat.get(t.name) if imat is not None else None
    return vec if vec is not None and vec.size == imatrix_size(t) else None


CHUNK_BYTES = 16 << 20     # float32 bytes of the rows quantized at once (what is resident besides the output)


def quantize_tensor(gf: GGUFFile, t: TensorInfo, plan: TensorPlan, imat: np.ndarray | None, with_error: bool):
    """t's rows quantized to plan.dst_type a chunk at a time, as llama-quantize converts and quantizes rows
    (rows are independent; each expert with its own imatrix slice, llama_tensor_quantize_impl); each chunk's
    source pages are released once read. Returns (blocks, relative RMS error or NaN)."""
    n_per_row = t.n_per_row
    n_rows = t.n_elements // n_per_row
    rows_per_expert = t.shape[-2] if len(t.shape) >= 2 else 1
    src_row_bytes = t.type.row_bytes(n_per_row)
    step = max(1, CHUNK_BYTES // (4 * n_per_row))
    out = np.empty((n_rows, plan.dst_type.row_bytes(n_per_row)), np.uint8)
    sq_err = sq_ref = 0.0
    r1 = 0
    while r1 < n_rows:
        r0, e = r1, r1 // rows_per_expert
        r1 = min(n_rows, r0 + step, (e + 1) * rows_per_expert)      # a chunk never spans two experts
        x = to_f32(t, slice(r0, r1))
        w = None if imat is None else imat[e * n_per_row:(e + 1) * n_per_row]
        out[r0:r1] = quantize(x, plan.dst_type, imatrix=w)
        if with_error:
            back = dequantize(out[r0:r1], plan.dst_type, n_per_row)
            sq_err += float(np.sum((back.astype(np.float64) - x) ** 2))
            sq_ref += float(np.sum(x.astype(np.float64) ** 2))
        gf.release(t, r0 * src_row_bytes, r1 * src_row_bytes)
    if not with_error:
        return out, np.nan
    return out, float(np.sqrt(sq_err / n_rows / n_per_row)) / (float(np.sqrt(sq_ref / n_rows / n_per_row)) or 1.0)


def quantize_model(src, dst, ftype, imatrix=None, allow_requantize: bool = False, pure: bool = False,
                   output_tensor_type=None, token_embedding_type=None, nthreads: int | None = None,
                   progress: bool = True, with_error: bool = True):
    """Quantize GGUF `src` to `dst` with a llama-quantize ftype ("Q4_K_M", ...). Returns a per-tensor report
    (pandas DataFrame: name, old_type, new_type, shape, old_bytes, new_bytes, rel_rmse)."""
    import pandas as pd
    from tqdm.auto import tqdm

    if nthreads:
        import numba

        numba.set_num_threads(max(1, min(int(nthreads), numba.config.NUMBA_NUM_THREADS)))
    try:
        ftype = LlamaFileType.parse(ftype)
    except ValueError as e:
        raise QuantizeError(str(e)) from None
    src, dst = Path(src), Path(dst)
    if dst.exists() and os.path.samefile(src, dst) or dst.resolve() == src.resolve():
        raise QuantizeError(f"destination {dst} is the source file: choose another output path")
    imat: Imatrix | None = None
    if imatrix is not None:
        imat = imatrix if isinstance(imatrix, Imatrix) else load_imatrix(imatrix)

    gf = read_gguf(src)
    plans = plan_types(gf.tensors, model_shape(gf.metadata), ftype, has_imatrix=imat is not None, pure=pure,
                       output_tensor_type=output_tensor_type, token_embedding_type=token_embedding_type)
    by_name = {t.name: t for t in gf.tensors}
    for p in plans:  # every refusal happens before anything is written
        t = by_name[p.name]
        if p.dst_type == p.src_type:
            continue
        if p.src_type not in (GGMLType.F32, GGMLType.F16, GGMLType.BF16) and not allow_requantize:
            raise QuantizeError(f"{p.name} is already {p.src_type.name}: requantizing is disabled "
                                f"(pass allow_requantize=True / --allow-requantize)")
        vec = imat.get(p.name) if imat is not None else None
        fitting = imatrix_values(imat, t)
        if vec is not None and fitting is None and p.name != "token_embd.weight":
            raise QuantizeError(f"imatrix entry for {p.name} has {vec.size} values, the tensor needs "
                                f"{imatrix_size(t)}: is the imatrix for another model?")
        if p.requires_imatrix and fitting is None:
            raise QuantizeError(f"{p.name} -> {p.dst_type.name} needs an importance matrix "
                                f"({ftype.name} is a very low-bit quantization): pass imatrix=...")

    md = quantized_metadata(gf.metadata, ftype, imat)

    infos = [TensorInfo(p.name, p.dst_type, by_name[p.name].shape) for p in plans]
    rows = []
    with GGUFWriter(dst, md, infos, alignment=gf.alignment) as w:
        for p in tqdm(plans, desc=f"quantize {ftype.name}", unit="tensor", disable=not progress):
            t = by_name[p.name]
            if p.dst_type == p.src_type:
                data, err = t.data, 0.0
            else:
                # a token_embd entry of the wrong size is ignored, as llama.cpp does
                data, err = quantize_tensor(gf, t, p, imatrix_values(imat, t), with_error)
            w.write_tensor(p.name, data)
            gf.release(t)
            rows.append({"name": p.name, "old_type": p.src_type.name, "new_type": p.dst_type.name,
                         "shape": tuple(t.shape), "old_bytes": t.nbytes, "new_bytes": p.dst_type.nbytes(t.shape),
                         "rel_rmse": err})
    gf.close()
    return pd.DataFrame(rows)
