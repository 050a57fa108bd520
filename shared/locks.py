"""Work that runs in one place at a time, and is never dropped: a held lock means "run again"
(RerunLock), or "stand by to take over" (Lease, for work that never ends).

Every lock in swarm-manager (there are no others; docs/operations.md's lock table lists the same):

================  ==========================  ===========  ==============================================
lock (key)        owner                       TTL          a caller that finds it held
================  ==========================  ===========  ==============================================
``reconcile``     the worker running a pass   ``TTL`` s,   asks for another pass: the holder runs one more
                  (worker/reconciler.py)      renewed      right after its own, so no beat tick is lost
``refill:<img>``  the worker refilling a      ``TTL`` s,   asks for another refill: the holder runs it,
                  pooled image (worker/pool)  renewed      so a burst of claims always ends with a full pool
``watch``         the process following the   10 s,        stands by: tries again every 10 / 3 s and
                  engine's events             renewed      takes over (replaying the events it may have
                  (worker/watcher.py)                      missed) once the holder is gone (a Lease)
================  ==========================  ===========  ==============================================

The holder renews the lock every ``TTL / 3`` seconds while it works and releases it when done
(only its own: the value is a random token). A holder that crashes stops renewing: its lock
ends ``TTL`` seconds later and the next request runs the work (its own request to run again
is kept, ``2 * TTL``, so it is not lost either). Checking for a request to run again and
releasing are one script, so a request made while the holder finishes is never missed.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from typing import TypeVar

import redis

from shared import lua

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Seconds a lock lives unless its holder renews it (every TTL / 3 while it works).
TTL = 30.0


class RerunLock:
    """A named lock in Redis (``<prefix>lock:<name>``) whose holder runs again on request."""

    def __init__(self, client: redis.Redis, prefix: str, name: str, ttl: float = TTL) -> None:
        self.redis = client
        self.name = name
        self.ttl_ms = max(1, int(ttl * 1000))
        self.keys = [f"{prefix}lock:{name}", f"{prefix}lock:{name}:again"]
        self._acquire = lua.register(client, "lock_acquire")
        self._finish = lua.register(client, "lock_finish")
        self._renew = lua.register(client, "lock_renew")
        self._release_script = lua.register(client, "lock_release")

    def run(self, work: Callable[[], T]) -> list[T]:
        """Run ``work`` here, as many times as it was asked for while it ran; or, if another
        process holds the lock, ask it to run once more and return [] at once."""
        token = secrets.token_hex(12)
        if not self._acquire(keys=self.keys, args=[token, self.ttl_ms, 2 * self.ttl_ms]):
            return []
        results: list[T] = []
        done = threading.Event()
        renewer = threading.Thread(target=self._keep, args=(token, done), name=f"lock-{self.name}", daemon=True)
        renewer.start()
        try:
            while True:
                results.append(work())
                if self._finish(keys=self.keys, args=[token, self.ttl_ms]) != 1:
                    return results
                log.info("%s: asked for again while it ran; running once more", self.name)
        except BaseException:
            # Let the next request run it (a request to run again made meanwhile is kept).
            self._release(token)
            raise
        finally:
            done.set()
            renewer.join(5)

    def _keep(self, token: str, done: threading.Event) -> None:
        while not done.wait(self.ttl_ms / 3000):
            try:
                self._renew(keys=self.keys[:1], args=[token, self.ttl_ms])
            except redis.RedisError as exc:
                log.warning("%s: could not renew the lock: %s", self.name, exc)

    def _release(self, token: str) -> None:
        try:
            self._release_script(keys=self.keys[:1], args=[token])
        except redis.RedisError as exc:
            log.warning("%s: could not release the lock (it expires by itself): %s", self.name, exc)


class Lease:
    """One holder at a time for work that runs all the time (``<prefix>lock:<name>``): whoever
    holds it calls :meth:`hold` again within ``ttl`` to keep it; a holder that stops calling
    (crashed, paused, cut off from Redis) loses it ``ttl`` seconds later to the next caller."""

    TTL = 10.0

    def __init__(self, client: redis.Redis, prefix: str, name: str, ttl: float = TTL) -> None:
        self.key = f"{prefix}lock:{name}"
        self.ttl = ttl
        self.token = secrets.token_hex(12)
        self.redis = client
        self._hold = lua.register(client, "lease_hold")
        self._release = lua.register(client, "lock_release")

    def hold(self) -> bool:
        """Take the lease or keep it: True while this process holds it."""
        return bool(self._hold(keys=[self.key], args=[self.token, max(1, int(self.ttl * 1000))]))

    def release(self) -> None:
        """Give the lease up, if still held, so a stand-by takes over at once."""
        try:
            self._release(keys=[self.key], args=[self.token])
        except redis.RedisError as exc:
            log.warning("%s: could not release the lease (it expires by itself): %s", self.key, exc)
