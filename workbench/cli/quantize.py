"""python -m workbench quantize IN.gguf OUT.gguf FTYPE [--imatrix FILE] [--allow-requantize] [--pure]
[--output-tensor-type T] [--token-embedding-type T]   (flags as llama-quantize)"""
from __future__ import annotations

from workbench.quant.quantize_model import quantize_model


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


def run(args) -> int:
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
