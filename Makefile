# Two commands do everything on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: demo test lab bench fetch clean clean-cache

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q --upgrade pip

# reinstall when pyproject.toml or the pinned numeric stack (constraints.txt) changes
$(VENV)/.installed-dev: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e ".[dev]"
	touch $@

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e .
	touch $@

fetch: $(VENV)/.installed
	$(BIN)/python -m workbench fetch

demo: $(VENV)/.installed
	$(BIN)/python -m workbench fetch
	$(BIN)/python -m workbench demo

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -ra

lab: $(VENV)/.installed
	$(BIN)/jupyter lab notebooks/

bench: $(VENV)/.installed
	$(PIP) -e ".[bench]"
	$(BIN)/python -m workbench fetch
	for s in bench/bench_*.py; do $(BIN)/python $$s || exit 1; done

# numba's cache=True does not notice edits in modules a kernel calls: drop compiled kernels after such edits
clean-cache:
	find workbench -name '*.nbi' -o -name '*.nbc' | xargs rm -f

clean:
	rm -rf $(VENV) data/reports .pytest_cache
