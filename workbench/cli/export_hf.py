"""python -m workbench export-hf MODEL.gguf OUT_DIR [--dtype f16|bf16|f32]"""
from __future__ import annotations

from workbench.hf.export import DTYPES, export_hf


def configure(p) -> None:
    p.add_argument("file", help="GGUF file (llama architecture: Llama, Mistral, Mixtral, SmolLM2...)")
    p.add_argument("out_dir", help="Hugging Face folder to write (created if missing)")
    p.add_argument("--dtype", default="f16", choices=list(DTYPES), help="dtype of model.safetensors (default f16)")


def run(args) -> int:
    out = export_hf(args.file, args.out_dir, dtype=args.dtype)
    print(f"wrote {out}")
    return 0
