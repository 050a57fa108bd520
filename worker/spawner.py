"""Spawn and kill, step by step, with every step safe to repeat.

The Celery tasks in ``worker/tasks.py`` are thin wrappers around :class:`Spawner`; the
logic lives here so it can be driven directly with a real or fake store and engine.

How a kill wins over a spawn at any stage: every record write the spawner makes is a
guarded transition that only succeeds while the record is still PENDING/STARTING. When one
is refused because a kill moved the record to DELETING (or further), the spawner removes
whatever it created itself, so no container outlives its record whichever task runs first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from shared.errors import EngineError, EngineUnavailable, InvalidTransition, NotFound
from shared.record import Notebook
from shared.settings import Settings
from shared.status import Status
from shared.store import Store
from worker.engine import Engine, NotebookSpec
from worker.readiness import answers_http

log = logging.getLogger(__name__)

#: How often the wait-for-ready loop also asks the engine and the store whether to give up.
CHECK_EVERY = 1.0


class Spawner:
    def __init__(
        self,
        store: Store,
        engine: Engine,
        settings: Settings,
        *,
        probe: Callable[[str], bool] = answers_http,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.engine = engine
        self.settings = settings
        self.probe = probe
        self.clock = clock
        self.sleep = sleep

    def spec_for(self, record: Notebook) -> NotebookSpec:
        return NotebookSpec(
            hostname=record.hostname,
            image=record.image,
            user=record.user,
            domain=record.domainname,
            port=self.settings.notebook_port,
            instance=self.settings.instance,
        )

    # -- spawn -------------------------------------------------------------------
    def spawn(self, hostname: str) -> Status | None:
        """Bring ``hostname`` to ACTIVE or FAILED; return the status it ends in (None: no record).

        Raises EngineUnavailable while the engine is unreachable and the spawn's deadline has
        not passed (the task retries with backoff); after the deadline the record is FAILED.
        """
        record = self.store.get(hostname)
        if record is None:
            log.warning("%s: spawn for a record that does not exist; ignored", hostname)
            return None
        if record.status not in (Status.PENDING, Status.STARTING):
            # ACTIVE/FAILED: a redelivered or repeated task. DELETING/REMOVED: a kill won.
            log.info("%s: spawn skipped, record is %s", hostname, record.status)
            return record.status
        spec = self.spec_for(record)
        try:
            placement = self.engine.start(spec)
        except EngineUnavailable as exc:
            if self.clock() < self._deadline(hostname, "queue_deadline"):
                raise
            return self.fail(spec, f"{exc} (gave up after {self.settings.start_timeout:g}s)")
        except EngineError as exc:
            return self.fail(spec, str(exc))

        started_at = self.clock()
        try:
            if record.status == Status.PENDING:
                record = self.store.transition(
                    hostname,
                    Status.STARTING,
                    container_id=placement.object_id,
                    address=placement.address,
                    node=placement.node,
                    internal={"ready_deadline": str(started_at + self.settings.start_timeout)},
                )
            else:  # a redelivered spawn that had got this far: keep its original deadline
                record = self.store.transition(
                    hostname,
                    None,
                    allowed={Status.STARTING},
                    container_id=placement.object_id,
                    address=placement.address,
                    node=placement.node,
                )
        except (InvalidTransition, NotFound):
            log.info("%s: killed while starting; removing its container", hostname)
            self.engine.remove(spec)
            return self._status(hostname)
        return self._wait_ready(spec, placement.address)

    def _wait_ready(self, spec: NotebookSpec, address: str) -> Status | None:
        hostname = spec.hostname
        deadline = self._deadline(hostname, "ready_deadline")
        next_check = self.clock() + CHECK_EVERY
        while not self.probe(address):
            now = self.clock()
            if now >= deadline:
                return self.fail(
                    spec,
                    f"the notebook did not answer HTTP on port {spec.port} within "
                    f"{self.settings.start_timeout:g}s" + self._logs(spec),
                )
            if now >= next_check:
                next_check = now + CHECK_EVERY
                current = self._status(hostname)
                if current != Status.STARTING:
                    log.info("%s: stopped waiting, record is %s", hostname, current)
                    return current  # a kill won; the kill task removes the container
                try:
                    state = self.engine.state(spec)
                except EngineUnavailable as exc:
                    # Keep probing; the start deadline still bounds the wait.
                    log.warning("%s: engine check failed while waiting: %s", hostname, exc)
                else:
                    if state is None:
                        return self.fail(spec, "the container disappeared while starting")
                    if not state.running:
                        return self.fail(spec, f"the container {state.reason} before answering" + self._logs(spec))
            self.sleep(self.settings.probe_interval)
        try:
            self.store.transition(hostname, Status.ACTIVE, allowed={Status.STARTING})
        except InvalidTransition as exc:
            log.info("%s: ready, but the record is now %s", hostname, exc.current)
            return self._status(hostname)
        log.info("%s: ACTIVE at %s", hostname, address)
        return Status.ACTIVE

    # -- kill --------------------------------------------------------------------
    def kill(self, hostname: str) -> Status | None:
        """Remove the notebook's engine object and mark the record REMOVED.

        Only acts on a DELETING record (the API moved it there); a missing object counts as
        removed. Raises EngineUnavailable while the engine cannot be reached (the task retries).
        """
        record = self.store.get(hostname)
        if record is None:
            return None
        if record.status != Status.DELETING:
            return record.status
        self.engine.remove(self.spec_for(record))
        try:
            self.store.transition(hostname, Status.REMOVED)
        except InvalidTransition:
            pass  # a concurrent kill task finished first
        log.info("%s: REMOVED", hostname)
        return Status.REMOVED

    # -- helpers -----------------------------------------------------------------
    def fail(
        self,
        spec: NotebookSpec,
        reason: str,
        allowed: frozenset[Status] = frozenset({Status.PENDING, Status.STARTING}),
    ) -> Status | None:
        """Remove the engine object first, then mark FAILED (so FAILED never leaves one behind)."""
        log.warning("%s: failed: %s", spec.hostname, reason)
        try:
            self.engine.remove(spec)
        except (EngineError, EngineUnavailable) as exc:
            # Left for the reconciler's orphan sweep: the record is FAILED, so it is not live.
            log.warning("%s: could not remove after failure: %s", spec.hostname, exc)
        try:
            self.store.transition(spec.hostname, Status.FAILED, allowed=allowed, error=reason)
        except InvalidTransition:
            pass  # a kill won meanwhile
        return self._status(spec.hostname)

    def _status(self, hostname: str) -> Status | None:
        record = self.store.get(hostname)
        return record.status if record else None

    def _deadline(self, hostname: str, name: str) -> float:
        raw = self.store.internal(hostname, name)
        try:
            return float(raw) if raw else self.clock() + self.settings.start_timeout
        except ValueError:
            return self.clock() + self.settings.start_timeout

    def _logs(self, spec: NotebookSpec) -> str:
        tail = self.engine.logs_tail(spec, lines=5)
        return f"; last output: {tail[-400:]}" if tail else ""
