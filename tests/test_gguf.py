"""GGUF reader/writer: agreement with the gguf package (llama.cpp's gguf-py), byte-exact round trips, validation."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from workbench.gguf import (
    GGMLType, GGUFError, GGUFValueType as VT, GGUFWriter, Metadata, TensorInfo, new_metadata, read_gguf, write_gguf,
)

gguf = pytest.importorskip("gguf")

SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def every_type_metadata() -> Metadata:
    """One key per value type, arrays of each, a nested array, empty and big arrays, 64-bit extremes."""
    md = new_metadata([
        ("general.architecture", "llama", VT.STRING),
        ("t.u8", 255, VT.UINT8), ("t.i8", -128, VT.INT8),
        ("t.u16", 65535, VT.UINT16), ("t.i16", -32768, VT.INT16),
        ("t.u32", 2**32 - 1, VT.UINT32), ("t.i32", -2**31, VT.INT32),
        ("t.f32", 0.1, VT.FLOAT32), ("t.bool", True, VT.BOOL), ("t.str", "héllo ✓ 北京", VT.STRING),
        ("t.u64", 2**64 - 1, VT.UINT64), ("t.i64", -2**63, VT.INT64), ("t.f64", 1e300, VT.FLOAT64),
        ("t.empty_str", "", VT.STRING),
    ])
    for vt, dt in [(VT.UINT8, np.uint8), (VT.INT8, np.int8), (VT.UINT16, np.uint16), (VT.INT16, np.int16),
                   (VT.UINT32, np.uint32), (VT.INT32, np.int32), (VT.FLOAT32, np.float32),
                   (VT.UINT64, np.uint64), (VT.INT64, np.int64), (VT.FLOAT64, np.float64)]:
        md.set(f"a.{vt.name.lower()}", np.arange(5).astype(dt), (VT.ARRAY, vt))
    md.set("a.bool", np.array([True, False, True]), (VT.ARRAY, VT.BOOL))
    md.set("a.str", ["a", "", "多字节", "x" * 300], (VT.ARRAY, VT.STRING))
    md.set("a.empty", np.zeros(0, np.int32), (VT.ARRAY, VT.INT32))
    md.set("a.big", np.arange(100_000, dtype=np.int32), (VT.ARRAY, VT.INT32))
    md.set("a.nested", [np.array([1, 2], np.int32), ["x", "y"]], (VT.ARRAY, [(VT.ARRAY, VT.INT32), (VT.ARRAY, VT.STRING)]))
    return md


def synthetic_tensors(rng) -> list[TensorInfo]:
    q8 = rng.integers(0, 256, size=(3, GGMLType.Q8_0.row_bytes(64)), dtype=np.uint8)
    return [
        TensorInfo("f32.vec", GGMLType.F32, (7,), data=rng.standard_normal(7).astype(np.float32)),
        TensorInfo("f16.mat", GGMLType.F16, (3, 5), data=rng.standard_normal((3, 5)).astype(np.float16)),
        TensorInfo("q8.mat", GGMLType.Q8_0, (3, 64), data=q8),
        TensorInfo("i32.cube", GGMLType.I32, (2, 3, 4), data=np.arange(24, dtype=np.int32)),
        TensorInfo("f32.4d", GGMLType.F32, (1, 2, 1, 3), data=np.ones(6, np.float32)),
    ]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "every_type.gguf"
    write_gguf(path, every_type_metadata(), synthetic_tensors(np.random.default_rng(0)))
    return path


def _gguf_value(field):
    """A gguf-py ReaderField's value in our representation (scalars, lists of str, numpy arrays)."""
    if field.types[0] == gguf.GGUFValueType.ARRAY and field.types[-1] not in (gguf.GGUFValueType.STRING,):
        if len(field.types) > 2:
            return None  # nested: compared separately
        return np.concatenate([field.parts[i] for i in field.data]) if field.data else np.zeros(0)
    return field.contents()


def assert_same_as_gguf_package(path):
    ours = read_gguf(path)
    theirs = gguf.GGUFReader(path)
    fields = {k: f for k, f in theirs.fields.items() if not k.startswith("GGUF.")}
    assert list(fields) == list(ours.metadata), "same keys in the same order"
    for k, f in fields.items():
        spec = ours.metadata.types[k]
        main = spec[0] if isinstance(spec, tuple) else spec
        assert int(f.types[0]) == int(main), k
        if isinstance(spec, tuple) and not isinstance(spec[1], list) and len(f.types) > 1:  # gguf-py drops it for empty arrays
            assert int(f.types[1]) == int(spec[1]), k
        expected = _gguf_value(f)
        if expected is None:
            continue
        got = ours.metadata[k]
        if isinstance(got, np.ndarray):
            np.testing.assert_array_equal(got, np.asarray(expected).astype(got.dtype), err_msg=k)
        elif isinstance(got, float):
            assert got == pytest.approx(float(expected), rel=0, abs=0) or np.float32(got) == np.float32(expected), k
        else:
            assert got == expected, k
    assert [t.name for t in theirs.tensors] == [t.name for t in ours.tensors]
    for a, b in zip(theirs.tensors, ours.tensors):
        assert int(a.tensor_type) == int(b.type), a.name
        assert tuple(int(d) for d in reversed(a.shape)) == b.shape, a.name
        assert bytes(np.asarray(a.data).view(np.uint8).reshape(-1)) == bytes(b.data), a.name
    return ours


def test_smollm2_matches_gguf_package(smollm2_path):
    ours = assert_same_as_gguf_package(smollm2_path)
    assert len(ours.metadata) == 33 and len(ours.tensors) == 272


def test_smollm2_rewrite_is_byte_identical(smollm2_path, tmp_path):
    out = tmp_path / "copy.gguf"
    write_gguf(out, read_gguf(smollm2_path))
    assert sha256(out) == SMOLLM2_SHA256


def test_synthetic_file_loads_in_gguf_package(synthetic):
    ours = assert_same_as_gguf_package(synthetic)
    assert ours.metadata["t.u64"] == 2**64 - 1 and ours.metadata["t.i64"] == -2**63
    assert ours.metadata["a.str"] == ["a", "", "多字节", "x" * 300]
    assert ours.metadata["a.nested"][1] == ["x", "y"]
    np.testing.assert_array_equal(ours.metadata["a.nested"][0], [1, 2])
    assert ours.tensor("i32.cube").numpy().shape == (2, 3, 4)
    np.testing.assert_array_equal(ours.tensor("i32.cube").numpy().reshape(-1), np.arange(24))


def test_synthetic_round_trip_is_byte_identical(synthetic, tmp_path):
    out = tmp_path / "again.gguf"
    write_gguf(out, read_gguf(synthetic))
    assert sha256(out) == sha256(synthetic)


def test_file_written_by_gguf_package_reads_and_round_trips(tmp_path):
    src = tmp_path / "theirs.gguf"
    w = gguf.GGUFWriter(src, "llama")
    w.add_uint32("x.u32", 7)
    w.add_int64("x.i64", -5)
    w.add_float64("x.f64", 2.5)
    w.add_bool("x.b", False)
    w.add_string("x.s", "text")
    w.add_array("x.arr", [1, 2, 3])
    w.add_array("x.sarr", ["p", "q"])
    w.add_tensor("w", np.arange(64, dtype=np.float32).reshape(2, 32))
    w.add_tensor("h", np.ones((4, 8), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ours = assert_same_as_gguf_package(src)
    np.testing.assert_array_equal(ours.tensor("w").numpy(), np.arange(64, dtype=np.float32).reshape(2, 32))
    out = tmp_path / "ours.gguf"
    write_gguf(out, ours)
    assert sha256(out) == sha256(src)


def test_alignment_is_honoured(tmp_path):
    md = new_metadata([("general.alignment", 64, VT.UINT32)])
    path = tmp_path / "a64.gguf"
    write_gguf(path, md, [TensorInfo("a", GGMLType.F32, (3,), data=np.ones(3, np.float32)),
                          TensorInfo("b", GGMLType.F32, (5,), data=np.ones(5, np.float32))])
    gf = read_gguf(path)
    assert gf.alignment == 64 and gf.data_offset % 64 == 0 and gf.tensors[1].offset == 64
    assert gguf.GGUFReader(path).alignment == 64


def _minimal(md=None, tensors=None) -> bytes:
    import os, tempfile
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "m.gguf")
        write_gguf(p, md if md is not None else new_metadata([("k", 1, VT.UINT32)]),
                   tensors if tensors is not None else [TensorInfo("t", GGMLType.F32, (4,), data=np.zeros(4, np.float32))])
        return open(p, "rb").read()


@pytest.mark.parametrize("patch, message", [
    (lambda b: b"GGUG" + b[4:], "bad magic"),
    (lambda b: b[:4] + (9).to_bytes(4, "little") + b[8:], "unsupported GGUF version"),
    (lambda b: b[:8] + (10**9).to_bytes(8, "little") + b[16:], "tensor count"),
    (lambda b: b[:16] + (10**9).to_bytes(8, "little") + b[24:], "metadata count"),
    (lambda b: b[:60], "remain"),
])
def test_header_violations_raise_ggu_ferror(patch, message):
    with pytest.raises(GGUFError, match=message):
        read_gguf(patch(_minimal()))


def test_structural_violations_are_named():
    good = _minimal()
    # the tensor info follows the single KV: key "k" (8+1) + type (4) + value (4)
    info = 24 + 8 + 1 + 4 + 4
    name_end = info + 8 + 1
    with pytest.raises(GGUFError, match="dims"):
        read_gguf(good[:name_end] + (5).to_bytes(4, "little") + good[name_end + 4:])
    type_at = name_end + 4 + 8
    with pytest.raises(GGUFError, match="unknown ggml type"):
        read_gguf(good[:type_at] + (4).to_bytes(4, "little") + good[type_at + 4:])
    with pytest.raises(GGUFError, match="block size"):
        read_gguf(good[:type_at] + int(GGMLType.Q8_0).to_bytes(4, "little") + good[type_at + 4:])
    with pytest.raises(GGUFError, match="expected 0"):
        read_gguf(good[:type_at + 4] + (32).to_bytes(8, "little") + good[type_at + 12:])
    with pytest.raises(GGUFError, match="past the end"):
        read_gguf(good[:-20])


def test_duplicates_and_bad_alignment():
    dup_key = _minimal(new_metadata([("k", 1, VT.UINT32), ("j", 2, VT.UINT32)])).replace(b"\x01\x00\x00\x00\x00\x00\x00\x00j", b"\x01\x00\x00\x00\x00\x00\x00\x00k")
    with pytest.raises(GGUFError, match="duplicate metadata key"):
        read_gguf(dup_key)
    two = _minimal(tensors=[TensorInfo("a", GGMLType.F32, (4,), data=np.zeros(4, np.float32)),
                            TensorInfo("b", GGMLType.F32, (4,), data=np.zeros(4, np.float32))])
    with pytest.raises(GGUFError, match="duplicate tensor name"):
        read_gguf(two.replace(b"\x01\x00\x00\x00\x00\x00\x00\x00b", b"\x01\x00\x00\x00\x00\x00\x00\x00a"))
    ok = _minimal(new_metadata([("general.alignment", 64, VT.UINT32)]), tensors=[])
    with pytest.raises(GGUFError, match="power of two"):
        read_gguf(ok.replace((64).to_bytes(4, "little"), (48).to_bytes(4, "little")))
    with pytest.raises(GGUFError, match="must be UINT32"):  # type tag UINT32 (4) -> INT32 (5)
        read_gguf(ok.replace(b"alignment\x04\x00\x00\x00", b"alignment\x05\x00\x00\x00"))
    with pytest.raises(GGUFError, match="power of two"):
        _minimal(new_metadata([("general.alignment", 48, VT.UINT32)]), tensors=[])
    with pytest.raises(GGUFError, match="must be UINT32"):
        _minimal(new_metadata([("general.alignment", 32, VT.UINT64)]), tensors=[])


def test_writer_refuses_out_of_order_and_wrong_sizes(tmp_path):
    infos = [TensorInfo("a", GGMLType.F32, (4,)), TensorInfo("b", GGMLType.F32, (2,))]
    dest = tmp_path / "x.gguf"
    with pytest.raises(GGUFError, match="out of order"):
        with GGUFWriter(dest, new_metadata(), infos) as w:
            w.write_tensor("b", np.zeros(2, np.float32))
    with pytest.raises(GGUFError, match="bytes"):
        with GGUFWriter(dest, new_metadata(), infos) as w:
            w.write_tensor("a", np.zeros(3, np.float32))
    with pytest.raises(GGUFError, match="only 1 of 2"):
        with GGUFWriter(dest, new_metadata(), infos) as w:
            w.write_tensor("a", np.zeros(4, np.float32))
    with pytest.raises(GGUFError, match="block size"):
        GGUFWriter(dest, new_metadata(), [TensorInfo("q", GGMLType.Q4_0, (2, 40))])
    assert list(tmp_path.iterdir()) == [], "no destination and no temporary file left behind"


def test_interrupted_write_keeps_the_old_destination(tmp_path):
    dest = tmp_path / "model.gguf"
    dest.write_bytes(b"old")

    def boom():
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_gguf(dest, new_metadata(), [TensorInfo("a", GGMLType.F32, (4,), data=np.zeros(4, np.float32)),
                                          TensorInfo("b", GGMLType.F32, (4,), data=boom)])
    assert dest.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]


def test_gguf_dump_json_on_default_model(smollm2_path):
    out = subprocess.run([sys.executable, "-m", "workbench", "gguf-dump", str(smollm2_path), "--json"],
                         capture_output=True, text=True, check=True).stdout
    d = json.loads(out)
    assert d["n_kv"] == 33 and len(d["metadata"]) == 33
    assert d["n_tensors"] == 272 and d["tensor_types"] == {"Q8_0": 1, "F32": 61, "Q4_1": 210}
    assert d["metadata"]["tokenizer.ggml.tokens"] == {"type": "[STRING]", "length": 49152}
    assert d["metadata"]["tokenizer.ggml.merges"]["length"] == 48900
    assert d["metadata"]["llama.block_count"] == {"type": "UINT32", "value": 30}


def test_gguf_dump_reports_corrupt_file_cleanly(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 8)
    proc = subprocess.run([sys.executable, "-m", "workbench", "gguf-dump", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 1 and "error:" in proc.stderr and "Traceback" not in proc.stderr
