"""GGUF reader: memory-mapped, validated like llama.cpp's `gguf_init_from_file_impl`, zero-copy tensor views.

Layout (all little-endian): magic "GGUF", u32 version, u64 n_tensors, u64 n_kv, n_kv key/value pairs,
n_tensors tensor infos (name, u32 n_dims, u64 ne[n_dims], u32 type, u64 offset), padding to the alignment,
then the data section where each tensor starts at its offset and is padded to the alignment.
GGUF v1 used u32 for counts, string lengths, array lengths and dims.
"""
from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Iterator, Union

import numpy as np

from .constants import (
    GGML_BLOCK_SIZES, GGML_MAX_DIMS, GGML_MAX_NAME, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_READ_VERSIONS,
    PLAIN_DTYPES, VALUE_DTYPES, GGMLType, GGUFValueType, Keys,
)

MAX_ARRAY_DEPTH = 8  # nested arrays deeper than this are refused (guards the recursion)

# A value type: a scalar GGUFValueType, or (ARRAY, element type) where the element type of an array of
# arrays is a list with one type per element (each inner array carries its own element type).
ValueTypeSpec = Union[GGUFValueType, tuple]


class GGUFError(ValueError):
    """A GGUF file (or data to write) violates the format; the message names the offset and the field."""


class Metadata(dict):
    """Ordered mapping key -> Python value, with `types[key]` giving the GGUF value type of each key.

    Scalars are int/float/bool/str; arrays of numbers are read-only numpy arrays (zero-copy views of the
    file), arrays of strings are lists of str, arrays of arrays are lists.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.types: dict[str, ValueTypeSpec] = {}

    def set(self, key: str, value: Any, vtype: ValueTypeSpec | None = None) -> None:
        """Set a key with an explicit (or inferred) value type; keeps the key's position if it exists."""
        from .writer import infer_value_type  # local: the writer owns type inference

        self[key] = value
        self.types[key] = vtype if vtype is not None else infer_value_type(value)

    def __delitem__(self, key):
        super().__delitem__(key)
        self.types.pop(key, None)

    def copy(self) -> "Metadata":
        out = Metadata(self)
        out.types = dict(self.types)
        return out


@dataclass
class TensorInfo:
    """One tensor: `shape` in numpy order (ggml's ne reversed), `data` the raw bytes (uint8 view)."""

    name: str
    type: GGMLType
    shape: tuple[int, ...]
    offset: int = 0                      # relative to the start of the data section
    data: Any = field(default=None, repr=False)

    @property
    def ne(self) -> tuple[int, ...]:
        """ggml's dims (fastest first)."""
        return tuple(reversed(self.shape))

    @property
    def n_elements(self) -> int:
        return math.prod(int(d) for d in self.shape)

    @property
    def nbytes(self) -> int:
        return self.type.nbytes(self.shape)

    @property
    def n_per_row(self) -> int:
        return self.shape[-1] if self.shape else 1

    def rows(self) -> np.ndarray:
        """Raw bytes as (n_rows, row_bytes): the input of `workbench.quant.dequantize`."""
        row_bytes = self.type.row_bytes(self.n_per_row)
        return np.asarray(self.data).reshape(-1, row_bytes)

    def numpy(self) -> np.ndarray:
        """Typed view for unblocked types (F32, F16, I32, ...) in numpy shape; BF16 as raw uint16 bits."""
        if self.type not in PLAIN_DTYPES:
            raise TypeError(f"tensor {self.name!r} is {self.type.name}: dequantize it with workbench.quant")
        return np.asarray(self.data).view(PLAIN_DTYPES[self.type]).reshape(self.shape)


@dataclass
class GGUFFile:
    """What `read_gguf` returns and `write_gguf` writes."""

    metadata: Metadata
    tensors: list[TensorInfo]
    version: int = 3
    alignment: int = GGUF_DEFAULT_ALIGNMENT
    data_offset: int = 0                 # absolute file offset of the data section
    path: str | None = None
    _buffer: Any = field(default=None, repr=False)

    def tensor(self, name: str) -> TensorInfo:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(f"no tensor named {name!r} in {self.path or 'GGUF file'}")

    def __contains__(self, name: str) -> bool:
        return any(t.name == name for t in self.tensors)

    def __iter__(self) -> Iterator[TensorInfo]:
        return iter(self.tensors)

    @property
    def architecture(self) -> str | None:
        return self.metadata.get(Keys.General.ARCHITECTURE)

    def close(self) -> None:
        """Release the memory map (views handed out earlier must be dropped first)."""
        buf, self._buffer = self._buffer, None
        if isinstance(buf, mmap.mmap):
            for t in self.tensors:
                t.data = None
            try:
                buf.close()
            except BufferError:
                pass  # a view is still alive; the map is released when it is

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Cursor:
    """Bounded little-endian reads; every overrun becomes a GGUFError naming the field and offset."""

    def __init__(self, buf, version: int = 3):
        self.buf = buf
        self.size = len(buf)
        self.pos = 0
        self.version = version

    def need(self, n: int, what: str) -> int:
        if n < 0 or self.pos + n > self.size:
            raise GGUFError(f"offset {self.pos}: {what} needs {n} bytes but only {self.size - self.pos} remain")
        start = self.pos
        self.pos += n
        return start

    def scalar(self, fmt: str, what: str):
        start = self.need(struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.buf, start)[0]

    def u32(self, what: str) -> int:
        return self.scalar("<I", what)

    def u64(self, what: str) -> int:
        return self.scalar("<Q", what)

    def count(self, what: str) -> int:
        """A count or length: u32 in GGUF v1, u64 since v2."""
        return self.u32(what) if self.version == 1 else self.u64(what)

    def string(self, what: str) -> str:
        at = self.pos
        n = self.count(f"{what} length")
        if n > self.size - self.pos:
            raise GGUFError(f"offset {at}: {what} length {n} exceeds the {self.size - self.pos} bytes remaining")
        start = self.need(n, what)
        # surrogateescape keeps invalid UTF-8 bytes so that a re-write is byte-identical
        return bytes(self.buf[start:start + n]).decode("utf-8", errors="surrogateescape")

    def value_type(self, what: str) -> GGUFValueType:
        at = self.pos
        raw = self.u32(what)
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise GGUFError(f"offset {at}: {what} has invalid GGUF value type {raw}") from None

    def value(self, vtype: GGUFValueType, what: str, depth: int = 0):
        """Read one value of `vtype`; returns (value, type spec)."""
        if vtype == GGUFValueType.STRING:
            return self.string(what), vtype
        if vtype == GGUFValueType.ARRAY:
            return self.array(what, depth + 1)
        dt = VALUE_DTYPES[vtype]
        start = self.need(dt.itemsize, what)
        v = np.frombuffer(self.buf, dtype=dt, count=1, offset=start)[0]
        if vtype == GGUFValueType.BOOL:
            return bool(v), vtype
        return (float(v) if dt.kind == "f" else int(v)), vtype

    def array(self, what: str, depth: int):
        if depth > MAX_ARRAY_DEPTH:
            raise GGUFError(f"offset {self.pos}: {what} nests arrays deeper than {MAX_ARRAY_DEPTH}")
        etype = self.value_type(f"{what} element type")
        at = self.pos
        n = self.count(f"{what} array length")
        remain = self.size - self.pos
        min_elem = 8 if etype in (GGUFValueType.STRING, GGUFValueType.ARRAY) else VALUE_DTYPES[etype].itemsize
        if self.version == 1 and etype in (GGUFValueType.STRING, GGUFValueType.ARRAY):
            min_elem = 4
        if n > remain // min_elem:
            raise GGUFError(f"offset {at}: {what} array length {n} exceeds the {remain} bytes remaining")
        if etype == GGUFValueType.STRING:
            return [self.string(f"{what}[{i}]") for i in range(n)], (GGUFValueType.ARRAY, etype)
        if etype == GGUFValueType.ARRAY:
            items, specs = [], []
            for i in range(n):
                v, spec = self.array(f"{what}[{i}]", depth + 1)
                items.append(v)
                specs.append(spec)
            return items, (GGUFValueType.ARRAY, specs)
        dt = VALUE_DTYPES[etype]
        start = self.need(n * dt.itemsize, what)
        arr = np.frombuffer(self.buf, dtype=dt, count=n, offset=start)
        if etype == GGUFValueType.BOOL:
            arr = arr.astype(bool)
        return arr, (GGUFValueType.ARRAY, etype)


def _open_buffer(source) -> tuple[Any, str | None]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return memoryview(source).cast("B") if not isinstance(source, bytes) else source, None
    path = os.fspath(source)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise GGUFError(f"offset 0: {path} is empty (no GGUF magic)")
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), path
    except FileNotFoundError:
        raise FileNotFoundError(f"GGUF file not found: {path}") from None


def read_gguf(source) -> GGUFFile:
    """Read a GGUF file (path, or bytes for in-memory data). Raises GGUFError on any format violation."""
    buf, path = _open_buffer(source)
    try:
        return _parse(buf, path)
    except GGUFError as e:
        if isinstance(buf, mmap.mmap):
            buf.close()
        if path and path not in str(e):
            raise GGUFError(f"{path}: {e}") from None
        raise


def _parse(buf, path: str | None) -> GGUFFile:
    cur = _Cursor(buf)
    start = cur.need(4, "magic")
    magic = bytes(buf[start:start + 4])
    if magic != GGUF_MAGIC:
        raise GGUFError(f"offset 0: bad magic {magic!r}, expected {GGUF_MAGIC!r} (not a GGUF file)")
    version = cur.u32("version")
    if version not in GGUF_READ_VERSIONS:
        hint = " (byte order mismatch?)" if version & 0xFFFF == 0 else ""
        raise GGUFError(f"offset 4: unsupported GGUF version {version}{hint}; supported: {GGUF_READ_VERSIONS}")
    cur.version = version
    n_tensors = cur.count("tensor count")
    n_kv = cur.count("metadata key/value count")
    # every KV takes >= 8+1 (key) + 4 (type) + 1 bytes, every tensor info >= 8+1+4+4+8 bytes
    if n_kv > (cur.size - cur.pos) // 14:
        raise GGUFError(f"offset 16: metadata count {n_kv} cannot fit in a file of {cur.size} bytes")
    if n_tensors > (cur.size - cur.pos) // 25:
        raise GGUFError(f"offset 8: tensor count {n_tensors} cannot fit in a file of {cur.size} bytes")

    metadata = Metadata()
    for i in range(n_kv):
        at = cur.pos
        k = cur.string(f"metadata key #{i}")
        if not k:
            raise GGUFError(f"offset {at}: metadata key #{i} is empty")
        if k in metadata:
            raise GGUFError(f"offset {at}: duplicate metadata key {k!r}")
        vtype = cur.value_type(f"type of {k!r}")
        value, spec = cur.value(vtype, f"value of {k!r}")
        metadata[k] = value
        metadata.types[k] = spec

    alignment = GGUF_DEFAULT_ALIGNMENT
    if Keys.General.ALIGNMENT in metadata:
        if metadata.types[Keys.General.ALIGNMENT] != GGUFValueType.UINT32:
            raise GGUFError(f"{Keys.General.ALIGNMENT} must be UINT32, not {metadata.types[Keys.General.ALIGNMENT]!r}")
        alignment = metadata[Keys.General.ALIGNMENT]
        if alignment == 0 or alignment & (alignment - 1):
            raise GGUFError(f"{Keys.General.ALIGNMENT} = {alignment} is not a power of two")

    tensors: list[TensorInfo] = []
    seen: set[str] = set()
    for i in range(n_tensors):
        at = cur.pos
        name = cur.string(f"tensor #{i} name")
        if len(name.encode("utf-8", errors="surrogateescape")) >= GGML_MAX_NAME:
            raise GGUFError(f"offset {at}: tensor name {name[:80]!r} is longer than {GGML_MAX_NAME - 1} bytes")
        if name in seen:
            raise GGUFError(f"offset {at}: duplicate tensor name {name!r}")
        seen.add(name)
        at = cur.pos
        n_dims = cur.u32(f"n_dims of {name!r}")
        if n_dims > GGML_MAX_DIMS:
            raise GGUFError(f"offset {at}: tensor {name!r} has {n_dims} dims, more than {GGML_MAX_DIMS}")
        ne = [cur.count(f"dim {j} of {name!r}") for j in range(n_dims)]
        if any(d >= 2**63 for d in ne):
            raise GGUFError(f"offset {at}: tensor {name!r} has a negative dimension {ne}")
        n_el = 1
        for d in ne:
            n_el *= d
        if n_el >= 2**63:
            raise GGUFError(f"offset {at}: tensor {name!r} shape {ne} overflows")
        at = cur.pos
        raw_type = cur.u32(f"type of {name!r}")
        try:
            gtype = GGMLType(raw_type)
        except ValueError:
            raise GGUFError(f"offset {at}: tensor {name!r} has unknown ggml type {raw_type}") from None
        blck = GGML_BLOCK_SIZES[gtype][0]
        if ne and ne[0] % blck:
            raise GGUFError(f"offset {at}: tensor {name!r} of type {gtype.name} has {ne[0]} elements per row, "
                            f"not a multiple of the block size {blck}")
        offset = cur.u64(f"data offset of {name!r}")
        tensors.append(TensorInfo(name=name, type=gtype, shape=tuple(reversed(ne)), offset=offset))

    data_offset = cur.pos
    if n_tensors:
        data_offset = -(-cur.pos // alignment) * alignment
    expected = 0
    for t in tensors:
        if t.offset != expected:
            raise GGUFError(f"tensor {t.name!r} has data offset {t.offset}, expected {expected} "
                            f"(offsets must be the running sum of padded sizes)")
        nbytes = t.nbytes
        if data_offset + t.offset + nbytes > cur.size:
            raise GGUFError(f"offset {data_offset + t.offset}: data of tensor {t.name!r} ({nbytes} bytes) "
                            f"runs past the end of the file ({cur.size} bytes)")
        t.data = np.frombuffer(buf, dtype=np.uint8, count=nbytes, offset=data_offset + t.offset)
        expected += -(-nbytes // alignment) * alignment

    return GGUFFile(metadata=metadata, tensors=tensors, version=version, alignment=alignment,
                    data_offset=data_offset, path=path, _buffer=buf)
