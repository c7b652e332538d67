"""ggml-cpu's kernels as numba code: one module per ggml kernel family, each named after the ggml code it
reproduces bit for bit (see the README's layout table). Imports only workbench.gguf's constants."""
from __future__ import annotations

import hashlib
from pathlib import Path


def _drop_stale_numba_cache() -> None:
    """numba's on-disk cache checks only the file of each cached function, so a kernel in quant/types/q4_k.py
    that inlines a helper from quant/common.py (or cpu/simd.py) would keep running the old helper after that file
    changes. When any source of the package changed since the cache was written, drop every cached kernel."""
    pkg = Path(__file__).parent.parent
    sources = sorted(pkg.rglob("*.py"))
    digest = hashlib.sha1(b"".join(str(p.relative_to(pkg)).encode() + p.read_bytes() for p in sources)).hexdigest()
    stamp = pkg / "__pycache__" / "numba_sources.sha1"
    try:
        if stamp.read_text() == digest:
            return
    except OSError:
        pass
    for f in list(pkg.rglob("__pycache__/*.nbi")) + list(pkg.rglob("__pycache__/*.nbc")):
        try:
            f.unlink()
        except OSError:
            pass
    try:
        stamp.parent.mkdir(exist_ok=True)
        stamp.write_text(digest)
    except OSError:
        pass


_drop_stale_numba_cache()
