"""Project hygiene: environment.yml agrees with pyproject.toml; notebooks are stripped and thin."""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = {_name(d): d for d in env["dependencies"] if isinstance(d, str)}
    conda.pop("python"), conda.pop("pip")
    pip_section = [d for d in env["dependencies"] if isinstance(d, dict)]
    assert pip_section and "-e ." in pip_section[0]["pip"], "environment.yml installs the package itself"
    conda.update({_name(d): d for d in pip_section[0]["pip"] if d != "-e ."})  # pip-only packages
    wanted = {_name(r): r for r in project["dependencies"]}
    assert set(conda) == set(wanted), f"only in environment.yml: {set(conda) - set(wanted)}; only in pyproject: {set(wanted) - set(conda)}"
    for name, req in wanted.items():
        spec = req[len(name):].strip()
        assert conda[name].replace(" ", "").endswith(spec.replace(" ", "")), f"{name}: {conda[name]!r} vs {req!r}"
    env_py = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python=")][0]
    assert env_py == "python=3.11"


def test_extras_exist():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"dev", "bench"} <= set(extras)
    assert any(_name(r) == "llama-cpp-python" for r in extras["bench"])


def test_notebooks_are_stripped_and_thin():
    for nb_path in sorted((REPO / "notebooks").glob("*.ipynb")):
        nb = json.loads(nb_path.read_text())
        for i, cell in enumerate(nb["cells"]):
            if cell["cell_type"] != "code":
                continue
            src = "".join(cell["source"])
            assert not cell.get("outputs") and not cell.get("execution_count"), f"{nb_path.name} cell {i} has outputs"
            assert not re.search(r"^\s*(def|class)\s", src, re.M), f"{nb_path.name} cell {i} defines a function/class"
            assert len(src.splitlines()) <= 15, f"{nb_path.name} cell {i} is long: move the logic into the package"


def test_numeric_stack_is_the_pinned_one():
    """The exact results were verified with constraints.txt's numpy / numba / llvmlite (and the grammar masks
    with its llguidance): make and CI install with it, and a run on another version fails here instead of
    drifting silently."""
    from importlib.metadata import version

    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert set(pins) == {"numpy", "numba", "llvmlite", "llguidance"}
    assert "-c constraints.txt" in (REPO / "Makefile").read_text()
    installed = {name: version(name) for name in pins}
    assert installed == pins, f"installed {installed}, verified {pins}: update constraints.txt deliberately"
