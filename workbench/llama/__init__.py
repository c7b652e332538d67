"""Inference on GGUF files: llama / Mistral / Mixtral forward on quantized weights, sampling, generation (the
tokenizer and chat templates come from workbench.text).

    m = workbench.llama.load("model.gguf", n_ctx=2048)
    m.tokenize("Hello"), m.logits(ids), m.eval(ids), m.chat([{"role": "user", "content": "Hi"}])
"""
from workbench.llama.generate import ContextOverflowError, chat, generate
from workbench.llama.kv_cache import ContextError
from workbench.llama.model import Model, load
from workbench.llama.sampling import LlamaRNG, Sampler, SamplingParams
from workbench.text.tokenizer import StreamDecoder, Tokenizer

__all__ = ["load", "Model", "Tokenizer", "StreamDecoder", "Sampler", "SamplingParams", "LlamaRNG", "generate",
           "chat", "ContextError", "ContextOverflowError"]
