"""Gunicorn entry point: ``gunicorn api.wsgi:app``."""

import gc

from api import create_app

app = create_app()

# Everything loaded so far (Flask, Celery, kombu, redis-py: ~60,000 objects) lives as long as
# the process. Frozen, the collector never walks it again: a full collection took ~35 ms, a
# pause any request that triggered it waited out (the tail of POST /spawn's latency).
gc.freeze()
