"""`python -m workbench plan MODEL [--ftype Q4_K_M ...] [--ctx 4096] [--kv-type f16] [--json]`: file size, bits per
weight and memory per ftype, before downloading (MODEL: a GGUF file, a HF folder / config.json, or k=v,...)."""
from __future__ import annotations

import json

from workbench.plan import DEFAULT_FTYPES, plan, plan_table


def configure(p) -> None:
    p.add_argument("model", help="GGUF file (header only), HF folder or config.json, or n_embd=...,n_layer=...")
    p.add_argument("--ftype", action="append", help="llama-quantize type (repeatable; default: the usual list)")
    p.add_argument("--ctx", type=int, default=4096, help="context length (default 4096)")
    p.add_argument("--kv-type", default="f16", help="KV cache type (f16, q8_0, f32, ...)")
    p.add_argument("--imatrix", action="store_true", help="plan as with an importance matrix")
    p.add_argument("--json", action="store_true", help="print one JSON list, an object per ftype")


def run(args) -> int:
    ftypes = args.ftype or list(DEFAULT_FTYPES)
    if args.json:
        print(json.dumps(plan(args.model, ftypes, args.ctx, args.kv_type, args.imatrix)))
    else:
        print(plan_table(args.model, ftypes, args.ctx, args.kv_type, args.imatrix).round(3).to_string(index=False))
    return 0
