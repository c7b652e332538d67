"""pp512 (prompt processing) and tg128 (generation) tokens/s, workbench vs llama.cpp, like llama-bench.

    python bench/bench_generate.py [--model PATH ...] [--threads N] [--repeat 5] [--json]

Each model is run by both engines in one process, interleaved, median of --repeat runs. Also prints the
memory-bandwidth bound for generation (weights read per token / copy bandwidth). Needs the `bench` extra
(llama-cpp-python); without it only the workbench is measured. Results are appended to data/reports/bench.csv.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workbench.assets import ensure_model  # noqa: E402
from workbench.eval.bench import (LlamaCppRunner, WorkbenchRunner, append_report, bench_plot,  # noqa: E402
                                  default_threads, interleaved, llama_cpp_available, memory_bandwidth_gbs,
                                  prompt_tokens, weight_bytes_per_token)


def bench_model(path, threads: int, repeat: int, n_pp: int, n_tg: int) -> dict:
    t0 = time.perf_counter()
    ours = WorkbenchRunner(path, threads)
    toks = prompt_tokens(n_pp, ours.n_vocab)
    ours.pp(toks[:8])  # triggers (cached) numba compilation
    compile_s = time.perf_counter() - t0
    runners = [ours] + ([LlamaCppRunner(path, threads)] if llama_cpp_available() else [])
    pp = interleaved(runners, "pp", toks, repeat)
    tg = interleaved(runners, "tg", toks[:n_tg + 1], repeat)
    bw = memory_bandwidth_gbs()
    wbytes = weight_bytes_per_token(path)
    row = {"model": Path(path).name, "threads": threads, "repeat": repeat, "load_and_compile_s": compile_s,
           f"workbench_pp{n_pp}_tps": pp["workbench"], f"workbench_tg{n_tg}_tps": tg["workbench"],
           "bandwidth_gbs": bw, "weight_bytes_per_token": wbytes, "tg_bound_tps": bw * 1e9 / wbytes}
    if "llama.cpp" in pp:
        row.update({f"llamacpp_pp{n_pp}_tps": pp["llama.cpp"], f"llamacpp_tg{n_tg}_tps": tg["llama.cpp"],
                    f"pp{n_pp}_ratio": pp["workbench"] / pp["llama.cpp"],
                    f"tg{n_tg}_ratio": tg["workbench"] / tg["llama.cpp"]})
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", help="GGUF (repeatable; default: the default SmolLM2 model)")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--n-prompt", type=int, default=512)
    ap.add_argument("--n-gen", type=int, default=128)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args(argv)
    models = args.model or [str(ensure_model(None))]
    rows = []
    for m in models:
        row = bench_model(m, args.threads, args.repeat, args.n_prompt, args.n_gen)
        rows.append(row)
        print(f"{row['model']}: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                               for k, v in row.items() if k != "model"))
    append_report([{"bench": "generate", **r} for r in rows])
    try:
        bench_plot()
    except Exception as e:  # a plot is a nicety; the numbers are the result
        print(f"(no plot: {e})")
    if args.json:
        print(json.dumps(rows[0] if len(rows) == 1 else {"models": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
