# `make demo` and `make test` set everything up from scratch into .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# On the project machines this pin takes the CPU build from local disk; override elsewhere,
# e.g. `make test TORCH_SPEC=torch` to take your platform's default build.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.deepzip-installed

.PHONY: demo test data browser lint typecheck check clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

data:
	./scripts/ensure_data.sh

browser:
	./scripts/ensure_chromium.sh

# DEMO_ARGS: e.g. --restart, to run the demo again from scratch
DEMO_ARGS ?=
demo: $(STAMP) data
	$(VENV)/bin/deepzip demo $(DEMO_ARGS)

test: $(STAMP) data browser
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
