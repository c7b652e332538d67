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


# ------------------------------------------------------------------------------------ computing one

class _Stats:
    """Sum of squared activations per column (float32, accumulated row by row as llama-imatrix does) and
    the number of rows seen, per matrix (one for a dense weight, one per expert for a stack)."""

    def __init__(self, n_mat: int, n_per_row: int):
        self.sum2 = np.zeros((n_mat, n_per_row), np.float32)
        self.counts = np.zeros(n_mat, np.int64)

    def add(self, mat: int, x: np.ndarray) -> None:
        acc = self.sum2[mat]
        for row in np.asarray(x, np.float32):
            acc += row * row
        self.counts[mat] += len(x)


def _recording(weight, stats: dict, mat: int = 0, min_rows: int = 16):
    """A stand-in for a workbench.moe Weight that records its inputs before multiplying."""
    base = weight

    class Recorder:
        def __getattr__(self, name):
            return getattr(base, name)

        def mul(self, x, quantize_act=True):
            name = base.name.split("[")[0]
            n_mat = base.shape[0] if len(base.shape) == 3 else 1
            if base.is_expert or len(x) >= min_rows:  # llama-imatrix skips dense batches of < 16 tokens
                key = name if name.endswith(".weight") else name + ".weight"
                st = stats.setdefault(key, _Stats(stats.get("_n_mat_" + key, n_mat), base.n_per_row))
                st.add(mat, x)
            return base.mul(x, quantize_act)

        def expert(self, e):
            key = base.name if base.name.endswith(".weight") else base.name + ".weight"
            stats.setdefault("_n_mat_" + key, base.shape[0])
            return _recording(base.expert(e), stats, e, min_rows)

    return Recorder()


_LAYER_WEIGHTS = ("wq", "wk", "wv", "wo", "ffn_gate", "ffn_up", "ffn_down", "gate_inp", "gate_exps", "up_exps",
                  "down_exps")


def compute_imatrix(model_path, text: str, n_ctx: int = 512, n_chunks: int | None = None, dataset: str = "",
                    progress: bool = True) -> Imatrix:
    """llama-imatrix: mean of squared activations entering each matmul of the transformer blocks, per
    column, per expert for MoE stacks, over non-overlapping n_ctx chunks of `text` (BOS handled as in
    llama-perplexity)."""
    from tqdm.auto import tqdm

    from ..eval.perplexity import check_inputs, chunk_batches
    from ..moe import load

    model = load(model_path, n_ctx=n_ctx)
    toks = np.asarray(model.tokenize(text, add_special=True), np.int32)
    check_inputs(model, len(toks), n_ctx)
    n_chunk = len(toks) // n_ctx if n_chunks is None else min(n_chunks, len(toks) // n_ctx)
    stats: dict = {}
    for lw in model.weights.layers:
        for attr in _LAYER_WEIGHTS:
            w = getattr(lw, attr)
            if w is not None:
                setattr(lw, attr, _recording(w, stats))
    for _, batch in tqdm(chunk_batches(toks, n_ctx, n_chunk, model.bos_id if model.add_bos else None),
                         total=n_chunk, desc="imatrix", disable=not progress):
        model.logits(batch, first_output=n_ctx)
    data, raw = {}, {}
    for name, st in stats.items():
        if name.startswith("_n_mat_"):
            continue
        raw[name] = st
        cnt = st.counts.astype(np.float32)
        data[name] = np.where(cnt[:, None] > 0, st.sum2 / np.where(cnt > 0, cnt, 1)[:, None], np.float32(1)).astype(
            np.float32).reshape(-1)
    imat = Imatrix(data, file="", datasets=[dataset] if dataset else [], chunk_count=n_chunk)
    imat.raw = raw
    imat.chunk_size = n_ctx
    return imat


def save_imatrix(imat: Imatrix, path) -> None:
    """llama.cpp's GGUF imatrix layout: <name>.in_sum2 (n_per_row, n_mat) and <name>.counts (1, n_mat), F32."""
    from ..gguf import GGMLType, TensorInfo, new_metadata, write_gguf

    md = new_metadata([(Keys.General.TYPE, "imatrix", VT.STRING),
                       ("imatrix.datasets", list(imat.datasets), (VT.ARRAY, VT.STRING)),
                       ("imatrix.chunk_count", int(imat.chunk_count), VT.UINT32),
                       ("imatrix.chunk_size", int(getattr(imat, "chunk_size", 512)), VT.UINT32)])
    tensors = []
    for name in sorted(imat.raw):
        st = imat.raw[name]
        tensors.append(TensorInfo(f"{name}.in_sum2", GGMLType.F32, st.sum2.shape, data=st.sum2.astype(np.float32)))
        tensors.append(TensorInfo(f"{name}.counts", GGMLType.F32, (len(st.counts), 1),
                                  data=st.counts.astype(np.float32).reshape(-1, 1)))
    write_gguf(path, md, tensors)
