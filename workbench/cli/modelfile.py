"""python -m workbench modelfile MODEL.gguf [--template NAME] [-o Modelfile]: an ollama Modelfile from a GGUF."""
from __future__ import annotations

from workbench.server.modelfile import modelfile_for


def configure(p) -> None:
    p.add_argument("model", help="GGUF model")
    p.add_argument("--template", help="chat format (default: detected from the GGUF's chat template)")
    p.add_argument("--output", "-o", help="write here instead of printing")


def run(args) -> int:
    text = modelfile_for(args.model, args.template)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        print(text, end="")
    return 0
