"""Gunicorn entry point: ``gunicorn api.wsgi:app``."""

import gc

from api import create_app

app = create_app()

# Everything loaded so far (Flask, Celery, kombu, redis-py) lives as long as the process.
# Frozen, the collector never walks it again: a full collection of it is a pause that the
# request that triggered it waits out (the tail of POST /spawn's latency, docs/benchmarks.md).
gc.freeze()
