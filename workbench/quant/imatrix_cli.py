"""python -m workbench imatrix -m MODEL.gguf -f TEXT -o imatrix.gguf [-c 512] [--chunks N] (as llama-imatrix)"""
from __future__ import annotations


def configure(p) -> None:
    p.add_argument("--model", "-m", help="GGUF model (default: the default SmolLM2 model)")
    p.add_argument("--file", "-f", required=True, help="calibration text")
    p.add_argument("--output", "-o", default="imatrix.gguf")
    p.add_argument("--ctx-size", "-c", type=int, default=512)
    p.add_argument("--chunks", type=int, default=-1)


def run(args) -> int:
    from pathlib import Path

    from ..assets import ensure_model
    from .imatrix import compute_imatrix, save_imatrix

    text = Path(args.file).read_text(encoding="utf-8")
    imat = compute_imatrix(ensure_model(args.model), text, n_ctx=args.ctx_size,
                           n_chunks=None if args.chunks < 0 else args.chunks, dataset=Path(args.file).name)
    save_imatrix(imat, args.output)
    print(f"{args.output}: {len(imat.data)} entries from {imat.chunk_count} chunks of {args.ctx_size} tokens")
    return 0
