# The README's commands. Each brings up what is missing first (Debian packages, the Docker
# engine, Redis, the Python virtualenv), so they work on a fresh Debian machine as root.
SHELL := /bin/bash
PYTEST_ARGS ?=
# The virtualenv: the runtime lock alone for `make run` on a fresh clone, plus the test tools
# once `make test` has run. Another path keeps a venv outside the checkout (the tests do).
VENV ?= .venv
export VENV

.PHONY: run test bench profile bench-tools worker lint typecheck lock clean docs

run:
	scripts/bring-up.sh run
	scripts/run-local.sh

test:
	scripts/bring-up.sh test
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# Benchmarks side by side with raw Docker (bench/spawn.py): figures on stdout, bench/results/bench-latest.json
# and .png. BENCH_ARGS e.g. "--sections cold --n 10". Its tools (requirements-bench.txt) are installed only here.
BENCH_ARGS ?=

bench: bench-tools
	$(VENV)/bin/python -m bench.spawn $(BENCH_ARGS)

# Call trees and round trips of the hot paths (bench/profile.py): bench/results/profile-latest.json and .txt.
profile: bench-tools
	$(VENV)/bin/python -m bench.profile $(BENCH_ARGS)

bench-tools:
	scripts/bring-up.sh bench

# One more worker process beside a running `make run` (to scale out, or replace a dead one).
worker:
	scripts/bring-up.sh run
	$(VENV)/bin/swarm-manager worker --hostname worker-$$$$@%h

# docs/configuration.md from the settings' declarations, api/openapi.json from the API's models and
# api/apidoc.py (tests/test_docs.py and tests/test_openapi.py check both are current).
docs:
	$(VENV)/bin/python -m cli.docs
	$(VENV)/bin/python -m api.openapi

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The lock files, with hashes, from the *.in files (uv, one of the test tools): the runtime set
# (requirements.txt), then the test tools and the benchmark tools with the runtime pins as constraints;
# JupyterHub, which bench/jupyterhub.py runs beside swarm-manager in a virtualenv of its own, alone.
UV_COMPILE = $(VENV)/bin/uv pip compile --quiet --generate-hashes --python-version 3.11 --custom-compile-command "make lock"

lock:
	scripts/bring-up.sh test
	$(UV_COMPILE) requirements.in -o requirements.txt
	$(UV_COMPILE) requirements-dev.in -o requirements-dev.txt
	$(UV_COMPILE) requirements-bench.in -o requirements-bench.txt
	$(UV_COMPILE) requirements-jupyterhub.in -o requirements-jupyterhub.txt

clean:
	rm -rf .venv .state .pytest_cache .mypy_cache .ruff_cache
