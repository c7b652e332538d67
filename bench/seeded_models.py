"""Seeded real-shaped models for the memory bench: a TinyLlama-1.1B-shaped Llama (hidden 2048, ffn 5632,
22 layers, 32/4 heads, vocab 32000, ctx 2048) and a Mixtral-shaped MoE (hidden 1024, ffn 3584, 8 layers, 16/4
heads, 8 experts of which 2 per token: 0.8B parameters), with float16 weights from a seeded normal, converted by
workbench's converter and quantized to Q4_K_M by workbench's quantizer. Made once under data/models/.

    python bench/seeded_models.py [--moe]    # builds data/models/seeded-1b-{f16,Q4_K_M}.gguf if missing, and
                                             # with --moe data/models/seeded-moe-f16.gguf (Mixtral shape, 0.8B)

Scale: the toy models (workbench/toy_models.py) draw weights as N(0, 0.08) at hidden 64; here the same
std per fan-in, 0.08 * sqrt(64 / fan_in), so activations stay in the same range as the toys'; embeddings
N(0, 1) as there. Tokenizer: the toy models' Mistral-7B SentencePiece model (32000 pieces).
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbench.hf.convert import convert_hf  # noqa: E402
from workbench.hf.safetensors import LazyTensor, write_safetensors  # noqa: E402
from workbench.quant.quantize_model import quantize_model  # noqa: E402
from workbench.workspace import shared_dir  # noqa: E402

TINYLLAMA_1B = {"hidden": 2048, "ffn": 5632, "n_layer": 22, "n_head": 32, "n_head_kv": 4, "vocab": 32000,
                "ctx": 2048}
# a Mixtral-shaped MoE of ~0.8B parameters (8 experts, 2 per token), small enough for a 2-core bench
MIXTRAL_08B = {"hidden": 1024, "ffn": 3584, "n_layer": 8, "n_head": 16, "n_head_kv": 4, "vocab": 32000,
               "ctx": 2048, "n_expert": 8, "n_expert_used": 2}
TOY_TOKENIZER = shared_dir() / "golden" / "toy" / "tiny-llama"


def make_hf_llama(out: Path, shape: dict = TINYLLAMA_1B, seed: int = 1, tokenizer_dir: Path = TOY_TOKENIZER) -> Path:
    """A Hugging Face Llama folder (Mixtral when the shape has n_expert) with seeded float16 weights (written one
    tensor at a time)."""
    out.mkdir(parents=True, exist_ok=True)
    for f in ("tokenizer.model", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(tokenizer_dir / f, out / f)
    h, ff, n_head, n_kv, vocab = shape["hidden"], shape["ffn"], shape["n_head"], shape["n_head_kv"], shape["vocab"]
    head_dim = h // n_head

    def w(name_seed: int, *dims, scale=None):
        std = 0.08 * np.sqrt(64 / dims[-1]) if scale is None else scale

        def load():
            rng = np.random.default_rng([seed, name_seed])
            return (rng.standard_normal(dims, dtype=np.float32) * np.float32(std)).astype(np.float16)
        return LazyTensor("F16", tuple(dims), load)

    def norm(name_seed: int):
        return LazyTensor("F16", (h,), lambda: (1 + w(name_seed, h, scale=0.1).load()).astype(np.float16))

    t = {"model.embed_tokens.weight": w(0, vocab, h, scale=1.0), "model.norm.weight": norm(1),
         "lm_head.weight": w(2, vocab, h)}
    for i in range(shape["n_layer"]):
        p, s = f"model.layers.{i}.", 100 * (i + 1)
        t[p + "input_layernorm.weight"] = norm(s)
        t[p + "post_attention_layernorm.weight"] = norm(s + 1)
        t[p + "self_attn.q_proj.weight"] = w(s + 2, n_head * head_dim, h)
        t[p + "self_attn.k_proj.weight"] = w(s + 3, n_kv * head_dim, h)
        t[p + "self_attn.v_proj.weight"] = w(s + 4, n_kv * head_dim, h)
        t[p + "self_attn.o_proj.weight"] = w(s + 5, h, n_head * head_dim)
        if "n_expert" in shape:
            m = p + "block_sparse_moe."
            t[m + "gate.weight"] = w(s + 9, shape["n_expert"], h)
            for x in range(shape["n_expert"]):
                q = f"{m}experts.{x}."
                t[q + "w1.weight"] = w(s + 10 + 3 * x, ff, h)
                t[q + "w3.weight"] = w(s + 11 + 3 * x, ff, h)
                t[q + "w2.weight"] = w(s + 12 + 3 * x, h, ff)
        else:
            t[p + "mlp.gate_proj.weight"] = w(s + 6, ff, h)
            t[p + "mlp.up_proj.weight"] = w(s + 7, ff, h)
            t[p + "mlp.down_proj.weight"] = w(s + 8, h, ff)
    write_safetensors(out / "model.safetensors", t)
    moe = "n_expert" in shape
    config = {"architectures": ["MixtralForCausalLM" if moe else "LlamaForCausalLM"],
              "model_type": "mixtral" if moe else "llama", "hidden_size": h,
              "intermediate_size": ff, "num_hidden_layers": shape["n_layer"], "num_attention_heads": n_head,
              "num_key_value_heads": n_kv, "head_dim": head_dim, "vocab_size": vocab,
              "max_position_embeddings": shape["ctx"], "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
              "tie_word_embeddings": False, "torch_dtype": "float16", "bos_token_id": 1, "eos_token_id": 2,
              "hidden_act": "silu"}
    if moe:
        config.update(num_local_experts=shape["n_expert"], num_experts_per_tok=shape["n_expert_used"])
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def ensure_seeded_f16(name: str = "seeded-1b", shape: dict = TINYLLAMA_1B,
                      folder: Path = ROOT / "data" / "models") -> Path:
    """data/models/<name>-f16.gguf, built (HF folder -> F16 GGUF) the first time only."""
    f16 = folder / f"{name}-f16.gguf"
    if not f16.exists():
        hf = make_hf_llama(folder / f"{name}-hf", shape)
        convert_hf(hf, f16, outtype="f16", progress=False)
        shutil.rmtree(hf)  # the GGUF holds the same weights; keep only it
    return f16


def ensure_seeded_1b_f16(folder: Path = ROOT / "data" / "models") -> Path:
    return ensure_seeded_f16("seeded-1b", TINYLLAMA_1B, folder)


def ensure_seeded_moe_f16(folder: Path = ROOT / "data" / "models") -> Path:
    return ensure_seeded_f16("seeded-moe", MIXTRAL_08B, folder)


def ensure_seeded_1b(folder: Path = ROOT / "data" / "models", ftype: str = "Q4_K_M") -> Path:
    """data/models/seeded-1b-<ftype>.gguf, built (HF folder -> F16 GGUF -> ftype) the first time only."""
    quant = folder / f"seeded-1b-{ftype}.gguf"
    if not quant.exists():
        quantize_model(ensure_seeded_1b_f16(folder), quant, ftype, with_error=False, progress=False)
    return quant


if __name__ == "__main__":
    print(ensure_seeded_1b())
    if "--moe" in sys.argv:
        print(ensure_seeded_moe_f16())
