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
from collections.abc import Callable, Mapping
from dataclasses import replace

from shared.errors import EngineError, EngineUnavailable, InvalidTransition, NotFound, ProxyError, StoreUnavailable
from shared.limits import Allowlist, canonical
from shared.notebook_token import FIELD as TOKEN_FIELD
from shared.notebook_token import Delivery
from shared.pool import POOL_USER, Pool
from shared.profiles import Limits, Profile, Profiles, load_profiles
from shared.record import Notebook
from shared.settings import Settings
from shared.status import Status
from shared.store import Store
from worker.engine import Engine, NotebookSpec
from worker.proxy import Proxy
from worker.readiness import answers_http, token_problem

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
        token_check: Callable[[str, str], str] = token_problem,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        profiles: Profiles | None = None,
        proxy: Proxy | None = None,
        pool: Pool | None = None,
    ) -> None:
        self.store = store
        self.engine = engine
        self.settings = settings
        self.probe = probe
        self.token_check = token_check
        self.clock = clock
        self.sleep = sleep
        # The profiles are PROFILES_FILE's unless given; the proxy (CHP routes) only when given.
        self.profiles = profiles if profiles is not None else load_profiles(settings.profiles_file)
        self.proxy = proxy
        self.pool = pool
        self.allowlist = Allowlist(settings.allowed_images)

    def spec_for(self, record: Notebook) -> NotebookSpec:
        """The notebook's spec from its record and profile. Its ``image`` is the canonical reference
        the allowlist checks (``shared/limits.py``), never the record's string as written, which the
        engine could read as an image ID; "" for a reference that is not valid (never started:
        :meth:`spawn` refuses it)."""
        try:
            image = canonical(record.image)
        except ValueError:
            image = ""
        spec = NotebookSpec(
            hostname=record.hostname,
            image=image,
            user=record.user,
            domain=record.domainname,
            port=self.settings.notebook_port,
            instance=self.settings.instance,
        )
        profile = self.profiles.get(record.profile) if record.profile else None
        return self._with_profile(spec, profile) if profile else spec

    def with_token(
        self, spec: NotebookSpec, record: Notebook, internal: Mapping[str, str] | None = None
    ) -> NotebookSpec:
        """``spec`` with the notebook's own token, passed as its profile says (default JUPYTER_TOKEN).

        Only the spawn needs it (to create the container); other callers of :meth:`spec_for`
        (kill, the reconciler) do without, and without the extra read. ``internal``: the record's
        internal fields if already read (then no read here).
        """
        if internal is None:
            internal = {TOKEN_FIELD: self.store.internal(record.hostname, TOKEN_FIELD) or ""}
        token = internal.get(TOKEN_FIELD) or ""
        if not token:
            return spec
        delivery = Delivery.for_profile(self.profiles.get(record.profile) if record.profile else None)
        command = spec.command
        if delivery.arg:
            command = [*(spec.command or []), *delivery.arguments(token)]
        return replace(
            spec, token=token, environment={**spec.environment, **delivery.environment(token)}, command=command
        )

    # -- spawn -------------------------------------------------------------------
    def spawn(self, hostname: str) -> Status | None:
        """Bring ``hostname`` to ACTIVE or FAILED; return the status it ends in (None: no record).

        Raises EngineUnavailable while the engine is unreachable and the spawn's deadline has
        not passed (the task retries with backoff); after the deadline the record is FAILED.
        """
        # The internal fields (token, deadlines) come with the record: one read, not one per field.
        found = self.store.get_with_internal(hostname)
        if found is None:
            log.warning("%s: spawn for a record that does not exist; ignored", hostname)
            return None
        record, internal = found
        if record.status not in (Status.PENDING, Status.STARTING):
            # ACTIVE/FAILED: a redelivered or repeated task. DELETING/REMOVED: a kill won.
            log.info("%s: spawn skipped, record is %s", hostname, record.status)
            return record.status
        spec = self.spec_for(record)
        if record.profile and record.profile not in self.profiles:
            return self.fail(spec, f"profile {record.profile!r} is not in this worker's PROFILES_FILE")
        if not self.allowlist.allows(record.image) or not spec.image:
            # The API refuses these already; this catches records from before an ALLOWED_IMAGES change
            # (and any not written by the API: an invalid reference is never allowed).
            return self.fail(spec, f"image {record.image!r} is not allowed by this worker's ALLOWED_IMAGES")
        spec = self.with_token(spec, record, internal)
        self.store.progress(hostname, "creating", "creating and starting the container", user=spec.user)
        try:
            placement = self.engine.start(spec)
        except EngineUnavailable as exc:
            self.store.metrics.engine_error(exc)
            if self.clock() < self._deadline(hostname, "queue_deadline", internal):
                raise
            return self.fail(spec, f"{exc} (gave up after {self.settings.start_timeout:g}s)")
        except EngineError as exc:
            self.store.metrics.engine_error(exc)
            return self.fail(spec, str(exc))

        started_at = self.clock()
        try:
            if record.status == Status.PENDING:
                ready_deadline = started_at + self.settings.start_timeout
                record = self.store.transition(
                    hostname,
                    Status.STARTING,
                    container_id=placement.object_id,
                    address=placement.address,
                    node=placement.node,
                    internal={"ready_deadline": str(ready_deadline)},
                )
            else:  # a redelivered spawn that had got this far: keep its original deadline
                ready_deadline = self._deadline(hostname, "ready_deadline", internal)
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
        self.store.progress(
            hostname, "waiting", f"waiting for the notebook to answer on port {spec.port}", user=spec.user
        )
        return self._wait_ready(spec, placement.address, ready_deadline)

    def _wait_ready(self, spec: NotebookSpec, address: str, deadline: float | None = None) -> Status | None:
        """Probe until ready; ``deadline`` (epoch) is the record's ready deadline, read from it if None."""
        hostname = spec.hostname
        if deadline is None:
            deadline = self._deadline(hostname, "ready_deadline")
        next_check = self.clock() + CHECK_EVERY
        ready = self._readiness(spec, address)
        while not ready():
            now = self.clock()
            if now >= deadline:
                return self.fail(
                    spec,
                    f"the notebook did not answer HTTP on port {spec.port}{self._via_proxy(spec)} within "
                    f"{self.settings.start_timeout:g}s" + self._logs(spec),
                )
            if now >= next_check:
                next_check = now + CHECK_EVERY
                current = self._status(hostname)
                if current != Status.STARTING:
                    log.info("%s: stopped waiting, record is %s", hostname, current)
                    self._remove_route(spec)  # in case it was added after the kill removed it
                    return current  # a kill won; the kill task removes the container
                try:
                    state = self.engine.state(spec)
                except EngineUnavailable as exc:
                    self.store.metrics.engine_error(exc)
                    # Keep probing; the start deadline still bounds the wait.
                    log.warning("%s: engine check failed while waiting: %s", hostname, exc)
                else:
                    if state is None:
                        return self.fail(spec, "the container disappeared while starting")
                    if not state.running:
                        return self.fail(spec, f"the container {state.reason} before answering" + self._logs(spec))
            self.sleep(self.settings.probe_interval)
        problem = self.token_problem(spec, address)
        if problem:
            return self.fail(spec, problem)
        self._add_route(spec, address)  # before ACTIVE, so an ACTIVE notebook is routed
        try:
            self.store.transition(hostname, Status.ACTIVE, allowed={Status.STARTING})
        except InvalidTransition as exc:
            log.info("%s: ready, but the record is now %s", hostname, exc.current)
            self._remove_route(spec)
            return self._status(hostname)
        log.info("%s: ACTIVE at %s", hostname, address)
        try:
            # Read only while PENDING/STARTING (here and by the reconciler): not worth keeping for
            # the hours or days an ACTIVE record lives. After the move, so not on the client's path.
            self.store.drop_internal(hostname, "queue_deadline", "ready_deadline")
        except StoreUnavailable as exc:
            log.warning("%s: could not drop the spawn's deadlines: %s", hostname, exc)
        self.offer_to_pool(spec)
        return Status.ACTIVE

    def token_problem(self, spec: NotebookSpec, address: str) -> str:
        """What is wrong with the notebook's token (for FAILED), or an empty string when nothing is.

        Only a notebook given a token is checked: its server must not ignore it, nor refuse its own
        (``worker/readiness.py``)."""
        return self.token_check(address, spec.token) if spec.token else ""

    def offer_to_pool(self, spec: NotebookSpec) -> None:
        """A warm-pool member that became ACTIVE can now be claimed by a spawn."""
        if self.pool is not None and spec.user == POOL_USER:
            # The pool is keyed by the POOL entry as written, which the member's record keeps
            # (worker/pool.py); spec.image is the canonical reference.
            image = self.store.internal(spec.hostname, "pool")
            if image:
                self.pool.offer(image, spec.hostname)

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
        try:
            self.engine.remove(self.spec_for(record))
        except (EngineError, EngineUnavailable) as exc:
            self.store.metrics.engine_error(exc)
            raise  # the task retries an unavailable engine
        self._remove_route(self.spec_for(record))
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
        if spec.token:  # the notebook's last output may show its own token: never in a record or log
            reason = reason.replace(spec.token, "<token>")
        log.warning("%s: failed: %s", spec.hostname, reason)
        try:
            self.engine.remove(spec)
        except (EngineError, EngineUnavailable) as exc:
            self.store.metrics.engine_error(exc)
            # Left for the reconciler's orphan sweep: the record is FAILED, so it is not live.
            log.warning("%s: could not remove after failure: %s", spec.hostname, exc)
        self._remove_route(spec)
        try:
            self.store.transition(spec.hostname, Status.FAILED, allowed=allowed, error=reason)
        except InvalidTransition:
            pass  # a kill won meanwhile
        return self._status(spec.hostname)

    def _status(self, hostname: str) -> Status | None:
        record = self.store.get(hostname)
        return record.status if record else None

    def _deadline(self, hostname: str, name: str, internal: Mapping[str, str] | None = None) -> float:
        """The record's internal deadline ``name`` (epoch), from ``internal`` if given, else read.

        A record without it gets now + START_TIMEOUT.
        """
        raw = internal.get(name) if internal is not None else self.store.internal(hostname, name)
        try:
            return float(raw) if raw else self.clock() + self.settings.start_timeout
        except ValueError:
            return self.clock() + self.settings.start_timeout

    def _logs(self, spec: NotebookSpec) -> str:
        tail = self.engine.logs_tail(spec, lines=5)
        return f"; last output: {tail[-400:]}" if tail else ""

    # -- profiles and routes ---------------------------------------------------------
    def _with_profile(self, spec: NotebookSpec, profile: Profile) -> NotebookSpec:
        """``spec`` with what ``profile`` sets; limits a user asked for (within its maxima) win."""
        asked = Limits()
        if profile.user_limits:  # only then can the record hold asked-for limits
            asked = Limits.from_internal(
                self.store.internal(spec.hostname, "mem_limit"), self.store.internal(spec.hostname, "cpu_limit")
            )
        return replace(
            spec,
            port=profile.port or spec.port,
            command=list(profile.command) if profile.command else None,
            environment=dict(profile.environment),
            mem_limit=asked.mem_limit or profile.mem_limit,
            cpu_limit=asked.cpu_limit or profile.cpu_limit,
            constraints=list(profile.constraints),
        )

    def _readiness(self, spec: NotebookSpec, address: str) -> Callable[[], bool]:
        """The readiness check: the notebook's own address, or with READY_THROUGH_PROXY its public route.

        Through the proxy the route has to exist first; adding it is retried at most once per
        CHECK_EVERY while the proxy refuses, and the start deadline still bounds the wait.
        """
        proxy = self.proxy
        if proxy is None or not self.settings.ready_through_proxy:
            return lambda: self.probe(address)
        routed, retry_at = False, 0.0

        def through_proxy() -> bool:
            nonlocal routed, retry_at
            if not routed and self.clock() >= retry_at:
                routed, retry_at = self._add_route(spec, address), self.clock() + CHECK_EVERY
            return routed and proxy.reaches(spec.public_host)

        return through_proxy

    def _via_proxy(self, spec: NotebookSpec) -> str:
        if self.proxy is None or not self.settings.ready_through_proxy:
            return ""
        return f" through the proxy (Host: {spec.public_host})"

    def _add_route(self, spec: NotebookSpec, address: str) -> bool:
        """Route ``<hostname>.<DOMAIN>`` to ``address``; False (logged) when the proxy refuses.

        A failed route never fails the spawn: the reconciler adds missing routes on its next pass.
        """
        if self.proxy is None:
            return True
        try:
            self.proxy.add(spec.public_host, address, spec.hostname)
        except ProxyError as exc:
            log.warning("%s: could not add the proxy route (the reconciler retries): %s", spec.hostname, exc)
            return False
        log.info("%s: routed %s -> %s", spec.hostname, spec.public_host, address)
        return True

    def _remove_route(self, spec: NotebookSpec) -> None:
        """Remove the notebook's route; a failure is logged and left for the reconciler's sweep."""
        if self.proxy is None:
            return
        try:
            self.proxy.remove(spec.public_host)
        except ProxyError as exc:
            log.warning("%s: could not remove the proxy route (the reconciler retries): %s", spec.hostname, exc)
