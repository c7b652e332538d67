"""llm-workbench: GGUF files, quantization, inference and evaluation for local LLMs, matched to llama.cpp."""
__version__ = "0.1.0"


def load(path, n_ctx=None, n_threads=None, **kwargs):
    """Load a GGUF model for inference (see workbench.moe.load)."""
    from .moe import load as _load

    return _load(path, n_ctx=n_ctx, n_threads=n_threads, **kwargs)
