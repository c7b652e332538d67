"""Fuzzing the reader: truncations at every byte of the header and metadata, and random byte flips,
must give a parsed file or a GGUFError, never another exception, a hang or a huge allocation."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from workbench.gguf import GGMLType, GGUFError, GGUFValueType as VT, TensorInfo, new_metadata, read_gguf, write_gguf
from workbench.gguf.writer import encode_kv


def small_valid_file(tmp_path) -> bytes:
    md = new_metadata([
        ("general.architecture", "llama", VT.STRING), ("n.u32", 7, VT.UINT32), ("n.i64", -3, VT.INT64),
        ("n.f64", 0.5, VT.FLOAT64), ("n.b", True, VT.BOOL),
        ("arr.s", ["ab", "c", ""], (VT.ARRAY, VT.STRING)),
        ("arr.f", np.arange(6, dtype=np.float32), (VT.ARRAY, VT.FLOAT32)),
        ("arr.n", [np.array([1, 2], np.int16), ["z"]], (VT.ARRAY, [(VT.ARRAY, VT.INT16), (VT.ARRAY, VT.STRING)])),
    ])
    tensors = [TensorInfo("w", GGMLType.F16, (2, 4), data=np.ones((2, 4), np.float16)),
               TensorInfo("q", GGMLType.Q8_0, (1, 32), data=np.zeros(34, np.uint8)),
               TensorInfo("b", GGMLType.F32, (3,), data=np.zeros(3, np.float32))]
    path = tmp_path / "small.gguf"
    write_gguf(path, md, tensors)
    return path.read_bytes()


def parse_or_gguf_error(data: bytes) -> bool:
    try:
        read_gguf(data)
        return True
    except GGUFError:
        return False


def test_ten_thousand_fuzzed_inputs(tmp_path):
    base = small_valid_file(tmp_path)
    assert parse_or_gguf_error(base)
    rng = np.random.default_rng(1234)
    inputs = [base[:n] for n in range(len(base))]          # every truncation (covers every region boundary)
    while len(inputs) < 10_000:
        buf = bytearray(base)
        for _ in range(int(rng.integers(1, 5))):
            pos = int(rng.integers(0, len(buf)))
            if rng.random() < 0.5:
                buf[pos] ^= 1 << int(rng.integers(0, 8))     # single bit flip
            else:
                buf[pos] = int(rng.integers(0, 256))        # random byte
        inputs.append(bytes(buf))
    t0 = time.perf_counter()
    outcomes = [parse_or_gguf_error(b) for b in inputs]      # any other exception fails the test
    elapsed = time.perf_counter() - t0
    assert len(outcomes) == 10_000
    gf = read_gguf(base)
    data_end = gf.data_offset + gf.tensors[-1].offset + gf.tensors[-1].nbytes
    # like llama.cpp's loader, only the trailing padding after the last tensor's data may be missing
    assert not any(outcomes[:data_end]), "every truncation into the header or the data must be rejected"
    assert all(outcomes[data_end:len(base)])
    assert elapsed < 60, f"fuzzing took {elapsed:.1f}s"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=0, max_size=256))
def test_random_bytes_after_magic(data):
    parse_or_gguf_error(b"GGUF\x03\x00\x00\x00" + data)


@settings(max_examples=300, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8))
def test_hypothesis_byte_edits(edits, tmp_path_factory):
    base = small_valid_file(tmp_path_factory.mktemp("fz"))
    buf = bytearray(base)
    for pos, val in edits:
        buf[pos % len(buf)] = val
    parse_or_gguf_error(bytes(buf))


# ------------------------------------------------------------------ the real default model, read from disk
# The small file above is parsed from bytes; these read corrupted copies of SmolLM2 through the memory map,
# where a failed read must also release the map (it once raised BufferError when a GGUFError came after
# the token_type array, a numpy view of the map). 340 cuts + 150 edits, ~15 s on 2 cores.

MAX_SECONDS = 1.0  # CPU time per read: no hot loop or huge allocation, whatever else the machine runs


def mappings_of(path) -> int:
    """How many memory mappings of `path` this process holds (Linux: /proc/self/maps)."""
    with open("/proc/self/maps") as f:
        return sum(line.rstrip("\n").endswith(str(path)) for line in f)


def read_outcome(path, label: str) -> bool:
    """True if `path` parses, False on GGUFError; anything else, a slow read or a leftover map fails."""
    t0 = time.process_time()
    try:
        read_gguf(path).close()
        ok = True
    except GGUFError as e:
        assert str(path) in str(e), f"{label}: the message does not name the file: {e}"
        assert "offset " in str(e), f"{label}: the message has no file offset: {e}"
        ok = False
    except Exception as e:  # noqa: BLE001 - the point of the test
        pytest.fail(f"{label}: {type(e).__name__} escaped: {e}")
    took = time.process_time() - t0
    assert took < MAX_SECONDS, f"{label}: the read took {took:.2f} s of CPU"
    assert mappings_of(path) == 0, f"{label}: {'read' if ok else 'failed read'} left {path} mapped"
    return ok


@pytest.fixture(scope="module")
def smol_layout(smollm2_path):
    """Byte ranges of each KV and each tensor info of the real file, found without the reader's cursor: the
    file was written by llama.cpp, whose layout `encode_kv` reproduces (checked byte for byte here)."""
    if not os.path.exists("/proc/self/maps"):
        pytest.skip("counting the memory mappings left after a failed read needs Linux's /proc/self/maps")
    with read_gguf(smollm2_path) as gf:
        head = Path(smollm2_path).read_bytes()[:gf.data_offset]
        pos, kvs, infos = 24, [], []
        for k, v in gf.metadata.items():
            raw = encode_kv(k, v, gf.metadata.types[k])
            assert head[pos:pos + len(raw)] == raw, f"KV {k!r} at {pos} is not where expected"
            kvs.append((k, pos, pos + 8 + len(k.encode()), pos + len(raw)))  # start, key end, end
            pos += len(raw)
        for t in gf.tensors:
            n = 8 + len(t.name.encode()) + 4 + 8 * len(t.shape) + 4 + 8
            assert head[pos + 8:pos + 8 + len(t.name)] == t.name.encode()
            infos.append((t.name, pos, pos + n))
            pos += n
        assert -(-pos // gf.alignment) * gf.alignment == gf.data_offset
        last = gf.tensors[-1]
        return SimpleNamespace(kvs=kvs, infos=infos, infos_end=pos, data_offset=gf.data_offset,
                               first_nbytes=gf.tensors[0].nbytes, data_end=gf.data_offset + last.offset + last.nbytes)


def truncation_points(lay) -> dict[int, str]:
    """File length -> what the cut falls in: the header, each KV (start, inside the key, before and inside
    the value, its last byte; more points inside the big token arrays), tensor infos, the data start."""
    points = {n: "header" for n in (0, 1, 3, 4, 6, 8, 12, 16, 20, 23)}
    for key, start, key_end, end in lay.kvs:
        for n, where in ((start, "start"), (start + 5, "key length"), (key_end - 1, "key"), (key_end + 2, "type"),
                         (key_end + 4, "value start"), ((key_end + 4 + end) // 2, "value"), (end - 1, "last byte")):
            points.setdefault(n, f"KV {key!r} {where}")
        if end - start > 65536:  # tokens, token_type, merges
            for j in range(1, 16):
                points.setdefault(start + (end - start) * j // 16, f"KV {key!r} inside ({j}/16)")
    for name, start, end in lay.infos[::16] + lay.infos[-1:]:
        for n, where in ((start, "start"), ((start + end) // 2, "inside"), (end - 1, "last byte")):
            points.setdefault(n, f"tensor info {name!r} {where}")
    points.update({lay.infos_end: "end of tensor infos", lay.data_offset - 1: "alignment padding",
                   lay.data_offset: "data start", lay.data_offset + 1: "data start + 1",
                   lay.data_offset + lay.first_nbytes // 2: "inside the first tensor",
                   lay.data_end - 1: "last byte of data"})
    return points


def test_real_model_truncated_in_every_region(smollm2_path, smol_layout, tmp_path):
    path = tmp_path / "smol.gguf"
    shutil.copyfile(smollm2_path, path)
    points = truncation_points(smol_layout)
    assert len(points) > 250
    for n in sorted(points, reverse=True):  # cut one copy shorter and shorter
        os.truncate(path, n)
        assert not read_outcome(path, f"truncated to {n} bytes ({points[n]})"), f"{points[n]}: cut accepted"


def test_real_model_byte_flips_in_the_first_2mb(smollm2_path, smol_layout, tmp_path):
    path = tmp_path / "smol.gguf"
    shutil.copyfile(smollm2_path, path)
    original = Path(smollm2_path).read_bytes()[:2 << 20]
    rng = np.random.default_rng(2024)
    outcomes, data_only = [], 0
    with open(path, "r+b") as f:
        for _ in range(150):
            edits = {int(p): int(rng.integers(0, 256)) for p in rng.integers(0, len(original), rng.integers(1, 5))}
            for p, v in edits.items():
                f.seek(p)
                f.write(bytes([v]))
            f.flush()
            ok = read_outcome(path, f"bytes changed {edits}")
            if min(edits) >= smol_layout.data_offset:
                assert ok, f"changing only tensor data ({edits}) must not fail the read"
                data_only += 1
            outcomes.append(ok)
            for p in edits:  # restore
                f.seek(p)
                f.write(original[p:p + 1])
    assert data_only and 0 < sum(outcomes) < len(outcomes)  # harmless edits and rejected ones were seen
