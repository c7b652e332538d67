"""pp512 (prompt processing) and tg128 (generation) tokens/s, workbench vs llama.cpp, like llama-bench.

    python bench/bench_generate.py [--model PATH ... | --formats Q4_1,Q8_0,Q4_K_M,F16] [--threads N]
                                   [--repeat 5] [--json]

Without --model, the default SmolLM2 model (Q4_1) and the --formats made from it (an F16 copy, then
llama-quantize's ftypes from that, cached under data/models/quant) are measured. Each model is run by both
engines in one process, interleaved, median of --repeat runs. Also prints the
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
from workbench.eval.quant_files import f16_base, quantize_all  # noqa: E402


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


def default_models(formats: list[str]) -> list[str]:
    """The default model for Q4_1 (its own type); every other format quantized from its F16 copy."""
    src = ensure_model(None)
    out = []
    for ft in formats:
        if ft.upper() == "Q4_1":
            out.append(str(src))
        elif ft.upper() == "F16":
            out.append(str(f16_base(src)))
        else:
            out.append(str(quantize_all(f16_base(src), [ft.upper()])[0][ft.upper()]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", help="GGUF (repeatable; default: the default SmolLM2 model)")
    ap.add_argument("--formats", default="Q4_1,Q8_0,Q4_K_M,F16",
                    help="without --model: the default model's own type (Q4_1) and others made from it")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--n-prompt", type=int, default=512)
    ap.add_argument("--n-gen", type=int, default=128)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args(argv)
    models = args.model or default_models(args.formats.split(","))
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
        print(json.dumps(rows[0] if len(rows) == 1 else {**rows[0], "models": rows}))  # the first: Q4_1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
