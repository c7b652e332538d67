"""python -m workbench convert MODEL_DIR [--outfile X.gguf] [--outtype auto|f32|f16|bf16|q8_0]

Named and flagged like llama.cpp's convert_hf_to_gguf.py."""
from __future__ import annotations

from pathlib import Path

from .convert import OUTTYPES


def configure(p) -> None:
    p.add_argument("model", help="Hugging Face model folder (config.json, *.safetensors, tokenizer files)")
    p.add_argument("--outfile", help="output GGUF path; '{ftype}' is replaced by the outtype "
                                     "(default: MODEL_DIR/<folder name>-<OUTTYPE>.gguf)")
    p.add_argument("--outtype", default="auto", choices=["auto", *OUTTYPES],
                   help="tensor type of the output (auto: the checkpoint's f16/bf16, default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from .convert import convert_hf

    model = Path(args.model)
    label = args.outtype.upper() if args.outtype != "auto" else "auto"
    out = Path(args.outfile.replace("{ftype}", args.outtype.lower()).replace("{outtype}", args.outtype.lower())) \
        if args.outfile else model / f"{model.name}-{label}.gguf"
    path = convert_hf(model, out, outtype=args.outtype, progress=not args.no_progress)
    print(f"wrote {path}")
    return 0
