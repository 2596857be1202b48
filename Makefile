# Every target sets up its own virtual environment in .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ADDRESS ?= 127.0.0.1:8080

.PHONY: venv serve test lint clean

$(STAMP): setup.py pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "wsgi_longpoll needs Python 3.10 or newer"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

venv: $(STAMP)

serve: $(STAMP)
	$(BIN)/wsgi-longpoll serve --address $(ADDRESS)

test: $(STAMP)
	$(BIN)/python -m pytest

# The property tests with many more examples and fresh randomness (make test runs a
# bounded, fixed-seed number). FUZZ_ARGS="-x" and the like go to pytest.
.PHONY: fuzz
fuzz: $(STAMP)
	WSGI_LONGPOLL_FUZZ=long $(BIN)/python -m pytest tests/test_fuzz.py -o timeout=3600 $(FUZZ_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check wsgi_longpoll tests examples
	$(BIN)/mypy --strict wsgi_longpoll
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

# Benchmarks (benchmarks/RESULTS.md): figures, never pass/fail. BENCH_ARGS="--quick" for a
# short run, BENCH_ARGS="--compare-url http://127.0.0.1:8081" to measure a second server.
BENCH_STAMP := $(VENV)/.bench-stamp
BENCH_ARGS ?=

$(BENCH_STAMP): $(STAMP) benchmarks/requirements.txt
	$(BIN)/python -m pip install --quiet -r benchmarks/requirements.txt
	touch $(BENCH_STAMP)

.PHONY: bench
bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)
