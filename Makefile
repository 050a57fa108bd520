# The README's commands. Each brings up what is missing first (Debian packages, the Docker
# engine, Redis, the Python virtualenv), so they work on a fresh Debian machine as root.
SHELL := /bin/bash
PYTEST_ARGS ?=

.PHONY: run test bench profile bench-tools worker lint typecheck clean

run:
	scripts/bring-up.sh run
	scripts/run-local.sh

test:
	scripts/bring-up.sh test
	.venv/bin/python -m pytest $(PYTEST_ARGS)

# Benchmarks side by side with raw Docker (bench/spawn.py): figures on stdout, bench/results/bench-latest.json
# and .png. BENCH_ARGS e.g. "--sections cold --n 10". Its tools (requirements-bench.txt) are installed only here.
BENCH_ARGS ?=

bench: bench-tools
	.venv/bin/python -m bench.spawn $(BENCH_ARGS)

# Call trees and round trips of the hot paths (bench/profile.py): bench/results/profile-latest.json and .txt.
profile: bench-tools
	.venv/bin/python -m bench.profile $(BENCH_ARGS)

bench-tools:
	scripts/bring-up.sh test
	@if [ ! -f .venv/.installed-bench ] || [ requirements-bench.txt -nt .venv/.installed-bench ] \
	    || [ .venv/.installed-test -nt .venv/.installed-bench ]; then \
	  echo "installing benchmark tools from requirements-bench.txt"; \
	  .venv/bin/pip install -q --disable-pip-version-check -r requirements-bench.txt && touch .venv/.installed-bench; \
	fi

# One more worker process beside a running `make run` (to scale out, or replace a dead one).
worker:
	scripts/bring-up.sh run
	.venv/bin/celery -A worker.celery_app worker --loglevel INFO --hostname worker-$$$$@%h

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

clean:
	rm -rf .venv .state .pytest_cache .mypy_cache .ruff_cache
