"""GPTQ checkpoints in the AutoGPTQ "v1" layout (TheBloke's GPTQ repos, GPTQModel's `gptq` format), no torch.

    cfg, linears, others = read_gptq_checkpoint("models/Llama-2-7B-GPTQ")
    w = linears["model.layers.0.self_attn.q_proj"].dequantize()        # float32 (out_features, in_features)
    write_dequantized_checkpoint("models/Llama-2-7B-GPTQ", "models/Llama-2-7B-f16")   # then `convert`

A checkpoint is a Hugging Face folder whose quantization settings are in `quantize_config.json` (AutoGPTQ) or
in config.json's `quantization_config` with "quant_method": "gptq" (GPTQModel, transformers). Each quantized
linear `<prefix>` stores, with bits b in {2, 3, 4, 8} and n_groups = in_features / group_size (1 for -1):

    <prefix>.qweight  int32 (in_features*b/32, out_features)   codes packed along the input dim
    <prefix>.qzeros   int32 (n_groups, out_features*b/32)      stored zeros packed along the output dim
    <prefix>.scales   fp16  (n_groups, out_features)
    <prefix>.g_idx    int32 (in_features,)                      group of each input column (desc_act permutes)
    <prefix>.bias     fp16  (out_features,)                     optional

    w[o, i] = scales[g, o] * (q[i, o] - (stored_zero[g, o] + 1)),  g = g_idx[i]   (v1: stored = real zero - 1)

Packing (QuantLinear.pack in AutoGPTQ's qlinear_cuda_old.py, GPTQModel's PackableQuantLinear): the values of
one column (qweight) or one row (qzeros) form a little-endian bit stream, value j at bits [j*b, (j+1)*b) of
the concatenated int32 words. For b = 2, 4, 8 a word holds 32/b whole values; for b = 3, 32 values fill 3
words and values 10 and 21 straddle a word boundary (AutoGPTQ's `bits == 3` branch of the pack loop).
Every malformed input raises GPTQCheckpointError (a ValueError) naming the file or tensor, before anything is
written. GPTQModel's internal "gptq_v2" format (zeros stored unshifted) and Marlin repacks are refused.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workbench.gguf.writer import open_temp_beside
from workbench.hf.safetensors import (
    INDEX_NAME,
    LazyTensor,
    SafeTensor,
    SafetensorsError,
    open_checkpoint,
    read_header,
    write_sharded,
)
from workbench.quant.blocks import pack_nibbles_np
from workbench.quant.types.q4_1 import BLOCK as Q4_1_BLOCK
from workbench.quant.types.q4_1 import QK as Q4_1_QK

BITS = (2, 3, 4, 8)
QUANTIZE_CONFIG = "quantize_config.json"
HF_CONFIG = "config.json"
PARTS = ("qweight", "qzeros", "scales", "g_idx", "bias")
# files of a GPTQ folder that are not copied into a dequantized one (weights, their index, the settings)
NOT_COPIED = (QUANTIZE_CONFIG, HF_CONFIG, INDEX_NAME)
NOT_COPIED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
DEFAULT_SHARD_BYTES = 5 * 1024 ** 3     # transformers' save_pretrained default (5 GB shards)


class GPTQCheckpointError(ValueError):
    """A GPTQ checkpoint, config or tensor that is malformed or not in the v1 layout (the message names it)."""


# ---------------------------------------------------------------- config

@dataclass
class GPTQConfig:
    """The quantization settings of a GPTQ checkpoint (AutoGPTQ's BaseQuantizeConfig)."""

    bits: int                      # 2, 3, 4 or 8
    group_size: int = 128          # input columns per (scale, zero) group; -1: one group over all columns
    desc_act: bool = False         # act-order: columns quantized by decreasing activation, g_idx permuted
    sym: bool = True               # symmetric: every zero is 2**(bits-1)
    damp_percent: float = 0.01     # Hessian dampening used when quantizing (informative only)
    extra: dict = field(default_factory=dict)   # every other key, kept as read (true_sequential, ...)

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or isinstance(self.bits, bool) or self.bits not in BITS:
            raise GPTQCheckpointError(f"bits={self.bits!r} is not supported: GPTQ v1 checkpoints have bits in "
                                      f"{', '.join(map(str, BITS))}")
        if not isinstance(self.group_size, int) or isinstance(self.group_size, bool) or \
                not (self.group_size == -1 or self.group_size > 0):
            raise GPTQCheckpointError(f"group_size={self.group_size!r} must be a positive integer or -1 "
                                      "(one group over all input columns)")

    @classmethod
    def from_dict(cls, d: dict, source: str = "quantization config") -> GPTQConfig:
        """Settings from a quantize_config.json / quantization_config object; `source` names it in errors."""
        if not isinstance(d, dict):
            raise GPTQCheckpointError(f"{source}: expected a JSON object, got {type(d).__name__}")
        method = d.get("quant_method", "gptq")
        if str(method).lower() != "gptq":
            raise GPTQCheckpointError(f"{source}: quant_method is {method!r}, not 'gptq' (only GPTQ checkpoints "
                                      "are read here)")
        fmt = d.get("checkpoint_format", "gptq")
        if str(fmt).lower() != "gptq" or d.get("is_marlin_format"):
            raise GPTQCheckpointError(f"{source}: checkpoint_format {fmt!r}"
                                      f"{' (is_marlin_format)' if d.get('is_marlin_format') else ''} is not the "
                                      "AutoGPTQ v1 'gptq' layout read here")
        if "bits" not in d:
            raise GPTQCheckpointError(f"{source}: no 'bits' key")
        known = {"bits", "group_size", "desc_act", "sym", "damp_percent"}
        try:
            cfg = cls(bits=d["bits"], group_size=d.get("group_size", 128), desc_act=bool(d.get("desc_act", False)),
                      sym=bool(d.get("sym", True)), damp_percent=float(d.get("damp_percent", 0.01)),
                      extra={k: v for k, v in d.items() if k not in known})
        except GPTQCheckpointError as e:
            raise GPTQCheckpointError(f"{source}: {e}") from None
        except (TypeError, ValueError) as e:
            raise GPTQCheckpointError(f"{source}: bad value ({e})") from None
        return cfg

    @classmethod
    def from_dir(cls, path) -> GPTQConfig:
        """quantize_config.json if present (what AutoGPTQ reads), else config.json's quantization_config.
        A config.json whose quantization_config names another method is an error even then."""
        path = Path(path)
        qc, hc = path / QUANTIZE_CONFIG, path / HF_CONFIG
        hf_quant = read_json(hc).get("quantization_config") if hc.is_file() else None
        if hf_quant is not None and not (isinstance(hf_quant, dict)
                                         and str(hf_quant.get("quant_method", "gptq")).lower() == "gptq"):
            method = hf_quant.get("quant_method") if isinstance(hf_quant, dict) else hf_quant
            raise GPTQCheckpointError(f"{hc}: quantization_config has quant_method {method!r}, not 'gptq'")
        if qc.is_file():
            return cls.from_dict(read_json(qc), str(qc))
        if hf_quant is not None:
            return cls.from_dict(hf_quant, f"{hc} quantization_config")
        raise GPTQCheckpointError(f"{path}: not a GPTQ checkpoint: looked for {QUANTIZE_CONFIG} and for a "
                                  f"'quantization_config' in {HF_CONFIG}, found neither")

    def to_dict(self, quant_method: bool = False) -> dict:
        """The JSON object AutoGPTQ writes (plus quant_method "gptq" for config.json when asked)."""
        d = {"bits": self.bits, "group_size": self.group_size, "desc_act": self.desc_act, "sym": self.sym,
             "damp_percent": self.damp_percent, **self.extra}
        if quant_method:
            d["quant_method"] = "gptq"
            d.setdefault("checkpoint_format", "gptq")
        return d

    def to_json(self) -> str:
        """quantize_config.json's text."""
        return json.dumps(self.to_dict(), indent=2) + "\n"


def read_json(path: Path) -> dict:
    """A JSON object from `path` (GPTQCheckpointError naming the file when unreadable)."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GPTQCheckpointError(f"{path}: cannot read JSON ({e})") from None
    if not isinstance(d, dict):
        raise GPTQCheckpointError(f"{path}: expected a JSON object")
    return d


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    fd, tmp = open_temp_beside(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ---------------------------------------------------------------- bit packing

def period(bits: int) -> tuple[int, int]:
    """(values, int32 words) of one repeating unit of the bit stream: (32/b, 1) for b = 2, 4, 8; (32, 3) for 3."""
    if bits not in BITS:
        raise GPTQCheckpointError(f"bits={bits!r} is not supported (GPTQ packs {', '.join(map(str, BITS))} bits)")
    n_values = 32 // np.gcd(32, bits)
    return int(n_values), int(n_values * bits // 32)


def _check_codes(codes, bits: int, what: str) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.dtype.kind not in "iu":
        raise GPTQCheckpointError(f"{what}: expected a 2-D integer array, got {codes.dtype} x {list(codes.shape)}")
    if codes.size and (codes.min() < 0 or codes.max() > (1 << bits) - 1):
        raise GPTQCheckpointError(f"{what}: values must be in 0..{(1 << bits) - 1} for {bits} bits, "
                                  f"got {codes.min()}..{codes.max()}")
    return codes


def pack_rows(codes, bits: int) -> np.ndarray:
    """uint codes (n, m) -> int32 (n*bits/32, m), packed along axis 0 as qweight is (column j's values form a
    little-endian bit stream, value i at bits [i*bits, (i+1)*bits)); n*bits must be a multiple of 32 x period."""
    n_values, n_words = period(bits)
    codes = _check_codes(codes, bits, "codes")
    n, m = codes.shape
    if n % n_values:
        raise GPTQCheckpointError(f"codes: {n} values along the packed axis; {bits}-bit packing needs a multiple "
                                  f"of {n_values}")
    units = codes.astype(np.uint64).reshape(n // n_values, n_values, m)
    words = np.zeros((n // n_values, n_words, m), np.uint64)
    for j in range(n_values):
        word, shift = divmod(j * bits, 32)
        words[:, word] |= (units[:, j] << np.uint64(shift)) & np.uint64(0xFFFFFFFF)
        if shift + bits > 32:                                     # 3-bit values 10 and 21 straddle two words
            words[:, word + 1] |= units[:, j] >> np.uint64(32 - shift)
    return words.astype(np.uint32).view(np.int32).reshape(n // n_values * n_words, m)


def unpack_rows(packed, bits: int) -> np.ndarray:
    """int32 (n*bits/32, m) -> uint8 codes (n, m): the inverse of pack_rows (QuantLinear.forward's unpacking)."""
    n_values, n_words = period(bits)
    packed = np.asarray(packed)
    if packed.ndim != 2 or packed.dtype.itemsize != 4 or packed.dtype.kind not in "iu":
        raise GPTQCheckpointError(f"packed: expected a 2-D int32 array, got {packed.dtype} x {list(packed.shape)}")
    rows, m = packed.shape
    if rows % n_words:
        raise GPTQCheckpointError(f"packed: {rows} words along the packed axis; {bits}-bit packing needs a "
                                  f"multiple of {n_words}")
    words = np.ascontiguousarray(packed).view(np.uint32).astype(np.uint64).reshape(rows // n_words, n_words, m)
    out = np.empty((rows // n_words, n_values, m), np.uint8)
    mask = np.uint64((1 << bits) - 1)
    for j in range(n_values):
        word, shift = divmod(j * bits, 32)
        v = words[:, word] >> np.uint64(shift)
        if shift + bits > 32:
            v |= words[:, word + 1] << np.uint64(32 - shift)
        out[:, j] = v & mask
    return out.reshape(rows // n_words * n_values, m)


def pack_cols(codes, bits: int) -> np.ndarray:
    """uint codes (n, m) -> int32 (n, m*bits/32), packed along axis 1 as qzeros is."""
    return np.ascontiguousarray(pack_rows(_check_codes(codes, bits, "codes").T, bits).T)


def unpack_cols(packed, bits: int) -> np.ndarray:
    """int32 (n, m*bits/32) -> uint8 codes (n, m): the inverse of pack_cols."""
    return np.ascontiguousarray(unpack_rows(np.asarray(packed).T, bits).T)


# ---------------------------------------------------------------- one quantized linear

@dataclass
class GPTQTensor:
    """One quantized linear as stored (shapes in the module docstring); validated on construction."""

    qweight: np.ndarray            # int32 (in_features*bits/32, out_features)
    qzeros: np.ndarray             # int32 (n_groups, out_features*bits/32): real zero - 1, packed
    scales: np.ndarray             # float16 (n_groups, out_features)
    g_idx: np.ndarray              # int32 (in_features,): group of each input column
    bits: int
    group_size: int                # -1: one group over all input columns
    bias: np.ndarray | None = None  # (out_features,)
    name: str = "GPTQTensor"       # the tensor prefix, for error messages

    def __post_init__(self) -> None:
        n = self.name
        if self.bits not in BITS:
            raise GPTQCheckpointError(f"{n}: bits={self.bits!r} is not one of {', '.join(map(str, BITS))}")
        for part, want in (("qweight", "iu"), ("qzeros", "iu"), ("g_idx", "iu"), ("scales", "f")):
            a = np.asarray(getattr(self, part))
            if a.dtype.kind not in want or (part in ("qweight", "qzeros") and a.dtype.itemsize != 4) or \
                    (part == "scales" and a.dtype not in (np.float16, np.float32)):
                raise GPTQCheckpointError(f"{n}.{part}: dtype {a.dtype} (expected "
                                          f"{'float16' if part == 'scales' else 'int32'})")
            if part == "g_idx":                          # any integer type; range-checked below, then int32
                a = a.astype(np.int64)
            setattr(self, part, a.view(np.int32) if part in ("qweight", "qzeros") and a.dtype != np.int32 else a)
        qw, qz, sc, gi = self.qweight, self.qzeros, self.scales, self.g_idx
        if qw.ndim != 2 or sc.ndim != 2 or qz.ndim != 2 or gi.ndim != 1:
            raise GPTQCheckpointError(f"{n}: qweight, qzeros, scales must be 2-D and g_idx 1-D, got shapes "
                                      f"{list(qw.shape)}, {list(qz.shape)}, {list(sc.shape)}, {list(gi.shape)}")
        n_in, (n_groups, n_out) = gi.shape[0], sc.shape
        n_values, n_words = period(self.bits)
        if n_in % n_values or qw.shape != (n_in // n_values * n_words, n_out):
            raise GPTQCheckpointError(f"{n}.qweight: shape {list(qw.shape)}, expected "
                                      f"[{n_in} * {self.bits} / 32, {n_out}] for in_features {n_in} (g_idx) and "
                                      f"out_features {n_out} (scales); in_features must be a multiple of {n_values}")
        if self.group_size != -1 and (self.group_size <= 0 or n_in % self.group_size):
            raise GPTQCheckpointError(f"{n}: group_size {self.group_size} does not divide in_features {n_in}")
        want_groups = 1 if self.group_size == -1 else n_in // self.group_size
        if n_groups != want_groups:
            raise GPTQCheckpointError(f"{n}.scales: {n_groups} groups, expected {want_groups} "
                                      f"(in_features {n_in} / group_size {self.group_size})")
        if n_out % n_values or qz.shape != (n_groups, n_out // n_values * n_words):
            raise GPTQCheckpointError(f"{n}.qzeros: shape {list(qz.shape)}, expected [{n_groups}, {n_out} * "
                                      f"{self.bits} / 32] (out_features must be a multiple of {n_values})")
        if n_in and (gi.min() < 0 or gi.max() >= n_groups):
            bad = int(np.flatnonzero((gi < 0) | (gi >= n_groups))[0])
            raise GPTQCheckpointError(f"{n}.g_idx: column {bad} is in group {gi[bad]}, outside 0..{n_groups - 1}")
        self.g_idx = gi.astype(np.int32)
        if self.bias is not None:
            self.bias = np.asarray(self.bias)
            if self.bias.shape != (n_out,) or self.bias.dtype.kind != "f":
                raise GPTQCheckpointError(f"{n}.bias: {self.bias.dtype} x {list(self.bias.shape)}, expected "
                                          f"floats x [{n_out}]")

    in_features = property(lambda self: int(self.g_idx.shape[0]))
    out_features = property(lambda self: int(self.scales.shape[1]))

    def codes(self) -> np.ndarray:
        """uint8 (out_features, in_features): the quantized level of every weight."""
        return np.ascontiguousarray(unpack_rows(self.qweight, self.bits).T)

    def zeros(self) -> np.ndarray:
        """int32 (n_groups, out_features): the real zero points, stored + 1 (v1), so 1..2**bits, as AutoGPTQ's
        qlinear_cuda / triton kernels and GPTQModel read them. (AutoGPTQ 0.7.1's qlinear_cuda_old torch path
        reads (stored + 1) & (2**bits - 1): a stored 2**bits - 1 is 0 there, 2**bits here.)"""
        return unpack_cols(self.qzeros, self.bits).astype(np.int32) + 1

    def dequantize(self) -> np.ndarray:
        """float32 (out_features, in_features): float32(scales[g, o]) * float32(q[o, i] - zero[g, o]), g = g_idx[i].

        Rounding: none. q - zero is an integer of at most 9 bits and a fp16 scale has an 11-bit significand,
        so the product needs at most 20 bits and float32 (24) holds it exactly: this is the exact value.
        AutoGPTQ / GPTQModel compute `scales * (weight - zeros)` in fp16 (torch's half multiply: the exact
        product rounded to nearest-even fp16), so their weight is float16(this), and may overflow to inf
        where this stays finite; `.astype(np.float16)` of this result reproduces their fp16 weight exactly."""
        g = self.g_idx
        diff = self.codes().astype(np.int32) - self.zeros()[g].T           # (out, in)
        return self.scales.astype(np.float32)[g].T * diff.astype(np.float32)

    @classmethod
    def from_codes(cls, codes, scales, zeros, g_idx, bits: int, group_size: int, bias=None,
                   name: str = "GPTQTensor") -> GPTQTensor:
        """Pack levels `codes` (out, in) in 0..2**bits-1, `scales` (n_groups, out) float16 and real `zeros`
        (n_groups, out) into a GPTQTensor. v1 stores zero - 1 in `bits` bits, so zeros must be in 1..2**bits-1:
        AutoGPTQ's pack wraps a zero of 0 to a stored 2**bits - 1, which its kernels disagree on (read as
        2**bits by qlinear_cuda / triton, as 0 by qlinear_cuda_old), so neither 0 nor 2**bits is written."""
        period(bits)
        codes = _check_codes(codes, bits, f"{name} codes")
        zeros = np.asarray(zeros)
        if zeros.ndim != 2 or zeros.dtype.kind not in "iu":
            raise GPTQCheckpointError(f"{name} zeros: expected a 2-D integer array, got {zeros.dtype} x "
                                      f"{list(zeros.shape)}")
        if zeros.size and (zeros.min() < 1 or zeros.max() > (1 << bits) - 1):
            raise GPTQCheckpointError(f"{name} zeros: real zeros must be in 1..{(1 << bits) - 1} for {bits} bits "
                                      f"in the v1 format (stored as zero - 1; 0 and {1 << bits} are read "
                                      f"differently by AutoGPTQ's kernels), got {zeros.min()}..{zeros.max()}")
        scales = np.asarray(scales)
        if scales.shape != zeros.shape:
            raise GPTQCheckpointError(f"{name} scales: shape {list(scales.shape)}, zeros have {list(zeros.shape)}")
        qzeros = pack_cols(zeros.astype(np.int64) - 1, bits)
        return cls(pack_rows(codes.T, bits), qzeros, scales, np.asarray(g_idx, np.int32), bits, group_size,
                   None if bias is None else np.asarray(bias), name)


def default_g_idx(in_features: int, group_size: int) -> np.ndarray:
    """g_idx without act-order: column i in group i // group_size (all in group 0 for group_size -1)."""
    return (np.arange(in_features) // (in_features if group_size == -1 else group_size)).astype(np.int32)


# ---------------------------------------------------------------- checkpoint read / write

def checkpoint_tensors(model_dir: Path, config: GPTQConfig) -> dict[str, SafeTensor]:
    """The safetensors of a GPTQ folder: `<model_file_base_name>.safetensors` (older AutoGPTQ names such as
    gptq_model-4bit-128g), else the usual model*.safetensors / index, else every *.safetensors file."""
    base = config.extra.get("model_file_base_name")
    try:
        if base and (model_dir / f"{base}.safetensors").is_file() and not (model_dir / INDEX_NAME).is_file():
            part, _ = read_header(model_dir / f"{base}.safetensors")
            return {k: part[k] for k in sorted(part)}
        files = sorted(model_dir.glob("*.safetensors"))
        if (model_dir / INDEX_NAME).is_file() or any(f.name.startswith("model") for f in files) or not files:
            return open_checkpoint(model_dir)
        tensors: dict[str, SafeTensor] = {}
        for f in files:
            part, _ = read_header(f)
            tensors.update({k: part[k] for k in sorted(part)})
        return tensors
    except SafetensorsError as e:
        raise GPTQCheckpointError(str(e)) from None


def read_gptq_checkpoint(model_dir) -> tuple[GPTQConfig, dict[str, GPTQTensor], dict[str, np.ndarray]]:
    """(settings, quantized linears by prefix, every other tensor by name) of a GPTQ folder. The arrays are
    memory-mapped views (BF16 tensors widened to float32). A missing g_idx (pre-act-order GPTQ-for-LLaMa files)
    is filled in as AutoGPTQ does, i // group_size."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise GPTQCheckpointError(f"{model_dir}: not a directory")
    config = GPTQConfig.from_dir(model_dir)
    stored = checkpoint_tensors(model_dir, config)
    prefixes = sorted(n[:-len(".qweight")] for n in stored if n.endswith(".qweight"))
    if not prefixes:
        raise GPTQCheckpointError(f"{model_dir}: no '<prefix>.qweight' tensor: not a GPTQ checkpoint")
    linears: dict[str, GPTQTensor] = {}
    used: set[str] = set()
    for p in prefixes:
        parts = {k: stored[f"{p}.{k}"] for k in PARTS if f"{p}.{k}" in stored}
        missing = [k for k in ("qzeros", "scales") if k not in parts]
        if missing:
            raise GPTQCheckpointError(f"{parts['qweight'].file}: {p}.qweight has no {', '.join(missing)}")
        used.update(t.name for t in parts.values())
        arrays = {k: t.numpy() for k, t in parts.items()}
        if "g_idx" not in arrays:
            n_in = arrays["qweight"].shape[0] * 32 // config.bits
            arrays["g_idx"] = default_g_idx(n_in, config.group_size)
        linears[p] = GPTQTensor(**arrays, bits=config.bits, group_size=config.group_size, name=p)
    others = {n: t.numpy() for n, t in stored.items() if n not in used}
    return config, linears, others


def hf_config_with(hf_config: dict, quantization_config: dict | None) -> dict:
    """A copy of config.json's object with quantization_config replaced (None: removed)."""
    out = {k: v for k, v in hf_config.items() if k != "quantization_config"}
    if quantization_config is not None:
        out["quantization_config"] = quantization_config
    return out


def write_gptq_checkpoint(model_dir, config: GPTQConfig, tensors: dict[str, GPTQTensor],
                          others: dict[str, np.ndarray], hf_config: dict | None = None,
                          max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[Path]:
    """Write a GPTQ v1 folder: model.safetensors (or shards + index), quantize_config.json, and config.json
    (`hf_config`, or the folder's own config.json, with quantization_config set). Everything is checked first;
    each file is written to a temporary file and renamed. Returns the safetensors paths."""
    model_dir = Path(model_dir)
    for p, t in tensors.items():
        if not isinstance(t, GPTQTensor):
            raise GPTQCheckpointError(f"{p}: expected a GPTQTensor, got {type(t).__name__}")
        if (t.bits, t.group_size) != (config.bits, config.group_size):
            raise GPTQCheckpointError(f"{p}: bits {t.bits}, group_size {t.group_size} differ from the config's "
                                      f"bits {config.bits}, group_size {config.group_size}")
    flat: dict[str, np.ndarray] = {}
    for p, t in tensors.items():
        for k in PARTS:
            v = getattr(t, k)
            if v is not None:
                flat[f"{p}.{k}"] = np.asarray(v)
    clash = sorted(set(flat) & set(others))
    if clash:
        raise GPTQCheckpointError(f"tensor {clash[0]!r} is both in a quantized linear and in `others`")
    flat.update({n: np.asarray(a) for n, a in others.items()})
    if hf_config is None:
        hf_config = read_json(model_dir / HF_CONFIG) if (model_dir / HF_CONFIG).is_file() else {}
    model_dir.mkdir(parents=True, exist_ok=True)
    config = GPTQConfig(config.bits, config.group_size, config.desc_act, config.sym, config.damp_percent,
                        {**config.extra, "model_file_base_name": "model"})
    try:
        paths = write_sharded(model_dir, flat, max_shard_bytes, metadata={"format": "pt"})
    except SafetensorsError as e:
        raise GPTQCheckpointError(str(e)) from None
    write_text_atomic(model_dir / QUANTIZE_CONFIG, config.to_json())
    write_text_atomic(model_dir / HF_CONFIG, json.dumps(hf_config_with(hf_config, config.to_dict(True)),
                                                        indent=2) + "\n")
    return paths


# ---------------------------------------------------------------- dequantized (float) checkpoints

def dequantized_tensors(model_dir) -> tuple[GPTQConfig, dict[str, tuple[str, tuple[int, ...],
                                                                        Callable[[], np.ndarray]]]]:
    """(settings, name -> (kind, shape, load)) of the float checkpoint a GPTQ folder stands for, nothing
    computed yet: `<prefix>.weight` (kind "weight") for each quantized linear, its bias, and the other tensors."""
    config, linears, others = read_gptq_checkpoint(model_dir)
    out: dict[str, tuple[str, tuple[int, ...], Callable[[], np.ndarray]]] = {}
    for p, t in linears.items():
        out[f"{p}.weight"] = ("weight", (t.out_features, t.in_features), t.dequantize)
        if t.bias is not None:
            out[f"{p}.bias"] = ("other", t.bias.shape, lambda b=t.bias: b)
    for n, a in others.items():
        if n in out:
            raise GPTQCheckpointError(f"{model_dir}: tensor {n!r} is stored as float but is also a GPTQ linear's")
        out[n] = ("other", a.shape, lambda a=a: a)
    return config, out


def dequantized_state_dict(model_dir) -> dict[str, np.ndarray]:
    """name -> array of the float HF checkpoint a GPTQ folder stands for: `<prefix>.weight` float32
    (GPTQTensor.dequantize) for every quantized linear, float tensors (biases, norms, embeddings) widened to
    float32, integer ones as they are. Holds the whole model in memory: for big models use
    write_dequantized_checkpoint, which streams one tensor at a time."""
    _, items = dequantized_tensors(model_dir)
    out = {}
    for n, (_, _, load) in items.items():
        a = np.asarray(load())
        out[n] = a.astype(np.float32) if a.dtype.kind == "f" else np.array(a)
    return out


def write_dequantized_checkpoint(gptq_dir, out_dir, dtype: str = "f16",
                                 max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[Path]:
    """Write the float HF folder a GPTQ checkpoint stands for, for `python -m workbench convert`.

    dtype "f16" (default) stores every quantized weight as float16(dequantize()), which is exactly the fp16
    weight AutoGPTQ's own dequantization multiplies with (see GPTQTensor.dequantize), at half the size of f32,
    and `convert --outtype auto` then makes an F16 GGUF, as from any fp16 HF model; a weight that overflows
    fp16 is an error (use "f32"). "f32" keeps the exact products. Non-weight float tensors are stored in the
    same dtype (fp16 GPTQ files hold them in fp16: no change). config.json loses quantization_config and gets
    torch_dtype; tokenizer and other small files are copied. Returns the safetensors paths."""
    gptq_dir, out_dir = Path(gptq_dir), Path(out_dir)
    if dtype not in ("f16", "f32"):
        raise GPTQCheckpointError(f"dtype {dtype!r} must be 'f16' or 'f32'")
    if out_dir.resolve() == gptq_dir.resolve():
        raise GPTQCheckpointError(f"{out_dir}: the output folder must differ from the GPTQ folder")
    np_dtype = np.float16 if dtype == "f16" else np.float32
    hf_config = read_json(gptq_dir / HF_CONFIG) if (gptq_dir / HF_CONFIG).is_file() else None
    if hf_config is None:
        raise GPTQCheckpointError(f"{gptq_dir}: no {HF_CONFIG} (the converter needs the model's hyper-parameters)")
    _, items = dequantized_tensors(gptq_dir)

    def loader(name: str, load: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            a = np.asarray(load())
            if a.dtype.kind != "f":
                return a
            with np.errstate(over="ignore"):
                b = a.astype(np_dtype)
            if not np.isfinite(b).all() and np.isfinite(a).all():
                raise GPTQCheckpointError(f"{name}: values beyond the float16 range; write with dtype='f32'")
            return b
        return run

    lazies = {n: LazyTensor(dtype.upper(), tuple(shape), loader(n, load)) if kind == "weight" else loader(n, load)()
              for n, (kind, shape, load) in items.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        paths = write_sharded(out_dir, lazies, max_shard_bytes, metadata={"format": "pt"})
    except SafetensorsError as e:
        raise GPTQCheckpointError(str(e)) from None
    float_config = {**hf_config_with(hf_config, None), "torch_dtype": "float16" if dtype == "f16" else "float32"}
    write_text_atomic(out_dir / HF_CONFIG, json.dumps(float_config, indent=2) + "\n")
    for f in sorted(gptq_dir.iterdir()):              # tokenizer, generation config, README, ...
        if f.is_file() and f.name not in NOT_COPIED and not f.name.endswith(NOT_COPIED_SUFFIXES):
            shutil.copyfile(f, out_dir / f.name)
    return paths


# ---------------------------------------------------------------- lossless GPTQ -> ggml Q4_1

@functools.cache
def exact_scale_table(zero: int) -> np.ndarray:
    """Sorted float32 values of every finite non-negative fp16 s for which s * zero is an fp16 value exactly."""
    s = np.arange(0x7C00, dtype=np.uint16).view(np.float16).astype(np.float32)     # +0 .. 65504
    m = s * np.float32(zero)                                                       # exact in float32
    with np.errstate(over="ignore"):
        ok = m.astype(np.float16).astype(np.float32) == m
    return s[ok]


def q4_1_exact_scales(scale_f16, zero) -> np.ndarray:
    """The fp16 scale nearest to each `scale_f16` for which Q4_1's m = -scale*zero is exactly an fp16 value
    (scale*zero must fit fp16's 11-bit significand: a zero of odd part z' costs scale about log2(z')
    significand bits). Ties go to the smaller magnitude; the sign is kept. `zero` (real zeros) broadcasts."""
    s = np.asarray(scale_f16, dtype=np.float16).astype(np.float32)
    z = np.broadcast_to(np.asarray(zero), s.shape)
    if z.dtype.kind not in "iu" or (z.size and (z.min() < 0 or z.max() > 256)):
        raise GPTQCheckpointError("zero: expected integers in 0..256")
    out = np.empty_like(s)
    mag = np.abs(s)
    for zv in np.unique(z):
        sel = z == zv
        table = exact_scale_table(int(zv))
        i = np.clip(np.searchsorted(table, mag[sel]), 1, len(table) - 1)
        lo, hi = table[i - 1], table[i]
        out[sel] = np.where(mag[sel] - lo <= hi - mag[sel], lo, hi)
    return (np.sign(s) * out).astype(np.float16)


def q4_1_mismatch(t: GPTQTensor) -> str | None:
    """Why `t` cannot be turned into ggml Q4_1 blocks exactly (None: it can, see to_q4_1_blocks)."""
    return q4_1_conversion(t)[1]


def to_q4_1_blocks(t: GPTQTensor) -> np.ndarray | None:
    """The exact ggml Q4_1 blocks (uint8 (out_features, in_features/32*20)) of a 4-bit, group-size-32 GPTQ
    tensor without act-order (g_idx[i] == i // 32): per block d = scale, m = -scale*zero, qs = the codes
    (element j < 16 in the low nibble of byte j, element j+16 in the high nibble; block_q4_1 in ggml-common.h),
    so that dequantize_row_q4_1's d*q + m equals GPTQTensor.dequantize() bit for bit. None when that is not
    so: another layout, or a block whose -scale*zero is not an fp16 value (q4_1_mismatch says which); the
    caller then requantizes. q4_1_exact_scales gives scales that always convert."""
    return q4_1_conversion(t)[0]


def q4_1_conversion(t: GPTQTensor) -> tuple[np.ndarray | None, str | None]:
    if t.bits != 4 or t.group_size != Q4_1_QK:
        return None, f"{t.name}: bits {t.bits}, group_size {t.group_size}; Q4_1 needs 4 bits, group size 32"
    if not np.array_equal(t.g_idx, default_g_idx(t.in_features, Q4_1_QK)):
        return None, f"{t.name}: g_idx is permuted (desc_act); Q4_1 blocks need g_idx[i] == i // 32"
    s32 = t.scales.astype(np.float32)                                       # (n_groups, out)
    d = s32.astype(np.float16)
    if not np.array_equal(d.astype(np.float32), s32, equal_nan=True):
        return None, f"{t.name}: scales are not all fp16 values"
    zeros = t.zeros()
    m32 = s32 * -zeros.astype(np.float32)                                   # exact (11 + 9 bits)
    with np.errstate(over="ignore"):
        m = m32.astype(np.float16)
    exact = m.astype(np.float32) == m32
    for q in range(16):                                                     # d*q + m, rounded as ggml does
        exact &= d.astype(np.float32) * np.float32(q) + m.astype(np.float32) == s32 * np.float32(q - zeros)
    if not exact.all():
        g, o = np.argwhere(~exact)[0]
        return None, (f"{t.name}: block {g} of row {o}: scale {s32[g, o]!r} * zero {zeros[g, o]} is not an fp16 "
                      f"value ({(~exact).sum()} of {exact.size} blocks inexact)")
    codes = t.codes().reshape(t.out_features, -1, Q4_1_QK)                 # (out, n_blocks, 32)
    blocks = np.zeros(codes.shape[:2], Q4_1_BLOCK)
    blocks["d"], blocks["m"] = d.T, m.T
    blocks["qs"] = pack_nibbles_np(codes[..., :16], codes[..., 16:])
    return blocks.view(np.uint8).reshape(t.out_features, -1), None
