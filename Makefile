# Two commands on a fresh machine (each does its own set-up):
#   make tour   — builds every stage from the previous one on the tiny config, validates and profiles it
#   make test   — the whole test suite (unit tests, Triton kernels in the interpreter on CPU, notebooks via nbval,
#                 the docs site built with --strict and read in headless Chromium when it is installed)
#   make docs   — the docs site (mkdocs.yml) into site/: open site/index.html
# Set-up: a virtual environment in $(VENV) with this package installed editable, with its dev extra.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned to a release with a CPU build available offline on the project's CI machines;
# override e.g. `make test TORCH_SPEC="torch>=2.6"` to keep the one you have.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup tour test lint docs gpu-test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

tour: $(STAMP)
	$(PY) -m mla_tutorial tour

test: $(STAMP)
	$(PY) -m ruff check src tests notebooks
	$(PY) -m pytest -m "not gpu" tests --nbval --nbval-current-env notebooks --durations=15

lint: $(STAMP)
	$(PY) -m ruff check src tests notebooks

# The docs site: docs/*.md, the notebooks as executed (not re-run), the API from the docstrings; warnings fail.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# On a machine with a CUDA GPU:
gpu-test: $(STAMP)
	$(PY) -m pytest -m gpu tests

bench: $(STAMP)
	$(PY) -m mla_tutorial bench --kernel

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache site .cache/mkdocs-jupyter
