"""The numbered notebooks run top to bottom in small mode (what `make demo` does), in a fresh kernel,
against a temporary data folder (the cached model and texts are linked in, so nothing is downloaded), and
leave their tables and plots in <data>/reports/."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))

# report files each notebook must write (relative to <data>/reports)
EXPECTED = {
    "01_convert": ["convert_roundtrip_diff.csv", "convert_toy_diff.csv"],
    "02_quantize": ["quant_table.csv", "quant_table.md", "pareto.png", "tensor_error_heatmap.png"],
    "03_perplexity_vs_context": ["ppl_vs_context.png", "ppl_vs_context.csv", "rope_scaling.png"],
    "04_moe": ["moe_routing.png", "moe_token_routing.png", "ppl_vs_experts.png"],
    "05_chat": [],
    "06_plan": ["plan_mixtral.csv", "memory_vs_context.png"],
    "07_arena": ["arena_summary.csv"],
    "08_gptq": ["gptq_vs_gguf.csv", "gptq_pareto.png"],
}


@pytest.fixture(scope="module")
def data_tmp(tmp_path_factory, smollm2_path, shared_data_dir, toy_dir):
    """A data folder with the cached model and texts linked in; shared by all notebooks (02 caches the
    quantized files 03 reuses)."""
    from workbench.assets import ensure_texts

    data = tmp_path_factory.mktemp("wbdata")
    (data / "models").mkdir()
    (data / "models" / smollm2_path.name).symlink_to(smollm2_path.resolve())
    (data / "texts").mkdir()
    for path in ensure_texts().values():
        (data / "texts" / path.name).symlink_to(path.resolve())
    old = {k: os.environ.get(k) for k in ("WORKBENCH_DATA", "WORKBENCH_FULL", "NUMBA_NUM_THREADS")}
    os.environ["WORKBENCH_DATA"] = str(data)
    os.environ.setdefault("NUMBA_NUM_THREADS", "2")
    yield data
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_notebooks_found():
    assert [p.stem for p in NOTEBOOKS] == list(EXPECTED)


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_small_mode(nb_path, data_tmp):
    import nbformat

    from workbench.demo import execute_notebook

    out_dir = data_tmp / "executed"
    out_dir.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    out = execute_notebook(nb_path, out_dir, full=False, timeout=600)
    seconds = time.perf_counter() - t0
    print(f"{nb_path.name}: {seconds:.1f}s")
    nb = nbformat.read(out, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "some cells did not run"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors[0]
    assert "small mode" in "".join(o.get("text", "") for o in code[0].outputs), "the parameters cell reports the mode"
    for name in EXPECTED[nb_path.stem]:
        f = data_tmp / "reports" / name
        assert f.exists() and f.stat().st_size > 0, f"{nb_path.name} did not write reports/{name}"
