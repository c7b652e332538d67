"""`python -m workbench perplexity --hellaswag | --winogrande | --multiple-choice -f FILE` (llama-perplexity's
flags): the task scores of workbench.eval.tasks, printed as the tool prints them."""
from __future__ import annotations

from pathlib import Path

from workbench.assets import ensure_model
from workbench.eval import tasks as T
from workbench.llama import load
from workbench.text.files import read_prompt_bytes, read_prompt_file


def run_tasks(args) -> int:
    if not (args.file or args.binary_file):
        raise ValueError("task scores need -f FILE (or -bf FILE for --multiple-choice)")
    model = load(ensure_model(args.model), n_ctx=4 * args.ctx_size, n_threads=args.threads,
                 flash_attn=args.flash_attn != "off")
    if args.multiple_choice:
        # -bf reads the bytes as they are; -f drops one trailing '\n', even of a binary file
        raw = Path(args.binary_file).read_bytes() if args.binary_file else read_prompt_bytes(args.file)
        r = T.multiple_choice_score(model, T.read_multiple_choice(raw, args.multiple_choice_tasks), progress=True)
    elif args.hellaswag:
        r = T.hellaswag_score(model, T.select_hellaswag(T.parse_hellaswag(read_prompt_file(args.file)),
                                                        args.hellaswag_tasks), progress=True)
    else:
        r = T.winogrande_score(model, T.select_winogrande(T.parse_winogrande(read_prompt_file(args.file)),
                                                          args.winogrande_tasks), progress=True)
    n_ok = 0
    for i, t in enumerate(r.tasks, 1):
        n_ok += t.correct
        print(f"{i}\t{100.0 * n_ok / i:.8f}\t" + "  ".join(f"{s:10.6f}" for s in t.scores))
    print(r.summary())
    return 0
