"""llm-workbench: GGUF files, quantization, inference and evaluation for local LLMs, matched to llama.cpp."""
import os

__version__ = "0.1.0"

# Intel's SVML (present where the intel-cmplr-lib-rt / icc_rt package is installed) would let numba vectorize
# math.exp / math.log loops with SVML's own results instead of the C library's, which llama.cpp uses: keep it
# off so a kernel gives the same bits on every host (read by numba when it is first imported).
os.environ.setdefault("NUMBA_DISABLE_INTEL_SVML", "1")


def load(path, n_ctx=None, n_threads=None, **kwargs):
    """Load a GGUF model for inference (see workbench.llama.load)."""
    from workbench.llama import load as _load

    return _load(path, n_ctx=n_ctx, n_threads=n_threads, **kwargs)
