# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates or reuses .venv and installs what it needs. torch is pinned and installed first so
# that pip takes the local CPU wheel here (and the CUDA build on a GPU box) and never pulls a
# multi-GB CUDA build on a CPU machine through an unpinned dependency.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.rtsleep-installed

.PHONY: demo test lint typecheck pytest install clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check rtsleep offline tools tests

typecheck: $(STAMP)
	$(BIN)/mypy rtsleep offline

pytest: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

demo: $(STAMP)
	$(BIN)/python -m rtsleep.demo $(if $(DEMO_FILE),--file $(DEMO_FILE),)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
