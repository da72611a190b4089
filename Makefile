# Everything runs from the virtual environment in .venv/, created on first use.
# torch is installed first and pinned: an unpinned torch would pull gigabytes of CUDA packages.
# GPU machines: install your CUDA build of torch 2.13 into .venv first (see README), then run make.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test test-order stack-test demo ui screenshots mutation bench lint constraints clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[airflow,kubernetes,sources,dev]"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/ruff check kronos_tasks dags tests bench
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Order independence: every test file alone, then the whole suite in a shuffled order (SEED=N to repeat one).
SEED ?= $(shell date +%s)
test-order: install
	for file in tests/test_*.py; do $(BIN)/python -m pytest -q -p no:cacheprovider $$file || exit 1; done
	$(BIN)/python -m pytest -q -p no:cacheprovider --shuffle $(SEED)

# The compose stack for real (Docker, else podman installed from Debian's packages); also part of `make test`.
stack-test: install
	$(BIN)/python -m pytest -m stack $(PYTEST_ARGS)

demo: install
	$(BIN)/kronos-flow demo

# The MLflow and Airflow UIs of KRONOS_HOME on 127.0.0.1; Ctrl+C stops both.
ui: install
	$(BIN)/kronos-flow ui

# docs/screenshots/: the MLflow pages and charts a user audits, taken by headless Chromium (Debian's).
screenshots: install
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[screenshots]"
	$(BIN)/python docs/screenshots.py

# Mutation testing ([tool.mutmut] in pyproject.toml lists the modules and their tests); kill rates: docs/testing.md.
mutation: install
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[mutation]"
	rm -rf mutants
	$(BIN)/mutmut run --max-children 2 || true
	$(BIN)/mutmut results --all true > mutation-results.txt || true
	$(BIN)/python docs/mutation_report.py mutation-results.txt

bench: install
	$(BIN)/python bench/decode.py --json bench/results/decode-cpu.json

lint: install
	$(BIN)/ruff check kronos_tasks dags tests bench
	$(BIN)/ruff format --check kronos_tasks dags tests bench

# Re-resolve the lock after changing dependencies in pyproject.toml.
constraints: install
	( echo "# Resolved together for Python 3.11 (pip freeze of a working .venv; torch is installed first by the"; \
	  echo "# Makefile and left out). Regenerate: make constraints."; \
	  $(BIN)/pip freeze | grep -v -E "^(torch==|kronos-flow|-e |# Editable)" ) > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache
