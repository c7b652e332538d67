"""python -m workbench gguf-dump FILE [--json]"""
from __future__ import annotations

import json

from workbench.assets import ensure_model
from workbench.gguf.dump import dump_json, dump_text
from workbench.gguf.reader import read_gguf


def configure(p) -> None:
    p.add_argument("file", nargs="?", help="GGUF file (default: the default SmolLM2 model, fetched if missing)")
    p.add_argument("--model", "-m", dest="model", help="same as FILE")
    p.add_argument("--json", action="store_true", help="machine-readable output (token/merge/score arrays as lengths)")


def run(args) -> int:
    path = ensure_model(args.file or args.model)
    with read_gguf(path) as gf:
        print(json.dumps(dump_json(gf), ensure_ascii=False) if args.json else dump_text(gf))
    return 0
