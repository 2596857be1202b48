# Every target sets up its own virtual environment in .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two stamps: `make serve` installs only what serving needs (a fast first run);
# `make test` and `make lint` add the test and development extras.
SERVE_STAMP := $(VENV)/.serve-stamp
STAMP := $(VENV)/.installed-stamp
ADDRESS ?= 127.0.0.1:8080

.PHONY: venv serve test lint clean

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "wsgi_longpoll needs Python 3.10 or newer"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(SERVE_STAMP): setup.py pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(SERVE_STAMP)

$(STAMP): setup.py pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP) $(SERVE_STAMP)

venv: $(STAMP)

serve: $(SERVE_STAMP)
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
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache

# Benchmarks (benchmarks/RESULTS.md): figures, never pass/fail. BENCH_ARGS="--quick" for a
# short run, BENCH_ARGS="--compare-url http://127.0.0.1:8081" to measure a second server,
# BENCH_ARGS="--golongpoll PATH" to start golongpoll's reference build as that server.
# With Go installed, `make bench` also builds lpload into .venv/lpload and writes the
# hot-channel table (issue 21) into benchmarks/RESULTS.md; without it, it says how to get Go.
BENCH_STAMP := $(VENV)/.bench-stamp
BENCH_ARGS ?=

$(BENCH_STAMP): $(STAMP) benchmarks/requirements.txt
	$(BIN)/python -m pip install --quiet -r benchmarks/requirements.txt
	touch $(BENCH_STAMP)

.PHONY: bench
bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

# Peak RSS of `serve` under a memory budget while clients publish (with Idempotency-Keys and
# retries), park polls, stream and subscribe without reading (issue 20). BENCH_ARGS: see
# benchmarks/memory_budget.py --help (e.g. "--budget-mib 64 --streams 0").
.PHONY: bench-memory
bench-memory: $(STAMP)
	$(BIN)/python benchmarks/memory_budget.py $(BENCH_ARGS)

# Fan-out and SIGTERM of the standalone server and of the Flask and Django integrations
# under gunicorn's LongpollWorker (issue 18). BENCH_ARGS="--quick": 1,000 subscribers.
.PHONY: bench-frameworks
bench-frameworks: $(BENCH_STAMP)
	$(BIN)/python benchmarks/bench_frameworks.py $(BENCH_ARGS)

# Acknowledged events a Redis failover loses, with and without --redis-min-replicas
# (issue 19): a primary, 2 replicas and 3 sentinels of the test's redis-server, the primary
# SIGKILLed under load. FAILOVER_ARGS="--rounds 5" for more rounds.
FAILOVER_ARGS ?=

.PHONY: bench-failover
bench-failover: $(STAMP)
	$(BIN)/python benchmarks/failover.py $(FAILOVER_ARGS)
# The Redis engine against the in-memory engine, per request (issue 19): publish,
# immediate subscribe, fan-out, two processes, a herd of re-polls. Needs wrk.
# BENCH_ARGS="--compare-src /path/to/older/checkout" measures a second tree alternately.
.PHONY: bench-redis
bench-redis: $(BENCH_STAMP)
	$(BIN)/python benchmarks/redis_bench.py $(BENCH_ARGS)

# A long-poll tier apart from the application (issue 19): a Flask app under flask run issues
# subscribe tokens and publishes to Redis; wsgi-longpoll serve --workers 2 holds 10,000
# subscribers. BENCH_ARGS="--subscribers 2000 --rounds 1" for a short run.
.PHONY: bench-tier
bench-tier: $(STAMP)
	$(BIN)/python benchmarks/tier.py $(BENCH_ARGS)

# Server CPU per publish and per immediate subscribe beside golongpoll (issue 21):
# BENCH_ARGS="--golongpoll PATH --rounds 3", or "--callgrind 20000" (instructions per request).
.PHONY: bench-cpu
bench-cpu: $(STAMP)
	$(BIN)/python benchmarks/bench_cpu.py $(BENCH_ARGS)
