"""Where the notebooks, `workbench demo` and the bench scripts keep their files, and which preset they run.

- small/full presets: `params(small={...}, full={...})` picks one by $WORKBENCH_FULL ("1" = full mode;
  anything else, the default, is small mode: what `make demo` and the tests run on 2 CPU cores)
- folders: `reports_dir()`, `work_dir(name)` under data/ (honours $WORKBENCH_DATA)
- inputs: `toy_dir()` (the toy checkpoints), `read_text(lang)` (an evaluation text, read as llama-perplexity -f)
"""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

from workbench.assets import data_dir, ensure_texts
from workbench.text.files import read_prompt_file
from workbench.toy_models import ensure_toy_models


# --- parameters -----------------------------------------------------------------------------------
def is_small() -> bool:
    """Small mode unless WORKBENCH_FULL=1."""
    return os.environ.get("WORKBENCH_FULL") != "1"


def params(small: dict, full: dict, **common) -> SimpleNamespace:
    """The preset of the current mode (plus `common` values) as attributes; prints what was chosen."""
    chosen = {**common, **(small if is_small() else full), "small": is_small()}
    print(("small" if chosen["small"] else "full") + " mode (set WORKBENCH_FULL=1 for full mode): "
          + ", ".join(f"{k}={v}" for k, v in chosen.items() if k != "small"))
    return SimpleNamespace(**chosen)


# --- folders --------------------------------------------------------------------------------------
def reports_dir() -> Path:
    """data/reports/: the tables and plots the notebooks and the demo write."""
    d = data_dir() / "reports"
    d.mkdir(parents=True, exist_ok=True)
    return d


def work_dir(name: str) -> Path:
    """data/models/<name>/: files a notebook makes (conversions, quantizations)."""
    d = data_dir() / "models" / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def shared_dir() -> Path:
    """$WORKBENCH_SHARED, else the ../shared folder beside the checkout (llama.cpp's reference outputs)."""
    return Path(os.environ.get("WORKBENCH_SHARED", Path(__file__).resolve().parent.parent.parent / "shared"))


# --- inputs ---------------------------------------------------------------------------------------
def toy_dir() -> Path:
    """The toy checkpoints shipped in ../shared/golden/toy (or $WORKBENCH_SHARED/golden/toy, with llama.cpp's
    reference conversions); on a machine without them, seeded stand-ins made offline under data/models/toy."""
    toy = shared_dir() / "golden" / "toy"
    if toy.is_dir():
        return toy
    return ensure_toy_models(data_dir() / "models" / "toy")


def read_text(lang: str = "en", max_chars: int | None = None) -> str:
    """An evaluation text ("en": botchan, "zh": People's Daily news), optionally cut to max_chars."""
    text = read_prompt_file(ensure_texts()[lang])  # as llama-perplexity -f reads it: BOM and CRLF kept
    return text if max_chars is None else text[:max_chars]
