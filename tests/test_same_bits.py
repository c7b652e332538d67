"""Same bits on every x86-64 host: the exact paths give the same results under every numpy SIMD dispatch level
the host can run and with numba compiling for a generic CPU, and no exact-path module calls a numpy function
whose last bits depend on the host's SIMD level.

Why: numpy picks float kernels at run time (np.power and float64 np.log go to SVML on AVX-512 hosts, np.exp /
np.log of float32 have separate AVX2 and AVX-512F kernels). One ulp of RoPE's theta_scale from np.power moved
SmolLM2's logits by KL 5e-3 on an AVX-512 host. On an AVX-512 host this test compares the AVX-512 kernels with
the AVX2 and baseline ones; on an AVX2 host, AVX2 with baseline.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PROBE = Path(__file__).with_name("same_bits_probe.py")


def dispatch_levels() -> list[tuple[str, dict]]:
    """(name, extra environment) per level: numpy's default, then each dispatch target the host has switched off
    together with every target above it, then numba compiling for a generic x86-64 CPU."""
    from numpy._core import _multiarray_umath as mu

    have = [t for t in mu.__cpu_dispatch__ if mu.__cpu_features__.get(t)]
    levels = [("default", {})]
    for i in range(len(have) - 1, -1, -1):
        off = " ".join(have[i:])
        levels.append((f"numpy without {off}", {"NPY_DISABLE_CPU_FEATURES": off}))
    levels.append(("numba generic CPU", {"NUMBA_CPU_NAME": "generic"}))
    return levels


def run_probe(env_extra: dict, smollm2_path, golden_dir, text) -> dict:
    env = {**os.environ, **env_extra}
    env.pop("NPY_DISABLE_CPU_FEATURES", None) if "NPY_DISABLE_CPU_FEATURES" not in env_extra else None
    p = subprocess.run([sys.executable, str(PROBE), str(smollm2_path), str(golden_dir), str(text)], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"probe failed under {env_extra}:\n{p.stderr[-3000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_dispatch_levels_are_known():
    names = [n for n, _ in dispatch_levels()]
    assert names[0] == "default" and names[-1] == "numba generic CPU"
    assert len(names) >= 3, f"no numpy dispatch target to switch off on this host: {names}"


def test_same_bits_under_every_dispatch_level(smollm2_path, golden_dir, shared_data_dir):
    results = {name: run_probe(env, smollm2_path, golden_dir, shared_data_dir / "botchan.txt")
               for name, env in dispatch_levels()}
    ref = results["default"]
    for name, r in results.items():
        print(f"{name}: {r}")
    for name, r in results.items():
        diff = {k: (ref[k], r[k]) for k in ref if r[k] != ref[k]}
        assert not diff, f"{name} differs from the default dispatch: {diff}"
        assert r["forward_max_dlogit_vs_llama_cpp"] == 0.0, f"{name}: logits differ from llama.cpp's AVX2 build"


# --- no host-dependent numpy function on an exact path ---------------------------------------------------------

# modules whose results must be llama.cpp's bits: the forward and its kernels, quantization, perplexity / KLD,
# importance matrices, sampling, conversion
EXACT_PATHS = ["workbench/cpu", "workbench/llama", "workbench/text", "workbench/quant", "workbench/gguf",
               "workbench/hf", "workbench/eval/perplexity.py", "workbench/eval/kl.py", "workbench/eval/logprobs.py",
               "workbench/eval/tasks.py"]
# numpy functions whose float results depend on the SIMD level or the BLAS build (exact ones stay allowed:
# + - * / sqrt rint max min abs, integer ops, casts, sums in a fixed order)
HOST_DEPENDENT = {"exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "power", "float_power", "sin", "cos",
                  "tan", "arcsin", "arccos", "arctan", "arctan2", "sinh", "cosh", "tanh", "arcsinh", "arccosh",
                  "arctanh", "cbrt", "hypot", "logaddexp", "logaddexp2", "dot", "matmul", "vdot", "inner",
                  "tensordot", "einsum", "linalg"}
ALLOWED = {("workbench/gguf/dump.py", "log10"),     # display only
           # a float64 illustration of why Q/K rows are permuted, not a conversion path
           *(("workbench/hf/qk_permutation.py", what) for what in ("cos", "sin", "@", "**"))}


def exact_path_files():
    for p in EXACT_PATHS:
        path = REPO / p
        yield from (sorted(path.rglob("*.py")) if path.is_dir() else [path])


def host_dependent_calls(path: Path) -> list[str]:
    """`np.<fn>` uses and float `@` products in a file (an integer `@` must say so with `# exact: int`)."""
    src = path.read_text(encoding="utf-8")
    lines = src.splitlines()
    found = []
    for node in ast.walk(ast.parse(src)):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ("np", "numpy")
                and node.attr in HOST_DEPENDENT):
            found.append((node.lineno, f"np.{node.attr}"))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult) and "exact: int" not in lines[node.lineno - 1]:
            found.append((node.lineno, "@"))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow) and "exact:" not in lines[node.lineno - 1]:
            # numpy computes x ** 2, ** 0.5, ** -1 as exact square / sqrt / reciprocal; other powers go to
            # np.power (Python floats would be fine: mark such lines "# exact: python floats")
            const = [isinstance(v, ast.Constant) or (isinstance(v, ast.UnaryOp) and isinstance(v.operand, ast.Constant))
                     for v in (node.left, node.right)]
            if not (all(const) or (const[1] and getattr(node.right, "value", None) in (0, 1, 2, 0.5))):
                found.append((node.lineno, "**"))
    rel = str(path.relative_to(REPO))
    return [f"{rel}:{line}: {what}" for line, what in sorted(found) if (rel, what.removeprefix("np.")) not in ALLOWED]


def test_no_host_dependent_numpy_on_exact_paths():
    bad = [hit for f in exact_path_files() for hit in host_dependent_calls(f)]
    assert not bad, ("numpy calls whose bits depend on the host's SIMD level, on exact paths (use workbench.cpu.libm "
                     "or a numba loop; mark integer-only uses '# exact: ...'):\n" + "\n".join(bad))


def test_the_check_catches_a_numpy_transcendental(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import numpy as np\ntheta = np.power(np.float32(1e4), -2 / 64)\ny = x @ w\nz = x ** 4\n")
    assert [h.split(": ")[-1] for h in host_dependent_calls_at(bad)] == ["np.power", "@", "**"]


def host_dependent_calls_at(path: Path) -> list[str]:
    """host_dependent_calls for a file outside the repository (the check's own test)."""
    global REPO
    saved, REPO = REPO, path.parent
    try:
        return host_dependent_calls(path)
    finally:
        REPO = saved


def test_libm_functions_are_the_c_library_s():
    """workbench.cpu.libm calls the C library's expf / logf / powf (what llama.cpp calls), not numpy's."""
    import ctypes
    import ctypes.util

    from workbench.cpu.libm import expf_array, logf_array, powf

    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    for name in ("expf", "logf", "powf"):
        getattr(libm, name).restype = ctypes.c_float
    libm.expf.argtypes = libm.logf.argtypes = [ctypes.c_float]
    libm.powf.argtypes = [ctypes.c_float, ctypes.c_float]
    x = (np.random.default_rng(0).standard_normal(2000) * 30).astype(np.float32)
    assert [np.float32(libm.expf(float(v))) for v in x] == list(expf_array(x))
    y = np.abs(x) + np.float32(1e-3)
    assert [np.float32(libm.logf(float(v))) for v in y] == list(logf_array(y))
    for base in (10000.0, 100000.0, 500000.0, 1e6):
        for n in (32, 64, 80, 128):
            e = np.float32(-2.0) / np.float32(n)
            assert np.float32(powf(np.float32(base), e)) == np.float32(libm.powf(base, float(e)))


def test_numba_uses_the_c_library_not_svml():
    """With SVML installed numba would vectorize math.exp loops through it (other bits than libm's expf)."""
    import numba

    import workbench  # noqa: F401  (sets NUMBA_DISABLE_INTEL_SVML before numba's config is read)

    assert not numba.config.USING_SVML
    probe = ("import workbench, numba, sys; sys.exit(0 if numba.config.DISABLE_INTEL_SVML and "
             "not numba.config.USING_SVML else 1)")
    assert subprocess.run([sys.executable, "-c", probe], cwd=REPO).returncode == 0
