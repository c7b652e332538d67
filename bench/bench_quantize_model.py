"""Time to quantize a whole model: workbench.quant.quantize_model vs llama.cpp's llama_model_quantize,
same input, same threads, interleaved, and whether the two output files are byte-identical.

    python bench/bench_quantize_model.py [--model PATH] [--ftype Q4_K_M --ftype Q8_0] [--threads N] [--json]

The input is the F16 base made from the default Q4_1 model (as in the golden files).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workbench.assets import data_dir, ensure_model, sha256_file  # noqa: E402
from workbench.eval.bench import append_report, default_threads, llama_cpp_available  # noqa: E402
from workbench.gguf import LlamaFileType  # noqa: E402
from workbench.quant.quantize_model import quantize_model  # noqa: E402


def llama_quantize(src, dst, ftype: str, threads: int) -> None:
    import llama_cpp

    p = llama_cpp.llama_model_quantize_default_params()
    p.nthread = threads
    p.ftype = int(LlamaFileType.parse(ftype))
    p.allow_requantize = True
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed ({rc})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--ftype", action="append")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    ftypes = args.ftype or ["Q4_K_M", "Q8_0"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base.F16.gguf"
        quantize_model(ensure_model(args.model), base, "F16", allow_requantize=True, progress=False, with_error=False)
        for ftype in ftypes:
            ours_out, theirs_out = Path(tmp) / f"ours.{ftype}.gguf", Path(tmp) / f"theirs.{ftype}.gguf"
            quantize_model(base, ours_out, ftype, progress=False, with_error=False, nthreads=args.threads)  # warm-up
            times = {"workbench": [], "llama.cpp": []}
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                quantize_model(base, ours_out, ftype, progress=False, with_error=False, nthreads=args.threads)
                times["workbench"].append(time.perf_counter() - t0)
                if llama_cpp_available():
                    t0 = time.perf_counter()
                    llama_quantize(base, theirs_out, ftype, args.threads)
                    times["llama.cpp"].append(time.perf_counter() - t0)
            row = {"bench": "quantize_model", "ftype": ftype, "threads": args.threads,
                   "workbench_s": statistics.median(times["workbench"])}
            if times["llama.cpp"]:
                row["llamacpp_s"] = statistics.median(times["llama.cpp"])
                row["time_ratio"] = row["workbench_s"] / row["llamacpp_s"]
                row["identical"] = sha256_file(ours_out) == sha256_file(theirs_out)
            rows.append(row)
            print(", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    append_report(rows, data_dir() / "reports" / "bench_quantize_model.csv")
    if args.json:
        print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
