"""Quantize a whole GGUF model with GPTQ error compensation (workbench.quant.gptq), layer after layer.

Same output as llama-quantize with an importance matrix, as far as the file goes: the same tensor types (the
ftype's mix, `plan_types`), the same metadata (plus `quantize.gptq.*` keys saying how it was made), ordinary
blocks of each type. Only the choice of the codes differs. The layers go in order, as GPTQ's "sequential" mode:

    X = embeddings of the calibration chunks (n_ctx tokens each, BOS first when the model adds one)
    for each block:  run it on X with its float weights, collecting H = sum x x^T for what enters each matrix
                     (one H for q/k/v, one for o, one for gate/up, one for down; per expert for a MoE stack)
                     quantize its matrices with GPTQ under those H
                     X = the block's output with its *quantized* weights (the next block sees what it will see,
                         up to the activations' rounding: the quantized matrices run as float16 of their
                         dequantized values, through the F16 batch kernels, which are 3x faster at 1B than the
                         k-quant ones)

Memory: the source stays memory-mapped, each matrix's pages released once it is quantized; besides them, X
(tokens x n_embd float32), one block's H (float64), one tensor in float32 with GPTQ's work arrays, the block's
float16 stand-ins and the quantized tensors (the size of the output file). token_embd (a lookup, not a product)
is quantized as llama-quantize does; a separate output.weight gets GPTQ under the output norm's H.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from workbench.cpu import ops
from workbench.cpu.flash_attn import flash_attention
from workbench.gguf import GGUFValueType as VT
from workbench.gguf import TensorInfo
from workbench.gguf.constants import GGMLType, LlamaFileType
from workbench.gguf.writer import GGUFWriter
from workbench.llama import load
from workbench.llama.forward import layer_forward
from workbench.llama.kv_cache import KVCache
from workbench.llama.weights import Weight
from workbench.quant import dequantize, quantize
from workbench.quant.gptq import (
    SHRINK,
    GPTQError,
    accumulate_hessian,
    check_settings,
    gptq_quantize,
    mirror_upper,
    prepare,
)
from workbench.quant.mixes import plan_types
from workbench.quant.quantize_model import (
    QuantizeError,
    model_shape,
    quantize_tensor,
    quantized_metadata,
    to_f32,
)

FLOAT_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)
# matrices that read the same input share one H (wk, wv read what wq reads; up what gate reads)
SHARED = {"wk": "wq", "wv": "wq", "ffn_up": "ffn_gate", "up_exps": "gate_exps"}
MATRICES = ("wq", "wk", "wv", "wo", "ffn_gate", "ffn_up", "ffn_down", "gate_exps", "up_exps", "down_exps")


class _Hessians:
    """H (float64) and rows seen per matrix of one block; per expert for a stack. Accumulated as its upper
    triangle; made whole, in place, the first time a matrix asks for it."""

    def __init__(self):
        self.h: dict[tuple[str, int], np.ndarray] = {}
        self.rows: dict[tuple[str, int], int] = {}
        self.whole: set[tuple[str, int]] = set()
        self.prepared: dict[tuple[str, int], tuple] = {}

    def add(self, attr: str, e: int, x: np.ndarray) -> None:
        key = (attr, e)
        if key in self.whole:
            raise RuntimeError(f"H of {key} is already in use: no more tokens can be added")
        if key not in self.h:
            self.h[key] = np.zeros((x.shape[1], x.shape[1]))
            self.rows[key] = 0
        accumulate_hessian(self.h[key], np.ascontiguousarray(x, np.float32))
        self.rows[key] += len(x)

    def get(self, attr: str, e: int = -1) -> tuple[np.ndarray | None, int]:
        key = (SHARED.get(attr, attr), e)
        if key not in self.h:
            return None, 0
        if key not in self.whole:
            mirror_upper(self.h[key])
            self.whole.add(key)
        return self.h[key], self.rows[key]

    def prepare(self, attr: str, e: int, h: np.ndarray, damp: float, act_order: bool, shrink: float):
        """gptq.prepare once per H (q, k and v share it; gate and up)."""
        key = (SHARED.get(attr, attr), e)
        if key not in self.prepared:
            self.prepared[key] = prepare(h, damp, act_order, shrink)
        return self.prepared[key]


def matrices(w: Weight, full: np.ndarray, hs: _Hessians, attr: str):
    """(name, rows, e, H, tokens seen) for each matrix of w as GPTQ takes them: w itself (e = -1), or each
    expert e of a stack (rows: its slice of `full`, the stack's rows)."""
    n_mat = w.shape[0] if len(w.shape) == 3 else 1
    per = full.shape[0] // n_mat
    for i in range(n_mat):
        e = i if n_mat > 1 else -1
        h, seen = hs.get(attr, e)
        yield (w.name if e < 0 else f"{w.name}[{e}]"), slice(i * per, (i + 1) * per), e, h, seen


# the last product of a block: the float pass only needs what enters it (for H), not what comes out
LAST = ("ffn_down", "down_exps")


class _Collect:
    """Stands in for a Weight in the float pass: adds what enters it to the block's H, then multiplies with the
    float weight (or, for the block's last product, whose output that pass discards, returns zeros)."""

    def __init__(self, weight, attr: str, hs: _Hessians, e: int = -1):
        self._weight, self._attr, self._hs, self._e = weight, attr, hs, e

    def __getattr__(self, name):
        return getattr(self._weight, name)

    def mul(self, x):
        if self._attr not in SHARED:
            self._hs.add(self._attr, self._e, x)
        if self._attr in LAST:
            return np.zeros((len(x), self._weight.shape[-2]), np.float32)
        return self._weight.mul(x)

    def expert(self, e: int):
        return _Collect(self._weight.expert(e), self._attr, self._hs, e)


def _check_calibration(model, tokens: np.ndarray, n_ctx: int, n_chunks: int | None) -> int:
    n_chunk = len(tokens) // n_ctx
    if n_chunks is not None:
        if n_chunks < 1:
            raise QuantizeError(f"n_chunks={n_chunks}: GPTQ needs at least one chunk of calibration text")
        n_chunk = min(n_chunk, int(n_chunks))
    cfg = model.config
    widest = max(cfg.n_embd, cfg.n_ff, cfg.n_head * cfg.head_dim)
    if n_chunk < 1 or n_chunk * n_ctx < widest:
        raise QuantizeError(
            f"the calibration text gives {len(tokens)} tokens ({n_chunk} chunks of {n_ctx}); GPTQ needs at least "
            f"{max(widest, n_ctx)} tokens for this model (its widest matrix input has {widest} columns, and H must "
            f"have full rank): use a longer text")
    return n_chunk


def calibration_inputs(model, calibration: str, n_ctx: int, n_chunks: int | None) -> np.ndarray:
    """The calibration chunks' embeddings (chunks, n_ctx, n_embd): n_ctx tokens each, BOS first when the model
    adds one (as llama-imatrix and llama-perplexity cut a text)."""
    toks = np.asarray(model.tokenize(calibration, add_special=True), np.int32)
    n_chunk = _check_calibration(model, toks, n_ctx, n_chunks)
    chunks = [toks[i * n_ctx:(i + 1) * n_ctx].copy() for i in range(n_chunk)]
    for c in chunks:
        if model.add_bos:
            c[0] = model.bos_id
    return np.stack([model.weights.token_embd.get_rows(c) for c in chunks])


def sequential_blocks(model, x: np.ndarray, quantize_matrix, desc: str = "gptq", progress: bool = True):
    """GPTQ's sequential mode over the blocks of `model`: per block, H for each matrix from x (the block's float
    input), then quantize_matrix(weight, attr, hessians) -> the Weight the block uses for its second pass, then
    x = the block's output with those weights. The block gets its own weights back afterwards (the quantized ones
    are the caller's to keep). Returns the last block's output (chunks, n_ctx, n_embd)."""
    from tqdm.auto import tqdm

    cfg = model.config
    n_ctx = x.shape[1]
    cs = model.rope.cos_sin(np.arange(n_ctx))
    cache = KVCache(cfg.n_layer, n_ctx, cfg.n_embd_kv, model.cache_type)
    scale = np.float32(cfg.kq_scale)
    for il, lw in enumerate(tqdm(model.weights.layers, desc=desc, unit="layer", disable=not progress)):
        hs = _Hessians()
        present = [a for a in MATRICES if getattr(lw, a) is not None]
        originals = {a: getattr(lw, a) for a in present}
        for a in present:
            setattr(lw, a, _Collect(originals[a], a, hs))
        for c in range(len(x)):                                         # float block: collect H (output unused)
            layer_forward(cfg, lw, il, x[c], cs, cache, 0, scale, flash_attention)
        for a in present:                                               # quantize the block's matrices
            setattr(lw, a, quantize_matrix(originals[a], a, hs))
        for c in range(len(x)):                                         # quantized block: the next block's input
            x[c] = layer_forward(cfg, lw, il, x[c], cs, cache, 0, scale, flash_attention)
        for a in present:
            setattr(lw, a, originals[a])
    return x


def gptq_quantize_model(src, dst, ftype, calibration: str, *, n_ctx: int = 512, n_chunks: int | None = 32,
                        damp: float = 0.01, act_order: bool = False, block_size: int = 128, shrink: float = SHRINK,
                        dataset: str = "", pure: bool = False, output_tensor_type=None,
                        token_embedding_type=None, progress: bool = True, n_threads: int | None = None):
    """`python -m workbench quantize SRC DST FTYPE --method gptq --calibration TEXT`: quantize the float GGUF `src`
    to `dst` with the ftype's tensor types, every matrix of the blocks (and a separate output.weight) by GPTQ
    under the activations of `calibration` (the text as llama.cpp reads a file; n_chunks chunks of n_ctx tokens).
    Returns a per-tensor report (name, new_type, method, rows_seen, seconds). Everything is checked, and every
    tensor quantized, before the output file is opened."""
    import pandas as pd

    try:
        ftype = LlamaFileType.parse(ftype)
    except ValueError as e:
        raise QuantizeError(str(e)) from None
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve():
        raise QuantizeError(f"destination {dst} is the source file: choose another output path")
    try:
        check_settings(damp, shrink)
    except GPTQError as e:
        raise QuantizeError(str(e)) from None
    model = load(src, n_ctx=n_ctx, n_threads=n_threads, flash_attn=True)
    gf = model.gguf                  # one memory map: each matrix's pages are released once it is quantized
    plans = plan_types(gf.tensors, model_shape(gf.metadata), ftype, has_imatrix=True, pure=pure,
                       output_tensor_type=output_tensor_type, token_embedding_type=token_embedding_type)
    by_name = {t.name: t for t in gf.tensors}
    for p in plans:
        if p.dst_type != p.src_type and p.src_type not in FLOAT_TYPES:
            raise QuantizeError(f"{p.name} is {p.src_type.name}: GPTQ quantizes from float weights (F32, F16, "
                                f"BF16); convert the model to F16 first")
    plan_of = {p.name: p for p in plans}
    x = calibration_inputs(model, calibration, n_ctx, n_chunks)
    done: dict[str, np.ndarray] = {}
    report = []

    def quantize_matrix(w: Weight, attr: str, hs: _Hessians) -> np.ndarray | None:
        """w's blocks of its planned type, by GPTQ under hs (kept in `done`); None when the type is unchanged."""
        p = plan_of[w.name]
        t0 = time.perf_counter()
        if p.dst_type == p.src_type:
            return None
        src_t = by_name[w.name]
        full = to_f32(src_t)
        out = np.empty((full.shape[0], p.dst_type.row_bytes(w.n_per_row)), np.uint8)
        methods, seen = [], []
        for name, part, e, h, n_rows in matrices(w, full, hs, attr):
            if h is None or n_rows == 0:                    # an expert no calibration token chose
                out[part] = quantize(np.ascontiguousarray(full[part]), p.dst_type)
                methods.append("rtn")
            else:
                out[part] = gptq_quantize(np.ascontiguousarray(full[part]), h, p.dst_type, damp=damp,
                                          act_order=act_order, block_size=block_size, name=name,
                                          prepared=hs.prepare(attr, e, h, damp, act_order, shrink))
                methods.append("gptq")
            seen.append(n_rows)
        gf.release(src_t)
        done[w.name] = out
        report.append({"name": w.name, "new_type": p.dst_type.name, "method": "+".join(sorted(set(methods))),
                       "rows_seen": int(min(seen)), "seconds": time.perf_counter() - t0})
        return out

    def second_pass_weight(w: Weight, attr: str, hs: _Hessians) -> Weight:
        """quantize_matrix, then the block's stand-in for its second pass: float16 of the quantized values."""
        out = quantize_matrix(w, attr, hs)
        if out is None:
            return w
        f16 = dequantize(out, plan_of[w.name].dst_type, w.n_per_row).astype(np.float16)
        return Weight(w.name, GGMLType.F16, w.shape, f16.view(np.uint8), w.is_expert, w.quantize_act)

    x = sequential_blocks(model, x, second_pass_weight, desc=f"gptq {ftype.name}", progress=progress)
    out_w = model.weights.output
    if out_w.name == "output.weight":
        hs = _Hessians()
        for xc in x:
            hs.add("output", -1, ops.rms_norm(np.ascontiguousarray(xc), model.weights.output_norm,
                                              model.config.rms_eps))
        quantize_matrix(out_w, "output", hs)
    for p in plans:                                                     # the rest as llama-quantize does
        if p.name not in done and p.dst_type != p.src_type:
            done[p.name] = quantize_tensor(gf, by_name[p.name], p, None, False)[0]
            report.append({"name": p.name, "new_type": p.dst_type.name, "method": "rtn", "rows_seen": 0,
                           "seconds": 0.0})

    md = quantized_metadata(gf.metadata, ftype)
    for k, v, vt in [("quantize.gptq.dataset", dataset or "(text)", VT.STRING),
                     ("quantize.gptq.n_tokens", x.shape[0] * x.shape[1], VT.UINT32),
                     ("quantize.gptq.damp", float(damp), VT.FLOAT32),
                     ("quantize.gptq.shrink", float(shrink), VT.FLOAT32),
                     ("quantize.gptq.act_order", bool(act_order), VT.BOOL),
                     ("quantize.gptq.block_size", int(block_size), VT.UINT32)]:
        md.set(k, v, vt)
    infos = [TensorInfo(p.name, p.dst_type, by_name[p.name].shape) for p in plans]
    with GGUFWriter(dst, md, infos, alignment=gf.alignment) as w:
        for p in plans:
            w.write_tensor(p.name, done.get(p.name, by_name[p.name].data) if p.dst_type != p.src_type
                           else by_name[p.name].data)
    gf.close()
    return pd.DataFrame(report)


__all__ = ["GPTQError", "QuantizeError", "gptq_quantize_model", "matrices"]
