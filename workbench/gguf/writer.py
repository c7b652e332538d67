"""GGUF writer: the layout of ggml's `gguf_write_out`, streamed tensor by tensor, written atomically.

Phases are explicit (header+KV+tensor infos, then each tensor's data in declared order, then commit);
out-of-order calls are refused. The output goes to a temporary file in the destination folder that is
renamed over the destination only when every tensor has been written, so an interrupted or failed write
never leaves a partial file at the destination.
"""
from __future__ import annotations

import os
import secrets
import struct
from typing import Any, Iterable, Mapping

import numpy as np

from workbench.gguf.constants import (
    GGML_MAX_DIMS, GGML_MAX_NAME, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION, VALUE_DTYPES,
    GGMLType, GGUFValueType, Keys,
)
from workbench.gguf.reader import GGUFError, GGUFFile, Metadata, TensorInfo, ValueTypeSpec, infer_value_type


def open_temp_beside(path) -> tuple[int, str]:
    """(fd, name) of a new, empty file in `path`'s folder, to be renamed over `path` once it is complete.

    `tempfile.mkstemp` creates 0600, and that mode would survive the rename; this creates the file with
    mode 0666 and lets the kernel apply the umask (and any default ACL), as `open(path, "wb")` would, so
    the result has the permissions of a normally created file. No os.umask() round trip: that briefly sets
    the process-wide umask to 0, racing with files other threads create.
    """
    folder, name = os.path.split(os.path.abspath(path))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {path} in {folder}")


def _string(s: str) -> bytes:
    b = s.encode("utf-8", errors="surrogateescape")
    return struct.pack("<Q", len(b)) + b


def _encode_value(value: Any, spec: ValueTypeSpec, key: str) -> bytes:
    """Encode one value (without its type tag) of type `spec`."""
    if not isinstance(spec, tuple):
        spec = GGUFValueType(spec)
        if spec == GGUFValueType.STRING:
            if not isinstance(value, str):
                raise GGUFError(f"metadata {key!r}: STRING value is {type(value).__name__}")
            return _string(value)
        if spec == GGUFValueType.ARRAY:
            raise GGUFError(f"metadata {key!r}: ARRAY needs an element type")
        dt = VALUE_DTYPES[spec]
        if spec == GGUFValueType.BOOL:
            return b"\x01" if value else b"\x00"
        arr = np.asarray(value)
        if arr.ndim:
            raise GGUFError(f"metadata {key!r}: scalar {spec.name} expected, got shape {arr.shape}")
        if dt.kind in "iu" and not (np.iinfo(dt).min <= int(value) <= np.iinfo(dt).max):
            raise GGUFError(f"metadata {key!r}: {value} does not fit {spec.name}")
        return np.asarray(value, dtype=dt).tobytes()
    _, elem = spec
    n = len(value)
    if isinstance(elem, list):  # array of arrays: each element carries its own element type
        if len(elem) != n:
            raise GGUFError(f"metadata {key!r}: {n} nested arrays but {len(elem)} element types")
        return struct.pack("<IQ", GGUFValueType.ARRAY, n) + b"".join(
            _encode_value(v, s, key) for v, s in zip(value, elem))
    return struct.pack("<IQ", GGUFValueType(elem), n) + _encode_elements(value, elem, key)


def _encode_elements(value: Any, elem: GGUFValueType, key: str) -> bytes:
    elem = GGUFValueType(elem)
    if elem == GGUFValueType.STRING:
        return b"".join(_string(v) for v in value)
    if elem == GGUFValueType.BOOL:
        return np.asarray(value, dtype=bool).astype(np.uint8).tobytes()
    dt = VALUE_DTYPES[elem]
    arr = np.asarray(value)
    if arr.size and dt.kind in "iu" and arr.dtype.kind in "iub":
        if arr.min() < np.iinfo(dt).min or arr.max() > np.iinfo(dt).max:
            raise GGUFError(f"metadata {key!r}: array values do not fit {elem.name}")
    return np.ascontiguousarray(arr, dtype=dt).tobytes()


def encode_kv(key: str, value: Any, spec: ValueTypeSpec) -> bytes:
    """One key/value pair exactly as gguf.cpp writes it."""
    if isinstance(spec, tuple):
        return _string(key) + struct.pack("<I", GGUFValueType.ARRAY) + _encode_value(value, spec, key)
    return _string(key) + struct.pack("<I", GGUFValueType(spec)) + _encode_value(value, spec, key)


class GGUFWriter:
    """Streaming writer. Declare metadata and tensor infos up front, then give each tensor's bytes in order.

        with GGUFWriter(path, metadata, infos) as w:
            for info in infos:
                w.write_tensor(info.name, data)
    """

    def __init__(self, path, metadata: Mapping, tensors: Iterable[TensorInfo], alignment: int | None = None):
        self.path = os.fspath(path)
        self.metadata = metadata
        self.tensors = list(tensors)
        types = getattr(metadata, "types", {})
        if alignment is None:
            alignment = int(metadata.get(Keys.General.ALIGNMENT, GGUF_DEFAULT_ALIGNMENT))
        if alignment <= 0 or alignment & (alignment - 1):
            raise GGUFError(f"alignment {alignment} is not a power of two")
        self.alignment = alignment
        self._types = {k: (types[k] if k in types else infer_value_type(v)) for k, v in metadata.items()}
        if Keys.General.ALIGNMENT in metadata and self._types[Keys.General.ALIGNMENT] != GGUFValueType.UINT32:
            raise GGUFError(f"{Keys.General.ALIGNMENT} must be UINT32")
        self._check_tensors()
        self._next = 0
        self._file = None
        self._tmp = None

    def _check_tensors(self) -> None:
        seen = set()
        offset = 0
        self._offsets = []
        for t in self.tensors:
            gtype = GGMLType.parse(t.type)
            if t.name in seen:
                raise GGUFError(f"duplicate tensor name {t.name!r}")
            seen.add(t.name)
            if len(t.name.encode("utf-8", errors="surrogateescape")) >= GGML_MAX_NAME:
                raise GGUFError(f"tensor name {t.name!r} is longer than {GGML_MAX_NAME - 1} bytes")
            if len(t.shape) > GGML_MAX_DIMS:
                raise GGUFError(f"tensor {t.name!r} has {len(t.shape)} dims, more than {GGML_MAX_DIMS}")
            if t.shape and t.shape[-1] % gtype.block_size:
                raise GGUFError(f"tensor {t.name!r}: row of {t.shape[-1]} is not a multiple of the "
                                f"{gtype.name} block size {gtype.block_size}")
            self._offsets.append(offset)
            offset += self._pad(gtype.nbytes(t.shape))

    def _pad(self, n: int) -> int:
        return -(-n // self.alignment) * self.alignment

    def _header(self) -> bytes:
        parts = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(self.tensors), len(self.metadata))]
        for k, v in self.metadata.items():
            parts.append(encode_kv(k, v, self._types[k]))
        for t, off in zip(self.tensors, self._offsets):
            ne = tuple(reversed(t.shape))
            parts.append(_string(t.name) + struct.pack(f"<I{len(ne)}Q", len(ne), *ne)
                         + struct.pack("<IQ", GGMLType.parse(t.type), off))
        head = b"".join(parts)
        return head + b"\x00" * (self._pad(len(head)) - len(head))

    def __enter__(self) -> "GGUFWriter":
        fd, self._tmp = open_temp_beside(self.path)
        self._file = os.fdopen(fd, "wb")
        self._file.write(self._header())
        return self

    def write_tensor(self, name: str, data) -> None:
        """Write the next tensor's data (bytes-like or numpy array of exactly its size)."""
        if self._file is None:
            raise GGUFError("write_tensor called outside the writer's `with` block")
        if self._next >= len(self.tensors):
            raise GGUFError(f"tensor {name!r} written but all {len(self.tensors)} tensors are already written")
        t = self.tensors[self._next]
        if name != t.name:
            raise GGUFError(f"tensor {name!r} written out of order: expected {t.name!r}")
        raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1) if isinstance(data, np.ndarray) else memoryview(data).cast("B")
        want = GGMLType.parse(t.type).nbytes(t.shape)
        if len(raw) != want:
            raise GGUFError(f"tensor {name!r}: got {len(raw)} bytes, its type and shape need {want}")
        self._file.write(raw)
        self._file.write(b"\x00" * (self._pad(want) - want))
        self._next += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        f, self._file = self._file, None
        try:
            f.close()
            if exc_type is None and self._next != len(self.tensors):
                raise GGUFError(f"only {self._next} of {len(self.tensors)} tensors were written")
            if exc_type is None:
                os.replace(self._tmp, self.path)
        finally:
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)


def write_gguf(path, gguf: GGUFFile | Mapping, tensors: Iterable | None = None, alignment: int | None = None) -> None:
    """Write a GGUFFile, or metadata + tensors built in code, to `path` (atomically).

    Tensors are TensorInfo-like objects (name, type, shape, data); `data` may be bytes, a numpy array, or
    a zero-argument callable returning one, so that large models stream through one tensor at a time.
    """
    if isinstance(gguf, GGUFFile):
        metadata, tensors = gguf.metadata, gguf.tensors
        alignment = alignment or gguf.alignment
    else:
        metadata = gguf
        tensors = list(tensors or [])
    infos = [TensorInfo(name=t.name, type=GGMLType.parse(t.type), shape=tuple(int(d) for d in t.shape)) for t in tensors]
    with GGUFWriter(path, metadata, infos, alignment=alignment) as w:
        for t in tensors:
            data = t.data() if callable(t.data) else t.data
            w.write_tensor(t.name, data)


def new_metadata(items: Iterable[tuple] = ()) -> Metadata:
    """Metadata from (key, value) or (key, value, type) tuples."""
    md = Metadata()
    for item in items:
        md.set(*item)
    return md
