"""Shared fixtures: the golden directory (../shared), the default model (fetched once through pip).

The golden paths are resolved here, once: tests take the fixtures (`golden_dir`, `toy_dir`, `shared_data_dir`,
`smollm2_path`); code that runs at collection time (parametrize lists) uses `GOLDEN` / `golden_json(name)`
(`from conftest import golden_json`) instead of building ../shared paths itself."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from workbench.assets import ensure_model

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("WORKBENCH_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "golden"
TOY = GOLDEN / "toy"
# llama.cpp's source (its own test suites are fair peers; read at test time, never copied into the repository)
LLAMA_CPP_HINT = "set LLAMA_CPP_SRC or unpack the llama-cpp-python sdist under /tmp/sdist"


def llama_cpp_source(relative: str) -> Path | None:
    """`relative` (a file or folder) inside llama.cpp's source: $LLAMA_CPP_SRC, else an unpacked
    llama-cpp-python sdist under /tmp/sdist (its vendor/llama.cpp); None when neither has it."""
    cands = [os.environ.get("LLAMA_CPP_SRC", "")] + sorted(str(p) for p in Path("/tmp/sdist").glob("*/vendor/llama.cpp"))
    for c in cands:
        if c and (Path(c) / relative).exists():
            return Path(c) / relative
    return None


def pytest_collection_modifyitems(config, items):
    if os.environ.get("WORKBENCH_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set WORKBENCH_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN.is_dir():
        pytest.skip(f"golden data not found at {GOLDEN}")
    return GOLDEN


@pytest.fixture(scope="session")
def toy_dir(golden_dir) -> Path:
    return golden_dir / "toy"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    return SHARED / "data"


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The default SmolLM2 Q4_1 GGUF (cached in data/models/, fetched through pip on first use)."""
    return ensure_model()


def load_json(path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def golden_json(name: str) -> dict | None:
    """The golden file GOLDEN/name parsed, or None on a machine without the golden data (for parametrize
    lists, built at collection time, where a missing file means no cases rather than a skip)."""
    path = GOLDEN / name
    return load_json(path) if path.is_file() else None
