# Two commands: `make up` runs the whole system on this machine, `make test` tests it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first, pinned, so that pip never resolves another one. On a GPU machine
# install the CUDA build of the same version first, e.g.
#   $(PY) -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
TORCH ?= torch==2.13.0

.PHONY: install up test test-quick lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[worker,dev]"
	touch $@

up: install
	$(VENV)/bin/torchqueue up

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest

# Figures side by side with baselines measured in the same run (a few minutes).
bench: install
	$(VENV)/bin/python -m ops.bench.suite

test-quick: install
	$(VENV)/bin/pytest -m "not slow"

clean:
	rm -rf $(VENV) .torchqueue .pytest_cache .mypy_cache .ruff_cache
