"""python -m workbench quantize IN.gguf OUT.gguf FTYPE [--imatrix FILE] [--allow-requantize] [--pure]
[--output-tensor-type T] [--token-embedding-type T]   (flags as llama-quantize)
[--method gptq --calibration TEXT [--chunks N] [--ctx N] [--damp 0.01] [--shrink 3] [--act-order]
[--block-size 128]]

--method rtn (the default) is llama-quantize, byte for byte. --method gptq chooses the codes with GPTQ error
compensation under the activations of a calibration text; same tensor types and file size as llama-quantize."""
from __future__ import annotations

from pathlib import Path

from workbench.eval.gptq_model import gptq_quantize_model
from workbench.quant.gptq import SHRINK
from workbench.quant.quantize_model import QuantizeError, quantize_model
from workbench.text.files import read_prompt_file


def configure(p) -> None:
    p.add_argument("src", help="input GGUF")
    p.add_argument("dst", help="output GGUF (written atomically)")
    p.add_argument("ftype", help="llama-quantize ftype name: Q4_K_M, Q8_0, F16, IQ4_XS, ...")
    p.add_argument("--imatrix", help="importance matrix (llama.cpp GGUF imatrix or legacy .dat)")
    p.add_argument("--allow-requantize", action="store_true", help="allow quantizing already-quantized tensors")
    p.add_argument("--pure", action="store_true", help="use the ftype's default type for every tensor")
    p.add_argument("--output-tensor-type", help="type for output.weight")
    p.add_argument("--token-embedding-type", help="type for token_embd.weight")
    p.add_argument("--threads", "-t", type=int, help="threads (default: all cores)")
    p.add_argument("--report", help="write the per-tensor report to this CSV")
    p.add_argument("--method", choices=("rtn", "gptq"), default="rtn",
                   help="rtn: llama-quantize's rounding (default); gptq: error-compensating, needs --calibration")
    p.add_argument("--calibration", help="gptq: calibration text file (read as llama.cpp reads -f)")
    p.add_argument("--chunks", type=int, default=32, help="gptq: calibration chunks (default 32)")
    p.add_argument("--ctx", type=int, default=512, help="gptq: tokens per calibration chunk (default 512)")
    p.add_argument("--damp", type=float, default=0.01, help="gptq: dampening, fraction of mean(diag H)")
    p.add_argument("--shrink", type=float, default=SHRINK,
                   help=f"gptq: weight of diag H added to H, pulls the error feedback toward rtn + imatrix (0 = plain "
                        f"GPTQ; default {SHRINK:g})")
    p.add_argument("--act-order", action="store_true", help="gptq: columns by decreasing activation (desc_act)")
    p.add_argument("--block-size", type=int, default=128, help="gptq: columns per lazy update")


def run(args) -> int:
    if args.method == "gptq":
        if not args.calibration:
            raise QuantizeError("--method gptq needs --calibration TEXT (a text file to collect activations from)")
        if args.imatrix or args.allow_requantize:
            raise QuantizeError("--method gptq takes neither --imatrix (it measures the activations itself) nor "
                                "--allow-requantize (it quantizes from float weights)")
        df = gptq_quantize_model(args.src, args.dst, args.ftype, read_prompt_file(args.calibration),
                                 n_ctx=args.ctx, n_chunks=args.chunks, damp=args.damp, shrink=args.shrink,
                                 act_order=args.act_order,
                                 block_size=args.block_size, dataset=Path(args.calibration).name, pure=args.pure,
                                 output_tensor_type=args.output_tensor_type,
                                 token_embedding_type=args.token_embedding_type, n_threads=args.threads)
        if args.report:
            df.to_csv(args.report, index=False)
        print(f"{args.dst}: {len(df)} tensors quantized ({(df.method.str.contains('gptq')).sum()} by GPTQ)")
        print(df.groupby(["new_type", "method"]).size().to_string())
        return 0
    if args.method == "rtn" and args.calibration:
        raise QuantizeError("--calibration is for --method gptq (for rtn, compute an --imatrix from the text)")
    df = quantize_model(args.src, args.dst, args.ftype, imatrix=args.imatrix, allow_requantize=args.allow_requantize,
                        pure=args.pure, output_tensor_type=args.output_tensor_type,
                        token_embedding_type=args.token_embedding_type, nthreads=args.threads)
    if args.report:
        df.to_csv(args.report, index=False)
    changed = df[df.old_type != df.new_type]
    print(f"{args.dst}: {len(df)} tensors, {len(changed)} converted, "
          f"{df.old_bytes.sum() / 2**20:.2f} MiB -> {df.new_bytes.sum() / 2**20:.2f} MiB")
    print(changed.groupby("new_type").size().to_string())
    return 0
