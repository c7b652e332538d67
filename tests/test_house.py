"""The layout holds: each layer imports only the layers below it, no cycles, no module over 600 lines, no
`_private` name taken across modules, and imports inside functions only for optional or heavy third-party
packages (the README's "Layout" section says why each layer sits where it does)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PKG = REPO / "workbench"

# what each part of the package may import (besides itself), lowest layer first; a part not listed may import
# anything (the applications on top: cli, demo)
ALLOWED = {
    "gguf": set(),
    "cpu": {"gguf"},
    "quant": {"gguf", "cpu"},
    "text": {"gguf"},
    "assets": {"gguf"},
    "llama": {"gguf", "cpu", "quant", "text"},
    "hf": {"gguf", "cpu", "quant", "text"},
    "eval": {"gguf", "cpu", "quant", "text", "assets", "llama", "hf"},  # hf: measuring GPTQ checkpoints
    "plan": {"gguf", "quant", "hf"},
    "toy_models": {"gguf", "hf", "assets"},
    "workspace": {"gguf", "text", "assets", "toy_models"},
    "server": {"gguf", "text", "llama"},
    "ui": {"gguf", "text", "llama", "assets"},  # assets: where data/ is (votes of the arena)
}
MAX_LINES = 600
# function-level imports of our own modules allowed (the package root keeps `import workbench` light)
LAZY_OK = {"workbench"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def part(mod: str) -> str:
    return mod.split(".")[1] if "." in mod else ""


def imports(mod: str):
    """(imported module, name or None, inside a function?, line) for each import of a workbench module."""
    path = MODULES[mod]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    in_func = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
               for n in ast.walk(f)}
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "workbench":
                    yield a.name, None, id(node) in in_func, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "workbench":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                if sub in MODULES:
                    yield sub, None, id(node) in in_func, node.lineno
                else:
                    yield target, a.name, id(node) in in_func, node.lineno


EDGES = [(m, t, name, lazy, line) for m in MODULES for t, name, lazy, line in imports(m)]


def test_layers_import_only_downwards():
    bad = []
    for m, t, _, _, line in EDGES:
        src, dst = part(m), part(t)
        if src != dst and src in ALLOWED and dst not in ALLOWED[src]:
            bad.append(f"{MODULES[m].relative_to(REPO)}:{line}: {src} imports {t}")
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_format_layer_imports_nothing_else_of_ours():
    bad = [f"{m} imports {t}" for m, t, *_ in EDGES if part(m) == "gguf" and part(t) != "gguf"]
    assert not bad, bad


def test_no_import_cycle():
    graph = {m: set() for m in MODULES}
    for m, t, _, lazy, _ in EDGES:
        if not lazy and t in MODULES and t != m:
            graph[m].add(t)
    # a package's __init__ re-exporting its modules is not a cycle of ideas: drop edges child -> own parent
    for m in graph:
        graph[m] = {t for t in graph[m] if not m.startswith(t + ".")}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_over_600_lines():
    long = {str(p.relative_to(REPO)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_no_private_name_imported_across_modules():
    bad = [f"{MODULES[m].relative_to(REPO)}:{line}: {name} from {t}" for m, t, name, _, line in EDGES
           if name and name.startswith("_") and t != m]
    assert not bad, "\n".join(bad)


def test_imports_inside_functions_only_where_lazy_on_purpose():
    bad = [f"{MODULES[m].relative_to(REPO)}:{line}: {t}" for m, t, _, lazy, line in EDGES if lazy and m not in LAZY_OK]
    assert not bad, "function-level imports of our own modules (move them to the top, or fix the layer):\n" + \
        "\n".join(bad)


@pytest.mark.parametrize("rule", ["upward", "private", "lazy"])
def test_the_checks_can_fail(tmp_path, rule):
    """The rules above catch a module that breaks them (run on a throwaway copy of their logic)."""
    src = {"upward": "from workbench.llama import load\n",
           "private": "from workbench.gguf.reader import _read_string\n",
           "lazy": "def f():\n    from workbench.gguf import read_gguf\n"}[rule]
    mod = "workbench.gguf.bad"
    MODULES[mod] = tmp_path / "bad.py"
    MODULES[mod].write_text(src)
    try:
        edges = [(mod, t, name, lazy, line) for t, name, lazy, line in imports(mod)]
        if rule == "upward":
            assert any(part(t) not in ALLOWED["gguf"] | {"gguf"} for _, t, *_ in edges)
        elif rule == "private":
            assert any(name and name.startswith("_") for _, _, name, _, _ in edges)
        else:
            assert any(lazy for *_, lazy, _ in edges)
    finally:
        del MODULES[mod]
