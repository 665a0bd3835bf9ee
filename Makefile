# Quick start:  make demo   (set up, then run the sidecar + a real Envoy on the embedded default config)
#               make test   (set up, then lint, type-check and run every test)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: setup demo serve lint test bench-smoke bench soak clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: setup
	$(BIN)/authz-sidecar demo

serve: setup
	$(BIN)/authz-sidecar serve

lint: setup
	$(BIN)/ruff check sidecar tests benchmarks
	$(BIN)/ruff format --check sidecar tests benchmarks
	$(BIN)/mypy sidecar

test: setup
	bash scripts/ensure-system-deps.sh
	bash scripts/ensure-kube-tools.sh $(VENV)
	$(MAKE) lint
	$(BIN)/pytest
	$(MAKE) fuzz FUZZ_SECONDS=5

# Coverage-guided fuzzers (tests/fuzz/): every target FUZZ_SECONDS seconds (or FUZZ_RUNS inputs, whichever first);
# a crash is minimized into tests/fuzz/regressions/<target>/ and fails the run.
FUZZ_SECONDS ?= 10
FUZZ_RUNS ?= -1
fuzz: setup
	$(BIN)/python -m tests.fuzz run --seconds $(FUZZ_SECONDS) --runs $(FUZZ_RUNS)

bench-smoke: setup
	$(BIN)/python -m benchmarks run --smoke

bench: setup
	$(BIN)/python -m benchmarks run --quick

SOAK_MINUTES ?= 10

soak: setup
	$(BIN)/python -m benchmarks.soak --minutes $(SOAK_MINUTES)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
