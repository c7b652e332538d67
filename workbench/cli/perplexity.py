"""python -m workbench perplexity -m MODEL -f TEXT -c 512 [--chunks N] [--kl-divergence-base F | --kl-divergence]
(flags as llama-perplexity)."""
from __future__ import annotations

from workbench.assets import ensure_model, ensure_texts
from workbench.cli.tasks import run_tasks
from workbench.eval.kl import kl_divergence, save_base
from workbench.eval.perplexity import PerplexityError, perplexity, ppl_and_error
from workbench.llama import load
from workbench.text.files import read_prompt_file


def configure(p) -> None:
    p.add_argument("--model", "-m", help="GGUF model (default: the default SmolLM2 model)")
    p.add_argument("--file", "-f", help="text file (default: botchan.txt)")
    p.add_argument("--ctx-size", "-c", type=int, default=512)
    p.add_argument("--chunks", type=int, default=-1, help="max chunks (-1: all)")
    p.add_argument("--threads", "-t", type=int)
    p.add_argument("--flash-attn", "-fa", choices=("on", "off", "auto"), default="auto",
                   help="flash attention as llama.cpp's: auto = on (what the CPU backend resolves AUTO to)")
    p.add_argument("--batch-size", "-b", type=int, default=2048,
                   help="logical batch (as llama-perplexity; must be >= the context: one chunk per batch)")
    p.add_argument("--kl-divergence-base", help="write the base log-probs to this .kld file")
    p.add_argument("--kl-divergence", action="store_true", help="compare with --logits-file / the .kld base")
    p.add_argument("--logits-file", help="the .kld file for --kl-divergence")
    p.add_argument("--binary-file", "-bf", help="binary task file (--multiple-choice)")
    p.add_argument("--hellaswag", action="store_true", help="HellaSwag acc_norm of the -f file's tasks")
    p.add_argument("--hellaswag-tasks", type=int, default=400, help="tasks drawn at random (default 400)")
    p.add_argument("--winogrande", action="store_true", help="Winogrande score of the -f CSV")
    p.add_argument("--winogrande-tasks", type=int, default=0, help="tasks drawn at random (0: all, in order)")
    p.add_argument("--multiple-choice", action="store_true", help="multiple-choice score of the -bf / -f file")
    p.add_argument("--multiple-choice-tasks", type=int, default=0, help="tasks drawn at random (0: all)")


def run(args) -> int:
    if args.batch_size < args.ctx_size:
        raise PerplexityError(f"--batch-size {args.batch_size} is smaller than --ctx-size {args.ctx_size}: "
                              f"chunks split over several batches are not supported; use -b >= -c")
    if args.hellaswag or args.winogrande or args.multiple_choice:
        return run_tasks(args)
    path = args.file or ensure_texts()["en"]
    text = read_prompt_file(path)  # the file's bytes as llama-perplexity reads them (BOM and CRLF kept)
    model = load(ensure_model(args.model), n_ctx=args.ctx_size, n_threads=args.threads,
                 flash_attn=args.flash_attn != "off")
    chunks = None if args.chunks < 0 else args.chunks
    if args.kl_divergence:
        base = args.logits_file or args.kl_divergence_base
        if not base:
            raise ValueError("--kl-divergence needs --logits-file FILE.kld (written by --kl-divergence-base)")
        r = kl_divergence(model, base)
        p = r.kld_percentiles
        print(f"Mean PPL(Q)                   : {r.ppl:10.6f} ± {r.ppl_err:10.6f}")
        print(f"Mean PPL(base)                : {r.ppl_base:10.6f}")
        print(f"Mean ln(PPL(Q)/PPL(base))     : {r.ln_ppl_ratio:10.6f} ± {r.ln_ppl_ratio_err:10.6f}")
        print(f"Mean PPL(Q)-PPL(base)         : {r.ppl_minus_base:10.6f}")
        print(f"Mean    KLD: {r.kld_mean:10.6f} ± {r.kld_err:10.6f}")
        for k in ("max", "99.9", "99", "95", "90", "median", "10", "5", "1", "0.1", "min"):
            print(f"{k:>7} KLD: {p[k]:10.6f}")
        print(f"Mean    Δp: {100 * r.dp_mean:6.3f} %")
        print(f"RMS Δp    : {100 * r.dp_rms:6.3f} %")
        print(f"Same top p: {100 * r.same_top_p:6.3f} %")
        return 0
    if args.kl_divergence_base:
        nll = save_base(model, text, args.kl_divergence_base, n_ctx=args.ctx_size, n_chunks=chunks)
        ppl, err = ppl_and_error(nll)
        print(f"Final estimate: PPL = {ppl:.4f} +/- {err:.5f}")
        return 0
    r = perplexity(model, text, n_ctx=args.ctx_size, n_chunks=chunks)
    print(f"perplexity: {r.n_chunk} chunks of {r.n_ctx} tokens, {r.n_scored} scored, {r.tokens_per_s:.1f} tokens/s")
    print(r.summary())
    return 0
