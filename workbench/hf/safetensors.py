"""Safetensors without torch: read (mmap, zero-copy) and write (atomic), single files and sharded checkpoints.

Layout (huggingface/safetensors): an 8-byte little-endian header length N, N bytes of UTF-8 JSON
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`, then the data
block; offsets are relative to the data block. A sharded checkpoint adds `model.safetensors.index.json`
whose `weight_map` names the shard of every tensor.

Every malformed input raises SafetensorsError (a ValueError) naming the file: truncated file, header length
beyond the file, bad JSON, unknown dtype, data offsets that disagree with dtype x shape or leave the file.
BF16 is handled by bit manipulation (a bf16 is the top half of a float32).
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from workbench.gguf.writer import open_temp_beside

# dtype string -> numpy storage dtype (BF16 is stored as its raw 16 bits)
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
FLOAT_DTYPES = ("F32", "F16", "BF16")
INDEX_NAME = "model.safetensors.index.json"
MAX_HEADER = 100 * 1024 * 1024  # the reference implementation refuses larger headers too


class SafetensorsError(ValueError):
    """A malformed or inconsistent safetensors file or index (the message names the file)."""


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """Raw bf16 bit patterns (uint16) -> float32 (exact: bf16 is the high half of a float32)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> raw bf16 bits, round to nearest even, NaN kept quiet (ggml_compute_fp32_to_bf16)."""
    n = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    is_nan = (n & 0x7FFFFFFF) > 0x7F800000
    rounded = (n.astype(np.uint64) + (0x7FFF + ((n >> 16) & 1))) >> 16
    quiet_nan = ((n >> 16) | 64).astype(np.uint64)
    return np.where(is_nan, quiet_nan, rounded).astype(np.uint16)


@dataclass(frozen=True)
class SafeTensor:
    """One tensor of a safetensors file: where its bytes are, and how to view them."""

    name: str
    dtype: str             # safetensors dtype string ("F16", "BF16", ...)
    shape: tuple[int, ...]
    file: Path
    offset: int            # absolute byte offset in `file`
    nbytes: int

    def raw(self) -> np.ndarray:
        """Zero-copy view of the stored values (BF16 as uint16 bit patterns)."""
        mm = np.memmap(self.file, dtype=np.uint8, mode="r", offset=self.offset, shape=(self.nbytes,)) \
            if self.nbytes else np.zeros(0, np.uint8)
        return mm.view(DTYPES[self.dtype]).reshape(self.shape)

    def numpy(self) -> np.ndarray:
        """Values as numpy: F32/F16 unchanged, BF16 widened to float32 (exactly)."""
        data = self.raw()
        return bf16_to_f32(data) if self.dtype == "BF16" else data


def read_header(path) -> tuple[dict[str, SafeTensor], dict[str, str]]:
    """Parse and validate one .safetensors file: (tensors by name in header order, __metadata__)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise SafetensorsError(f"{path}: safetensors file not found") from None
    if size < 8:
        raise SafetensorsError(f"{path}: truncated safetensors file ({size} bytes, no header length)")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
            raise SafetensorsError(f"{path}: header length {n} goes beyond the end of the file ({size} bytes)")
        if n > MAX_HEADER:
            raise SafetensorsError(f"{path}: header length {n} is larger than {MAX_HEADER}")
        head = f.read(n)
    try:
        header = json.loads(head.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{path}: header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object")
    data_start, data_size = 8 + n, size - 8 - n
    meta = header.pop("__metadata__", None) or {}
    tensors: dict[str, SafeTensor] = {}
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"{path}: tensor {name!r} has a malformed header entry {info!r}") from None
        if dtype not in DTYPES:
            raise SafetensorsError(f"{path}: tensor {name!r} has unknown dtype {dtype!r} "
                                   f"(known: {', '.join(DTYPES)})")
        want = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize
        if not (0 <= begin <= end) or end - begin != want:
            raise SafetensorsError(f"{path}: tensor {name!r} data_offsets [{begin}, {end}] do not match "
                                   f"{dtype} x {list(shape)} = {want} bytes")
        if end > data_size:
            raise SafetensorsError(f"{path}: tensor {name!r} ends at byte {end} of the data but the file holds "
                                   f"only {data_size} data bytes (truncated file?)")
        tensors[name] = SafeTensor(name, dtype, shape, path, data_start + begin, end - begin)
    return tensors, meta


def checkpoint_files(model_dir, prefix: str = "model") -> list[Path]:
    """The .safetensors files of a checkpoint, sorted, as llama.cpp's get_model_part_names lists them;
    with an index, the shards it names (a missing shard is an error naming it)."""
    model_dir = Path(model_dir)
    index = model_dir / INDEX_NAME
    if index.is_file():
        weight_map = _weight_map(index)
        files = [model_dir / f for f in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise SafetensorsError(f"{index}: shard file(s) {missing} listed in the index are missing")
        return files
    return sorted(p for p in model_dir.iterdir() if p.name.startswith(prefix) and p.name.endswith(".safetensors"))


def _weight_map(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (json.JSONDecodeError, AttributeError) as e:
        raise SafetensorsError(f"{index}: not a valid index ({e})") from None
    if not isinstance(weight_map, dict):
        raise SafetensorsError(f"{index}: no 'weight_map' object")
    return weight_map


def open_checkpoint(model_dir) -> dict[str, SafeTensor]:
    """All tensors of a (possibly sharded) checkpoint, in llama.cpp's order: shards sorted by file name,
    tensors sorted by name within each shard (SafetensorsLocal). Checks the index against the shards."""
    model_dir = Path(model_dir)
    files = checkpoint_files(model_dir)
    if not files:
        raise SafetensorsError(f"{model_dir}: no model*.safetensors file found (pytorch_model.bin checkpoints "
                               f"need torch: save them as safetensors first)")
    tensors: dict[str, SafeTensor] = {}
    for f in files:
        part, _ = read_header(f)
        for name in sorted(part):
            if name in tensors:
                raise SafetensorsError(f"{f}: tensor {name!r} is also in {tensors[name].file.name}")
            tensors[name] = part[name]
    index = model_dir / INDEX_NAME
    if index.is_file():
        weight_map = _weight_map(index)
        missing = sorted(set(weight_map) - set(tensors))
        extra = sorted(set(tensors) - set(weight_map))
        if missing or extra:
            files_missing = sorted({weight_map[n] for n in missing})
            raise SafetensorsError(f"{index}: index and shards disagree; missing or incomplete files "
                                   f"{files_missing}, missing tensors {missing[:8]}, extra tensors {extra[:8]}")
        wrong = [n for n, t in tensors.items() if t.file.name != weight_map[n]]
        if wrong:
            raise SafetensorsError(f"{index}: tensor {wrong[0]!r} is in {tensors[wrong[0]].file.name}, "
                                   f"the index says {weight_map[wrong[0]]}")
    return tensors


def _dtype_of(arr: np.ndarray, bf16: bool) -> str:
    if bf16:
        return "BF16"
    for k, v in DTYPES.items():
        if k != "BF16" and arr.dtype.newbyteorder("<") == v.newbyteorder("<") and arr.dtype.kind == v.kind:
            return k
    raise SafetensorsError(f"cannot store numpy dtype {arr.dtype} in safetensors")


@dataclass(frozen=True)
class LazyTensor:
    """A tensor to write whose values are produced only when its turn comes (streaming writes)."""

    dtype: str                              # safetensors dtype string
    shape: tuple[int, ...]
    load: Callable[[], np.ndarray]          # -> array of that dtype (BF16: uint16 bits) and shape

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * DTYPES[self.dtype].itemsize


def _lazy(value, bf16: bool) -> LazyTensor:
    if isinstance(value, LazyTensor):
        return value
    arr = np.asarray(value)
    return LazyTensor(_dtype_of(arr, bf16), tuple(arr.shape), lambda: arr)


def write_safetensors(path, tensors: Mapping[str, "np.ndarray | LazyTensor"],
                      metadata: Mapping[str, str] | None = None, bf16: frozenset | set = frozenset()) -> None:
    """Write `tensors` (name -> array or LazyTensor) to `path` atomically, in name order, loading one
    tensor at a time. Array names in `bf16` hold uint16 bf16 bit patterns. The header is space-padded to a
    multiple of 8 bytes, as the reference writer does."""
    path = Path(path)
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    lazies = []
    for name in sorted(tensors):
        t = _lazy(tensors[name], name in bf16)
        header[name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
        lazies.append((name, t))
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    fd, tmp = open_temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(head)) + head)
            for name, t in lazies:
                arr = np.ascontiguousarray(t.load())
                if arr.nbytes != t.nbytes or arr.dtype.itemsize != DTYPES[t.dtype].itemsize:
                    raise SafetensorsError(f"{path}: tensor {name!r} produced {arr.dtype} x {list(arr.shape)}, "
                                           f"declared {t.dtype} x {list(t.shape)}")
                f.write(arr.astype(arr.dtype.newbyteorder("<"), copy=False).view(np.uint8).reshape(-1).data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_sharded(model_dir, tensors: Mapping[str, "np.ndarray | LazyTensor"], max_shard_bytes: int,
                  metadata: Mapping[str, str] | None = None, bf16: frozenset | set = frozenset()) -> list[Path]:
    """Write a checkpoint as model-0000N-of-0000M.safetensors shards of at most ~max_shard_bytes each plus
    model.safetensors.index.json (one file `model.safetensors` and no index when everything fits)."""
    model_dir = Path(model_dir)
    lazies = {n: _lazy(t, n in bf16) for n, t in tensors.items()}
    groups: list[list[str]] = [[]]
    size = 0
    for name in sorted(lazies):
        nbytes = lazies[name].nbytes
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    if len(groups) == 1:
        out = model_dir / "model.safetensors"
        write_safetensors(out, lazies, metadata)
        return [out]
    paths, weight_map = [], {}
    total = sum(t.nbytes for t in lazies.values())
    for i, names in enumerate(groups):
        out = model_dir / f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        write_safetensors(out, {n: lazies[n] for n in names}, metadata)
        weight_map.update({n: out.name for n in names})
        paths.append(out)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (model_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return paths
