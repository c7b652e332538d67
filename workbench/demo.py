"""The main job behind `make demo`: fetch the default assets, describe the default model, and execute the
numbered notebooks headless (small mode unless --full), leaving tables, plots and executed notebooks in
data/reports/."""
from __future__ import annotations

import os
import time
from pathlib import Path

from workbench.assets import data_dir, ensure_model, ensure_texts
from workbench.gguf import read_gguf
from workbench.gguf.dump import metadata_table, tensor_table

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def describe_model(model_path, reports: Path) -> list[Path]:
    """Metadata (markdown) and tensor table (CSV) of a GGUF file."""
    reports.mkdir(parents=True, exist_ok=True)
    with read_gguf(model_path) as gf:
        md, tt = metadata_table(gf), tensor_table(gf)
    out_md, out_csv = reports / "model_metadata.md", reports / "model_tensors.csv"
    out_md.write_text(f"# {Path(model_path).name}\n\n" + md.to_markdown(index=False) + "\n", encoding="utf-8") \
        if _has_tabulate() else out_md.write_text(md.to_string(index=False) + "\n", encoding="utf-8")
    tt.to_csv(out_csv, index=False)
    print(f"{Path(model_path).name}: {len(md)} metadata keys, {len(tt)} tensors "
          f"({', '.join(f'{n} {k}' for k, n in tt['type'].value_counts().items())})")
    return [out_md, out_csv]


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401  (pandas.to_markdown needs it)
        return True
    except ImportError:
        return False


def execute_notebook(path: Path, out_dir: Path, full: bool = False, timeout: int = 1800) -> Path:
    """Run a notebook top to bottom in a fresh kernel; save the executed copy in out_dir."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env_full = os.environ.get("WORKBENCH_FULL")
    os.environ["WORKBENCH_FULL"] = "1" if full else "0"
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        if env_full is None:
            os.environ.pop("WORKBENCH_FULL", None)
        else:
            os.environ["WORKBENCH_FULL"] = env_full
    out = out_dir / path.name
    nbformat.write(nb, out)
    return out


def configure(p) -> None:
    p.add_argument("--model", "-m", help="GGUF to describe (default: the default SmolLM2 model)")
    p.add_argument("--full", action="store_true", help="run the notebooks in full mode, not small mode")
    p.add_argument("--no-notebooks", action="store_true", help="only describe the model")


def run(args) -> int:
    reports = data_dir() / "reports"
    model = ensure_model(args.model)
    ensure_texts()
    for f in describe_model(model, reports):
        print(f"wrote {f}")
    if args.no_notebooks:
        return 0
    for nb in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        t0 = time.perf_counter()
        out = execute_notebook(nb, reports, full=args.full)
        print(f"executed {nb.name} in {time.perf_counter() - t0:.1f}s -> {out}")
    return 0
