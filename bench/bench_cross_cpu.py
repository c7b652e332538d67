"""How far apart are the workbench, this host's llama.cpp, and the reference (llama.cpp's AVX2 build, the goldens)?

    python bench/bench_cross_cpu.py [--model PATH] [--threads N] [--json]

On the three golden prompts of SmolLM2 Q4_1 (one batch, n_ctx 1024, F16 KV cache, as the goldens were made) it
prints, for each pair: mean and max KL divergence (natural log, per position), max |dlogit| and argmax
agreement. The workbench gives the goldens' bits on every x86-64 host; llama.cpp's own build on an AVX-512 host
does not (its AVX-512 kernels sum in another order). llama.cpp comes from the optional `bench` extra
(llama-cpp-python, built for this host's CPU); without it only the workbench-vs-reference line is printed.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workbench import load  # noqa: E402
from workbench.assets import ensure_model  # noqa: E402
from workbench.eval.bench import append_report, default_threads, llama_cpp_available  # noqa: E402

GOLDEN = Path(__file__).resolve().parent.parent.parent / "shared" / "golden" / "logits_smollm2_q4_1.npz"


def cpu_summary() -> dict:
    """The CPU's name and its widest x86 vector unit, from /proc/cpuinfo (what `lscpu` shows)."""
    name, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE/other"
    return {"cpu": name, "simd": simd}


def log_softmax(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    a = a - a.max(axis=-1, keepdims=True)
    return a - np.log(np.exp(a).sum(axis=-1, keepdims=True))


def distance(ref: list[np.ndarray], other: list[np.ndarray]) -> dict:
    """KL(ref || other) per position, max |dlogit|, argmax agreement over all prompts."""
    kl, dl, agree = [], 0.0, []
    for r, o in zip(ref, other):
        lp, lq = log_softmax(r), log_softmax(o)
        kl.append((np.exp(lp) * (lp - lq)).sum(axis=-1))
        dl = max(dl, float(np.abs(r - o).max()))
        agree.append(r.argmax(axis=1) == o.argmax(axis=1))
    kl, agree = np.concatenate(kl), np.concatenate(agree)
    return {"mean_kl": float(kl.mean()), "max_kl": float(kl.max()), "max_dlogit": dl, "argmax": float(agree.mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="SmolLM2-135M-Instruct.Q4_1.gguf (the goldens' model; default: fetched)")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    path = str(ensure_model(args.model))
    golden = np.load(GOLDEN)
    prompts = [golden[f"prompt_{i}_tokens"].tolist() for i in range(3)]
    ref = [golden[f"prompt_{i}_logits"] for i in range(3)]

    model = load(path, n_ctx=1024, n_threads=args.threads)
    ours = [model.logits(p) for p in prompts]
    rows = {"workbench vs reference": distance(ref, ours)}
    if llama_cpp_available():
        from llama_cpp import Llama

        llm = Llama(model_path=path, n_ctx=1024, n_batch=1024, n_threads=args.threads,
                    n_threads_batch=args.threads, logits_all=True, verbose=False)
        theirs = []
        for p in prompts:
            llm.reset()
            llm.eval(p)
            theirs.append(np.asarray(llm.scores[:len(p)], np.float32).copy())
        rows["host llama.cpp vs reference"] = distance(ref, theirs)
        rows["workbench vs host llama.cpp"] = distance(theirs, ours)
    cpu = cpu_summary()
    report = [{"bench": "cross_cpu", "pair": k, **cpu, **v} for k, v in rows.items()]
    append_report(report)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{cpu['cpu']} ({cpu['simd']}), {args.threads} threads; reference: llama.cpp's AVX2 build (the goldens)")
    print(f"{'pair':30s} {'mean KL':>10s} {'max KL':>10s} {'max |dlogit|':>13s} {'argmax':>8s}")
    for k, v in rows.items():
        print(f"{k:30s} {v['mean_kl']:10.3g} {v['max_kl']:10.3g} {v['max_dlogit']:13.4g} {v['argmax']:8.4f}")
    if not llama_cpp_available():
        print("(llama-cpp-python not installed: pip install -e '.[bench]' to compare with this host's llama.cpp)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
