"""python -m workbench fetch [--model PATH]: the default model and texts, verified, under data/."""
from __future__ import annotations

from workbench.assets import ensure_model, ensure_texts


def configure(p) -> None:
    p.add_argument("--model", "-m", help="use this GGUF instead of fetching the default model")
    p.add_argument("--no-texts", action="store_true", help="fetch only the model")


def run(args) -> int:
    print(f"model: {ensure_model(args.model)}")
    if not args.no_texts:
        for lang, path in ensure_texts().items():
            print(f"text ({lang}): {path}")
    return 0
