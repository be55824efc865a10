# Every target creates/refreshes the project's virtualenv (.venv) first: a fresh clone needs
# nothing but Python 3.11 and pip.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUNS ?= runs

.DEFAULT_GOAL := help
.PHONY: help install install-torch install-browser demo test test-isolated fuzz lint typecheck check bench bench-full clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,jax,deploy]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install aecli with its dev tools

install-torch: $(STAMP) ## add the PyTorch backend (CI does; without it the torch tests skip)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[torch]'

install-browser: ## Chromium for the report's browser test (Debian's package, as root; CI does this)
	@command -v chromium >/dev/null || { export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y --no-install-recommends chromium >/dev/null || \
		{ apt-get update >/dev/null && apt-get install -y --no-install-recommends chromium >/dev/null; }; }
	@chromium --version 2>/dev/null  # (Debian's wrapper script prints a harmless shell warning)

demo: $(STAMP) ## train on the bundled digits data, evaluate it, and print where the model and report are
	@run=$$($(BIN)/aecli train configs/digits.yaml --runs-dir $(RUNS) --quiet | tee /dev/stderr | tail -n 1) && \
	$(BIN)/aecli evaluate "$$run" && \
	echo "demo done: model in $$run, report in $$run/eval-*/report.html"

TEST_WORKERS ?= 2
test: $(STAMP) ## run the test suite in a random order, a test module per worker process (make test SEED=N replays an order)
	@seed=$${SEED:-$$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')}; \
	echo "test order: --randomly-seed=$$seed (replay: make test SEED=$$seed)"; \
	$(BIN)/python -m pytest -q -p randomly --randomly-seed=$$seed -n $(TEST_WORKERS) --dist loadfile $(ARGS)

test-isolated: $(STAMP) ## run each test module alone, so that none depends on another having run first
	@for module in tests/test_*.py; do \
		echo "$$module"; $(BIN)/python -m pytest -q -p no:cacheprovider "$$module" || exit 1; \
	done

fuzz: $(STAMP) ## the property-based tests with a long budget (make fuzz EXAMPLES=N; make test runs a small fixed one)
	AECLI_FUZZ_EXAMPLES=$${EXAMPLES:-3000} $(BIN)/python -m pytest -q -p no:randomly tests/test_fuzz.py

bench: $(STAMP) ## the fast path per model kind and backend against plain Keras/PyTorch, the text configs against TF-IDF/LSA, 4 ODDS tables against IsolationForest (2.5 min), 6 NAB series (1.8 min) (rewrites BENCHMARKS.md)
	$(BIN)/python benchmarks/bench_kinds.py --quick
	$(BIN)/python benchmarks/bench_text.py --quick
	$(BIN)/python benchmarks/bench_odds.py --quick
	$(BIN)/python benchmarks/bench_nab.py --quick
	$(BIN)/python benchmarks/bench.py --quick

bench-full: $(STAMP) ## every benchmark at full size: more rounds, streaming (arrays and texts), the 16 ODDS tables, the 51 NAB series, one-class MNIST, scoring, serving, workers, sweeps, the TSDAE text config (about 2 hours)
	$(BIN)/python benchmarks/bench_streaming.py
	$(BIN)/python benchmarks/bench_text_streaming.py
	$(BIN)/python benchmarks/bench_kinds.py
	$(BIN)/python benchmarks/bench_series.py
	$(BIN)/python benchmarks/bench_odds.py --variants recipe,untrimmed
	$(BIN)/python benchmarks/bench_nab.py
	$(BIN)/python benchmarks/bench_oneclass.py --variants recipe,conv,combined
	$(BIN)/python benchmarks/bench_workers.py
	$(BIN)/python benchmarks/bench_score.py
	$(BIN)/python benchmarks/bench_serve.py
	$(BIN)/python benchmarks/bench.py --sweep
	$(BIN)/python benchmarks/bench_kinds.py --schedules
	$(BIN)/python benchmarks/bench_text.py
	$(BIN)/python benchmarks/bench.py

lint: $(STAMP) ## ruff
	$(BIN)/ruff check aecli tests benchmarks
	$(BIN)/ruff format --check aecli tests benchmarks

typecheck: $(STAMP) ## mypy
	$(BIN)/mypy

check: lint typecheck test ## lint + types + tests

clean: ## remove the virtualenv, caches and runs
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(RUNS) *.egg-info
