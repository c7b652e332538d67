"""Hugging Face config.json -> hyper-parameters and the llama.* GGUF keys, as llama.cpp's converter reads them.

llama.cpp loads config.json through transformers' AutoConfig (ModelBase.load_hparams), so keys a
checkpoint leaves out get LlamaConfig / MistralConfig / MixtralConfig defaults; CONFIG_DEFAULTS mirrors
those for the keys the converter uses. The GGUF keys follow TextModel.set_gguf_parameters and
LlamaModel.set_gguf_parameters in order, and rope_type "llama3" adds the rope_freqs tensor
(LlamaModel.generate_extra_tensors).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from workbench.gguf.constants import GGUFValueType as VT, Keys, LlamaFileType, key

ARCH = "llama"  # Llama, Mistral and Mixtral all convert to llama.cpp's "llama" architecture
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM")
# transformers' config defaults for keys the converter reads (LlamaConfig, MistralConfig, MixtralConfig)
CONFIG_DEFAULTS = {
    "llama": {"vocab_size": 32000, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0},
    "mistral": {"vocab_size": 32000, "max_position_embeddings": 4096 * 32, "rms_norm_eps": 1e-6,
                "rope_theta": 10000.0},
    "mixtral": {"vocab_size": 32000, "max_position_embeddings": 4096 * 32, "rms_norm_eps": 1e-5,
                "rope_theta": 1e6, "num_local_experts": 8, "num_experts_per_tok": 2},
}
ROPE_YARN_KEYS = {"extrapolation_factor": Keys.Rope.SCALING_YARN_EXT_FACTOR,
                  "attention_factor": Keys.Rope.SCALING_YARN_ATTN_FACTOR,
                  "beta_fast": Keys.Rope.SCALING_YARN_BETA_FAST,
                  "beta_slow": Keys.Rope.SCALING_YARN_BETA_SLOW}


class ConfigError(ValueError):
    """A config.json that cannot be converted (the message names it)."""


def load_hparams(model_dir: Path) -> dict[str, Any]:
    """config.json with transformers' defaults filled in; checks the architecture."""
    path = model_dir / "config.json"
    if not path.is_file():
        raise ConfigError(f"{model_dir}: no config.json (not a Hugging Face model folder)")
    try:
        hp = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON ({e})") from None
    arch = (hp.get("architectures") or [None])[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ConfigError(f"{path}: architecture {arch!r} is not supported (supported: "
                           f"{', '.join(SUPPORTED_ARCHITECTURES)})")
    family = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "MixtralForCausalLM": "mixtral"}[arch]
    for k, v in CONFIG_DEFAULTS[family].items():
        if hp.get(k) is None:
            hp[k] = v
    for k in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size"):
        if not isinstance(hp.get(k), int):
            raise ConfigError(f"{path}: missing or invalid {k!r}")
    if hp.get("num_key_value_heads") is None:
        hp["num_key_value_heads"] = hp["num_attention_heads"]
    if hp.get("head_dim") is None:
        hp["head_dim"] = hp["hidden_size"] // hp["num_attention_heads"]
    hp["_family"] = family
    return hp


def rope_parameters(hp: dict) -> dict:
    """rope scaling parameters as TextModel.__init__ normalises them (rope_theta and rope_type mirrored)."""
    rp = dict(hp.get("rope_parameters") or hp.get("rope_scaling") or {})
    if "full_attention" not in rp and "sliding_attention" not in rp:
        if "rope_theta" not in rp and hp.get("rope_theta") is not None:
            rp["rope_theta"] = hp["rope_theta"]
        if "rope_type" not in rp and rp.get("type") is not None:
            rp["rope_type"] = rp["type"]
        if "original_max_position_embeddings" not in rp and hp.get("original_max_position_embeddings") is not None:
            rp["original_max_position_embeddings"] = hp["original_max_position_embeddings"]
    return rp.get("full_attention", rp)


def hparam_metadata(hp: dict, ftype: LlamaFileType) -> list[tuple[str, Any, Any]]:
    """TextModel.set_gguf_parameters + LlamaModel.set_gguf_parameters, in their order."""
    L, A, R = Keys.LLM, Keys.Attention, Keys.Rope
    out: list[tuple[str, Any, Any]] = [(key(L.BLOCK_COUNT, ARCH), hp["num_hidden_layers"], VT.UINT32),
                                       (key(L.CONTEXT_LENGTH, ARCH), hp["max_position_embeddings"], VT.UINT32),
                                       (key(L.EMBEDDING_LENGTH, ARCH), hp["hidden_size"], VT.UINT32),
                                       (key(L.FEED_FORWARD_LENGTH, ARCH), hp["intermediate_size"], VT.UINT32),
                                       (key(A.HEAD_COUNT, ARCH), hp["num_attention_heads"], VT.UINT32),
                                       (key(A.HEAD_COUNT_KV, ARCH), hp["num_key_value_heads"], VT.UINT32)]
    rp = rope_parameters(hp)
    rope_type, factor = rp.get("rope_type"), rp.get("factor")
    if rope_type == "linear" and factor is not None:
        out += [(key(R.SCALING_TYPE, ARCH), "linear", VT.STRING), (key(R.SCALING_FACTOR, ARCH), factor, VT.FLOAT32)]
    elif rope_type == "yarn" and factor is not None:
        out += [(key(R.SCALING_TYPE, ARCH), "yarn", VT.STRING), (key(R.SCALING_FACTOR, ARCH), factor, VT.FLOAT32),
                (key(R.SCALING_ORIG_CTX_LEN, ARCH), rp["original_max_position_embeddings"], VT.UINT32)]
        for name, tmpl in ROPE_YARN_KEYS.items():
            value = rp.get(name, rp.get("attn_factor")) if name == "attention_factor" else rp.get(name)
            if value is not None:
                out.append((key(tmpl, ARCH), value, VT.FLOAT32))
    elif rope_type in ("su", "longrope"):
        out.append((key(R.SCALING_TYPE, ARCH), "longrope", VT.STRING))
    if rp.get("rope_theta") is not None:
        out.append((key(R.FREQ_BASE, ARCH), rp["rope_theta"], VT.FLOAT32))
    out.append((key(A.LAYERNORM_RMS_EPS, ARCH), hp["rms_norm_eps"], VT.FLOAT32))
    if hp["_family"] == "mixtral":
        out += [(key(L.EXPERT_COUNT, ARCH), hp["num_local_experts"], VT.UINT32),
                (key(L.EXPERT_USED_COUNT, ARCH), hp["num_experts_per_tok"], VT.UINT32)]
    out += [(key(A.KEY_LENGTH, ARCH), hp["head_dim"], VT.UINT32), (key(A.VALUE_LENGTH, ARCH), hp["head_dim"], VT.UINT32),
            (Keys.General.FILE_TYPE, int(ftype), VT.UINT32),
            (key(L.VOCAB_SIZE, ARCH), hp["vocab_size"], VT.UINT32),
            (key(R.DIMENSION_COUNT, ARCH), hp["head_dim"], VT.UINT32)]
    return out


def _powf(a, b) -> float:
    """C's powf (the same libm function on every x86-64 host)."""
    global _POWF
    if _POWF is None:
        libm = ctypes.CDLL(ctypes.util.find_library("m"))
        _POWF = libm.powf
        _POWF.restype, _POWF.argtypes = ctypes.c_float, [ctypes.c_float, ctypes.c_float]
    return _POWF(float(a), float(b))


_POWF = None


def llama3_rope_factors(hp: dict) -> np.ndarray | None:
    """rope_freqs for rope_type "llama3" (LlamaModel.generate_extra_tensors), computed in float32."""
    rp = rope_parameters(hp)
    if str(rp.get("rope_type", "")).lower() != "llama3":
        return None
    dim = hp["head_dim"]
    base = np.float32(rp.get("rope_theta", 10000.0))
    # powf from libm: numpy's float32 power goes to SVML on AVX-512 hosts and differs there in the last bit
    freqs = [np.float32(1.0) / np.float32(_powf(base, e)) for e in np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)]
    factor = rp.get("factor", 8.0)
    low, high = rp.get("low_freq_factor", 1.0), rp.get("high_freq_factor", 4.0)
    old_ctx = rp.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for f in freqs:
        wavelen = np.float32(2 * math.pi) / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (np.float32(old_ctx) / wavelen - np.float32(low)) / np.float32(high - low)
            out.append(np.float32(1) / ((np.float32(1) - smooth) / np.float32(factor) + smooth))
    return np.asarray(out, dtype=np.float32)
