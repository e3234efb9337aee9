# The front door: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of this release runs the examples anywhere; CUDA is used when present.
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test browser lint clean bench bench-billed-idle bench-dispatch bench-cold-start \
	bench-batch-scoring bench-cost bench-sweeps bench-serving

TEST_STAMP := $(VENV)/.installed-test
AZURITE := node_modules/.bin/azurite

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[examples,devhost,ui,serve]'
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[azure,examples,test,ui,serve]'
	touch $(TEST_STAMP)

# Azurite, pinned in package-lock.json, installed into ./node_modules.
$(AZURITE): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(AZURITE)

demo: $(STAMP)
	$(BIN)/eph demo

# Azurite runs on free loopback ports for exactly as long as pytest does, and stops even when
# the tests fail or are interrupted. The tests run in PYTEST_WORKERS processes (pytest-xdist; each
# worker has its own Azurite), a test file to a worker so that a module's shared setup runs once;
# PYTEST_WORKERS=0 runs them all in one process.
PYTEST_WORKERS ?= 2
test: $(TEST_STAMP) $(AZURITE) browser
	$(BIN)/python -m ephemerid.testing.azurite -- $(BIN)/python -m pytest \
		-n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The dashboard's browser tests (tests/ui) drive Debian's chromium with Playwright's Python driver
# (pinned in the test extra; it cannot download browsers here). Installed when missing: chromium
# from Debian's archive (as root), the driver with pip. In CI those tests fail without them.
CHROMIUM := /usr/bin/chromium
PLAYWRIGHT := playwright==1.65.2
browser: $(TEST_STAMP)
	@if [ ! -x $(CHROMIUM) ]; then \
		echo "browser tests: no $(CHROMIUM): running apt-get update && apt-get install -y chromium"; \
		apt-get update && apt-get install -y chromium; \
	fi
	@$(BIN)/python -c 'import playwright' 2>/dev/null || { \
		echo "browser tests: installing the Playwright driver ($(PLAYWRIGHT))"; \
		$(BIN)/python -m pip install --quiet '$(PLAYWRIGHT)'; }

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests examples bench
	$(BIN)/ruff format --check src tests examples bench
	$(BIN)/mypy

# Benchmarks (BENCHMARKS.md): each prints a table and writes bench/results/<name>.json. They run
# one after another: do not use -j, they measure. BENCH_ARGS passes options to one of them.
bench: bench-billed-idle bench-dispatch bench-cold-start bench-batch-scoring bench-cost \
	bench-sweeps bench-serving

bench-billed-idle: $(TEST_STAMP)
	$(BIN)/python bench/billed_idle.py $(BENCH_ARGS)

bench-dispatch: $(TEST_STAMP) $(AZURITE)
	$(BIN)/python bench/dispatch.py $(BENCH_ARGS)

bench-cold-start: $(STAMP)
	$(BIN)/python bench/cold_start.py $(BENCH_ARGS)

bench-batch-scoring: $(STAMP)
	$(BIN)/python bench/batch_scoring.py $(BENCH_ARGS)

bench-cost: $(STAMP)
	$(BIN)/python bench/cost.py $(BENCH_ARGS)

bench-sweeps: $(STAMP)
	$(BIN)/python bench/sweeps.py $(BENCH_ARGS)

bench-serving: $(TEST_STAMP)
	$(BIN)/python bench/serving.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) node_modules .ephemerid .ephemerid-demo .pytest_cache .mypy_cache .ruff_cache
