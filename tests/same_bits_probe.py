"""Run the exact paths once and print a digest of every result (one JSON line), for test_same_bits.py.

The test runs this file in subprocesses under each numpy SIMD dispatch level the host can run
(NPY_DISABLE_CPU_FEATURES) and under NUMBA_CPU_NAME=generic: the digests must all be equal.
Paths covered: the SmolLM2 forward (the three golden prompts, also compared with llama.cpp's logits),
quantization of seeded rows to k-, i- and legacy formats (with an importance vector), perplexity and the
KL-divergence records on a piece of botchan, and seeded sampling.
usage: python same_bits_probe.py MODEL GOLDEN_DIR TEXT
"""
from __future__ import annotations

import hashlib
import json
import sys

import numpy as np

from workbench.eval.kl import encode_log_probs
from workbench.eval.perplexity import perplexity
from workbench.llama.model import load
from workbench.llama.sampling import LlamaRNG, Sampler, SamplingParams
from workbench.quant import quantize
from workbench.text.files import read_prompt_file


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def main(model_path: str, golden_dir: str, text_path: str) -> None:
    out = {}
    m = load(model_path, n_ctx=1024)
    golden = np.load(f"{golden_dir}/logits_smollm2_q4_1.npz")
    logits, maxdiff = [], 0.0
    for i in range(3):
        lg = m.logits(golden[f"prompt_{i}_tokens"])
        logits.append(lg)
        maxdiff = max(maxdiff, float(np.abs(lg - golden[f"prompt_{i}_logits"]).max()))
    out["forward"] = digest(*logits)
    out["forward_max_dlogit_vs_llama_cpp"] = maxdiff

    rng = np.random.default_rng(16)
    rows = (rng.standard_normal((8, 512)) * rng.uniform(0.01, 2.0, (8, 1))).astype(np.float32)
    imatrix = rng.uniform(0.1, 10.0, 512).astype(np.float32)
    out["quantize"] = digest(*[quantize(rows, t, imatrix=imatrix) for t in
                               ("Q4_0", "Q4_1", "Q5_K", "Q4_K", "Q3_K", "Q2_K", "Q6_K", "IQ4_XS", "IQ3_S",
                                "IQ2_XXS", "IQ1_M")])

    text = read_prompt_file(text_path)[:20000]
    r = perplexity(m, text, n_ctx=128, n_chunks=3, progress=False, keep_nll=True)
    out["perplexity"] = digest(r.nll)
    out["ppl"] = r.ppl
    out["kld_records"] = digest(encode_log_probs(logits[0]))

    sampler = Sampler(SamplingParams(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, typical_p=0.9),
                      LlamaRNG(1234))
    out["sampling"] = [sampler.sample(row) for row in logits[1]]
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:4])
