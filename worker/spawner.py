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
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from shared.errors import (
    EngineError,
    EngineUnavailable,
    InvalidTransition,
    NotFound,
    ProxyError,
    StoreUnavailable,
    Superseded,
)
from shared.limits import Allowlist, canonical
from shared.notebook_token import FIELD as TOKEN_FIELD
from shared.notebook_token import Delivery
from shared.pool import POOL_USER, Pool
from shared.profiles import ORIGIN_ENV, Limits, Profile, Profiles, allowed_origins, load_profiles, origin_arguments
from shared.record import SPAWN_INTERNALS, Internal, Notebook
from shared.settings import Settings
from shared.status import Status
from shared.store import Store
from worker.engine import Engine, NotebookSpec
from worker.proxy import Proxy
from worker.readiness import Pace, ProbePacer, answers_http, start_kernel, token_problem

log = logging.getLogger(__name__)

#: How often the wait-for-ready loop also asks the engine and the store whether to give up.
CHECK_EVERY = 1.0
#: How often a pull that is moving pushes the spawn's queue deadline on (see ``_pull_report``).
KEEP_DEADLINE_EVERY = 5.0


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
        pacer: ProbePacer | None = None,
        start_kernel: Callable[[str, str, str], str] = start_kernel,
    ) -> None:
        self.store = store
        self.engine = engine
        self.settings = settings
        self.probe = probe
        self.token_check = token_check
        self.start_kernel = start_kernel
        self.clock = clock
        self.sleep = sleep
        # The profiles are PROFILES_FILE's unless given; the proxy (CHP routes) only when given.
        self.profiles = profiles if profiles is not None else load_profiles(settings.profiles_file)
        self.proxy = proxy
        self.pool = pool
        self.allowlist = Allowlist(settings.allowed_images)
        # One per Spawner (one per worker process): bounds the fast readiness probes of its threads.
        self.pacer = pacer if pacer is not None else ProbePacer()

    def spec_for(self, record: Notebook, internal: Mapping[str, str] | None = None) -> NotebookSpec:
        """The notebook's spec from its record and profile. Its ``image`` is the canonical reference
        the allowlist checks (``shared/limits.py``), never the record's string as written, which the
        engine could read as an image ID; "" for a reference that is not valid (never started:
        :meth:`spawn` refuses it). ``internal``: the record's internal fields if already read
        (limits a user asked for are read from them instead of from Redis)."""
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
            pull_policy=self.settings.pull_policy,
        )
        profile = self.profiles.get(record.profile) if record.profile else None
        return self._with_profile(spec, profile, internal) if profile else spec

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

    def with_allowed_origins(self, spec: NotebookSpec, record: Notebook) -> NotebookSpec:
        """``spec`` whose notebook server lets pages of the allowed origins use it (a thebe page on
        another origin): CORS_ORIGINS, or its profile's ``allow_origins``; none with ``cors: false``
        (``shared/profiles.py``). The arguments are added to the profile's command, or else given in
        NOTEBOOK_ARGS, which jupyter/docker-stacks images add to their own."""
        profile = self.profiles.get(record.profile) if record.profile else None
        arguments = origin_arguments(profile, allowed_origins(profile, self.settings.cors_origins))
        if not arguments:
            return spec
        if spec.command:
            return replace(spec, command=[*spec.command, *arguments])
        before = spec.environment.get(ORIGIN_ENV, "")
        words = " ".join([before, *arguments]) if before else " ".join(arguments)
        return replace(spec, environment={**spec.environment, ORIGIN_ENV: words})

    # -- spawn -------------------------------------------------------------------
    def spawn(self, hostname: str) -> Status | None:
        """Bring ``hostname`` to ACTIVE or FAILED; return the status it ends in (None: no record).

        The spawn first becomes the record's current *attempt* (``Store.claim_spawn``); every
        later move it makes is refused once another attempt (a redelivered or resent task) or
        the reconciler has taken over (Superseded), and then it leaves the record and the
        notebook's container alone: a stale spawn never fails or removes a notebook that a
        later attempt made ACTIVE.

        Raises EngineUnavailable while the engine is unreachable and the spawn's deadline has
        not passed (the task retries with backoff); after the deadline the record is FAILED.
        """
        # The internal fields (token, deadlines, limits) come with the claim: one round trip.
        claimed = self.store.claim_spawn(hostname)
        if claimed is None:
            log.warning("%s: spawn for a record that does not exist; ignored", hostname)
            return None
        if isinstance(claimed, Status):
            if claimed == Status.DELETING:
                # A kill won before this attempt began. Its kill task may have left the removal to
                # an attempt in flight that then gave up (and handed the spawn on, to this task):
                # finish it here, so the kill never waits on anyone.
                return self.kill(hostname, force=True)
            # ACTIVE/FAILED: a redelivered or repeated task. REMOVED: a kill won and is done.
            log.info("%s: spawn skipped, record is %s", hostname, claimed)
            return claimed
        record, internal = claimed
        attempt = int(internal[Internal.ATTEMPT])
        spec = self.spec_for(record, internal)
        if record.profile and record.profile not in self.profiles:
            return self.fail(spec, f"profile {record.profile!r} is not in this worker's PROFILES_FILE", attempt=attempt)
        if not self.allowlist.allows(record.image) or not spec.image:
            # The API refuses these already; this catches records from before an ALLOWED_IMAGES change
            # (and any not written by the API: an invalid reference is never allowed).
            reason = f"image {record.image!r} is not allowed by this worker's ALLOWED_IMAGES"
            return self.fail(spec, reason, attempt=attempt)
        spec = self.with_allowed_origins(self.with_token(spec, record, internal), record)
        try:
            spec = self.engine.pull(spec, self._pull_report(spec, attempt))
            self.store.progress(hostname, "creating", "creating and starting the container", user=spec.user)
            placement = self.engine.start(spec)
        except EngineUnavailable as exc:
            self.store.metrics.engine_error(exc)
            if self.clock() < self._deadline(hostname, Internal.QUEUE_DEADLINE, internal):
                # Retried: the retry is a new attempt. A kill meanwhile is this one's to finish.
                self.store.end_attempt(hostname, attempt, Internal.SPAWNING)
                raise
            return self.fail(spec, f"{exc} (gave up after {self.settings.start_timeout:g}s)", attempt=attempt)
        except EngineError as exc:
            self.store.metrics.engine_error(exc)
            return self.fail(spec, str(exc), attempt=attempt)

        started_at = self.clock()
        try:
            if record.status == Status.PENDING:
                ready_deadline = started_at + self.settings.start_timeout
                record = self.store.transition(
                    hostname,
                    Status.STARTING,
                    attempt=attempt,
                    internal={Internal.SPAWNING: "", Internal.READY_DEADLINE: str(ready_deadline)},
                    container_id=placement.object_id,
                    address=placement.address,
                    node=placement.node,
                )
            else:  # a redelivered spawn that had got this far: keep its original deadline
                ready_deadline = self._deadline(hostname, Internal.READY_DEADLINE, internal)
                record = self.store.transition(
                    hostname,
                    None,
                    allowed={Status.STARTING},
                    attempt=attempt,
                    internal={Internal.SPAWNING: ""},
                    container_id=placement.object_id,
                    address=placement.address,
                    node=placement.node,
                )
        except Superseded as exc:
            log.info("%s: %s; its container is the current attempt's", hostname, exc)
            return self._status(hostname)
        except (InvalidTransition, NotFound):
            return self._lost_to_kill(spec, attempt)
        self.store.progress(
            hostname, "waiting", f"waiting for the notebook to answer on port {spec.port}", user=spec.user
        )
        return self._wait_ready(spec, placement.address, ready_deadline, attempt)

    def _pull_report(self, spec: NotebookSpec, attempt: int) -> Callable[[str, str, Mapping[str, Any]], None]:
        """Publishes a pull's progress as the notebook's events (``pulling``, ``pulled``), and keeps
        the spawn's queue deadline ahead of a pull that is still moving: a large image takes minutes,
        and the reconciler would otherwise send the spawn again, then fail it, meanwhile."""
        kept = self.clock()

        def report(stage: str, message: str, detail: Mapping[str, Any]) -> None:
            nonlocal kept
            self.store.progress(spec.hostname, stage, message, user=spec.user, detail=detail)
            now = self.clock()
            if now - kept >= KEEP_DEADLINE_EVERY:
                kept = now
                deadline = str(now + self.settings.start_timeout)
                self.store.keep_attempt(spec.hostname, attempt, {Internal.QUEUE_DEADLINE: deadline})

        return report

    def _lost_to_kill(self, spec: NotebookSpec, attempt: int) -> Status | None:
        """A kill won while this attempt was creating the container: remove it at once (it was never
        anyone's notebook, so no grace) and finish the kill, so REMOVED never outlives a container."""
        log.info("%s: killed while starting; removing its container", spec.hostname)
        self.engine.remove(spec, grace=0)
        self._remove_route(spec)
        try:
            self.store.transition(spec.hostname, Status.REMOVED, attempt=attempt)
        except InvalidTransition:
            pass  # FAILED meanwhile, finished by the kill task, or superseded
        return self._status(spec.hostname)

    def _wait_ready(self, spec: NotebookSpec, address: str, deadline: float, attempt: int) -> Status | None:
        """Probe until ready, then ACTIVE; ``deadline`` (epoch) is the record's ready deadline."""
        pace = self.pacer.pace(self.settings.probe_interval)
        try:
            return self._probe_until_ready(spec, address, deadline, attempt, pace)
        finally:
            pace.close()

    def _probe_until_ready(
        self, spec: NotebookSpec, address: str, deadline: float, attempt: int, pace: Pace
    ) -> Status | None:
        hostname = spec.hostname
        began = self.clock()
        next_check = began + CHECK_EVERY
        ready = self._readiness(spec, address)
        while not ready():
            now = self.clock()
            if now >= deadline:
                return self.fail(
                    spec,
                    f"the notebook did not answer HTTP on port {spec.port}{self._via_proxy(spec)} within "
                    f"{self.settings.start_timeout:g}s" + self._logs(spec),
                    attempt=attempt,
                )
            if now >= next_check:
                next_check = now + CHECK_EVERY
                current, current_attempt = self.store.status_and_attempt(hostname)
                if current != Status.STARTING or current_attempt != str(attempt):
                    # A kill won (its task removes the container), or another attempt (or the
                    # reconciler) took over: either way nothing here is this attempt's any more.
                    log.info("%s: stopped waiting, record is %s (attempt %s)", hostname, current, current_attempt)
                    if current_attempt == str(attempt):
                        self._remove_route(spec)  # in case it was added after the kill removed it
                    return current
                try:
                    state = self.engine.state(spec)
                except EngineUnavailable as exc:
                    self.store.metrics.engine_error(exc)
                    # Keep probing; the start deadline still bounds the wait.
                    log.warning("%s: engine check failed while waiting: %s", hostname, exc)
                else:
                    if state is None:
                        return self.fail(spec, "the container disappeared while starting", attempt=attempt)
                    if not state.running:
                        reason = f"the container {state.reason} before answering" + self._logs(spec)
                        return self.fail(spec, reason, attempt=attempt)
            self.sleep(pace.gap(now - began))
        pace.close()  # ready: the fast slot is another wait's while this one finishes
        problem = self.token_problem(spec, address)
        if problem:
            return self.fail(spec, problem, attempt=attempt)
        self._add_route(spec, address)  # before ACTIVE, so an ACTIVE notebook is routed
        try:
            self.store.transition(hostname, Status.ACTIVE, allowed={Status.STARTING}, attempt=attempt)
        except Superseded as exc:
            log.info("%s: ready, but %s", hostname, exc)  # the route is the current attempt's too
            return self._status(hostname)
        except InvalidTransition as exc:
            log.info("%s: ready, but the record is now %s", hostname, exc.current)
            self._remove_route(spec)
            return self._status(hostname)
        log.info("%s: ACTIVE at %s", hostname, address)
        try:
            # Read only while PENDING/STARTING (here and by the reconciler): not worth keeping for
            # the hours or days an ACTIVE record lives. After the move, so not on the client's path.
            # Without ``_attempt`` every attempt that might still wake up is refused.
            self.store.drop_internal(hostname, *SPAWN_INTERNALS)
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
        if self.pool is None or spec.user != POOL_USER:
            return
        found = self.store.get_with_internal(spec.hostname)
        if found is None:
            return
        record, internal = found
        # The pool is keyed by the POOL entry as written, which the member's record keeps
        # (worker/pool.py); spec.image is the canonical reference.
        image = internal.get(Internal.POOL)
        if image:
            self._warm_kernel(record, internal.get(Internal.TOKEN, ""))
            self.pool.offer(image, spec.hostname)

    def _warm_kernel(self, record: Notebook, token: str) -> None:
        """Start the profile's ``warm_kernel`` in a pool member before it is offered (see
        shared/profiles.py). A member whose kernel would not start is offered all the same: its
        page starts one, as it would without."""
        profile = self.profiles.get(record.profile) if record.profile else None
        if profile is None or not profile.warm_kernel or not record.address or not token:
            return
        hostname = record.hostname
        try:
            kernel = self.start_kernel(record.address, token, profile.warm_kernel)
        except OSError as exc:
            log.warning("%s: could not start its %s kernel ahead: %s", hostname, profile.warm_kernel, exc)
            return
        log.info("%s: %s kernel %s started ahead", hostname, profile.warm_kernel, kernel)

    # -- kill --------------------------------------------------------------------
    def kill(self, hostname: str, *, force: bool = False) -> Status | None:
        """Remove the notebook's engine object and mark the record REMOVED.

        Only acts on a DELETING record (the API moved it there); a missing object counts as
        removed. While a spawn attempt is between claiming the record and recording its
        container (``_spawning``), it may still create one: then the removal is left to that
        attempt, which finishes the kill itself (``_lost_to_kill``), unless ``force`` (the
        reconciler, once that attempt has had its time). Raises EngineUnavailable while the
        engine cannot be reached (the task retries).
        """
        found = self.store.get_with_internal(hostname)
        if found is None:
            return None
        record, internal = found
        if record.status != Status.DELETING:
            return record.status
        spec = self.spec_for(record, internal)
        # The route goes while the engine removes the container, not after it: both must be gone
        # before REMOVED, and neither depends on the other.
        unroute = self._remove_route_meanwhile(spec)
        try:
            self.engine.remove(spec)
        except (EngineError, EngineUnavailable) as exc:
            self.store.metrics.engine_error(exc)
            raise  # the task retries an unavailable engine
        finally:
            unroute()
        if internal.get(Internal.SPAWNING) and not force:
            log.info("%s: a spawn attempt is creating its container; it finishes the kill", hostname)
            return Status.DELETING
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
        *,
        attempt: int | None = None,
        fence: bool = False,
    ) -> Status | None:
        """Mark FAILED, then remove the engine object (and route).

        The move comes first and decides: only the spawn attempt that is still the record's
        (``attempt``), or the reconciler (``fence``: it also ends every attempt in flight), may
        fail a notebook, and only a failure that was recorded removes anything, so a stale
        attempt can never remove a notebook another one made ACTIVE. A removal that fails is
        left to the reconciler's orphan sweep (a FAILED record is not live).
        """
        if spec.token:  # the notebook's last output may show its own token: never in a record or log
            reason = reason.replace(spec.token, "<token>")
        try:
            self.store.transition(
                spec.hostname, Status.FAILED, allowed=allowed, attempt=attempt, fence=fence, error=reason
            )
        except InvalidTransition as exc:  # a kill won meanwhile, or another attempt took over
            log.info("%s: not failed (%s): %s", spec.hostname, exc, reason)
            if attempt is not None and not isinstance(exc, Superseded) and exc.current == Status.DELETING:
                # The kill task may have left the end to this attempt (it was still creating the
                # container, whose start then failed because the kill removed it): finish it.
                return self._lost_to_kill(spec, attempt)
            return self._status(spec.hostname)
        log.warning("%s: failed: %s", spec.hostname, reason)
        try:
            self.engine.remove(spec, grace=0)  # a notebook that failed is nobody's to save
        except (EngineError, EngineUnavailable) as exc:
            self.store.metrics.engine_error(exc)
            log.warning("%s: could not remove after failure (the reconciler will): %s", spec.hostname, exc)
        self._remove_route(spec)
        return Status.FAILED

    def _status(self, hostname: str) -> Status | None:
        record = self.store.get(hostname)
        return record.status if record else None

    def _deadline(self, hostname: str, name: Internal, internal: Mapping[str, str] | None = None) -> float:
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
    def _with_profile(
        self, spec: NotebookSpec, profile: Profile, internal: Mapping[str, str] | None = None
    ) -> NotebookSpec:
        """``spec`` with what ``profile`` sets; limits a user asked for (within its maxima) win."""
        asked = Limits()
        if profile.user_limits:  # only then can the record hold asked-for limits
            if internal is None:
                internal = {
                    n: self.store.internal(spec.hostname, n) or "" for n in (Internal.MEM_LIMIT, Internal.CPU_LIMIT)
                }
            asked = Limits.from_internal(internal.get(Internal.MEM_LIMIT), internal.get(Internal.CPU_LIMIT))
        return replace(
            spec,
            port=profile.port or spec.port,
            command=list(profile.command) if profile.command else None,
            environment=dict(profile.environment),
            mem_limit=asked.mem_limit or profile.mem_limit,
            cpu_limit=asked.cpu_limit or profile.cpu_limit,
            constraints=list(profile.constraints),
            pull_policy=profile.pull_policy or spec.pull_policy,
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

    def _remove_route_meanwhile(self, spec: NotebookSpec) -> Callable[[], None]:
        """Start removing the notebook's route in a thread; the returned function waits for it."""
        if self.proxy is None:
            return lambda: None
        thread = threading.Thread(target=self._remove_route, args=(spec,), name=f"unroute-{spec.hostname}")
        thread.start()
        # The proxy client's own timeout bounds the removal; the join's only guards against a hang.
        return lambda: thread.join(self.settings.engine_timeout)

    def _remove_route(self, spec: NotebookSpec) -> None:
        """Remove the notebook's route; a failure is logged and left for the reconciler's sweep."""
        if self.proxy is None:
            return
        try:
            self.proxy.remove(spec.public_host)
        except ProxyError as exc:
            log.warning("%s: could not remove the proxy route (the reconciler retries): %s", spec.hostname, exc)
