"""Human and machine-readable summaries of a GGUF file (like gguf-py's `gguf-dump`)."""
from __future__ import annotations

from typing import Any

import numpy as np

from workbench.gguf.constants import BULK_ARRAY_KEYS, GGUFValueType
from workbench.gguf.reader import GGUFFile


def type_name(spec) -> str:
    """'UINT32', '[STRING]', '[[INT32]]' for a value type spec."""
    if isinstance(spec, tuple):
        elem = spec[1]
        inner = type_name(elem[0]) if isinstance(elem, list) and elem else (
            "ARRAY" if isinstance(elem, list) else GGUFValueType(elem).name)
        return f"[{inner}]"
    return GGUFValueType(spec).name


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _short(value: Any, limit: int = 6) -> str:
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, (list, np.ndarray)):
        items = _jsonable(value[:limit])
        text = repr(items)
        return text[:-1] + ", ...]" if len(value) > limit else text
    return repr(value)


def tensor_rows(gf: GGUFFile) -> list[dict]:
    return [{"name": t.name, "type": t.type.name, "shape": list(t.shape), "bytes": t.nbytes} for t in gf.tensors]


def tensor_table(gf: GGUFFile):
    """The tensor table as a pandas DataFrame (name, type, shape, bytes)."""
    import pandas as pd

    return pd.DataFrame(tensor_rows(gf))


def metadata_table(gf: GGUFFile):
    """Metadata as a pandas DataFrame (key, type, value with long arrays abbreviated)."""
    import pandas as pd

    return pd.DataFrame([{"key": k, "type": type_name(gf.metadata.types[k]), "value": _short(v)}
                         for k, v in gf.metadata.items()])


def dump_json(gf: GGUFFile) -> dict:
    """Full metadata values, except token/merge/score arrays which are given as lengths."""
    metadata = {}
    for k, v in gf.metadata.items():
        entry: dict[str, Any] = {"type": type_name(gf.metadata.types[k])}
        if k in BULK_ARRAY_KEYS:
            entry["length"] = len(v)
        else:
            entry["value"] = _jsonable(v)
        metadata[k] = entry
    counts: dict[str, int] = {}
    for t in gf.tensors:
        counts[t.type.name] = counts.get(t.type.name, 0) + 1
    return {
        "path": gf.path, "version": gf.version, "alignment": gf.alignment,
        "n_kv": len(gf.metadata), "n_tensors": len(gf.tensors), "tensor_types": counts,
        "metadata": metadata, "tensors": tensor_rows(gf),
    }


def dump_text(gf: GGUFFile) -> str:
    lines = [f"* GGUF v{gf.version}, alignment {gf.alignment}: {gf.path or ''}",
             f"* {len(gf.metadata)} key/value pairs"]
    for i, (k, v) in enumerate(gf.metadata.items(), 1):
        lines.append(f"  {i:5}: {type_name(gf.metadata.types[k]):10} | {k} = {_short(v)}")
    lines.append(f"* {len(gf.tensors)} tensors")
    for i, t in enumerate(gf.tensors, 1):
        dims = ", ".join(f"{d:6}" for d in t.shape)
        lines.append(f"  {i:5}: {t.type.name:7} | {dims:30} | {t.nbytes:12} | {t.name}")
    return "\n".join(lines)
