"""Memory estimate (workbench.plan) vs measured peak RSS, for llama.cpp (llama-cpp-python) and the workbench.

    python bench/bench_memory.py [--model PATH ...] [--ctx 512 --ctx 4096 ...] [--json]

Default models: SmolLM2-135M Q4_1 (contexts 512, 4096, 8192) and the seeded TinyLlama-1.1B-shaped Q4_K_M
(bench/seeded_models.py; contexts 512, 2048). Each measurement is a fresh subprocess: import, load at n_ctx,
eval a short prompt (16 tokens) so the buffers are allocated, then ru_maxrss.
  llama.cpp: its KV cache is zeroed at creation, so it is resident at any n_ctx.
  workbench: its KV cache is lazily mapped; the subprocess writes it in full (as a context filled to n_ctx
    would) before reading ru_maxrss. A warm-up run fills numba's cache first (JIT compilation is a one-off).
The estimate is plan(...)["memory"]["llama_cpp"] / ["workbench"] for the file's own ftype (see workbench.plan.memory).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbench.gguf import read_gguf  # noqa: E402
from workbench.gguf.constants import LlamaFileType  # noqa: E402
from workbench.plan import plan  # noqa: E402

PROMPT = [1] + [100 + i for i in range(15)]
LLAMA = """
import resource, sys, llama_cpp
m = llama_cpp.Llama(sys.argv[1], n_ctx=int(sys.argv[2]), n_threads=2, verbose=False)
m.eval({prompt})
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""
WORKBENCH = """
import resource, sys, workbench
m = workbench.load(sys.argv[1], n_ctx=int(sys.argv[2]), n_threads=2)
m.eval({prompt})
m.cache.k.fill(0); m.cache.v.fill(0)   # a full context's KV cache
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def measure(script: str, model: Path, n_ctx: int) -> int:
    out = subprocess.run([sys.executable, "-c", script.format(prompt=PROMPT), str(model), str(n_ctx)],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return int(out.stdout.strip().splitlines()[-1])


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", type=Path)
    ap.add_argument("--ctx", action="append", type=int)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.model:
        cases = [(m, a.ctx or [512, 4096]) for m in a.model]
    else:
        from bench.seeded_models import ensure_seeded_1b

        cases = [(ROOT / "data/models/SmolLM2-135M-Instruct.Q4_1.gguf", a.ctx or [512, 4096, 8192]),
                 (ensure_seeded_1b(), a.ctx or [512, 2048])]
    rows = []
    for model, contexts in cases:
        with read_gguf(model) as gf:
            ftype = LlamaFileType(int(gf.metadata["general.file_type"])).name
        measure(WORKBENCH, model, 256)  # warm numba's cache
        for c in contexts:
            mem = plan(model, ftype, n_ctx=c)[0]["memory"]
            for engine, script in (("llama.cpp", LLAMA), ("workbench", WORKBENCH)):
                est = mem["llama_cpp" if engine == "llama.cpp" else "workbench"]
                got = measure(script, model, c)
                rows.append({"model": model.name, "engine": engine, "n_ctx": c, "estimate_MiB": est / 2**20,
                             "measured_MiB": got / 2**20, "ratio": est / got})
    if a.json:
        print(json.dumps(rows))
        return 0
    print(f"CPU: {cpu_name()}; peak RSS (ru_maxrss) after load + a {len(PROMPT)}-token eval")
    print(f"{'model':40s} {'engine':10s} {'n_ctx':>6s} {'estimate':>10s} {'measured':>10s} {'ratio':>6s}")
    for r in rows:
        print(f"{r['model']:40s} {r['engine']:10s} {r['n_ctx']:6d} {r['estimate_MiB']:8.0f}Mi {r['measured_MiB']:8.0f}Mi "
              f"{r['ratio']:6.3f}")
    return 0 if all(0.9 <= r["ratio"] <= 1.1 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
