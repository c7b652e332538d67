"""Compare a conversion with a reference (llama.cpp's convert_hf_to_gguf.py output, or a round trip):
`file_diff` byte for byte, `tensor_diff` tensor by tensor (types, bytes, max |a - b| after dequantizing)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from workbench.gguf import read_gguf
from workbench.hf.export import dequantize_tensor


def file_diff(a, b, chunk: int = 1 << 24) -> dict:
    """Byte-level comparison of two files: sizes, identical?, first differing offset, differing bytes."""
    a, b = Path(a), Path(b)
    sa, sb = a.stat().st_size, b.stat().st_size
    first, n_diff = None, 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        off = 0
        while (ba := fa.read(chunk)) and (bb := fb.read(chunk)):
            m = min(len(ba), len(bb))
            d = np.flatnonzero(np.frombuffer(ba[:m], np.uint8) != np.frombuffer(bb[:m], np.uint8))
            if d.size and first is None:
                first = off + int(d[0])
            n_diff += int(d.size)
            off += m
    return {"a": a.name, "b": b.name, "bytes_a": sa, "bytes_b": sb, "identical": sa == sb and n_diff == 0,
            "first_diff_offset": first if first is not None else (None if sa == sb else min(sa, sb)),
            "differing_bytes_in_common_prefix": n_diff}


def tensor_diff(a, b) -> pd.DataFrame:
    """Per tensor of GGUF `a` (matched by name in `b`): types, bytes identical?, max |a - b| after
    dequantizing both to float32."""
    ga, gb = read_gguf(a), read_gguf(b)
    by_name = {t.name: t for t in gb.tensors}
    rows = []
    for t in ga.tensors:
        u = by_name.get(t.name)
        if u is None:
            rows.append({"name": t.name, "type_a": t.type.name, "type_b": None, "bytes_equal": False,
                         "max_abs_diff": np.nan})
            continue
        same = t.type == u.type and t.shape == u.shape and bytes(t.data) == bytes(u.data)
        diff = 0.0 if same else float(np.abs(dequantize_tensor(t) - dequantize_tensor(u).reshape(t.shape)).max()) \
            if t.n_elements == u.n_elements else np.nan
        rows.append({"name": t.name, "type_a": t.type.name, "type_b": u.type.name, "shape": tuple(t.shape),
                     "bytes_equal": same, "max_abs_diff": diff})
    return pd.DataFrame(rows)
