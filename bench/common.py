"""Shared parts of the benchmarks: statistics, raw Docker spawns, event timing, gunicorn, cleanup.

Everything here runs on real parts (a redis-server, the Docker engine, Celery worker processes,
gunicorn) on loopback, and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import redis

from shared.record import Notebook, parse_rfc3339
from shared.status import SETTLED, Status
from shared.store import Store
from testkit.support import ApiServer
from worker.readiness import answers_http

RESULTS = Path(__file__).resolve().parent / "results"
LABEL_INSTANCE = "swarm-manager.instance"
NOTEBOOK_PORT = 8888


# -- statistics ---------------------------------------------------------------------------
def percentile(values: Iterable[float], p: float) -> float:
    """The ``p``-th percentile (0-100) with linear interpolation between ranks (numpy's default)."""
    data = sorted(values)
    if not data:
        return math.nan
    rank = (len(data) - 1) * p / 100
    lo, hi = math.floor(rank), math.ceil(rank)
    return data[lo] + (data[hi] - data[lo]) * (rank - lo)


def stats(values: Iterable[float]) -> dict[str, float]:
    """n, median, p95, p99, mean, min and max of ``values`` (seconds in, seconds out)."""
    data = list(values)
    if not data:
        return {"n": 0}
    return {
        "n": len(data),
        "median": percentile(data, 50),
        "p95": percentile(data, 95),
        "p99": percentile(data, 99),
        "mean": sum(data) / len(data),
        "min": min(data),
        "max": max(data),
    }


def against_raw(samples: dict[str, list[float]]) -> dict[str, Any]:
    """Stats of each kind of sample (one kind is ``raw``), ``<kind>_ratio`` of each median to raw's,
    and the samples themselves."""
    figures = {kind: stats(values) for kind, values in samples.items()}
    raw = figures["raw"]["median"]
    ratios = {f"{kind}_ratio": f["median"] / raw for kind, f in figures.items() if kind != "raw"}
    return {**figures, **ratios, "samples": samples}


def ms(seconds: float) -> str:
    if seconds is None or math.isnan(seconds):
        return "n/a"
    # (No timing at all: every request of the sample went unanswered.)
    return "no answer" if math.isinf(seconds) else f"{seconds * 1000:.1f} ms"


# -- raw Docker: the physical limit ---------------------------------------------------------
def raw_spawn(
    client: docker.DockerClient,
    image: str,
    name: str,
    instance: str,
    interval: float,
    timeout: float = 120,
    network: str | None = None,
    host: str = "127.0.0.1",
) -> float:
    """Create + start + wait until the port answers HTTP, as directly as the SDK allows; seconds taken.

    The same work a spawn does on the engine (a container with a published port on ``host``,
    labelled for cleanup; on ``network`` if given), an HTTP probe every ``interval``, and nothing
    else: no record, no queue, no existence check, no inspect before the start.
    """
    started = time.perf_counter()
    api = client.api
    created = api.create_container(
        image,
        name=name,
        hostname=name[-12:],
        labels={LABEL_INSTANCE: instance},
        ports=[NOTEBOOK_PORT],
        host_config=api.create_host_config(port_bindings={NOTEBOOK_PORT: (host,)}, network_mode=network),
        networking_config=api.create_networking_config({network: api.create_endpoint_config()}) if network else None,
        detach=True,
    )
    api.start(created["Id"])
    # The published port is known only after start.
    port = api.inspect_container(created["Id"])["NetworkSettings"]["Ports"][f"{NOTEBOOK_PORT}/tcp"][0]["HostPort"]
    address = f"http://{host}:{port}"
    deadline = started + timeout
    while not answers_http(address):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"raw container {name} did not answer within {timeout}s")
        time.sleep(interval)
    return time.perf_counter() - started


def isolated_network(client: docker.DockerClient, instance: str) -> str:
    """A bridge network like the worker's own ``<INSTANCE>-notebooks`` (no traffic between its
    containers), labelled with ``instance`` so :func:`remove_everything` removes it; its name."""
    from worker.hardening import isolated_network_options

    name = f"{instance}-isolated"
    if not client.networks.list(names=[name]):
        client.networks.create(
            name, driver="bridge", options=isolated_network_options(), labels={LABEL_INSTANCE: instance}
        )
    return name


def remove_containers(client: docker.DockerClient, instance: str, threads: int = 8) -> int:
    """Force-remove every container labelled with ``instance`` (in parallel); how many were removed."""
    found = client.containers.list(all=True, sparse=True, filters={"label": f"{LABEL_INSTANCE}={instance}"})

    def remove(c: Any) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_container(c.id, force=True)

    workers = [
        threading.Thread(target=lambda chunk=found[i::threads]: [remove(c) for c in chunk]) for i in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    return len(found)


def remove_everything(client: docker.DockerClient, instance: str) -> int:
    """At the end of a run: the instance's containers, then its networks (the worker's own
    ``<instance>-notebooks``, which stays while the worker runs)."""
    removed = remove_containers(client, instance)
    for net in client.networks.list(filters={"label": f"{LABEL_INSTANCE}={instance}"}):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            net.remove()
    return removed


def remove_one(client: docker.DockerClient, name: str) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        client.api.remove_container(name, force=True)


def delete_keys(client: redis.Redis, prefix: str) -> int:
    """Delete every Redis key under ``prefix`` (records, indexes, queue); how many."""
    deleted = 0
    batch: list[str] = []
    for key in client.scan_iter(match=f"{prefix}*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            deleted += client.unlink(*batch)
            batch.clear()
    if batch:
        deleted += client.unlink(*batch)
    return deleted


# -- when records change: the events channel ----------------------------------------------------
@dataclass
class Seen:
    """What the listener saw of one notebook: when (perf_counter) it first reached each status."""

    at: dict[Status, float] = field(default_factory=dict)
    record: Notebook | None = None  # the last record event


class EventTimer:
    """Timestamps record events as they arrive on the store's channel (no polling, no poll delay).

    A background thread reads :meth:`Store.subscribe` and notes when each hostname first
    reached each status; :meth:`wait` blocks until hostnames are settled or a deadline passes.
    """

    def __init__(self, store: Store) -> None:
        self._sub = store.subscribe()
        self._seen: dict[str, Seen] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="event-timer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            event = self._sub.get(timeout=0.2)
            now = time.perf_counter()
            if event is None or event.record is None:
                continue
            with self._cond:
                seen = self._seen.setdefault(event.hostname, Seen())
                seen.at.setdefault(event.record.status, now)
                seen.record = event.record
                self._cond.notify_all()

    def seen(self, hostname: str) -> Seen:
        with self._cond:
            return self._seen.get(hostname, Seen())

    def wait(self, hostnames: Iterable[str], timeout: float, statuses: frozenset[Status] = SETTLED) -> dict[str, Seen]:
        """Block until every hostname reached one of ``statuses`` (or ``timeout``); what was seen."""
        names = list(hostnames)
        deadline = time.monotonic() + timeout

        def done() -> bool:
            return all(any(s in statuses for s in self._seen.get(h, Seen()).at) for h in names)

        with self._cond:
            while not done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.5))
            return {h: self._seen.get(h, Seen()) for h in names}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sub.close()


def server_seconds(record: Notebook | None) -> float:
    """Spawn-to-ACTIVE as the records say it (ACTIVE ``updated_at`` minus ``start_time``)."""
    if record is None or record.status != Status.ACTIVE:
        return math.nan
    return parse_rfc3339(record.updated_at) - parse_rfc3339(record.start_time)


# -- the API on a real socket, as `make run` serves it -------------------------------------
class Gunicorn(ApiServer):
    """``gunicorn api.wsgi:app`` with `make run`'s options (``swarm-manager serve``) and its access log."""

    def __init__(
        self, env: Mapping[str, str], logfile: Path, workers: int = 2, options: list[str] | None = None
    ) -> None:
        super().__init__(env, logfile, workers=workers, access_log=True, options=options)
