# medsyft: `make demo` and `make test` set up .venv when needed, then run.
# The venv is (re)installed only when pyproject.toml or the constraints change.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINTS := .ci/constraints.txt

.PHONY: demo test bench lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --quiet --disable-pip-version-check \
		-c $(CONSTRAINTS) -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/medsyft demo

# Two workers, one test file each at a time: the real-site suites run side by side.
# -rs prints why a test was skipped (the browser tests skip where Chromium is missing).
test: $(STAMP)
	$(BIN)/python -m pytest -q -rs -n 2 --dist loadfile --durations=15

# Benchmarks at a size that finishes in a few minutes here; BENCH_ARGS=--full for the big sizes.
bench: $(STAMP)
	$(BIN)/python benchmarks/ingest.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/dp_step.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/quality.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/round_overhead.py $(BENCH_ARGS)

# Style, and the import contracts between the project's parts (pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(VENV) .medsyft-demo demo-report.json .pytest_cache
