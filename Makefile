# The two commands of the README: `make demo` (the main job) and `make test` (lint + test suite).
# Both create .venv if missing and install the package with pinned dependencies (constraints.txt).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED_DATA := $(abspath ../shared/data)

# On developer machines and in CI the real data sets lie in ../shared/data: read them, never download.
ifneq ($(wildcard $(SHARED_DATA)/mnist),)
export L2O_DATA_DIR ?= $(SHARED_DATA)
endif

.PHONY: install demo test lint format clean

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/l2o demo --out runs/demo

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: lint
	$(BIN)/python -m pytest -q

format: install
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
