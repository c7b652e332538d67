"""Perplexity throughput (tokens/s of a llama-perplexity pass at n_ctx 512), workbench vs llama.cpp.

    python bench/bench_perplexity.py [--model PATH] [--threads N] [--chunks 4] [--repeat 3] [--json]

Both engines evaluate the same chunks of botchan.txt (fresh context per chunk, all logits), interleaved;
the workbench's PPL is printed next to llama.cpp's own logits' PPL as a sanity check.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workbench import load  # noqa: E402
from workbench.assets import data_dir, ensure_model, ensure_texts  # noqa: E402
from workbench.eval.bench import append_report, default_threads, llama_cpp_available  # noqa: E402
from workbench.eval.perplexity import ppl_and_error, token_nll  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    path = str(ensure_model(args.model))
    text = Path(ensure_texts()["en"]).read_text(encoding="utf-8")
    model = load(path, n_ctx=args.ctx, n_threads=args.threads)
    toks = np.asarray(model.tokenize(text, add_special=True), np.int32)
    n = args.ctx
    chunks = [toks[i * n:(i + 1) * n] for i in range(args.chunks)]
    first = n // 2

    def ours():
        nll = [token_nll(model.logits(c)[first:n - 1], c[first + 1:]) for c in chunks]
        return np.concatenate(nll)

    engines = {"workbench": ours}
    if llama_cpp_available():
        from llama_cpp import Llama

        llm = Llama(model_path=path, n_ctx=n, n_threads=args.threads, n_threads_batch=args.threads, n_batch=n,
                    n_ubatch=n, logits_all=True, verbose=False)

        def theirs():
            nll = []
            for c in chunks:
                llm.reset()
                llm.eval(c.tolist())
                lg = np.asarray(llm.scores[:n], np.float32)
                nll.append(token_nll(lg[first:n - 1], c[first + 1:]))
            return np.concatenate(nll)

        engines["llama.cpp"] = theirs
    times = {k: [] for k in engines}
    ppl = {}
    for k, fn in engines.items():  # warm-up
        ppl[k] = ppl_and_error(fn())[0]
    for _ in range(args.repeat):
        for k, fn in engines.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    n_tok = args.chunks * n
    row = {"bench": "perplexity", "model": Path(path).name, "threads": args.threads, "n_ctx": n, "chunks": args.chunks,
           "workbench_ppl_tps": n_tok / statistics.median(times["workbench"]), "workbench_ppl": ppl["workbench"]}
    if "llama.cpp" in engines:
        row.update({"llamacpp_ppl_tps": n_tok / statistics.median(times["llama.cpp"]), "llamacpp_ppl": ppl["llama.cpp"]})
        row["ppl_tps_ratio"] = row["workbench_ppl_tps"] / row["llamacpp_ppl_tps"]
    print(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    append_report([row], path=data_dir() / "reports" / "bench_perplexity.csv")
    if args.json:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
