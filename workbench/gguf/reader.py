"""GGUF reader: memory-mapped, validated like llama.cpp's `gguf_init_from_file_impl`, zero-copy tensor views.

Layout (all little-endian): magic "GGUF", u32 version, u64 n_tensors, u64 n_kv, n_kv key/value pairs,
n_tensors tensor infos (name, u32 n_dims, u64 ne[n_dims], u32 type, u64 offset), padding to the alignment,
then the data section where each tensor starts at its offset and is padded to the alignment.
GGUF v1 used u32 for counts, string lengths, array lengths and dims.
Metadata values and their GGUF types (infer_value_type, which the writer uses too) live here.
"""
from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Iterator, Union

import numpy as np

from workbench.gguf.constants import (
    GGML_BLOCK_SIZES, GGML_MAX_DIMS, GGML_MAX_NAME, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_READ_VERSIONS,
    PLAIN_DTYPES, VALUE_DTYPES, GGMLType, GGUFValueType, Keys,
)

MAX_ARRAY_DEPTH = 8  # nested arrays deeper than this are refused (guards the recursion)

# A value type: a scalar GGUFValueType, or (ARRAY, element type) where the element type of an array of
# arrays is a list with one type per element (each inner array carries its own element type).
ValueTypeSpec = Union[GGUFValueType, tuple]


class GGUFError(ValueError):
    """A GGUF file (or data to write) violates the format; the message names the offset and the field."""


_NUMPY_TO_VALUE = {np.dtype(v).str: k for k, v in VALUE_DTYPES.items() if k != GGUFValueType.BOOL}


def infer_value_type(value: Any) -> ValueTypeSpec:
    """The GGUF type a Python value is written as when none is given (gguf-py's conventions)."""
    if isinstance(value, (bool, np.bool_)):
        return GGUFValueType.BOOL
    if isinstance(value, (int, np.integer)):
        if isinstance(value, np.integer):
            return _NUMPY_TO_VALUE[np.dtype(type(value)).newbyteorder("<").str]
        return GGUFValueType.INT32 if -2**31 <= value < 2**31 else GGUFValueType.INT64
    if isinstance(value, (float, np.floating)):
        if isinstance(value, np.floating):
            return _NUMPY_TO_VALUE[np.dtype(type(value)).newbyteorder("<").str]
        return GGUFValueType.FLOAT32
    if isinstance(value, str):
        return GGUFValueType.STRING
    if isinstance(value, np.ndarray):
        if value.dtype == bool:
            return (GGUFValueType.ARRAY, GGUFValueType.BOOL)
        try:
            return (GGUFValueType.ARRAY, _NUMPY_TO_VALUE[value.dtype.newbyteorder("<").str])
        except KeyError:
            raise GGUFError(f"cannot store a numpy array of dtype {value.dtype} in GGUF") from None
    if isinstance(value, (list, tuple)):
        if not value:
            return (GGUFValueType.ARRAY, GGUFValueType.INT32)
        specs = [infer_value_type(v) for v in value]
        if isinstance(specs[0], tuple):
            return (GGUFValueType.ARRAY, specs)
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
            lo, hi = min(value), max(value)
            return (GGUFValueType.ARRAY, GGUFValueType.INT32 if -2**31 <= lo and hi < 2**31 else GGUFValueType.INT64)
        if len(set(specs)) != 1:
            raise GGUFError(f"array mixes value types {sorted(set(s.name for s in specs))}")
        return (GGUFValueType.ARRAY, specs[0])
    raise GGUFError(f"cannot infer a GGUF type for {type(value).__name__}")


class Metadata(dict):
    """Ordered mapping key -> Python value, with `types[key]` giving the GGUF value type of each key.

    Scalars are int/float/bool/str; arrays of numbers are read-only numpy arrays (copied out of the file,
    so they outlive `GGUFFile.close`), arrays of strings are lists of str, arrays of arrays are lists.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.types: dict[str, ValueTypeSpec] = {}

    def set(self, key: str, value: Any, vtype: ValueTypeSpec | None = None) -> None:
        """Set a key with an explicit (or inferred) value type; keeps the key's position if it exists."""
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

    def release(self, t: TensorInfo, start: int = 0, stop: int | None = None) -> None:
        """Drop bytes [start, stop) of tensor t's data from this process's resident memory (the pages stay in
        the OS file cache and fault back in if read again): a streaming reader's peak RSS stays one piece of
        one tensor instead of the whole file. A no-op for in-memory data."""
        buf = self._buffer
        if not isinstance(buf, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED"):
            return
        stop = t.nbytes if stop is None else min(stop, t.nbytes)
        lo = self.data_offset + t.offset + start
        hi = self.data_offset + t.offset + stop
        lo -= lo % mmap.PAGESIZE                    # whole pages; a neighbour's page only refaults
        hi = min(len(buf), -(-hi // mmap.PAGESIZE) * mmap.PAGESIZE)
        if hi > lo:
            buf.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

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
    """Bounded little-endian reads; every overrun becomes a GGUFError naming the field and offset.

    Nothing read here keeps a view of `buf`: scalars are unpacked, strings and numeric arrays copied out.
    A view would hold the memory map exported, and a GGUFError raised later could not close it
    (`BufferError: cannot close exported pointers exist`); the copies cost ~0.2 MB for a 49k-token vocab.
    Strings come back as raw bytes, decoded by `_parse` only once the whole file has been validated: one
    corrupt length can make a "string" of most of the file, and decoding 60 MB of tensor data as UTF-8
    takes ~1 s, while copying it and failing at the garbage that follows takes milliseconds.
    """

    def __init__(self, buf, version: int = 3):
        self.buf = buf
        self.size = len(buf)
        self.pos = 0
        self.version = version
        self.field = "magic"             # the field being read, for errors raised outside this class

    def need(self, n: int, what: str) -> int:
        self.field = what
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

    def string(self, what: str) -> bytes:
        """A string's raw bytes (see the class docstring on when they are decoded)."""
        at = self.pos
        n = self.count(f"{what} length")
        if n > self.size - self.pos:
            raise GGUFError(f"offset {at}: {what} length {n} exceeds the {self.size - self.pos} bytes remaining")
        start = self.need(n, what)
        return bytes(self.buf[start:start + n])

    def strings(self, n: int, what: str) -> list[bytes]:
        """`n` strings in a row: `string` without a method call and an f-string per item, because the
        token and merge lists hold ~100k strings (~3x faster); any overrun goes to `string` for its error."""
        self.field = what
        length = struct.Struct("<I" if self.version == 1 else "<Q")
        unpack, width = length.unpack_from, length.size
        buf, size, pos = self.buf, self.size, self.pos
        out = []
        for i in range(n):
            if pos + width <= size:
                end = pos + width + unpack(buf, pos)[0]
                if end <= size:
                    out.append(bytes(buf[pos + width:end]))
                    pos = end
                    continue
            self.pos = pos
            self.string(f"{what}[{i}]")  # raises the GGUFError naming this item
        self.pos = pos
        return out

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
        v = np.frombuffer(self.buf[start:start + dt.itemsize], dtype=dt)[0]
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
        # the least bytes an element takes bounds n by the bytes left, so a corrupt length fails here and
        # never drives a huge allocation: a string is its length, an inner array its type and length
        width = 4 if self.version == 1 else 8
        min_elem = {GGUFValueType.STRING: width, GGUFValueType.ARRAY: 4 + width}.get(etype)
        if min_elem is None:
            min_elem = VALUE_DTYPES[etype].itemsize
        if n > remain // min_elem:
            raise GGUFError(f"offset {at}: {what} array length {n} exceeds the {remain} bytes remaining")
        if etype == GGUFValueType.STRING:
            return self.strings(n, what), (GGUFValueType.ARRAY, etype)
        if etype == GGUFValueType.ARRAY:
            items, specs = [], []
            for i in range(n):
                v, spec = self.array(f"{what}[{i}]", depth + 1)
                items.append(v)
                specs.append(spec)
            return items, (GGUFValueType.ARRAY, specs)
        dt = VALUE_DTYPES[etype]
        start = self.need(n * dt.itemsize, what)
        # slicing an mmap copies (bytes); frombuffer over those bytes gives a read-only array
        arr = np.frombuffer(bytes(self.buf[start:start + n * dt.itemsize]), dtype=dt)
        if etype == GGUFValueType.BOOL:
            arr = arr.astype(bool)
            arr.flags.writeable = False
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


# Exceptions that corrupt bytes can still raise from the numpy/struct/enum calls below in ways the checks do
# not foresee; read_gguf reports them as a GGUFError at the cursor's offset rather than letting them escape.
_CORRUPTION_ERRORS = (ValueError, ArithmeticError, LookupError, struct.error, MemoryError)


def read_gguf(source) -> GGUFFile:
    """Read a GGUF file (path, or bytes for in-memory data). Raises GGUFError on any format violation.

    After a failed read nothing of the file stays mapped: the header is parsed without keeping views of the
    map, and tensor views are made only once the whole file has been validated.
    """
    buf, path = _open_buffer(source)
    cur = _Cursor(buf)
    try:
        return _parse(cur, path)
    except BaseException as e:
        if isinstance(buf, mmap.mmap):
            buf.close()
        if isinstance(e, GGUFError):
            if path and path not in str(e):
                raise GGUFError(f"{path}: {e}") from None
            raise
        if isinstance(e, _CORRUPTION_ERRORS):
            where = f"{path}: " if path else ""
            raise GGUFError(f"{where}offset {cur.pos}: cannot read {cur.field} "
                            f"({type(e).__name__}: {e})") from e
        raise


def _text(raw: bytes) -> str:
    # surrogateescape keeps invalid UTF-8 bytes so that a re-write is byte-identical
    return raw.decode("utf-8", errors="surrogateescape")


def _shown(raw: bytes) -> str:
    """A key or name as an error message quotes it: decoded, at most 80 bytes of it."""
    return repr(raw[:80].decode("utf-8", errors="replace"))


def _decoded(value, spec: ValueTypeSpec):
    """A value read by _Cursor with its strings (raw bytes) decoded to str."""
    if spec == GGUFValueType.STRING:
        return _text(value)
    if isinstance(spec, tuple):
        elem = spec[1]
        if elem == GGUFValueType.STRING:
            return [_text(v) for v in value]
        if isinstance(elem, list):
            return [_decoded(v, s) for v, s in zip(value, elem)]
    return value


def _parse(cur: _Cursor, path: str | None) -> GGUFFile:
    buf = cur.buf
    start = cur.need(4, "magic")
    magic = bytes(buf[start:start + 4])
    if magic != GGUF_MAGIC:
        raise GGUFError(f"offset 0: bad magic {magic!r}, expected {GGUF_MAGIC!r} (not a GGUF file)")
    version = cur.u32("version")
    if version not in GGUF_READ_VERSIONS:
        hint = " (byte order mismatch?)" if version & 0xFFFF == 0 else ""
        raise GGUFError(f"offset 4: unsupported GGUF version {version}{hint}; supported: {GGUF_READ_VERSIONS}")
    cur.version = version
    at_n_tensors = cur.pos
    n_tensors = cur.count("tensor count")
    at_n_kv = cur.pos
    n_kv = cur.count("metadata key/value count")
    # every KV takes >= 8+1 (key) + 4 (type) + 1 bytes, every tensor info >= 8+1+4+4+8 bytes
    if n_kv > (cur.size - cur.pos) // 14:
        raise GGUFError(f"offset {at_n_kv}: metadata count {n_kv} cannot fit in a file of {cur.size} bytes")
    if n_tensors > (cur.size - cur.pos) // 25:
        raise GGUFError(f"offset {at_n_tensors}: tensor count {n_tensors} cannot fit in a file of {cur.size} bytes")

    kvs: dict[bytes, tuple] = {}         # raw key -> (value with raw strings, type spec, file offset)
    for i in range(n_kv):
        at = cur.pos
        k = cur.string(f"metadata key #{i}")
        if not k:
            raise GGUFError(f"offset {at}: metadata key #{i} is empty")
        if k in kvs:
            raise GGUFError(f"offset {at}: duplicate metadata key {_shown(k)}")
        vtype = cur.value_type(f"type of {_shown(k)}")
        value, spec = cur.value(vtype, f"value of {_shown(k)}")
        kvs[k] = value, spec, at

    alignment = GGUF_DEFAULT_ALIGNMENT
    if Keys.General.ALIGNMENT.encode() in kvs:
        alignment, spec, at = kvs[Keys.General.ALIGNMENT.encode()]
        if spec != GGUFValueType.UINT32:
            raise GGUFError(f"offset {at}: {Keys.General.ALIGNMENT} must be UINT32, not {spec!r}")
        if alignment == 0 or alignment & (alignment - 1):
            raise GGUFError(f"offset {at}: {Keys.General.ALIGNMENT} = {alignment} is not a power of two")

    tensors: list[TensorInfo] = []
    offset_at: list[int] = []            # file offset of each tensor's data-offset field, for errors
    seen: set[str] = set()
    for i in range(n_tensors):
        at = cur.pos
        raw_name = cur.string(f"tensor #{i} name")
        if len(raw_name) >= GGML_MAX_NAME:
            raise GGUFError(f"offset {at}: tensor name {_shown(raw_name)} is longer than {GGML_MAX_NAME - 1} bytes")
        name = _text(raw_name)
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
        offset_at.append(cur.pos)
        offset = cur.u64(f"data offset of {name!r}")
        tensors.append(TensorInfo(name=name, type=gtype, shape=tuple(reversed(ne)), offset=offset))

    data_offset = cur.pos
    if n_tensors:
        data_offset = -(-cur.pos // alignment) * alignment
    expected = 0
    for t, at in zip(tensors, offset_at):
        if t.offset != expected:
            raise GGUFError(f"offset {at}: tensor {t.name!r} has data offset {t.offset}, expected {expected} "
                            f"(offsets must be the running sum of padded sizes)")
        nbytes = t.nbytes
        if data_offset + t.offset + nbytes > cur.size:
            raise GGUFError(f"offset {data_offset + t.offset}: data of tensor {t.name!r} ({nbytes} bytes) "
                            f"runs past the end of the file ({cur.size} bytes)")
        expected += -(-nbytes // alignment) * alignment
    # only now, with every check passed, decode the strings and hand out the zero-copy tensor views (see
    # _Cursor on why not earlier)
    metadata = Metadata()
    for k, (value, spec, _) in kvs.items():
        metadata[_text(k)] = _decoded(value, spec)
        metadata.types[_text(k)] = spec
    for t in tensors:
        t.data = np.frombuffer(buf, dtype=np.uint8, count=t.nbytes, offset=data_offset + t.offset)

    return GGUFFile(metadata=metadata, tensors=tensors, version=version, alignment=alignment,
                    data_offset=data_offset, path=path, _buffer=buf)
