"""Quantize / dequantize throughput per format: workbench (numba) vs the gguf package (numpy) vs ggml.

    python bench/bench_quant.py                       # every format with a module
    python bench/bench_quant.py --types q4_0,q4_k --rows 256 --dequant-rows 64 --threads 1 --json

MB/s counts the float32 side (4 bytes per weight) in both directions. Quantize runs on --rows x --cols
(64 x 4096: 1 MB of float32), dequantize on --dequant-rows x --cols (1024 x 4096: a 16 MB tensor, a
4096-wide matrix's worth; the rows' blocks repeated). On 1 MB the ~4 us of a call's fixed cost, and on
tensors larger than the L3 cache the first touch of the fresh output pages, weigh as much as the work
itself. Each figure is an engine's best call in 2 rounds of --repeat calls (see best_times). ggml is timed
through ctypes on libggml-base (``ggml_quantize_chunk``, single-threaded as llama-quantize calls it per
chunk, and the type's ``to_float``), found from --ggml-lib, $WORKBENCH_GGML_LIB or an installed
llama-cpp-python; it is skipped when none is found. Targets (issue 3): dequantize >= 20x gguf; quantize
within 1.5x of ggml single-threaded. With --json the last line printed is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workbench.gguf import GGMLType  # noqa: E402
from workbench.quant import dequantize, format_table, quantize  # noqa: E402
from workbench.quant.formats import format_module  # noqa: E402


def best_times(fns: dict, repeat: int, rounds: int = 2) -> dict:
    """Each function's best wall time: `rounds` rounds that give every engine in turn a run of `repeat`
    back-to-back calls, the best call of all its runs counting: steady state, its buffers recycled and its
    threads awake (the first call after another engine's finds the allocator in that engine's state and
    can spend 20+ ms faulting in a fresh 16 MB output; a few calls later the same memory is reused). The rounds spread each engine over the whole measurement, so a slow
    spell of the machine does not fall on one engine only. numba compiles in a first, untimed call."""
    for fn in fns.values():
        fn()
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            for _ in range(repeat):
                t0 = time.perf_counter()
                fn()
                best[k] = min(best[k], time.perf_counter() - t0)
    return best


# ------------------------------------------------------------------------------------------- ggml
class _TypeTraits(ctypes.Structure):
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p), ("from_float_ref", ctypes.c_void_p)]


def find_ggml(path: str | None):
    """ctypes handle on libggml-base, or None."""
    candidates = [path, os.environ.get("WORKBENCH_GGML_LIB")]
    try:
        import llama_cpp  # noqa: F401

        lib_dir = Path(llama_cpp.__file__).parent / "lib"
        candidates += [str(p) for p in sorted(lib_dir.glob("libggml-base*"))]
    except ImportError:
        pass
    for c in candidates:
        if c and Path(c).exists():
            lib = ctypes.CDLL(c, mode=os.RTLD_LAZY)   # only the quantization entry points are used
            lib.ggml_quantize_chunk.restype = ctypes.c_size_t
            lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                                ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
            lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
            lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
            return lib
    return None


def ggml_funcs(lib, t: GGMLType, x: np.ndarray, imatrix, dequant_rows):
    rows, n = x.shape
    out = np.zeros((rows, t.row_bytes(n)), np.uint8)
    im = imatrix.ctypes.data if imatrix is not None else None

    def q():
        lib.ggml_quantize_chunk(int(t), x.ctypes.data, out.ctypes.data, 0, rows, n, im)
        return out

    to_float = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(
        lib.ggml_get_type_traits(int(t)).contents.to_float)
    y = np.empty((dequant_rows, n), np.float32)

    def dq(blocks):
        to_float(blocks.ctypes.data, y.ctypes.data, y.size)
        return y

    return q, dq


# ------------------------------------------------------------------------------------------- main
def bench_type(t: GGMLType, x, imatrix, repeat, lib, dequant_rows) -> dict:
    import gguf

    mb = x.nbytes / 1e6
    n = x.shape[1]
    mb_dq = dequant_rows * n * 4 / 1e6
    im = imatrix if (imatrix is not None or format_module(t).NEEDS_IMATRIX) else None
    if im is None and format_module(t).NEEDS_IMATRIX:
        im = np.ones(n, np.float32)
    row = {"type": t.name, "imatrix": im is not None}
    blocks = quantize(x, t, im)
    big = np.ascontiguousarray(blocks[np.arange(dequant_rows) % x.shape[0]])   # the rows' blocks repeated
    gt = gguf.GGMLQuantizationType[t.name] if t.name in gguf.GGMLQuantizationType.__members__ else None
    quant = {"wb": lambda: quantize(x, t, im)}
    dequant = {"wb": lambda: dequantize(big, t, n)}
    if gt is not None and t != GGMLType.F32:
        dequant["gguf"] = lambda: gguf.quants.dequantize(big, gt)
        if im is None:                                              # gguf has no imatrix-aware quantize
            quant["gguf"] = lambda: gguf.quants.quantize(x, gt)
    if lib is not None and t != GGMLType.F32 and t.name not in ("Q8_1", "Q8_K"):   # not in ggml_quantize_chunk
        q, dq = ggml_funcs(lib, t, x, im, dequant_rows)
        quant["ggml"], dequant["ggml"] = q, lambda: dq(big)
    for what, fns, size in (("quantize", quant, mb), ("dequantize", dequant, mb_dq)):
        try:
            fns["gguf"]()
        except NotImplementedError:
            fns.pop("gguf")
        except KeyError:
            pass
        best = best_times(fns, repeat)
        for engine in ("wb", "gguf", "ggml"):
            row[f"{engine}_{what}_MBps"] = size / best[engine] if engine in best else None
    for what in ("quantize", "dequantize"):
        for other in ("gguf", "ggml"):
            ref = row.get(f"{other}_{what}_MBps")
            row[f"{what}_vs_{other}"] = row[f"wb_{what}_MBps"] / ref if ref else None
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--types", default="", help="comma-separated ggml types (default: every format with a module)")
    ap.add_argument("--rows", type=int, default=64, help="rows quantized (default 64)")
    ap.add_argument("--dequant-rows", type=int, default=1024, help="rows dequantized (default 1024)")
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=6, help="calls per engine and round, 2 rounds (default 6)")
    ap.add_argument("--threads", type=int, default=None, help="numba threads (default: numba's)")
    ap.add_argument("--imatrix", action="store_true", help="quantize with a random importance vector")
    ap.add_argument("--ggml-lib", default=None, help="path to libggml-base.so for the ggml columns")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args(argv)

    import numba

    if args.threads:
        numba.set_num_threads(args.threads)
    table = format_table()
    names = args.types.split(",") if args.types else list(table.loc[table["has_quantize"], "type"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, args.cols)).astype(np.float32)
    imatrix = (rng.random(args.cols) + 0.1).astype(np.float32) if args.imatrix else None
    lib = find_ggml(args.ggml_lib)

    results = []
    hdr = (f"{'type':8} {'quant MB/s':>10} {'gguf':>8} {'ggml':>8} {'x gguf':>7} {'x ggml':>7} | "
           f"{'deq MB/s':>9} {'gguf':>8} {'ggml':>8} {'x gguf':>7} {'x ggml':>7}")
    print(f"# quantize {args.rows} x {args.cols}, dequantize {args.dequant_rows} x {args.cols} float32, numba threads {numba.get_num_threads()}, "
          f"ggml: {'yes' if lib else 'not found'}, imatrix: {args.imatrix}")
    print(hdr)

    def f(v, spec):
        return format(v, spec) if v is not None else "-".rjust(int(spec.split(".")[0]))

    for name in names:
        t = GGMLType.parse(name)
        r = bench_type(t, x, imatrix, args.repeat, lib, args.dequant_rows)
        results.append(r)
        print(f"{t.name:8} {r['wb_quantize_MBps']:10.1f} {f(r.get('gguf_quantize_MBps'), '8.1f')} "
              f"{f(r.get('ggml_quantize_MBps'), '8.1f')} {f(r['quantize_vs_gguf'], '7.2f')} "
              f"{f(r['quantize_vs_ggml'], '7.2f')} | {r['wb_dequantize_MBps']:9.1f} "
              f"{f(r.get('gguf_dequantize_MBps'), '8.1f')} {f(r.get('ggml_dequantize_MBps'), '8.1f')} "
              f"{f(r['dequantize_vs_gguf'], '7.2f')} {f(r['dequantize_vs_ggml'], '7.2f')}", flush=True)
    if args.json:
        print(json.dumps({"rows": args.rows, "dequant_rows": args.dequant_rows, "cols": args.cols, "threads": numba.get_num_threads(),
                          "imatrix": args.imatrix, "ggml": lib is not None, "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
