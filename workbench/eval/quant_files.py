"""Cached quantizations of one model for the notebooks and bench scripts: an F16 base, then one file per ftype
with its per-tensor error report (quantize_model's table), named `<base stem>.<ftype>.gguf` as quant_table names
its files. Default folder: data/models/quant (honours $WORKBENCH_DATA)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from workbench.assets import data_dir
from workbench.quant.quantize_model import quantize_model


def quant_dir(out_dir=None) -> Path:
    """`out_dir`, else data/models/quant; created."""
    d = Path(out_dir) if out_dir else data_dir() / "models" / "quant"
    d.mkdir(parents=True, exist_ok=True)
    return d


def f16_base(model_path, out_dir=None) -> Path:
    """An F16 copy of `model_path` (cached in data/models/quant): the base every quantization below starts
    from. For the Q4_1 default this is a dequantization, so everything made from it is a requantization."""
    src = Path(model_path)
    dst = quant_dir(out_dir) / f"{src.stem}.F16.gguf"
    if not dst.exists():
        quantize_model(src, dst, "F16", allow_requantize=True, progress=False, with_error=False)
    return dst


def quantize_all(base, ftypes, out_dir=None) -> tuple[dict, pd.DataFrame]:
    """Quantize `base` to each ftype (cached: <out_dir>/<base stem>.<ftype>.gguf, plus a .tensors.csv
    per-tensor report). Returns ({ftype: path}, long per-tensor report with an ftype column)."""
    base = Path(base)
    out_dir = quant_dir(out_dir)
    paths, reports = {}, []
    for ft in ftypes:
        dst = out_dir / f"{base.stem}.{ft}.gguf"
        rep = dst.with_suffix(".tensors.csv")
        if dst.exists() and rep.exists():
            df = pd.read_csv(rep)
        else:
            df = quantize_model(base, dst, ft, allow_requantize=True, progress=False)
            df.to_csv(rep, index=False)
        paths[ft] = dst
        reports.append(df.assign(ftype=ft))
    return paths, pd.concat(reports, ignore_index=True)
