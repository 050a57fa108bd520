"""Make records and engine objects agree, whatever crashed in between.

One pass reads the engine once (every object labelled with this instance) and the live
records once per live status, then:

- ACTIVE whose object vanished or stopped (its state asked again first) -> FAILED with the reason
  (exit code, OOM, gone);
- PENDING/STARTING past their deadline (the worker running them died) -> FAILED, object removed;
- DELETING left over (its kill task was lost) -> the kill is done here;
- objects labelled as ours with no live record, older than ORPHAN_GRACE -> removed (logged);
- notebooks past their ``expires_at`` (MAX_AGE or the spawn's ttl), or whose server reports no
  activity for IDLE_TIMEOUT, are killed (DELETING with the reason in ``error``, then a kill task);
- FAILED/REMOVED records older than RECORD_RETENTION are deleted with their index entries.

Objects not labelled with this instance are never looked at. Passes take a lock
(shared/locks.py), so several workers never run two at once, and a pass asked for while one runs
is run right after it, never dropped; every step is also a guarded transition (fenced: a spawn
attempt paused somewhere cannot undo it) or an idempotent removal, so even an overlapping pass
is safe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from shared.errors import (
    EngineError,
    EngineUnavailable,
    InvalidTransition,
    NotFound,
    ProxyError,
    QueueUnavailable,
    StoreUnavailable,
)
from shared.locks import RerunLock
from shared.notebook_token import FIELD as TOKEN_FIELD
from shared.pool import ANONYMOUS_USER, POOL_USER
from shared.queue import Queue
from shared.record import SPAWN_INTERNALS, Internal, Notebook, parse_rfc3339
from shared.settings import Settings
from shared.status import Status
from shared.store import Store
from worker.activity import last_activity
from worker.engine import Engine, EngineObject, NotebookSpec
from worker.pool import Refiller
from worker.proxy import Route
from worker.spawner import Spawner

log = logging.getLogger(__name__)

#: Extra time past a spawn's own deadline before the reconciler takes over, so a live
#: spawn always gets to fail its notebook itself first (with the more precise reason).
DEADLINE_MARGIN = 15.0


@dataclass
class Report:
    failed: list[str] = field(default_factory=list)
    removed_orphans: list[str] = field(default_factory=list)
    finished_kills: list[str] = field(default_factory=list)
    culled: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    pool_started: list[str] = field(default_factory=list)
    purged: list[str] = field(default_factory=list)
    routed: list[str] = field(default_factory=list)  # proxy routes added for ACTIVE notebooks missing one
    unrouted: list[str] = field(default_factory=list)  # proxy routes removed: their notebook is no longer live
    skipped: bool = False

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class Reconciler:
    def __init__(
        self,
        store: Store,
        engine: Engine,
        spawner: Spawner,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        queue: Queue | None = None,
        activity: Callable[[str, str], float | None] = last_activity,
        refiller: Refiller | None = None,
    ) -> None:
        self.store = store
        self.engine = engine
        self.spawner = spawner
        self.settings = settings
        self.clock = clock
        # Culled notebooks are killed by kill tasks (spread over the workers); without a
        # queue the kill runs here, in the pass, and lost spawns are not sent again.
        self.queue = queue
        self.refiller = refiller
        self.activity = activity

    def run(self, lock: bool = True) -> Report:
        """One pass; with ``lock``, at most one at a time across every worker (shared/locks.py): a
        pass asked for while another runs makes that one run again right after, instead of being
        dropped (``skipped``: this call left its pass to the holder)."""
        if not lock:
            return self._pass()
        reports = RerunLock(self.store.redis, self.store.prefix, "reconcile").run(self._pass)
        return reports[-1] if reports else Report(skipped=True)

    def _pass(self) -> Report:
        report = Report()
        objects = self.engine.inventory()
        routes = self._routes()  # before the records: see _sync_routes
        live: dict[str, Notebook] = {}
        for status in (Status.PENDING, Status.STARTING, Status.ACTIVE, Status.DELETING):
            for record in self.store.records(status=status):
                live[record.hostname] = record
        now = self.clock()

        for hostname, record in live.items():
            spec = self.spawner.spec_for(record)
            obj = objects.get(hostname)
            try:
                if record.status == Status.ACTIVE:
                    if obj is None or not obj.running:
                        # The inventory was read before the records: a notebook that started in
                        # between is missing from it, or not running yet. Ask for its state now.
                        self._check_running(report, spec)
                elif record.status in (Status.PENDING, Status.STARTING):
                    if self._adopt(report, record, obj):
                        report.adopted.append(hostname)
                    elif now > self._deadline(record) + DEADLINE_MARGIN:
                        self._fail(
                            report,
                            spec,
                            f"did not become ready in time (still {record.status} past its "
                            "deadline; its worker may have stopped)",
                            record.status,
                        )
                    elif record.status == Status.PENDING and self._lost(record, now):
                        self._resend(report, hostname)
                elif (
                    record.status == Status.DELETING
                    and now - parse_rfc3339(record.updated_at) > self._kill_wait()
                    # Forced: a spawn attempt that was to finish this kill has had its time.
                    and self.spawner.kill(hostname, force=True) == Status.REMOVED
                ):
                    report.finished_kills.append(hostname)
            except (EngineError, EngineUnavailable) as exc:
                log.warning("%s: reconcile step failed, will retry next pass: %s", hostname, exc)

        self._cull(
            report, [r for r in live.values() if r.status in (Status.PENDING, Status.STARTING, Status.ACTIVE)], now
        )
        self._sync_routes(report, routes, live)
        if self.refiller is not None:  # keeps the warm pool full, and fills it at start-up
            for image in self.refiller.pool.sizes:
                report.pool_started.extend(self.refiller.refill(image))
        if self.settings.record_retention:
            report.purged = self.store.purge_ended(now - self.settings.record_retention)
        removed, added = self.store.sync_live(live)  # quota counts (shared/limits.py) heal themselves
        if removed or added:
            log.warning("reconcile: quota counts corrected (%d dropped, %d added)", removed, added)

        for hostname, obj in objects.items():
            if hostname in live or now - obj.created < self.settings.orphan_grace:
                continue
            spec = NotebookSpec(
                hostname=hostname,
                image="",
                user="",
                domain="",
                port=self.settings.notebook_port,
                instance=self.settings.instance,
            )
            try:
                self.engine.remove(spec)
            except (EngineError, EngineUnavailable) as exc:
                log.warning("%s: could not remove orphan: %s", hostname, exc)
                continue
            log.warning("%s: removed orphaned notebook object %s (no live record)", hostname, spec.name)
            report.removed_orphans.append(hostname)
        if any(
            (
                report.failed,
                report.removed_orphans,
                report.finished_kills,
                report.culled,
                report.purged,
                report.resent,
                report.adopted,
                report.routed,
                report.unrouted,
            )
        ):
            log.info("reconcile: %s", report.as_dict())
        return report

    def check(self, hostname: str) -> Report:
        """What a pass does for one ACTIVE notebook, at once: FAILED with the reason when its object
        stopped or vanished (worker/watcher.py calls this on the engine's events)."""
        report = Report()
        record = self.store.get(hostname)
        if record is not None and record.status == Status.ACTIVE:
            self._check_running(report, self.spawner.spec_for(record))
        return report

    def _check_running(self, report: Report, spec: NotebookSpec) -> None:
        state = self.engine.state(spec)
        if state is None:
            self._fail(report, spec, "the notebook's container disappeared", Status.ACTIVE)
        elif not state.running:
            self._fail(report, spec, f"the notebook's container {state.reason or 'stopped'}", Status.ACTIVE)

    def _idle_limit(self, record: Notebook) -> float:
        """Seconds ``record`` may be idle (0: no limit): IDLE_TIMEOUT, and for an anonymous
        notebook also ANONYMOUS_IDLE_TIMEOUT, the shorter of those set."""
        limits = [self.settings.idle_timeout]
        if record.user == ANONYMOUS_USER:
            limits.append(self.settings.anonymous_idle_timeout)
        return min((x for x in limits if x), default=0.0)

    def _cull(self, report: Report, records: list[Notebook], now: float) -> None:
        """Kill notebooks past their lifetime, and ACTIVE ones idle longer than they may be."""
        reasons: dict[str, str] = {}
        for record in records:
            if record.expires_at and parse_rfc3339(record.expires_at) <= now:
                reasons[record.hostname] = "expired: reached the end of its lifetime"
        # Warm-pool members are idle by design: only their age limit applies.
        candidates = [
            r
            for r in records
            if self._idle_limit(r)
            and r.status == Status.ACTIVE
            and r.address
            and r.hostname not in reasons
            and r.user != POOL_USER
        ]
        if candidates:
            # Each server answers only with its own token (one read for all of them).
            tokens = self.store.internals((r.hostname for r in candidates), TOKEN_FIELD)
            # Ask the servers side by side: one slow notebook must not hold up the pass.
            with ThreadPoolExecutor(max_workers=min(16, len(candidates))) as pool:
                seen = list(pool.map(lambda r: self.activity(r.address, tokens.get(r.hostname, "")), candidates))
            for record, last in zip(candidates, seen, strict=True):
                idle = self._idle_limit(record)
                if last is not None and now - last > idle:
                    reasons[record.hostname] = f"culled: idle for more than {idle:g}s"
        for hostname, reason in reasons.items():
            try:
                self.store.transition(hostname, Status.DELETING, error=reason)
            except (InvalidTransition, NotFound):
                continue  # it moved on by itself meanwhile
            log.info("%s: %s", hostname, reason)
            report.culled.append(hostname)
            try:
                if self.queue:
                    self.queue.kill(hostname)
                else:
                    self.spawner.kill(hostname)
            except (EngineError, EngineUnavailable, QueueUnavailable) as exc:
                # The record is DELETING: a later pass finishes the kill.
                log.warning("%s: kill after culling failed for now: %s", hostname, exc)

    def _adopt(self, report: Report, record: Notebook, obj: EngineObject | None) -> bool:
        """Mark ACTIVE a STARTING notebook whose container runs and answers.

        Normally its spawn does that within one probe interval; one that is still STARTING
        while its server answers lost its spawn (the worker died), and the notebook is fine.
        """
        if record.status != Status.STARTING or obj is None or not obj.running or not record.address:
            return False
        if not self.spawner.probe(record.address):
            return False
        spec = self.spawner.with_token(self.spawner.spec_for(record), record)
        problem = self.spawner.token_problem(spec, record.address)
        if problem:  # it answers, but anyone could use it: never ACTIVE (as its spawn would decide)
            self._fail(report, spec, problem, Status.STARTING)
            return False
        try:
            # Fenced: the spawn that lost track of it (paused, or about to hit its deadline) can
            # then no longer fail it or remove its container.
            self.store.transition(record.hostname, Status.ACTIVE, allowed={Status.STARTING}, fence=True)
        except (InvalidTransition, NotFound):
            return False
        try:
            self.store.drop_internal(record.hostname, *SPAWN_INTERNALS)
        except StoreUnavailable as exc:
            log.warning("%s: could not drop the spawn's deadlines: %s", record.hostname, exc)
        log.warning("%s: adopted as ACTIVE (its server answers; its spawn task was lost)", record.hostname)
        self.spawner.offer_to_pool(self.spawner.spec_for(record))
        return True

    def _routes(self) -> dict[str, Route] | None:
        """This instance's proxy routes by hostname; None without a proxy or when it cannot be read."""
        if self.spawner.proxy is None:
            return None
        try:
            return self.spawner.proxy.routes()
        except ProxyError as exc:
            log.warning("reconcile: cannot read the proxy's routes, will retry next pass: %s", exc)
            return None

    def _sync_routes(self, report: Report, routes: dict[str, Route] | None, live: dict[str, Notebook]) -> None:
        """Route every ACTIVE notebook to its address, and remove routes of notebooks that ended.

        This retries what a spawn, kill or failure could not do at the proxy. The routes were
        read before the records, and a record only moves forward: a route whose record was
        not live afterwards is stale for good, while a route added meanwhile for a notebook
        still starting (READY_THROUGH_PROXY routes it while STARTING) is kept.
        """
        proxy = self.spawner.proxy
        if proxy is None or routes is None:
            return
        ended = set(report.failed) | set(report.culled)
        for hostname, record in live.items():
            active = record.status == Status.ACTIVE or hostname in report.adopted
            if not active or hostname in ended or not record.address:
                continue
            route = routes.get(hostname)
            if route is not None and route.target == record.address:
                continue
            try:
                proxy.add(record.url, record.address, hostname)
            except ProxyError as exc:
                log.warning("%s: could not add the proxy route, will retry next pass: %s", hostname, exc)
                continue
            report.routed.append(hostname)
        for hostname, route in routes.items():
            owner = live.get(hostname)
            if owner is not None and owner.status != Status.DELETING and hostname not in ended:
                continue
            try:
                proxy.remove(route.host)
            except ProxyError as exc:
                log.warning("%s: could not remove the proxy route, will retry next pass: %s", hostname, exc)
                continue
            report.unrouted.append(hostname)

    def _lost(self, record: Notebook, now: float) -> bool:
        """A PENDING spawn whose task should have started by now, not yet sent again.

        Its message may be held, unacknowledged, by a worker that died; the broker would only
        hand it out again after the visibility timeout, so the reconciler sends it once more
        (spawns are idempotent: a duplicate finds the record moved on and does nothing).
        """
        if self.queue is None or self.store.internal(record.hostname, Internal.RESENT):
            return False
        raw = self.store.internal(record.hostname, Internal.QUEUE_DEADLINE)
        try:
            return bool(raw) and now > float(raw or 0)
        except ValueError:
            return False

    def _resend(self, report: Report, hostname: str) -> None:
        assert self.queue is not None
        try:
            self.store.transition(hostname, None, allowed={Status.PENDING}, internal={Internal.RESENT: "1"})
            self.queue.spawn(hostname)
        except (InvalidTransition, NotFound, QueueUnavailable) as exc:
            log.info("%s: not sent again: %s", hostname, exc)
            return
        log.warning("%s: spawn still PENDING past its deadline; sent again", hostname)
        report.resent.append(hostname)

    def _fail(self, report: Report, spec: NotebookSpec, reason: str, current: Status) -> None:
        # Fenced: a spawn attempt paused past its deadline must not undo this (nor remove anything).
        if self.spawner.fail(spec, reason, allowed=frozenset({current}), fence=True) == Status.FAILED:
            report.failed.append(spec.hostname)

    def _deadline(self, record: Notebook) -> float:
        """When a live spawn would have given up on this record by itself.

        STARTING: its readiness deadline. PENDING: the engine-retry deadline plus one more
        start timeout, since a spawn taken from a long queue only then begins to wait.
        """
        if record.status == Status.STARTING:
            name, extra = Internal.READY_DEADLINE, 0.0
        else:
            name, extra = Internal.QUEUE_DEADLINE, self.settings.start_timeout
        raw = self.store.internal(record.hostname, name)
        try:
            deadline = float(raw) if raw else 0.0
        except ValueError:
            deadline = 0.0
        # A record without a deadline (written by an older version) gets one from its start.
        return (deadline or parse_rfc3339(record.start_time) + self.settings.start_timeout) + extra

    def _kill_wait(self) -> float:
        """How long a DELETING record may wait for its kill task before the reconciler does it."""
        return max(30.0, 3.0 * self.settings.kill_grace + 10.0)
