"""python -m workbench serve -m MODEL.gguf -c 4096 [--host 127.0.0.1] [--port 8080] [--api-key KEY]
[--parallel N] [--chat-template NAME] [--modelfile Modelfile] [--pooling mean]   (flags as llama-server)"""
from __future__ import annotations

import sys
from pathlib import Path

from workbench.assets import ensure_model
from workbench.llama import load
from workbench.server.app import Engine, build_app
from workbench.server.modelfile import parse_modelfile


def configure(p) -> None:
    p.add_argument("--model", "-m", help="GGUF model (default: the default SmolLM2 model)")
    p.add_argument("--modelfile", help="an ollama Modelfile (FROM, TEMPLATE, SYSTEM, PARAMETER)")
    p.add_argument("--ctx-size", "-c", type=int, default=4096, help="context size per slot")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY'")
    p.add_argument("--parallel", "-np", type=int, default=1, help="number of slots (parallel requests)")
    p.add_argument("--chat-template", default="gguf", help="gguf (from the file), chatml, llama2, llama3, mistral")
    p.add_argument("--alias", help="model name reported by /v1/models")
    p.add_argument("--threads", "-t", type=int)
    p.add_argument("--pooling", choices=["none", "mean", "cls", "last"],
                   help="embedding pooling (default: the model's own; /v1/embeddings needs one other than none)")


def run(args) -> int:
    import uvicorn

    mf = None
    model_path = args.model
    if args.modelfile:
        mf = parse_modelfile(Path(args.modelfile).read_text(encoding="utf-8"), base_dir=Path(args.modelfile).parent)
        model_path = model_path or mf.model
    n_ctx = int(mf.parameters.get("n_ctx", args.ctx_size)) if mf else args.ctx_size
    model = load(ensure_model(model_path), n_ctx=n_ctx, n_threads=args.threads)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding to {args.host}: the server is reachable from other machines"
              + ("" if args.api_key else " and has no --api-key"), file=sys.stderr)
    engine = Engine(model, n_parallel=args.parallel, chat_template=args.chat_template, alias=args.alias, modelfile=mf,
                    pooling=args.pooling)
    uvicorn.run(build_app(engine, api_key=args.api_key), host=args.host, port=args.port, log_level="info")
    return 0
