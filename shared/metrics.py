"""Counters for ``GET /metrics``, kept in Redis next to the records.

The API runs in several gunicorn processes and the counting happens in Celery workers, so no
process's memory sees everything: every counter is a field of one Redis hash,
``<prefix>metrics``, written with HINCRBY by whichever process saw the event. Gauges (notebooks
by status, queue depth) are not stored at all: they are read from the status indexes and the
Celery queue at scrape time.

Fields of ``<prefix>metrics``:

- ``spawns:<outcome>``      spawns that ended ``active``, ``failed`` or ``killed`` (before ACTIVE),
                            counted once per notebook;
- ``latency:le:<bound>``    spawns that reached ACTIVE within ``bound`` seconds of their
                            ``start_time`` (cumulative, one field per bucket bound);
- ``latency:count``, ``latency:sum``  all spawns that reached ACTIVE, and their seconds added up;
- ``engine_errors:<kind>``  engine errors met by spawns and kills, ``engine_error`` (refused for
                            good) or ``engine_unavailable`` (unreachable or a server error).

Counting is best-effort: a counter that cannot be written (Redis away for longer than the
client's patience) is logged and dropped, never allowed to fail the status move it describes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import redis

from shared import lua
from shared.errors import EngineError, EngineUnavailable, StoreUnavailable
from shared.record import Notebook, parse_rfc3339
from shared.status import Status
from shared.tasknames import QUEUE_NAME

log = logging.getLogger(__name__)

#: Upper bounds (seconds) of the spawn-to-ACTIVE latency histogram's buckets.
LATENCY_BUCKETS: tuple[float, ...] = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)

#: The outcome a spawn is counted under when its record first enters one of these statuses.
OUTCOME_OF: dict[Status, str] = {Status.ACTIVE: "active", Status.FAILED: "failed", Status.DELETING: "killed"}
OUTCOMES: tuple[str, ...] = tuple(OUTCOME_OF.values())

ENGINE_ERROR_KINDS: tuple[str, ...] = (EngineError.code, EngineUnavailable.code)

# kombu's Redis transport keeps one list per priority step: the queue's own name for priority 0
# (all our tasks), ``<name>\x06\x16<step>`` for the others.
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)


def bound_key(bound: float) -> str:
    """How a bucket bound is spelled in its field name (``0.5``, ``10``)."""
    return f"{bound:g}"


@dataclass
class Snapshot:
    """Everything ``/metrics`` shows, read from Redis in one round trip."""

    spawns: dict[str, int] = field(default_factory=dict)  # outcome -> count
    latency_buckets: dict[float, int] = field(default_factory=dict)  # bound -> cumulative count
    latency_count: int = 0
    latency_sum: float = 0.0
    engine_errors: dict[str, int] = field(default_factory=dict)  # kind -> count
    notebooks: dict[Status, int] = field(default_factory=dict)  # status -> records now in it
    queue_depth: int = 0  # tasks waiting in the Celery queue


class Metrics:
    """Counters in one Redis hash under the store's key prefix. Takes its client, like the Store."""

    def __init__(self, client: redis.Redis, prefix: str = "swarm-manager:") -> None:
        self.redis = client
        self.prefix = prefix
        self.key = f"{prefix}metrics"
        self._settled = lua.register(client, "spawn_settled")

    @property
    def queue_keys(self) -> list[str]:
        """The Redis lists of the Celery queue (kombu prefixes them with ``global_keyprefix``)."""
        base = f"{self.prefix}{QUEUE_NAME}"
        return [base, *(f"{base}{_PRIORITY_SEP}{step}" for step in _PRIORITY_STEPS)]

    # -- writes (best-effort) ------------------------------------------------------
    def spawn_settled(self, record: Notebook, now: float | None = None) -> bool:
        """Count ``record``'s spawn under the outcome of its status, once per notebook.

        Called after a successful move to ACTIVE, FAILED or DELETING; True if this call counted it.
        A spawn reaching ACTIVE also adds its seconds from ``start_time`` to the latency histogram.
        """
        outcome = OUTCOME_OF.get(record.status)
        if outcome is None:
            return False
        latency = ""
        if record.status == Status.ACTIVE:
            started = parse_rfc3339(record.start_time)
            if started > 0:
                latency = repr(max(0.0, (time.time() if now is None else now) - started))
        try:
            counted = self._settled(
                keys=[f"{self.prefix}nb:{record.hostname}", self.key],
                args=[outcome, latency, *(bound_key(b) for b in LATENCY_BUCKETS)],
            )
        except redis.RedisError as exc:
            log.warning("%s: could not count the spawn as %s: %s", record.hostname, outcome, exc)
            return False
        return bool(counted)

    def engine_error(self, exc: EngineError | EngineUnavailable) -> None:
        """Count one engine error by its kind (``engine_error`` or ``engine_unavailable``)."""
        try:
            self.redis.hincrby(self.key, f"engine_errors:{exc.code}", 1)
        except redis.RedisError as err:
            log.warning("could not count an engine error (%s): %s", exc.code, err)

    # -- read ------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """Counters, notebooks by status and queue depth; StoreUnavailable when Redis is away."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.key)
        for status in Status:
            pipe.zcard(f"{self.prefix}idx:status:{status.value}")
        for key in self.queue_keys:
            pipe.llen(key)
        try:
            results = pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            raise StoreUnavailable(f"Redis is unavailable: {exc}") from exc
        counters: dict[str, str] = results[0]
        statuses = results[1 : 1 + len(Status)]
        depths = results[1 + len(Status) :]

        def number(name: str) -> int:
            return int(counters.get(name, 0))

        return Snapshot(
            spawns={outcome: number(f"spawns:{outcome}") for outcome in OUTCOMES},
            latency_buckets={b: number(f"latency:le:{bound_key(b)}") for b in LATENCY_BUCKETS},
            latency_count=number("latency:count"),
            latency_sum=float(counters.get("latency:sum", 0.0)),
            engine_errors={kind: number(f"engine_errors:{kind}") for kind in ENGINE_ERROR_KINDS},
            notebooks={status: int(n) for status, n in zip(Status, statuses, strict=True)},
            queue_depth=sum(int(n) for n in depths),
        )
