"""ggml-cpu's kernels as numba code: one module per ggml kernel family, each named after the ggml code it
reproduces bit for bit (see the README's layout table). Imports only workbench.gguf's constants."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def _drop_stale_numba_cache() -> None:
    """numba's on-disk cache checks only the file of each cached function, so a kernel in quant/types/q4_k.py
    that inlines a helper from quant/rounding.py (or cpu/simd.py) would keep running the old helper after that file
    changes. When any kernel source of the package (a module that compiles with numba) changed since the cache
    was written, drop every cached kernel (under NUMBA_CACHE_DIR where that is set)."""
    pkg = Path(__file__).parent.parent
    sha = hashlib.sha1()
    for p in sorted(pkg.rglob("*.py")):
        src = p.read_bytes()                # each file read once
        if b"numba" in src:
            sha.update(str(p.relative_to(pkg)).encode() + src)
    digest = sha.hexdigest()
    root = Path(os.environ["NUMBA_CACHE_DIR"]) if os.environ.get("NUMBA_CACHE_DIR") else pkg
    stamp = (root if root != pkg else pkg / "__pycache__") / "numba_sources.sha1"
    try:
        if stamp.read_text() == digest:
            return
    except OSError:
        pass
    for f in list(root.rglob("*.nbi")) + list(root.rglob("*.nbc")):
        try:
            f.unlink()
        except OSError:
            pass
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(digest)
    except OSError:
        pass

_drop_stale_numba_cache()
