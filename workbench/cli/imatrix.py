"""python -m workbench imatrix -m MODEL.gguf -f TEXT [-o imatrix.gguf] [-c 512] [-b N] [--chunks N] (as llama-imatrix)

The file llama-imatrix writes for the same arguments, byte for byte: `-f` is read as llama.cpp reads it (BOM
and CRs kept) and recorded in imatrix.datasets exactly as given. One difference: -b defaults to the context
size (llama-imatrix's default of 2048 batches several chunks as parallel sequences, which this does not do).
"""
from __future__ import annotations

from workbench.assets import ensure_model
from workbench.eval.imatrix import compute_imatrix
from workbench.quant.imatrix import save_imatrix
from workbench.text.files import read_prompt_file


def configure(p) -> None:
    p.add_argument("--model", "-m", help="GGUF model (default: the default SmolLM2 model)")
    p.add_argument("--file", "-f", required=True, help="calibration text (read as llama.cpp reads -f)")
    p.add_argument("--output", "-o", default="imatrix.gguf")
    p.add_argument("--ctx-size", "-c", type=int, default=512)
    p.add_argument("--batch-size", "-b", type=int, default=None, help="tokens per decode (default: the context size)")
    p.add_argument("--chunks", type=int, default=-1)
    p.add_argument("--process-output", action="store_true", help="also collect output.weight")
    p.add_argument("--parse-special", action="store_true", help="parse special tokens in the text")
    p.add_argument("--threads", "-t", type=int, default=None)


def run(args) -> int:
    text = read_prompt_file(args.file)
    imat = compute_imatrix(ensure_model(args.model), text, n_ctx=args.ctx_size, n_batch=args.batch_size,
                           n_chunks=None if args.chunks < 0 else args.chunks, dataset=args.file,
                           process_output=args.process_output, parse_special=args.parse_special,
                           n_threads=args.threads)
    save_imatrix(imat, args.output)
    print(f"{args.output}: {len(imat.data)} entries from {imat.chunk_count} chunks of {args.ctx_size} tokens")
    return 0
