"""Inference on GGUF files: tokenizers, llama / Mistral / Mixtral forward on quantized weights, sampling,
chat templates, generation.

    m = workbench.moe.load("model.gguf", n_ctx=2048)
    m.tokenize("Hello"), m.logits(ids), m.eval(ids), m.chat([{"role": "user", "content": "Hi"}])
"""
from .generate import ContextOverflowError, chat, generate
from .kv_cache import ContextError
from .model import Model, load
from .sampling import LlamaRNG, Sampler, SamplingParams
from .tokenizer import StreamDecoder, Tokenizer

__all__ = ["load", "Model", "Tokenizer", "StreamDecoder", "Sampler", "SamplingParams", "LlamaRNG", "generate",
           "chat", "ContextError", "ContextOverflowError"]
