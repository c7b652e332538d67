"""Fuzzing the reader: truncations at every byte of the header and metadata, and random byte flips,
must give a parsed file or a GGUFError, never another exception, a hang or a huge allocation."""
from __future__ import annotations

import time

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from workbench.gguf import GGMLType, GGUFError, GGUFValueType as VT, TensorInfo, new_metadata, read_gguf, write_gguf


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
