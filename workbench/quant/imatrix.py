"""Importance matrices: computed as llama-imatrix does, llama.cpp's GGUF imatrix format and its older `.dat`.

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

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numba import njit, prange

from workbench.gguf import GGUFError, GGUFValueType as VT, Keys, read_gguf

MIN_DENSE_ROWS = 16     # collect_imatrix skips a MUL_MAT of fewer tokens ("why are small batches ignored?")
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
    from workbench.gguf import GGMLType, TensorInfo, new_metadata, write_gguf

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


# ------------------------------------------------------------------------------------ collecting activations

@njit(cache=True)
def accumulate_squares(acc, x, rows):
    """collect_imatrix's inner loop: for r in rows (in that order): acc[j] += x[r, j] * x[r, j], in float32.
    The product is rounded, then added (no fma): llama-imatrix's own code is built without -march=native, and
    this order is the one that reproduces its files bit for bit (the fused form does not)."""
    for r in rows:
        for j in range(x.shape[1]):
            acc[j] += x[r, j] * x[r, j]


class _Collector:
    """IMatrixCollector::collect_imatrix: sums of squares per column and rows seen, per matrix (one for a dense
    weight, one per expert of a stack), and the router's choice of the current layer (`selected`, (T, k))."""

    def __init__(self, n_expert_used: int):
        self.n_expert_used = n_expert_used
        self.in_sum2: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}
        self.selected: np.ndarray | None = None

    def _entry(self, name: str, n_mat: int, n_per_row: int) -> tuple[np.ndarray, np.ndarray]:
        if name not in self.in_sum2:
            self.in_sum2[name] = np.zeros((n_mat, n_per_row), np.float32)
            self.counts[name] = np.zeros(n_mat, np.int64)
        return self.in_sum2[name], self.counts[name]

    def dense(self, name: str, x: np.ndarray) -> None:
        """GGML_OP_MUL_MAT: every row of the ubatch in token order, if it has at least 16 tokens."""
        if len(x) < MIN_DENSE_ROWS:
            return
        sums, counts = self._entry(name, 1, x.shape[1])
        accumulate_squares(sums[0], np.ascontiguousarray(x, np.float32), np.arange(len(x)))
        counts[0] += len(x)

    def expert(self, name: str, n_expert: int, e: int, x: np.ndarray) -> None:
        """GGML_OP_MUL_MAT_ID, the rows of expert e: llama-imatrix walks ids slot by slot (idx), then token by
        token, so expert e adds the tokens that chose it first, then those that chose it second, ... Our MoE
        block hands each expert its tokens in token order (np.nonzero(selected == e)): reorder them."""
        tok, slot = np.nonzero(self.selected == e)
        if len(tok) != len(x):
            raise ImatrixError(f"{name}[{e}]: {len(x)} rows, but the router sent {len(tok)} tokens to this expert")
        sums, counts = self._entry(name, n_expert, x.shape[1])
        accumulate_squares(sums[e], np.ascontiguousarray(x, np.float32), np.argsort(slot, kind="stable"))
        counts[e] += len(x)


class _Recorder:
    """Stands in for a workbench.llama Weight: records what enters the product, then multiplies."""

    def __init__(self, weight, collector: _Collector, router: bool = False):
        self._weight, self._collector, self._router = weight, collector, router

    def __getattr__(self, name):
        return getattr(self._weight, name)

    def mul(self, x, quantize_act=True):
        self._collector.dense(self._weight.name, x)
        out = self._weight.mul(x, quantize_act)
        if self._router:  # the experts of this layer follow; note whom the router picks (as moe_ffn will)
            from workbench.llama.experts import route

            self._collector.selected = route(out, self._collector.n_expert_used)[0]
        return out

    def expert(self, e: int):
        return _ExpertRecorder(self._weight, e, self._collector)


class _ExpertRecorder:
    """Expert e of a stack: records its rows as part of the stack's MUL_MAT_ID."""

    def __init__(self, stack, e: int, collector: _Collector):
        self._stack, self._e, self._collector = stack, e, collector
        self._weight = stack.expert(e)

    def __getattr__(self, name):
        return getattr(self._weight, name)

    def mul(self, x, quantize_act=True):
        self._collector.expert(self._stack.name, self._stack.shape[0], self._e, x)
        return self._weight.mul(x, quantize_act)


# ------------------------------------------------------------------------------------ computing one

_LAYER_WEIGHTS = ("wq", "wk", "wv", "wo", "ffn_gate", "ffn_up", "ffn_down", "gate_inp", "gate_exps", "up_exps",
                  "down_exps")


def compute_imatrix(model_path, text: str, n_ctx: int = 512, n_chunks: int | None = None, dataset: str = "",
                    progress: bool = True, n_batch: int | None = None, process_output: bool = False,
                    parse_special: bool = False, n_threads: int | None = None) -> Imatrix:
    """llama-imatrix (tools/imatrix/imatrix.cpp, compute_imatrix): sums of squared activations entering each
    matmul of the transformer blocks, per column, per expert for MoE stacks, over non-overlapping n_ctx chunks
    of `text` (BOS in front of each chunk when the model adds one), n_batch tokens per decode.

    `text` must be the file as llama.cpp reads `-f` (workbench.text.files.read_prompt_file); `dataset` is what
    imatrix.datasets records (llama-imatrix: the -f path as given). n_batch defaults to n_ctx; llama-imatrix's
    default (2048) packs n_batch / n_ctx chunks into one batch as parallel sequences, which reorders its sums:
    that mode is not reproduced (pass -b equal to -c to llama-imatrix to compare)."""
    from tqdm.auto import tqdm

    from workbench.eval.perplexity import chunk_batches
    from workbench.llama import load

    n_batch = n_ctx if n_batch is None else int(n_batch)
    if n_ctx <= 0 or n_batch <= 0:
        raise ImatrixError(f"n_ctx={n_ctx} and n_batch={n_batch} must be positive")
    if n_batch >= 2 * n_ctx:
        raise ImatrixError(f"n_batch={n_batch} is at least twice n_ctx={n_ctx}: llama-imatrix would evaluate "
                           f"{n_batch // n_ctx} chunks per batch as parallel sequences, which is not reproduced; "
                           f"use n_batch <= n_ctx")
    n_batch = min(n_batch, n_ctx)                           # one sequence: n_batch = min(n_batch, n_kv)
    model = load(model_path, n_ctx=n_ctx, n_threads=n_threads, flash_attn=True)   # llama-imatrix's AUTO: on
    toks = np.asarray(model.tokenize(text, add_special=True, parse_special=parse_special), np.int32)
    if len(toks) < 2 * n_ctx:
        raise ImatrixError(f"you need at least {2 * n_ctx} tokens for a context of {n_ctx} tokens; "
                           f"the text tokenizes to only {len(toks)} tokens")
    n_chunk = len(toks) // n_ctx
    if n_chunks is not None and n_chunks >= 0:
        n_chunk = min(int(n_chunks), n_chunk)

    collector = _Collector(model.config.n_expert_used)
    for lw in model.weights.layers:
        for attr in _LAYER_WEIGHTS:
            w = getattr(lw, attr)
            if w is not None:
                setattr(lw, attr, _Recorder(w, collector, router=attr == "gate_inp"))
    if process_output and model.weights.output.name == "output.weight":   # not a tied token_embd
        model.weights.output = _Recorder(model.weights.output, collector)

    bos = model.bos_id if model.add_bos else None
    for _, batch in tqdm(chunk_batches(toks, n_ctx, n_chunk, bos), total=n_chunk, desc="imatrix",
                         disable=not progress):
        model.reset()                                   # llama_memory_clear before each chunk
        for s in range(0, n_ctx, n_batch):              # every token is an output: the last layer sees all
            model.eval(batch[s:s + n_batch], all_logits=process_output)

    for name, sums in collector.in_sum2.items():
        if not np.isfinite(sums).all():
            raise ImatrixError(f"non-finite values detected in {name}")
    counts = collector.counts
    chunk_count = max((int(c.max()) // n_ctx for c in counts.values()), default=0)   # m_last_chunk
    return Imatrix(importance(collector.in_sum2, counts), file="", datasets=[dataset] if dataset else [],
                   chunk_count=chunk_count, chunk_size=n_ctx, in_sum2=collector.in_sum2, counts=counts)
