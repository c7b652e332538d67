"""Importance matrices: llama.cpp's GGUF imatrix format and its older `.dat` format.

GGUF format (llama-imatrix since 2025): per weight tensor `<name>.in_sum2` (F32, ne = [n_per_row, n_expert]:
sum of squared activations per column) and `<name>.counts` (F32, ne = [1, n_expert]: tokens seen); metadata
`imatrix.datasets`, `imatrix.chunk_count`, `imatrix.chunk_size`. The importance of a column is
in_sum2 / counts (1 where an expert saw no token), as llama-quantize's `load_imatrix` computes it.
Legacy `.dat`: int32 n_entries, then per entry int32 name length, name, int32 ncall, int32 n_values,
float32 values (already averaged per call, times ncall); optionally int32 chunk count and the dataset name.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..gguf import GGUFError, GGUFValueType as VT, Keys, read_gguf


@dataclass
class Imatrix:
    """Importance per column for each weight tensor (experts concatenated), plus provenance."""

    data: dict[str, np.ndarray]
    file: str = ""
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0

    def get(self, name: str) -> np.ndarray | None:
        return self.data.get(name)

    def metadata_items(self) -> list[tuple]:
        """The quantize.imatrix.* keys llama-quantize adds (as KV overrides: strings and UINT32 counts)."""
        items = [(Keys.Imatrix.FILE, self.file, VT.STRING)]
        if self.datasets:
            items.append((Keys.Imatrix.DATASET, self.datasets[0], VT.STRING))
        items.append((Keys.Imatrix.N_ENTRIES, len(self.data), VT.UINT32))
        if self.chunk_count:
            items.append((Keys.Imatrix.N_CHUNKS, self.chunk_count, VT.UINT32))
        return items


def load_imatrix(source) -> Imatrix:
    """An Imatrix from a GGUF imatrix file, a legacy `.dat` file, or a dict name -> values."""
    if isinstance(source, dict):
        return Imatrix({k: np.asarray(v, np.float32).reshape(-1) for k, v in source.items()}, file="<dict>")
    path = Path(source)
    head = path.open("rb").read(4)
    return _load_gguf(path) if head == b"GGUF" else _load_legacy(path)


def _load_gguf(path: Path) -> Imatrix:
    gf = read_gguf(path)
    sums = {t.name[: -len(".in_sum2")]: t for t in gf.tensors if t.name.endswith(".in_sum2")}
    counts = {t.name[: -len(".counts")]: t for t in gf.tensors if t.name.endswith(".counts")}
    if not sums:
        raise GGUFError(f"{path}: no '<tensor>.in_sum2' entries: not an imatrix file")
    data = {}
    for name, s in sums.items():
        if name not in counts:
            raise GGUFError(f"{path}: {name}.in_sum2 has no matching {name}.counts")
        sum2 = s.numpy().astype(np.float32).reshape(-1)
        cnt = counts[name].numpy().astype(np.float32).reshape(-1)
        per = sum2.reshape(cnt.size, -1)
        out = np.where(cnt[:, None] > 0, per / np.where(cnt > 0, cnt, 1)[:, None], np.float32(1))
        data[name] = out.astype(np.float32).reshape(-1)
    datasets = list(gf.metadata.get("imatrix.datasets", []))
    return Imatrix(data, file=str(path), datasets=datasets, chunk_count=int(gf.metadata.get("imatrix.chunk_count", 0)))


def _load_legacy(path: Path) -> Imatrix:
    raw = path.read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(raw):
            raise GGUFError(f"{path}: truncated legacy imatrix at offset {pos}")
        vals = struct.unpack_from(fmt, raw, pos)
        pos += size
        return vals

    (n_entries,) = take("<i")
    if n_entries < 1 or n_entries > len(raw) // 12:
        raise GGUFError(f"{path}: not an imatrix file (entry count {n_entries})")
    data = {}
    for _ in range(n_entries):
        (n,) = take("<i")
        if n <= 0 or pos + n > len(raw):
            raise GGUFError(f"{path}: bad name length {n} at offset {pos - 4}")
        name = raw[pos:pos + n].decode("utf-8", errors="replace")
        pos += n
        ncall, nval = take("<ii")
        if nval <= 0 or pos + 4 * nval > len(raw):
            raise GGUFError(f"{path}: bad value count {nval} for {name}")
        vals = np.frombuffer(raw, np.float32, nval, pos).copy()
        pos += 4 * nval
        data[name] = vals / np.float32(ncall) if ncall > 0 else vals
    chunks, datasets = 0, []
    if pos + 4 <= len(raw):
        (chunks,) = take("<i")
        if pos + 4 <= len(raw):
            (n,) = take("<i")
            datasets = [raw[pos:pos + n].decode("utf-8", errors="replace")]
    return Imatrix(data, file=str(path), datasets=datasets, chunk_count=chunks)
