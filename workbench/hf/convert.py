"""Hugging Face checkpoint -> GGUF, byte for byte as llama.cpp's convert_hf_to_gguf.py (LlamaModel), no torch.

    convert_hf("models/tiny-llama", "tiny-llama-f16.gguf", outtype="f16")

Steps, each matching the llama.cpp function named:
  1. hparams: config.json plus transformers' defaults, and the llama.* keys (config.py).
  2. tensors: shards sorted by file name, tensors sorted by name in each (index_tensors / SafetensorsLocal);
     q_proj/k_proj rows permuted (LlamaModel.permute); Mixtral experts stacked into 3-D tensors once all of a
     block's experts are read (LlamaModel.modify_tensors); types per ModelBase.prepare_tensors: F32 for 1-D
     tensors, norms and the router, else the outtype (Q8_0 falls back to F16 for rows not a multiple of 32).
  3. metadata in the writer's order: general.* (model_card.py), hyper-parameters (config.py),
     quantization version, tokenizer (vocab.py, special_vocab.py, bpe_pre.py).
  4. one streaming pass writing tensor by tensor, to a temporary file renamed at the end (GGUFWriter).
Any bad input raises ConvertError (a ValueError) naming the file, before the output exists.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from workbench.gguf.constants import GGMLType, GGUFValueType as VT, Keys, LlamaFileType, QUANTIZATION_VERSION, TensorNames, \
    tensor_name
from workbench.hf.config import ConfigError  # noqa: F401 (re-exported: bad config.json)
from workbench.hf.config import ARCH, hparam_metadata, llama3_rope_factors, load_hparams
from workbench.hf.model_card import general_metadata
from workbench.hf.names import EXPERT_NAMES, SKIPPED_SUFFIXES, TensorNameError, block_id, expert_parts, gguf_name, permute_qk
from workbench.gguf.reader import Metadata, TensorInfo
from workbench.hf.safetensors import SafeTensor, SafetensorsError, f32_to_bf16, open_checkpoint
from workbench.hf.vocab import VocabError, vocab_metadata
from workbench.gguf.writer import GGUFWriter
from workbench.quant import quantize

OUTTYPES: dict[str, tuple[LlamaFileType, GGMLType]] = {
    "f32": (LlamaFileType.ALL_F32, GGMLType.F32),
    "f16": (LlamaFileType.F16, GGMLType.F16),
    "bf16": (LlamaFileType.BF16, GGMLType.BF16),
    "q8_0": (LlamaFileType.Q8_0, GGMLType.Q8_0),
}
class ConvertError(ValueError):
    """A checkpoint that cannot be converted (the message names the file or tensor)."""


@dataclass
class PlannedTensor:
    """One output tensor: GGUF name, type, numpy shape, and how to produce its bytes."""

    name: str
    type: GGMLType
    shape: tuple[int, ...]
    load: Callable[[], np.ndarray]


# ---------------------------------------------------------------- tensors

def guess_ftype(tensors: dict[str, SafeTensor]) -> LlamaFileType:
    """--outtype auto: the dtype of the first tensor with >= 2 dims (bf16 or f16), else F16 (ModelBase.__init__)."""
    for t in tensors.values():
        if len(t.shape) < 2:
            continue
        if t.dtype == "BF16":
            return LlamaFileType.BF16
        if t.dtype == "F16":
            return LlamaFileType.F16
    return LlamaFileType.F16


def tensor_type(name: str, shape: tuple[int, ...], ftype_type: GGMLType) -> GGMLType:
    """Output type of one tensor (ModelBase.prepare_tensors): F32 for 1-D, norms, the MoE router and
    non-.weight tensors; Q8_0 falls back to F16 when the row is not a multiple of its block."""
    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return GGMLType.F32
    if name.startswith("blk.") and name.endswith(".ffn_gate_inp.weight"):
        return GGMLType.F32
    if ftype_type == GGMLType.Q8_0 and shape[-1] % GGMLType.Q8_0.block_size:
        return GGMLType.F16
    return ftype_type


def expected_shape(hf_name: str, hp: dict) -> tuple[int, ...] | None:
    """The shape a tensor must have for these hyper-parameters (None: not checked)."""
    n_embd, n_ff, hd = hp["hidden_size"], hp["intermediate_size"], hp["head_dim"]
    q, kv, vocab = hp["num_attention_heads"] * hd, hp["num_key_value_heads"] * hd, hp["vocab_size"]
    stem = hf_name.rsplit(".", 1)[0]
    part = stem.split(".", 3)[-1] if stem.startswith("model.layers.") else stem
    shapes = {"model.embed_tokens": (vocab, n_embd), "lm_head": (vocab, n_embd), "model.norm": (n_embd,),
              "input_layernorm": (n_embd,), "post_attention_layernorm": (n_embd,),
              "self_attn.q_proj": (q, n_embd), "self_attn.k_proj": (kv, n_embd), "self_attn.v_proj": (kv, n_embd),
              "self_attn.o_proj": (n_embd, q), "mlp.gate_proj": (n_ff, n_embd), "mlp.up_proj": (n_ff, n_embd),
              "mlp.down_proj": (n_embd, n_ff), "block_sparse_moe.gate": (hp.get("num_local_experts", 0), n_embd)}
    if hf_name.endswith(".bias"):
        return shapes[part][:1] if part in shapes else None
    if expert_parts(hf_name):
        return (n_embd, n_ff) if hf_name.endswith(".w2.weight") else (n_ff, n_embd)
    return shapes.get(part)


def _as_float(t: SafeTensor) -> np.ndarray:
    """Source values the way prepare_tensors sees them: F16/F32 kept, anything else widened to float32."""
    data = t.numpy()
    return data if data.dtype in (np.float16, np.float32) else data.astype(np.float32)


def _encode(x: np.ndarray, gtype: GGMLType) -> np.ndarray:
    """Float values -> the stored bytes of `gtype` (gguf.quants.quantize)."""
    if gtype == GGMLType.F32:
        return x.astype(np.float32)
    if gtype == GGMLType.F16:
        return x.astype(np.float16)
    if gtype == GGMLType.BF16:
        return f32_to_bf16(x.astype(np.float32))
    rows = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
    return quantize(rows, gtype.name)


def plan_tensors(model_dir: Path, hp: dict, ftype_type: GGMLType, tensors: dict | None = None,
                 stored: dict[str, tuple[GGMLType, Callable[[], np.ndarray]]] | None = None) -> list[PlannedTensor]:
    """Every output tensor in llama.cpp's order, with validated shapes; nothing is read yet. tensors: the
    checkpoint's tensors by HF name (default: its safetensors; anything with shape, dtype, file, numpy()).
    stored: HF name -> (type, load) for weights whose GGUF bytes come ready-made, a row of blocks per HF row
    (rows are permuted for q/k and stacked for experts like the float weights)."""
    if tensors is None:
        try:
            tensors = open_checkpoint(model_dir)
        except SafetensorsError as e:
            raise ConvertError(str(e)) from None
    stored = stored or {}
    n_head, n_kv = hp["num_attention_heads"], hp["num_key_value_heads"]
    n_layers, n_experts = hp["num_hidden_layers"], hp.get("num_local_experts", 0)
    plan: list[PlannedTensor] = []

    def add(name: str, shape: tuple[int, ...], load: Callable[[], np.ndarray], hf: list[str] = ()) -> None:
        """hf: the HF tensors behind it; if stored has them all, their ready bytes (of one type) are used."""
        ready = [stored[h] for h in hf if h in stored]
        if ready and len(ready) == len(hf) and len({g for g, _ in ready}) == 1:
            plan.append(PlannedTensor(name, ready[0][0], shape, load))
            return
        if ready:
            raise ConvertError(f"{name}: only some of {list(hf)} have stored bytes, or of different types")
        gtype = tensor_type(name, shape, ftype_type)
        plan.append(PlannedTensor(name, gtype, shape, lambda: _encode(load(), gtype)))

    def source(hf: str, t) -> Callable[[], np.ndarray]:
        return stored[hf][1] if hf in stored else lambda: _as_float(t)

    factors = llama3_rope_factors(hp)
    if factors is not None:
        add(tensor_name(TensorNames.ROPE_FREQS), factors.shape, lambda f=factors: f)
    experts: dict[int, dict[tuple[int, str], SafeTensor]] = {}
    for hf, t in tensors.items():
        if hf.endswith(SKIPPED_SUFFIXES):
            continue
        want = expected_shape(hf, hp)
        if want is not None and tuple(t.shape) != want:
            raise ConvertError(f"{t.file}: tensor {hf!r} has shape {list(t.shape)}, config.json implies {list(want)}")
        bid = block_id(hf)
        if bid is not None and bid >= n_layers:
            raise ConvertError(f"{t.file}: tensor {hf!r} is in block {bid} but num_hidden_layers is {n_layers}")
        if (ex := expert_parts(hf)) is not None:
            bid, xid, w = ex
            if xid >= n_experts:
                raise ConvertError(f"{t.file}: tensor {hf!r} is expert {xid} but num_local_experts is {n_experts}")
            experts.setdefault(bid, {})[(xid, w)] = (hf, t)
            if len(experts[bid]) >= n_experts * 3:  # all of this block's experts read: emit w1, w2, w3 stacks
                group = experts.pop(bid)
                for w in EXPERT_NAMES:
                    parts = [group[(x, w)] for x in range(n_experts)]
                    add(tensor_name(EXPERT_NAMES[w], bid), (n_experts, *parts[0][1].shape),
                        lambda fs=[source(h, p) for h, p in parts]: np.stack([f() for f in fs]),
                        [h for h, _ in parts])
            continue
        try:
            name = gguf_name(hf)
        except TensorNameError as e:
            raise ConvertError(f"{t.file}: {e}") from None
        src = source(hf, t)
        if hf.endswith(("q_proj.weight", "q_proj.bias")):
            load = lambda src=src: permute_qk(src(), n_head, n_head)
        elif hf.endswith(("k_proj.weight", "k_proj.bias")):
            load = lambda src=src: permute_qk(src(), n_head, n_kv)
        else:
            load = src
        add(name, tuple(t.shape), load, [hf])
    if experts:
        bid, group = next(iter(experts.items()))
        raise ConvertError(f"{model_dir}: block {bid} has {len(group)} expert tensors, expected {n_experts * 3}")
    names = {p.name for p in plan}
    required = [tensor_name(TensorNames.TOKEN_EMBD), tensor_name(TensorNames.OUTPUT_NORM)]
    for bid in range(n_layers):
        required += [tensor_name(t, bid) for t in (TensorNames.ATTN_NORM, TensorNames.ATTN_Q, TensorNames.ATTN_K,
                                                   TensorNames.ATTN_V, TensorNames.ATTN_OUT, TensorNames.FFN_NORM)]
    missing = [n for n in required if n not in names]
    if missing:
        raise ConvertError(f"{model_dir}: checkpoint lacks tensors for {missing[:6]} (missing or truncated shard?)")
    return plan


# ---------------------------------------------------------------- driver

def build_metadata(model_dir: Path, hp: dict, ftype: LlamaFileType, plan: list[PlannedTensor]) -> Metadata:
    """All KV pairs in llama.cpp's order; a key set twice keeps its first position (gguf-py's kv dict)."""
    md = Metadata()
    md.set(Keys.General.ARCHITECTURE, ARCH, VT.STRING)
    md.set(Keys.General.TYPE, "model", VT.STRING)
    items = general_metadata(model_dir, {p.name: p.shape for p in plan})
    items += hparam_metadata(hp, ftype)
    items.append((Keys.General.QUANTIZATION_VERSION, QUANTIZATION_VERSION, VT.UINT32))
    try:
        items += vocab_metadata(model_dir, hp.get("vocab_size"))
    except VocabError as e:
        raise ConvertError(str(e)) from None
    for k, v, t in items:
        if isinstance(t, tuple) and len(v) == 0:  # GGUFWriter.add_array skips empty arrays
            continue
        md.set(k, v, t)
    return md


def output_path(outfile: Path, md: Metadata, ftype: LlamaFileType) -> Path:
    """Where llama.cpp writes (TextModel.prepare_metadata): a folder gets the GGUF naming convention
    ("Tiny-Llama-4.2M-F16.gguf"); a file name may hold {ftype}/{outtype} templates (lower-case type)."""
    label = {LlamaFileType.ALL_F32: "F32"}.get(ftype, ftype.name)
    if outfile.is_dir():
        G = Keys.General
        name = (md.get(G.BASENAME) or md.get(G.NAME) or "ggml-model").strip().replace(" ", "-").replace("/", "-")
        parts = [name] + [str(md.get(k)).strip().replace(" ", "-") for k in (G.SIZE_LABEL, G.FINETUNE, G.VERSION)
                          if md.get(k) is not None]
        return outfile / ("-".join(parts + [label.upper()]) + ".gguf")
    lower = label.lower()
    try:
        return outfile.parent / outfile.name.format(lower, outtype=lower, ftype=lower, OUTTYPE=label.upper(),
                                                    FTYPE=label.upper())
    except (KeyError, IndexError, ValueError):
        raise ConvertError(f"{outfile}: bad template in the output name (use {{ftype}} or {{outtype}})") from None


def convert_hf(model_dir, outfile, outtype: str = "auto", progress: bool = True) -> Path:
    """Convert a Hugging Face Llama/Mistral/Mixtral folder to GGUF at `outfile` (a file name, possibly with
    a {ftype} template, or a folder to name the file in); returns the path written."""
    model_dir, outfile = Path(model_dir), Path(outfile)
    if not model_dir.is_dir():
        raise ConvertError(f"{model_dir}: not a directory")
    outtype = outtype.lower()
    if outtype != "auto" and outtype not in OUTTYPES:
        raise ConvertError(f"outtype {outtype!r} is not one of auto, {', '.join(OUTTYPES)}")
    hp = load_hparams(model_dir)
    if outtype == "auto":
        try:
            ftype = guess_ftype(open_checkpoint(model_dir))
        except SafetensorsError as e:
            raise ConvertError(str(e)) from None
        ftype_type = {LlamaFileType.BF16: GGMLType.BF16, LlamaFileType.F16: GGMLType.F16}[ftype]
    else:
        ftype, ftype_type = OUTTYPES[outtype]
    return write_plan(model_dir, hp, ftype, plan_tensors(model_dir, hp, ftype_type), outfile, progress)


def write_plan(model_dir: Path, hp: dict, ftype: LlamaFileType, plan: list[PlannedTensor], outfile: Path,
               progress: bool = True) -> Path:
    """Metadata, output name, and one streaming pass over the planned tensors (convert_hf's last steps)."""
    md = build_metadata(model_dir, hp, ftype, plan)
    outfile = output_path(outfile, md, ftype)
    infos = [TensorInfo(p.name, p.type, p.shape) for p in plan]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(p.type.nbytes(p.shape) for p in plan), unit="B", unit_scale=True,
                   desc=f"writing {outfile.name}")
    try:
        with GGUFWriter(outfile, md, infos) as w:
            for p in plan:
                w.write_tensor(p.name, p.load())
                if bar is not None:
                    bar.update(p.type.nbytes(p.shape))
    finally:
        if bar is not None:
            bar.close()
    return outfile
