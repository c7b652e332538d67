"""Time and peak memory to quantize a whole model: workbench.quant.quantize_model vs llama.cpp's
llama_model_quantize, same input, same threads, interleaved, and whether the two output files are byte-identical.

    python bench/bench_quantize_model.py [--model PATH | --base F16.gguf | --seeded-1b | --seeded-moe]
                                         [--ftype Q4_K_M ...] [--threads N] [--repeat 3] [--json]

The input is the F16 base made from the default Q4_1 model (as in the golden files), or `--base` as it is, or
the seeded TinyLlama-1.1B-shaped or Mixtral-shaped F16 model (bench/seeded_models.py). Every run is a fresh
process (import, quantize, exit): its wall time and peak RSS (ru_maxrss) are what a user of either tool pays.
The workbench's numba cache is warmed by one untimed run first.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import subprocess
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


RUN = """
import resource, sys, time
sys.path.insert(0, {root!r})
t0 = time.perf_counter()
if sys.argv[1] == "workbench":
    from workbench.quant.quantize_model import quantize_model
    quantize_model(sys.argv[2], sys.argv[3], sys.argv[4], progress=False, with_error=False, nthreads=int(sys.argv[5]))
else:
    sys.path.insert(0, {bench!r})
    from bench_quantize_model import llama_quantize
    llama_quantize(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
print(time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def run(tool: str, src: Path, dst: Path, ftype: str, threads: int) -> tuple[float, int]:
    """(wall seconds from import to exit, peak RSS bytes) of one quantization in a fresh process."""
    here = Path(__file__).resolve().parent
    code = RUN.format(root=str(here.parent), bench=str(here))
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, tool, str(src), str(dst), ftype, str(threads)],
                         check=True, capture_output=True, text=True).stdout.split()
    return time.perf_counter() - t0, int(out[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--model", help="a GGUF model; its F16 conversion is the input")
    src.add_argument("--base", type=Path, help="an F16/F32 GGUF, the input as it is")
    src.add_argument("--seeded-1b", action="store_true", help="the seeded TinyLlama-1.1B-shaped F16 model")
    src.add_argument("--seeded-moe", action="store_true", help="the seeded Mixtral-shaped (0.8B) F16 model")
    ap.add_argument("--ftype", action="append")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    ftypes = args.ftype or ["Q4_K_M", "Q8_0"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.base:
            base = args.base
        elif args.seeded_1b:
            from seeded_models import ensure_seeded_1b_f16

            base = ensure_seeded_1b_f16()
        elif args.seeded_moe:
            from seeded_models import ensure_seeded_moe_f16

            base = ensure_seeded_moe_f16()
        else:
            base = Path(tmp) / "base.F16.gguf"
            quantize_model(ensure_model(args.model), base, "F16", allow_requantize=True, progress=False,
                           with_error=False)
        for ftype in ftypes:
            ours_out, theirs_out = Path(tmp) / f"ours.{ftype}.gguf", Path(tmp) / f"theirs.{ftype}.gguf"
            run("workbench", base, ours_out, ftype, args.threads)        # warm-up: numba's cache
            tools = ["workbench"] + (["llama.cpp"] if llama_cpp_available() else [])
            got = {t: [] for t in tools}
            for _ in range(args.repeat):
                for tool in tools:
                    got[tool].append(run(tool, base, ours_out if tool == "workbench" else theirs_out, ftype,
                                         args.threads))
            row = {"bench": "quantize_model", "model": base.name, "ftype": ftype, "threads": args.threads,
                   "workbench_s": statistics.median(t for t, _ in got["workbench"]),
                   "workbench_peak_mib": max(m for _, m in got["workbench"]) / 2**20}
            if "llama.cpp" in got:
                row["llamacpp_s"] = statistics.median(t for t, _ in got["llama.cpp"])
                row["llamacpp_peak_mib"] = max(m for _, m in got["llama.cpp"]) / 2**20
                row["time_ratio"] = row["workbench_s"] / row["llamacpp_s"]
                row["peak_ratio"] = row["workbench_peak_mib"] / row["llamacpp_peak_mib"]
                row["identical"] = sha256_file(ours_out) == sha256_file(theirs_out)
            rows.append(row)
            print(", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    append_report(rows, data_dir() / "reports" / "bench_quantize_model.csv")
    if args.json:
        print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
