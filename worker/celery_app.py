"""The workers' Celery app: ``celery -A worker.celery_app worker``.

Settings are read and validated once here, at start-up, so a bad value stops the worker
with a clear message before it takes any task.
"""

from __future__ import annotations

import logging

from shared.queue import make_celery
from shared.settings import Settings
from shared.tasknames import RECONCILE_TASK

settings = Settings.from_env()
logging.basicConfig(
    level=settings.log_level.upper(),
    format="%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s",
)

app = make_celery(settings)
app.conf.update(
    include=["worker.tasks"],
    # Threads: a spawn spends its time waiting on the engine and on the notebook to answer,
    # so many run at once per process (prefork would give one per core and starve).
    worker_pool="threads",
    worker_concurrency=settings.worker_concurrency,
)
app.conf.beat_schedule = {
    "reconcile": {
        "task": RECONCILE_TASK,
        "schedule": settings.reconcile_interval,
        # A pass that could not run in time is replaced by the next one, not queued up behind it.
        "options": {"expires": settings.reconcile_interval},
    },
}
