"""python -m workbench convert MODEL_DIR [--outfile X.gguf] [--outtype auto|f32|f16|bf16|q8_0]

Named and flagged like llama.cpp's convert_hf_to_gguf.py. A GPTQ folder (quantize_config.json, or a gptq
quantization_config) converts with --outtype auto to Q4_1 blocks holding its own codes where the grids coincide
(4 bits, group 32, no act-order), requantized elsewhere (workbench.hf.gptq_gguf); a float outtype converts its
dequantized weights."""
from __future__ import annotations

from pathlib import Path

from workbench.hf.convert import OUTTYPES, convert_hf
from workbench.hf.gptq_gguf import convert_gptq, is_gptq_folder


def configure(p) -> None:
    p.add_argument("model", help="Hugging Face model folder (config.json, *.safetensors, tokenizer files)")
    p.add_argument("--outfile", help="output GGUF path, may contain '{ftype}'; a folder gets llama.cpp's "
                                     "default name (default: inside MODEL_DIR, e.g. Tiny-Llama-4.2M-F16.gguf)")
    p.add_argument("--outtype", default="auto", choices=["auto", *OUTTYPES],
                   help="tensor type of the output (auto: the checkpoint's f16/bf16, default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    model = Path(args.model)
    if is_gptq_folder(model):
        path, report = convert_gptq(model, Path(args.outfile) if args.outfile else model, outtype=args.outtype,
                                    progress=not args.no_progress)
        redone = [r for r in report if r["how"] == "requantized"]
        if report:
            print(f"{len(report) - len(redone)} of {len(report)} GPTQ linears kept their codes exactly "
                  f"({report[0]['type']}); {len(redone)} requantized" + (f", e.g. {redone[0]['why']}" if redone else ""))
        print(f"wrote {path}")
        return 0
    path = convert_hf(model, Path(args.outfile) if args.outfile else model, outtype=args.outtype,
                      progress=not args.no_progress)
    print(f"wrote {path}")
    return 0
