"""Time and peak memory of `--method gptq` against llama-quantize's recipe with an importance matrix, as a user runs
them (three CLI commands, each its own process):

    rtn+imatrix   python -m workbench imatrix -m BASE -f TEXT --chunks N   then   quantize BASE OUT FTYPE --imatrix
    gptq          python -m workbench quantize BASE OUT FTYPE --method gptq --calibration TEXT --chunks N

Same calibration text and tokens for both. Wall time from the parent; peak RSS (ru_maxrss of the child, which counts
the mapped pages of the model it touched). Prints the ratio and appends the figures to data/reports/gptq_time.csv.

    python bench/seeded_models.py        # once: data/models/seeded-1b-f16.gguf
    python bench/bench_gptq_time.py [--base data/models/seeded-1b-f16.gguf] [--ftype Q4_K_M] [--chunks 16]
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbench.assets import data_dir  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def timed(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of one command run to completion."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed ({os.waitstatus_to_exitcode(status)}): {' '.join(cmd)}")
    return seconds, usage.ru_maxrss / 1024


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                flags = Path("/proc/cpuinfo").read_text()
                return line.split(":", 1)[1].strip() + (", AVX-512" if " avx512f" in flags else ", AVX2, no AVX-512")
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=str(data_dir() / "models" / "seeded-1b-f16.gguf"))
    ap.add_argument("--calibration", default=str(SHARED / "botchan.txt"))
    ap.add_argument("--ftype", default="Q4_K_M")
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = ap.parse_args()
    if not Path(args.base).exists():
        raise SystemExit(f"{args.base} is missing: python bench/seeded_models.py builds the seeded 1.1B model")
    py, wb = sys.executable, ["-m", "workbench"]
    rows = []
    with tempfile.TemporaryDirectory(dir=data_dir()) as tmp:
        imat, rtn, gptq = (str(Path(tmp) / n) for n in ("imatrix.gguf", "rtn.gguf", "gptq.gguf"))
        common = ["--chunks", str(args.chunks), "--threads", str(args.threads)]
        steps = {
            "imatrix": [py, *wb, "imatrix", "-m", args.base, "-f", args.calibration, "-c", str(args.ctx), "-o", imat,
                        *common],
            "quantize --imatrix": [py, *wb, "quantize", args.base, rtn, args.ftype, "--imatrix", imat,
                                   "--threads", str(args.threads)],
            "quantize --method gptq": [py, *wb, "quantize", args.base, gptq, args.ftype, "--method", "gptq",
                                       "--calibration", args.calibration, "--ctx", str(args.ctx), *common],
        }
        for step, cmd in steps.items():
            seconds, rss = timed(cmd)
            print(f"{step}: {seconds:.0f} s, peak RSS {rss:.0f} MiB", flush=True)
            rows.append({"step": step, "seconds": seconds, "peak_rss_mib": rss})
        sizes = {Path(p).name: Path(p).stat().st_size for p in (rtn, gptq)}
    df = pd.DataFrame(rows)
    t_rtn = df.seconds.iloc[0] + df.seconds.iloc[1]
    t_gptq = df.seconds.iloc[2]
    print(f"{Path(args.base).name} {args.ftype}, {args.chunks} x {args.ctx} calibration tokens, {args.threads} threads, "
          f"{cpu_name()}")
    print(f"rtn+imatrix {t_rtn:.0f} s (peak {df.peak_rss_mib.iloc[:2].max():.0f} MiB), gptq {t_gptq:.0f} s "
          f"(peak {df.peak_rss_mib.iloc[2]:.0f} MiB): gptq / rtn+imatrix = {t_gptq / t_rtn:.2f}x; "
          f"sizes {sizes['rtn.gguf']} / {sizes['gptq.gguf']} bytes")
    df["base"], df["ftype"], df["chunks"], df["ctx"], df["cpu"] = Path(args.base).name, args.ftype, args.chunks, \
        args.ctx, cpu_name()
    report = data_dir() / "reports" / "gptq_time.csv"
    report.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(report, mode="a", header=not report.exists(), index=False)
    print(f"appended to {report}")


if __name__ == "__main__":
    main()
