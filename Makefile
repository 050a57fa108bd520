# The README's commands. Each brings up what is missing first (Debian packages, the Docker
# engine, Redis, the Python virtualenv), so they work on a fresh Debian machine as root.
SHELL := /bin/bash
PYTEST_ARGS ?=

.PHONY: run test worker lint typecheck clean

run:
	scripts/bring-up.sh run
	scripts/run-local.sh

test:
	scripts/bring-up.sh test
	.venv/bin/python -m pytest $(PYTEST_ARGS)

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
