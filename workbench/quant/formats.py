"""The format table: one row per ggml type, and the lookup of the module that implements it.

A format lives in ``workbench/quant/types/<type name lowercased>.py`` (``q4_k.py`` for Q4_K) and is found by
name, so adding a format means adding one module; nothing here lists them.
"""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from workbench.gguf.constants import GGMLType

# ggml_quantize_requires_imatrix (ggml.c): ggml refuses to quantize these without an importance matrix
REQUIRES_IMATRIX = frozenset({GGMLType.IQ2_XXS, GGMLType.IQ2_XS, GGMLType.IQ1_S})


class UnknownTypeError(ValueError):
    """A ggml type name/id that does not exist, or one that workbench has no module for."""


def parse_type(type_) -> GGMLType:
    try:
        return GGMLType.parse(type_)
    except ValueError as e:
        raise UnknownTypeError(f"type: {e}") from None


def module_name(type_: GGMLType) -> str:
    return f"{__package__}.types.{type_.name.lower()}"


def has_module(type_: GGMLType) -> bool:
    return importlib.util.find_spec(module_name(type_)) is not None


def format_module(type_) -> ModuleType:
    """The module implementing `type_` (GGMLType or name); UnknownTypeError when there is none."""
    t = parse_type(type_)
    if not has_module(t):
        raise UnknownTypeError(f"type: no quantization module for {t.name} (expected {module_name(t)})")
    return importlib.import_module(module_name(t))


def needs_imatrix(type_) -> bool:
    t = parse_type(type_)
    if has_module(t):
        return bool(getattr(format_module(t), "NEEDS_IMATRIX", t in REQUIRES_IMATRIX))
    return t in REQUIRES_IMATRIX


def format_table():
    """One row per ggml type: block size, bytes per block, bits per weight, has_quantize, needs_imatrix."""
    import pandas as pd

    rows = []
    for t in GGMLType:
        mod = format_module(t) if has_module(t) else None
        rows.append({
            "type": t.name,
            "id": int(t),
            "block_size": t.block_size,
            "bytes_per_block": t.type_size,
            "bits_per_weight": t.bits_per_weight,
            "has_quantize": mod is not None and hasattr(mod, "quantize"),
            "has_dequantize": mod is not None and hasattr(mod, "dequantize"),
            "needs_imatrix": needs_imatrix(t),
        })
    return pd.DataFrame(rows)
