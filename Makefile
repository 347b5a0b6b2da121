# Two commands: `make up` runs the whole system on this machine, `make test` tests it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first, pinned, so that pip never resolves another one. Its build follows
# the machine (ops/torch_index.py): the CUDA build where `nvidia-smi` lists a GPU, else the
# CPU-only one (not PyPI's Linux wheel: several GB of CUDA libraries); from PyTorch's index,
# or the configured package index when that one does not answer within a few seconds.
# TORCH_INDEX=cpu|cu128|cu126|…|default chooses by hand (default: the configured index).
TORCH ?= torch==2.13.0
TORCH_INDEX ?= auto
TORCH_INDEX_BASE ?= https://download.pytorch.org/whl

.PHONY: install up test test-quick lint bench bench-sweep clean

install: $(VENV)/.installed

# The example model-family plugin (examples/torchqueue-example-family) is installed too:
# the tests train, serve and route its family. A worker machine installs its own plugins
# the same way (docs/families.md).
EXAMPLE_PLUGIN := examples/torchqueue-example-family

$(VENV)/.installed: pyproject.toml constraints.txt $(EXAMPLE_PLUGIN)/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	index="$$($(PY) ops/torch_index.py --index '$(TORCH_INDEX)' --base-url '$(TORCH_INDEX_BASE)')" \
	  && $(PY) -m pip install $(TORCH) $$index
	$(PY) -m pip install --quiet -c constraints.txt -e ".[worker,dev]"
	$(PY) -m pip install --quiet --no-deps -e $(EXAMPLE_PLUGIN)
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

# A 40-trial sweep three ways: pruning against none, TPE against random search.
bench-sweep: install
	$(VENV)/bin/python -m ops.bench.sweep

test-quick: install
	$(VENV)/bin/pytest -m "not slow"

clean:
	rm -rf $(VENV) .torchqueue .pytest_cache .mypy_cache .ruff_cache
