"""GPTQ-in-GGUF against llama-quantize with an importance matrix, measured from llama.cpp's logits.

For each ftype: llama-quantize's recipe (our quantize_model, byte-identical to llama-quantize) with an importance
matrix computed on the calibration text, and `--method gptq` on the same text and tokens. Both files are then
run by llama.cpp (llama-cpp-python) and compared with the base's llama.cpp logits: mean KLD, its 99th percentile,
same-top-token rate, on two evaluation sets disjoint from the calibration (the English text's later chunks, and a
Chinese text). Prints the table and writes it to data/reports/gptq_vs_rtn.csv. Without llama-cpp-python the
workbench's own logits are used (they equal llama.cpp's AVX2 build), and the table says so.

    python bench/bench_gptq.py [--base F16.gguf] [--ftypes Q4_K_M Q3_K_M Q4_0 IQ4_XS] [--chunks 16]
        [--shrink 3] [--damp 0.01] [--act-order]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.assets import data_dir
from workbench.eval.bench import llama_cpp_available
from workbench.eval.gptq_model import gptq_quantize_model
from workbench.eval.imatrix import compute_imatrix
from workbench.eval.kl import LlamaCppLogits, kl_divergence, save_base
from workbench.gguf import read_gguf
from workbench.llama import load
from workbench.quant.gptq import SHRINK
from workbench.quant.quantize_model import quantize_model
from workbench.text.files import read_prompt_file

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def evaluator(path, model, use_llama_cpp: bool, n_ctx: int):
    if use_llama_cpp:
        return LlamaCppLogits(path, n_ctx, model.add_bos, model.bos_id, flash_attn=True)
    return load(path, n_ctx=n_ctx, flash_attn=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=str(data_dir() / "models/quant/SmolLM2-135M-Instruct.Q4_1.F16.gguf"))
    ap.add_argument("--calibration", default=str(SHARED / "botchan.txt"))
    ap.add_argument("--chinese", default=str(SHARED / "zh_news.txt"))
    ap.add_argument("--ftypes", nargs="+", default=["Q4_K_M", "Q3_K_M", "Q4_0", "IQ4_XS"])
    ap.add_argument("--chunks", type=int, default=16, help="calibration chunks of --ctx tokens")
    ap.add_argument("--eval-chunks", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--damp", type=float, default=0.01)
    ap.add_argument("--shrink", type=float, default=SHRINK, help="weight of diag H added to H (0: plain GPTQ)")
    ap.add_argument("--act-order", action="store_true")
    ap.add_argument("--out", default=str(data_dir() / "gptq"))
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    use_lc = llama_cpp_available()
    n_ctx = args.ctx
    calib = read_prompt_file(args.calibration)
    base_model = load(args.base, n_ctx=n_ctx)
    en = np.asarray(base_model.tokenize(calib, add_special=True), np.int32)
    first_eval = 4 * max(args.chunks, 16)                       # English evaluation starts well after calibration
    if len(en) < (first_eval + args.eval_chunks) * n_ctx:
        raise SystemExit(f"{args.calibration}: {len(en)} tokens, too short for disjoint calibration and evaluation")
    zh = np.asarray(base_model.tokenize(read_prompt_file(args.chinese), add_special=True), np.int32)
    evals = {"en (held-out chunks)": en[first_eval * n_ctx:(first_eval + args.eval_chunks) * n_ctx],
             "zh": zh[:args.eval_chunks * n_ctx]}
    bases = {}
    ref = evaluator(args.base, base_model, use_lc, n_ctx)
    for name, toks in evals.items():
        bases[name] = out / f"base.{name.split()[0]}.kld"
        save_base(ref, None, bases[name], n_ctx=n_ctx, tokens=toks, progress=False)
    if use_lc:
        ref.close()

    tag = f"c{args.chunks}" + ("_ao" if args.act_order else "") + (f"_d{args.damp:g}" if args.damp != 0.01 else "") + \
        f"_s{args.shrink:g}"
    t0 = time.perf_counter()
    imat = compute_imatrix(args.base, calib, n_ctx=n_ctx, n_chunks=args.chunks, dataset=Path(args.calibration).name,
                           progress=False)
    t_imatrix = time.perf_counter() - t0
    print(f"imatrix: {args.chunks} chunks of {n_ctx} in {t_imatrix:.0f} s")
    rows = []
    for ft in args.ftypes:
        files = {"rtn+imatrix": out / f"rtn_imatrix.{args.chunks}.{ft}.gguf", "gptq": out / f"gptq.{tag}.{ft}.gguf"}
        t0 = time.perf_counter()
        quantize_model(args.base, files["rtn+imatrix"], ft, imatrix=imat, progress=False, with_error=False)
        t_rtn = time.perf_counter() - t0
        t0 = time.perf_counter()
        gptq_quantize_model(args.base, files["gptq"], ft, calib, n_ctx=n_ctx, n_chunks=args.chunks, damp=args.damp,
                            shrink=args.shrink,
                            act_order=args.act_order, dataset=Path(args.calibration).name, progress=False)
        t_gptq = time.perf_counter() - t0
        types = {m: [(t.name, t.type.name) for t in read_gguf(f).tensors] for m, f in files.items()}
        for method, f in files.items():
            m = evaluator(f, base_model, use_lc, n_ctx)
            for ev, kld_file in bases.items():
                r = kl_divergence(m, kld_file, progress=False)
                rows.append({"ftype": ft, "method": method, "eval": ev, "bytes": f.stat().st_size,
                             "same_types": types[method] == types["rtn+imatrix"],
                             "kld_mean": r.kld_mean, "kld_err": r.kld_err, "kld_p99": r.kld_percentiles["99"],
                             "same_top": r.same_top_p, "ppl": r.ppl,
                             "seconds": t_rtn + t_imatrix if method == "rtn+imatrix" else t_gptq})
            if use_lc:
                m.close()
        print(pd.DataFrame(rows[-4:]).to_string(index=False), flush=True)
    df = pd.DataFrame(rows)
    df["logits"] = "llama.cpp (llama-cpp-python)" if use_lc else "workbench"
    piv = df.pivot_table(index=["eval", "ftype"], columns="method", values="kld_mean")
    piv["gptq / rtn+imatrix"] = piv["gptq"] / piv["rtn+imatrix"]
    print(piv.to_string())
    for ev, g in piv.groupby(level=0):
        print(f"{ev}: mean KLD reduction over the {len(g)} ftypes: {100 * (1 - g['gptq / rtn+imatrix'].mean()):.1f}%")
    report = data_dir() / "reports"
    report.mkdir(parents=True, exist_ok=True)
    df.to_csv(report / f"gptq_vs_rtn.{tag}.csv", index=False)
    print(f"written {report / f'gptq_vs_rtn.{tag}.csv'}")


if __name__ == "__main__":
    main()
