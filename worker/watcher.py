"""Notice a notebook that stops at once, from the engine's events, instead of at the next pass.

``swarm-manager watch`` runs :meth:`Watcher.run`: it follows the engine's events
(:meth:`Engine.changes`: a container's ``die``, ``oom`` or ``destroy``; in services mode the
Swarm's task states, read every half second) and for each one does what a reconcile pass would
for that notebook (:meth:`Reconciler.check`: an ACTIVE notebook whose object stopped or vanished
becomes FAILED with the reason, and is removed). Events are hints: what happened is always
asked of the engine, and every move is the reconciler's own guarded, fenced one, so a repeated
or late event changes nothing.

One watcher follows an engine at a time (a Lease, shared/locks.py); others stand by and take
over within the lease's TTL, replaying the events of that window. Following is done in pieces
of ``TTL / 3`` seconds (the engine's ``until``), each resumed from where the last ended: the
lease is renewed in between, and a connection that died silently ends with its piece. The
reconcile passes stay the safety net: a watcher that is down or cut off delays nothing past
the next pass.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from shared.errors import EngineError, EngineUnavailable, StoreUnavailable
from shared.locks import Lease
from worker.engine import Engine
from worker.reconciler import Reconciler

log = logging.getLogger(__name__)

#: Seconds each piece of the event stream starts before the last one ended: events stamped by
#: the engine just before a piece ended may reach it only in the next one (seeing one twice is
#: harmless).
OVERLAP = 1.0
#: Seconds to wait after the engine or Redis failed before following again.
BACKOFF = 1.0


class Watcher:
    def __init__(
        self,
        engine: Engine,
        reconciler: Reconciler,
        lease: Lease,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.reconciler = reconciler
        self.lease = lease
        self.clock = clock
        self.piece = lease.ttl / 3

    def run(self, stop: threading.Event) -> None:
        """Follow the engine until ``stop`` is set, whenever this process holds the lease."""
        since: float | None = None
        leading = False
        try:
            while not stop.is_set():
                try:
                    if not self.lease.hold():
                        if leading:
                            log.warning("watch: lost the lease; standing by")
                        leading, since = False, None
                        stop.wait(self.piece)
                        continue
                    if not leading:
                        log.info("watch: following the engine's events")
                        leading = True
                    now = self.clock()
                    # A new holder replays what the last one may have missed (its lease's TTL).
                    start = since if since is not None else now - self.lease.ttl
                    until = now + self.piece
                    self.follow(start, until)
                    since = until - OVERLAP
                except (EngineError, EngineUnavailable, StoreUnavailable) as exc:
                    log.warning("watch: %s; following again in %g s", exc, BACKOFF)
                    stop.wait(BACKOFF)
        finally:
            if leading:
                self.lease.release()

    def follow(self, since: float, until: float) -> int:
        """Handle the engine's changes between ``since`` and ``until``; how many notebooks it failed."""
        failed = 0
        for hostname, when in self.engine.changes(since, until):
            try:
                report = self.reconciler.check(hostname)
            except (EngineError, EngineUnavailable) as exc:
                log.warning("%s: watch could not check it (the next pass will): %s", hostname, exc)
                continue
            if report.failed:
                failed += 1
                log.info("%s: FAILED %.3f s after the engine's event", hostname, max(0.0, self.clock() - when))
        return failed
