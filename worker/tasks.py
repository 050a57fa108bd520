"""Thin Celery tasks: look up collaborators, call the Spawner, retry transient errors.

Each task takes only the notebook's hostname (so Flower shows it) and is idempotent, so
``acks_late`` redelivery after a lost worker is safe.
"""

from __future__ import annotations

import functools
import logging
import threading

import redis
from celery.signals import worker_ready

from shared.errors import EngineError, EngineUnavailable, StoreUnavailable
from shared.locks import Lease
from shared.nodes import NodeBook, prepull_images
from shared.pool import Pool
from shared.queue import Queue
from shared.store import Store, connect
from shared.tasknames import KILL_TASK, RECONCILE_TASK, REFILL_TASK, SPAWN_TASK
from worker.backends import make_engine
from worker.celery_app import app, settings
from worker.engine import make_client
from worker.pool import Refiller
from worker.prepull import Prepuller
from worker.proxy import make_proxy
from worker.reconciler import Reconciler
from worker.spawner import Spawner

log = logging.getLogger(__name__)

RETRY = {
    "autoretry_for": (EngineUnavailable, StoreUnavailable),
    "retry_backoff": 1,
    "retry_backoff_max": 15,
    "retry_jitter": True,
}

#: Spawn retries without a bound because the Spawner bounds it: after the spawn's deadline it
#: stops raising EngineUnavailable and marks the record FAILED instead.
SPAWN_RETRY = {**RETRY, "max_retries": None}

#: Nothing bounds kill and refill from inside, so they give up after 20 retries (a few minutes
#: of backoff): the reconciler finishes a kill left DELETING and refills the warm pool on every
#: pass anyway.
BOUNDED_RETRY = {**RETRY, "max_retries": 20}


@functools.cache
def store() -> Store:
    # Workers ride out a Redis restart instead of failing the step they are in.
    return Store(connect(settings.redis_target, patience=30), prefix=settings.key_prefix)


@functools.cache
def spawner() -> Spawner:
    """One Spawner (one Docker client and connection pool) per worker process.

    Making it asks the engine nothing (``make_client``), so an engine that is down when the
    worker starts is an ordinary retried engine error at the first call; with
    ENGINE_BACKEND=auto the backend is chosen at that first call too.
    """
    return Spawner(
        store(), make_engine(settings, make_client(settings)), settings, pool=pool(), proxy=make_proxy(settings)
    )


@functools.cache
def pool() -> Pool | None:
    return Pool(store(), settings.pool_sizes) if settings.pool else None


@functools.cache
def refiller() -> Refiller | None:
    """One per process, with the spawner's profiles: one view of PROFILES_FILE per process."""
    p = pool()
    return Refiller(store(), p, Queue(app), settings, profiles=spawner().profiles) if p else None


@functools.cache
def reconciler() -> Reconciler:
    sp = spawner()
    return Reconciler(store(), sp.engine, sp, settings, queue=Queue(app), refiller=refiller())


def watch_lease() -> Lease:
    """The lease of ``swarm-manager watch``: one process follows the engine's events at a time."""
    return Lease(store().redis, settings.key_prefix, "watch")


@app.task(name=SPAWN_TASK, **SPAWN_RETRY)
def spawn(hostname: str) -> str | None:
    status = spawner().spawn(hostname)
    return status.value if status else None


@app.task(name=KILL_TASK, **BOUNDED_RETRY)
def kill(hostname: str) -> str | None:
    status = spawner().kill(hostname)
    return status.value if status else None


@functools.cache
def prepuller() -> Prepuller:
    """One per process: pulls the listed images onto every node, and records what each has."""
    sp = spawner()
    images = prepull_images(settings, sp.profiles)
    return Prepuller(sp.engine, NodeBook(store().redis, settings.key_prefix), images, settings)


def pre_pull() -> None:
    """One pre-pull look at the nodes; a failure waits for the next pass (it is never a task's)."""
    try:
        prepuller().run()
    except (EngineError, EngineUnavailable, StoreUnavailable, redis.RedisError) as exc:
        log.warning("pre-pull: could not look at the nodes (next pass retries): %s", exc)


@worker_ready.connect
def _pre_pull_at_start(**_: object) -> None:
    # A node should not wait for the first reconcile pass (RECONCILE_INTERVAL) to get its images.
    # Made here, before tasks run, so the tasks and this share one Spawner (and one engine's
    # single flight); making them asks the engine nothing.
    prepuller()
    threading.Thread(target=pre_pull, name="prepull-at-start", daemon=True).start()


@app.task(name=RECONCILE_TASK, acks_late=False, ignore_result=True)
def reconcile() -> dict[str, object]:
    report = reconciler().run().as_dict()
    # After the pass and outside its lock: it only starts pulls (in the background, or as jobs on
    # the nodes), and two workers doing it at once start each at most once (single flight, job names).
    pre_pull()
    return report


@app.task(name=REFILL_TASK, **BOUNDED_RETRY)
def refill_pool(image: str) -> list[str]:
    r = refiller()
    return r.refill(image) if r else []
