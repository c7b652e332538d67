"""Importance matrices: the Imatrix type, llama.cpp's GGUF imatrix format and its older `.dat` (load and save).
Computing one by running a model, as llama-imatrix does, is workbench.eval.imatrix.compute_imatrix.

GGUF format (tools/imatrix/imatrix.cpp, IMatrixCollector::save_imatrix): per weight tensor, in byte order of
the names, `<name>.in_sum2` (F32, ne = [n_per_row, n_mat]: the sum of squared activations per column) and
`<name>.counts` (F32, ne = [1, n_mat]: the rows seen), n_mat = 1 for a dense weight and n_expert for a stack
of experts; gguf drops trailing 1-dims, so a dense entry is 1-D. Metadata `general.type` = "imatrix",
`imatrix.datasets` (the `-f` paths as given), `imatrix.chunk_count`, `imatrix.chunk_size`. The importance of a
column is in_sum2 / counts (1 where an expert saw no token), as llama-quantize's `load_imatrix` computes it.
Legacy `.dat`: int32 n_entries, then per entry int32 name length, name, int32 ncall, int32 n_values,
float32 values (already averaged per call, times ncall); optionally int32 chunk count and the dataset name.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workbench.gguf import (GGMLType, GGUFError, GGUFValueType as VT, Keys, TensorInfo, new_metadata, read_gguf,
                            write_gguf)

KV_OVERRIDE_CHARS = 127  # llama-quantize copies the imatrix path and dataset into a char[128] (strncpy)


class ImatrixError(ValueError):
    """An importance matrix cannot be computed or written with these inputs; the message says why."""


@dataclass
class Imatrix:
    """Importance per column for each weight tensor (experts concatenated), the raw sums it comes from
    (GGUF files and computed matrices; a legacy `.dat` has only the averages), and provenance."""

    data: dict[str, np.ndarray]
    file: str = ""
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    in_sum2: dict[str, np.ndarray] = field(default_factory=dict)   # (n_mat, n_per_row) float32
    counts: dict[str, np.ndarray] = field(default_factory=dict)    # (n_mat,) int64 rows seen

    def get(self, name: str) -> np.ndarray | None:
        return self.data.get(name)

    def metadata_items(self) -> list[tuple]:
        """The quantize.imatrix.* keys llama-quantize adds (as KV overrides: strings and UINT32 counts)."""
        items = [(Keys.Imatrix.FILE, _override_str(self.file), VT.STRING)]
        if self.datasets:
            items.append((Keys.Imatrix.DATASET, _override_str(self.datasets[0]), VT.STRING))
        items.append((Keys.Imatrix.N_ENTRIES, len(self.data), VT.UINT32))
        if self.chunk_count:
            items.append((Keys.Imatrix.N_CHUNKS, self.chunk_count, VT.UINT32))
        return items


def _override_str(s: str) -> str:
    """The first 127 bytes of s, as strncpy into llama_model_kv_override.val_str keeps them."""
    return s.encode("utf-8")[:KV_OVERRIDE_CHARS].decode("utf-8", errors="ignore")


def importance(in_sum2: dict, counts: dict) -> dict[str, np.ndarray]:
    """llama-quantize's load_imatrix: in_sum2 / (float)count per matrix, 1 for a matrix that saw nothing."""
    data = {}
    for name, sums in in_sum2.items():
        cnt = np.asarray(counts[name]).astype(np.float32)
        out = np.where(cnt[:, None] > 0, sums / np.where(cnt > 0, cnt, 1)[:, None], np.float32(1))
        data[name] = out.astype(np.float32).reshape(-1)
    return data


def load_imatrix(source) -> Imatrix:
    """An Imatrix from a GGUF imatrix file, a legacy `.dat` file, or a dict name -> values. The path is kept as
    given (llama-quantize records it so in quantize.imatrix.file)."""
    if isinstance(source, dict):
        return Imatrix({k: np.asarray(v, np.float32).reshape(-1) for k, v in source.items()}, file="<dict>")
    path = Path(source)
    head = path.open("rb").read(4)
    imat = _load_gguf(path) if head == b"GGUF" else _load_legacy(path)
    imat.file = os.fspath(source)
    return imat


def _load_gguf(path: Path) -> Imatrix:
    gf = read_gguf(path)
    sums = {t.name[: -len(".in_sum2")]: t for t in gf.tensors if t.name.endswith(".in_sum2")}
    counts = {t.name[: -len(".counts")]: t for t in gf.tensors if t.name.endswith(".counts")}
    if not sums:
        raise GGUFError(f"{path}: no '<tensor>.in_sum2' entries: not an imatrix file")
    in_sum2, n_rows = {}, {}
    for name, s in sums.items():
        if name not in counts:
            raise GGUFError(f"{path}: {name}.in_sum2 has no matching {name}.counts")
        cnt = counts[name].numpy().astype(np.float32).reshape(-1)
        n_rows[name] = (np.sign(cnt) * np.floor(np.abs(cnt.astype(np.float64)) + 0.5)).astype(np.int64)  # lround
        in_sum2[name] = s.numpy().astype(np.float32).reshape(cnt.size, -1)
    md = gf.metadata
    return Imatrix(importance(in_sum2, n_rows), datasets=list(md.get("imatrix.datasets", [])),
                   chunk_count=int(md.get("imatrix.chunk_count", 0)), chunk_size=int(md.get("imatrix.chunk_size", 0)),
                   in_sum2=in_sum2, counts=n_rows)


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
    return Imatrix(data, datasets=datasets, chunk_count=chunks)


def save_imatrix(imat: Imatrix, path) -> None:
    """IMatrixCollector::save_imatrix: tensors sorted by name, <name>.in_sum2 ne = [n_per_row, n_mat] and
    <name>.counts ne = [1, n_mat], F32; numpy shapes (n,) and (1,) for a dense weight (gguf drops trailing 1-dims),
    (n_mat, n) and (n_mat, 1) for a stack of experts."""
    if not imat.in_sum2:
        raise ImatrixError(f"{imat.file or 'this imatrix'} holds no raw sums (a legacy .dat keeps only averages): "
                           "cannot write the GGUF layout")
    md = new_metadata([(Keys.General.TYPE, "imatrix", VT.STRING),
                       ("imatrix.datasets", list(imat.datasets), (VT.ARRAY, VT.STRING)),
                       ("imatrix.chunk_count", int(imat.chunk_count), VT.UINT32),
                       ("imatrix.chunk_size", int(imat.chunk_size), VT.UINT32)])
    tensors = []
    for name in sorted(imat.in_sum2, key=lambda s: s.encode("utf-8")):   # std::sort on std::string: bytes
        sums = np.ascontiguousarray(imat.in_sum2[name], np.float32)
        counts = np.asarray(imat.counts[name]).astype(np.float32)
        n_mat = sums.shape[0]
        tensors.append(TensorInfo(f"{name}.in_sum2", GGMLType.F32, sums.shape if n_mat > 1 else sums.shape[1:],
                                  data=sums))
        tensors.append(TensorInfo(f"{name}.counts", GGMLType.F32, (n_mat, 1) if n_mat > 1 else (1,), data=counts))
    write_gguf(path, md, tensors)
