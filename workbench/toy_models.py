"""Seeded tiny Mixtral checkpoints in Hugging Face layout, made offline, for machines without the shared toy
models: a SentencePiece vocabulary trained on the English evaluation text (byte fallback, like Mistral's),
random float16 weights, converted to GGUF by workbench's own converter."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from workbench.assets import ensure_texts
from workbench.hf.convert import convert_hf
from workbench.hf.safetensors import write_safetensors

SHAPES = {  # name: (hidden, ffn, heads, kv heads, experts)
    "tiny-mixtral": (64, 160, 4, 2, 4),
    "tiny-mixtral8": (256, 512, 8, 2, 8),
}
CHAT_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
                 "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
                 "{{ message['content'] + eos_token }}{% endif %}{% endfor %}")


def train_tokenizer(text_path, out: Path, vocab_size: int = 2000) -> None:
    import sentencepiece as spm

    prefix = out / "spm"
    spm.SentencePieceTrainer.train(input=str(text_path), model_prefix=str(prefix), vocab_size=vocab_size,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, num_threads=1)
    prefix.with_suffix(".model").rename(out / "tokenizer.model")
    prefix.with_suffix(".vocab").unlink()


def make_hf_mixtral(out: Path, name: str, text_path, seed: int = 0, n_layer: int = 2) -> Path:
    hidden, ffn, n_head, n_kv, n_exp = SHAPES[name]
    out.mkdir(parents=True, exist_ok=True)
    train_tokenizer(text_path, out)
    import sentencepiece as spm

    vocab = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model")).vocab_size()
    rng = np.random.default_rng(seed)
    head_dim = hidden // n_head

    def w(*shape, scale=0.08):
        return (rng.standard_normal(shape) * scale).astype(np.float16)

    t = {"model.embed_tokens.weight": w(vocab, hidden, scale=1.0), "model.norm.weight": np.ones(hidden, np.float16),
         "lm_head.weight": w(vocab, hidden)}
    for i in range(n_layer):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = (1 + w(hidden, scale=0.1)).astype(np.float16)
        t[p + "post_attention_layernorm.weight"] = (1 + w(hidden, scale=0.1)).astype(np.float16)
        t[p + "self_attn.q_proj.weight"] = w(n_head * head_dim, hidden)
        t[p + "self_attn.k_proj.weight"] = w(n_kv * head_dim, hidden)
        t[p + "self_attn.v_proj.weight"] = w(n_kv * head_dim, hidden)
        t[p + "self_attn.o_proj.weight"] = w(hidden, n_head * head_dim)
        t[p + "block_sparse_moe.gate.weight"] = w(n_exp, hidden, scale=1.0)
        for e in range(n_exp):
            q = f"{p}block_sparse_moe.experts.{e}."
            t[q + "w1.weight"], t[q + "w3.weight"], t[q + "w2.weight"] = w(ffn, hidden), w(ffn, hidden), w(hidden, ffn)
    write_safetensors(out / "model.safetensors", t)
    config = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": hidden,
              "intermediate_size": ffn, "num_hidden_layers": n_layer, "num_attention_heads": n_head,
              "num_key_value_heads": n_kv, "head_dim": head_dim, "num_local_experts": n_exp,
              "num_experts_per_tok": 2, "vocab_size": vocab, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
              "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "float16", "bos_token_id": 1,
              "eos_token_id": 2, "hidden_act": "silu", "sliding_window": None}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "chat_template": CHAT_TEMPLATE, "tokenizer_class": "LlamaTokenizer"}, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    return out


def ensure_toy_models(folder: Path) -> Path:
    """tiny-mixtral/ (HF), tiny-mixtral-f16.gguf and tiny-mixtral8-f16.gguf under `folder`, made once."""
    folder = Path(folder)
    text = ensure_texts()["en"]
    for name in SHAPES:
        gguf = folder / f"{name}-f16.gguf"
        if not gguf.exists():
            hf = make_hf_mixtral(folder / name, name, text, seed=len(name))
            convert_hf(hf, gguf, outtype="f16", progress=False)
    return folder
