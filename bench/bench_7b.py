"""The Llama-2-7B-shaped pipeline end to end on this machine, workbench beside llama.cpp, every step a fresh
process (its wall time and peak RSS are what a user pays):

    build     a seeded Hugging Face checkpoint with Llama-2-7B's dimensions (bench/seeded_models.py; float16)
    convert   `python -m workbench convert` to an F16 GGUF (llama.cpp's converter needs torch: not run here)
    quantize  workbench's quantize_model vs llama.cpp's llama_model_quantize, and whether the bytes are equal
    ppl       llama-perplexity's protocol (n_ctx 512, --chunks chunks of botchan.txt, second halves scored)
    generate  one prompt of --n-prompt tokens, then --n-gen greedy tokens

    python bench/bench_7b.py [--ftype Q4_0] [--threads 2] [--chunks 8] [--n-prompt 128] [--n-gen 32] [--prepare-only]

About 14 GB of disk for the F16 file (the checkpoint is removed once converted) and 4 GB per Q4_0 file.
The weights are seeded noise, so the PPL is meaningless as a score; the times and memory are real.
Prints a table and writes data/reports/bench_7b.csv.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from workbench.assets import data_dir, ensure_texts, sha256_file  # noqa: E402
from workbench.eval.bench import default_threads, llama_cpp_available  # noqa: E402

LLAMA2_7B = {"hidden": 4096, "ffn": 11008, "n_layer": 32, "n_head": 32, "n_head_kv": 32, "vocab": 32000,
             "ctx": 4096}


def measured(args: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes, stdout) of `python args...` in a fresh process."""
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise SystemExit(f"step failed ({p.returncode}): {' '.join(args)}")
    return time.perf_counter() - t0, ru.ru_maxrss * 1024, out


# --- the steps, each run as `python bench/bench_7b.py --step NAME ...` in its own process ------------------

def step_build(folder: str) -> None:
    from seeded_models import make_hf_llama
    make_hf_llama(Path(folder), LLAMA2_7B)


def step_quantize(tool: str, src: str, dst: str, ftype: str, threads: int) -> None:
    if tool == "workbench":
        from workbench.quant.quantize_model import quantize_model
        quantize_model(src, dst, ftype, progress=False, with_error=False, nthreads=threads)
    else:
        from bench_quantize_model import llama_quantize
        llama_quantize(src, dst, ftype, threads)


def step_ppl(tool: str, path: str, threads: int, chunks: int) -> None:
    import numpy as np

    from workbench.eval.perplexity import ppl_and_error, token_nll
    text = Path(ensure_texts()["en"]).read_text(encoding="utf-8")
    n = 512
    if tool == "workbench":
        from workbench import load
        model = load(path, n_ctx=n, n_threads=threads)
        toks = np.asarray(model.tokenize(text, add_special=True), np.int32)
        bos = model.add_bos

        def logits(c):
            return model.logits(c)
    else:
        from llama_cpp import Llama
        llm = Llama(model_path=path, n_ctx=n, n_threads=threads, n_threads_batch=threads, n_batch=n, n_ubatch=n,
                    logits_all=True, verbose=False)
        toks = np.asarray(llm.tokenize(text.encode(), add_bos=True, special=True), np.int32)
        bos = len(toks) > len(llm.tokenize(text.encode(), add_bos=False, special=True))

        def logits(c):
            llm.reset()
            llm.eval(c.tolist())
            return np.asarray(llm.scores[:n], np.float32)
    logits(toks[:n].copy())                 # warm-up (numba's compiled code is loaded on first use)
    t0 = time.perf_counter()
    nll = []
    for i in range(chunks):
        c = toks[i * n:(i + 1) * n].copy()
        if bos:
            c[0] = toks[0]                  # llama-perplexity: every chunk starts with BOS
        nll.append(token_nll(logits(c)[n // 2:n - 1], c[n // 2 + 1:]))
    dt = time.perf_counter() - t0
    print(f"{ppl_and_error(np.concatenate(nll))[0]:.6g} {chunks * n / dt:.4g}")


def step_generate(tool: str, path: str, threads: int, n_prompt: int, n_gen: int) -> None:
    import numpy as np
    rng = np.random.default_rng(0)
    prompt = [1] + rng.integers(100, 30000, n_prompt - 1).tolist()
    if tool == "workbench":
        from workbench import load
        model = load(path, n_ctx=n_prompt + n_gen + 8, n_threads=threads)
        ev, reset = model.eval, model.reset
    else:
        from llama_cpp import Llama
        llm = Llama(model_path=path, n_ctx=n_prompt + n_gen + 8, n_threads=threads, n_threads_batch=threads,
                    n_batch=512, n_ubatch=512, verbose=False)
        ev, reset = llm.eval, llm.reset
    ev(prompt[:8])                          # warm-up, as for the perplexity step
    ev([100])
    reset()
    t0 = time.perf_counter()
    ev(prompt)
    t1 = time.perf_counter()
    for i in range(n_gen):
        ev([100 + i])
    t2 = time.perf_counter()
    print(f"{n_prompt / (t1 - t0):.4g} {n_gen / (t2 - t1):.4g}")


STEPS = {"build": step_build, "quantize": step_quantize, "ppl": step_ppl, "generate": step_generate}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--step":
        f = STEPS[argv[1]]
        rest = [int(a) if a.isdigit() else a for a in argv[2:]]
        f(*rest)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ftype", default="Q4_0")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--n-prompt", type=int, default=128)
    ap.add_argument("--n-gen", type=int, default=32)
    ap.add_argument("--folder", type=Path, default=data_dir() / "models")
    ap.add_argument("--prepare-only", action="store_true", help="build and convert the F16 model, then stop")
    args = ap.parse_args(argv)
    me = [str(Path(__file__).resolve()), "--step"]
    tools = ["workbench"] + (["llama.cpp"] if llama_cpp_available() else [])
    rows = []

    def row(step, tool, wall, rss, **kw):
        rows.append({"step": step, "tool": tool, "seconds": round(wall, 1), "peak_rss_mib": round(rss / 2**20)} | kw)
        print(rows[-1], flush=True)

    f16 = args.folder / "seeded-7b-f16.gguf"
    if not f16.exists():
        hf = args.folder / "seeded-7b-hf"
        row("build", "workbench", *measured(me + ["build", str(hf)])[:2])
        wall, rss, _ = measured(["-m", "workbench", "convert", str(hf), "--outfile", str(f16), "--outtype", "f16",
                                 "--no-progress"])
        row("convert", "workbench", wall, rss, bytes=f16.stat().st_size)
        shutil.rmtree(hf)
    if args.prepare_only:
        return 0
    outs = {}
    for tool in tools:
        dst = args.folder / f"seeded-7b-{args.ftype}.{'wb' if tool == 'workbench' else 'lc'}.gguf"
        wall, rss, _ = measured(me + ["quantize", tool, str(f16), str(dst), args.ftype, str(args.threads)])
        outs[tool] = dst
        row("quantize", tool, wall, rss, bytes=dst.stat().st_size)
    if len(outs) == 2:
        rows[-1]["same_bytes"] = sha256_file(outs["workbench"]) == sha256_file(outs["llama.cpp"])
        print("byte-identical:", rows[-1]["same_bytes"])
    q = str(outs["workbench"])
    for tool in tools:
        wall, rss, out = measured(me + ["ppl", tool, q, str(args.threads), str(args.chunks)])
        ppl, tps = map(float, out.split()[-2:])
        row(f"perplexity {args.chunks}x512", tool, wall, rss, ppl=ppl, tokens_per_s=tps)
    for tool in tools:
        wall, rss, out = measured(me + ["generate", tool, q, str(args.threads), str(args.n_prompt), str(args.n_gen)])
        pp, tg = map(float, out.split()[-2:])
        row(f"generate pp{args.n_prompt} tg{args.n_gen}", tool, wall, rss, pp_tps=pp, tg_tps=tg)
    df = pd.DataFrame(rows)
    print(df.to_string(index=False))
    rep = data_dir() / "reports"
    rep.mkdir(parents=True, exist_ok=True)
    df.to_csv(rep / "bench_7b.csv", index=False)
    print("written", rep / "bench_7b.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
