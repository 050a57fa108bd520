"""Fault injection at scale: N spawns per fault on real parts, then a table of outcomes.

    .venv/bin/python -m bench.faults [--spawns 50] [--faults worker-sigkill,redis-restart,...]

Every fault runs against a real redis-server, real Celery worker and beat processes and a real
Docker engine (the engine outage uses a second, mutual-TLS engine in a network namespace, as the
tests do). Each row counts how the notebooks ended and checks the invariants: no record lost,
none stuck, at most one container per notebook, no container left for a FAILED or REMOVED one.
Results go to stdout and to bench/results/faults.json (or --results). Traffic stays on loopback and the
namespace made here; every loop is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import docker

from api import create_app
from shared.settings import Settings
from shared.status import Status
from shared.store import Store, connect
from testkit.faults import check_outcome, settle
from testkit.redis_sentinel import FailoverStack, SentinelCluster
from testkit.stack import Stack, base_env
from testkit.support import (
    BeatProcess,
    RedisServer,
    WatchProcess,
    WorkerProcess,
    build_images,
    unique_instance,
    wait_for,
)
from testkit.tls_engine import running_tls_engine
from worker.engine import LABEL_HOSTNAME
from worker.reconciler import DEADLINE_MARGIN

RESULTS = Path(__file__).parent / "results" / "faults.json"
#: Shorter than the default 20 s where the fault waits a START_TIMEOUT out (slow3 answers after 3 s).
START_TIMEOUTS = {"worker-sigstop": 8, "resend-overlap": 8}


#: Worker processes each fault's stack runs (two: one can be paused while the other carries on).
WORKERS = 2


@contextmanager
def stack(redis: RedisServer, client: docker.DockerClient, workdir: Path, tag: str, **env: Any) -> Iterator[Stack]:
    full = base_env(redis.url, unique_instance(tag), **{"RECONCILE_INTERVAL": 1, **env})
    settings = Settings.from_env(full)
    app = create_app(settings)
    st = Stack(
        settings, app, app.test_client(), Store(connect(settings.redis_url), settings.key_prefix), client, env=full
    )
    workers = [WorkerProcess(full, workdir / f"{tag}-worker{i}.log", name=f"{tag}{i}") for i in range(WORKERS)]
    st.worker = workers[0]
    st.workers = workers  # type: ignore[attr-defined]
    beat = BeatProcess(full, workdir / f"{tag}-beat.log", name=f"{tag}-beat")
    try:  # a beat (or worker) that fails to start leaves nothing running
        for worker in workers:
            worker.start()
        beat.start()
        yield st
    finally:
        beat.stop()
        for worker in workers:
            if worker.proc is not None and worker.proc.poll() is None:
                os.killpg(worker.proc.pid, signal.SIGCONT)  # a paused one must hear its stop
            worker.stop()
        st.cleanup()


def spawn_many(st: Stack, image: str, n: int, user: str) -> list[str]:
    return [st.spawn(image, user=f"{user}{i}") for i in range(n)]


def worker_sigkill(st: Stack, images: dict[str, str], n: int, workdir: Path) -> list[str]:
    hostnames = spawn_many(st, images["slow3"], n, "k")
    wait_for(
        lambda: sum(st.record(h).status == Status.STARTING for h in hostnames) >= max(1, n // 4),
        60,
        "spawns in progress",
    )
    for worker in st.workers:  # type: ignore[attr-defined]
        worker.kill(signal.SIGKILL)
    replacement = WorkerProcess(st.worker.env, workdir / "replacement.log", name="replacement")
    replacement.start()
    st.workers = [replacement]  # type: ignore[attr-defined]
    return hostnames


def worker_sigstop(st: Stack, images: dict[str, str], n: int, workdir: Path) -> list[str]:
    """One of the two workers stops (SIGSTOP) with spawns in flight, for longer than START_TIMEOUT
    and the reconciler's margin, then goes on (SIGCONT): its attempts were taken over meanwhile
    (adopted by the reconciler, or redone by the other worker) and must undo nothing."""
    hostnames = spawn_many(st, images["slow3"], n, "p")
    wait_for(
        lambda: sum(st.record(h).status == Status.STARTING for h in hostnames) >= max(1, n // 4),
        60,
        "spawns in progress",
    )
    paused = st.workers[0].proc  # type: ignore[attr-defined]
    os.killpg(paused.pid, signal.SIGSTOP)
    try:
        time.sleep(st.settings.start_timeout + DEADLINE_MARGIN + 5)
    finally:
        os.killpg(paused.pid, signal.SIGCONT)
    time.sleep(5)  # what the resumed attempts would do, they do now
    return hostnames


def resend_overlap(st: Stack, images: dict[str, str], n: int, workdir: Path) -> list[str]:
    """Every worker down longer than the spawns' queue deadline while spawns queue up, then back:
    the reconciler's resends run side by side with the original tasks."""
    for worker in st.workers:  # type: ignore[attr-defined]
        worker.stop()
    hostnames = spawn_many(st, images["httpd"], n, "o")
    time.sleep(st.settings.start_timeout + 3)
    for worker in st.workers:  # type: ignore[attr-defined]
        worker.start()
    return hostnames


def redis_restart(redis: RedisServer) -> Callable[[Stack, dict[str, str], int, Path], list[str]]:
    def run(st: Stack, images: dict[str, str], n: int, workdir: Path) -> list[str]:
        hostnames = spawn_many(st, images["slow3"], n, "r")
        time.sleep(1)
        redis.stop()
        time.sleep(2)
        redis.start()
        return hostnames

    return run


def container_removed(st: Stack, images: dict[str, str], n: int, workdir: Path) -> list[str]:
    hostnames = spawn_many(st, images["httpd"], n, "c")
    settle(st, hostnames, timeout=180)
    for h in hostnames[::2]:  # half of them vanish behind the system's back
        for c in st.containers():
            if c.labels.get("swarm-manager.hostname") == h:
                c.remove(force=True)
    # The reconciler (beat, every second) notices; wait until it has.
    wait_for(lambda: all(st.record(h).status == Status.FAILED for h in hostnames[::2]), 60, "vanished ones FAILED")
    return hostnames


def kill_races(st: Stack, images: dict[str, str], n: int, workdir: Path) -> list[str]:
    rng = random.Random(7)
    hostnames = []
    for i in range(n):
        h = st.spawn(images["slow3"] if i % 2 else images["httpd"], user=f"race{i}")
        hostnames.append(h)
        time.sleep(rng.choice([0, 0, 0.05, 0.2, 0.5]))
        st.kill(h)
    return hostnames


def redis_failover(client: docker.DockerClient, images: dict[str, str], n: int, workdir: Path) -> dict[str, Any]:
    """SIGKILL the master of a Redis Sentinel cluster (a master, a replica, three sentinels) once
    30 % of a burst of ``n`` spawns (every other one killed once accepted) were accepted; the API
    (gunicorn), worker and beat are real processes. Clients retry a 503 as a client would."""
    started = time.monotonic()
    with (
        SentinelCluster(workdir / "sentinel") as cluster,
        FailoverStack(cluster, client, workdir, "redisfailover", START_TIMEOUT=10) as st,
    ):
        run = st.burst(images["httpd"], n, kill_after=max(1, n * 3 // 10))
    outcome = run.outcome
    outcome.stuck += len(run.unexpected())
    return {
        "fault": "redis-failover",
        **asdict(outcome),
        "seconds": round(time.monotonic() - started, 1),
        "accepted": len(run.accepted),
        "killed": len(run.killed),
        "answered_503": run.refused,
        # Records left by spawns answered 503 (docs/operations.md: Redis failover): they must end FAILED, never start.
        "records_of_503s": len(run.unasked),
        "started_after_503": sum(r.status != Status.FAILED for r in run.unasked),
        "promotion_s": round(run.failover_seconds, 2),
        "first_202_after_kill_s": None if run.first_accept_seconds is None else round(run.first_accept_seconds, 2),
    }


def noticed(st: Stack, hostname: str, end: Callable[[], None], timeout: float = 120) -> float:
    """Seconds from ``end()`` (what stops the notebook) to its record's FAILED, read every 5 ms."""
    started = time.monotonic()
    end()
    while st.record(hostname).status != Status.FAILED:
        if time.monotonic() - started > timeout:
            return float("inf")
        time.sleep(0.005)
    return time.monotonic() - started


def watch_rows(
    redis: RedisServer, client: docker.DockerClient, images: dict[str, str], n: int, workdir: Path
) -> list[dict[str, Any]]:
    """How soon a notebook that stops is FAILED: ``n`` notebooks killed (SIGKILL, exit 137) or
    removed (``docker rm -f``) one after another, with ``swarm-manager watch`` following the
    engine and passes only every 30 s (``watch-kill``, ``watch-rm``); then the same kill with no
    watcher, passes every 5 s (``watch-off``: the safety net)."""
    rows = []
    for name, watching, interval in (("watch", True, 30), ("watch-off", False, 5)):
        started = time.monotonic()
        with stack(redis, client, workdir, name.replace("-", ""), RECONCILE_INTERVAL=interval) as st:
            watcher = WatchProcess(st.env, workdir / f"{name}.log", name=name) if watching else None
            if watcher:
                watcher.start()
            try:
                hostnames = spawn_many(st, images["httpd"], n, "w")
                settle(st, hostnames, timeout=180)
                kinds = (
                    {"kill": lambda c: c.kill()}
                    if not watching
                    else {
                        "kill": lambda c: c.kill(),
                        "rm": lambda c: c.remove(force=True),
                    }
                )
                per_kind = max(1, n // len(kinds))
                for k, (kind, end) in enumerate(kinds.items()):
                    chosen = hostnames[k * per_kind : (k + 1) * per_kind]
                    times = []
                    for h in chosen:
                        [c] = st.docker.containers.list(sparse=True, filters={"label": f"{LABEL_HOSTNAME}={h}"})
                        times.append(noticed(st, h, lambda c=c, end=end: end(c)))
                    records = [st.record(h) for h in chosen]
                    # Each FAILED notebook's removal follows its move: let them end before counting.
                    wait_for(
                        lambda chosen=chosen: (
                            not any(
                                st.docker.containers.list(
                                    all=True, sparse=True, filters={"label": f"{LABEL_HOSTNAME}={h}"}
                                )
                                for h in chosen
                            )
                        ),
                        60,
                        "the failed notebooks' containers to be removed",
                    )
                    outcome = check_outcome(st, records, others=set(hostnames) - set(chosen))
                    times.sort()
                    rows.append(
                        {
                            "fault": f"{name}-{kind}" if watching else name,
                            **asdict(outcome),
                            "seconds": round(time.monotonic() - started, 1),
                            "reconcile_interval": interval,
                            "notice_p50_s": round(times[len(times) // 2], 3),
                            "notice_p95_s": round(times[min(len(times) - 1, int(len(times) * 0.95))], 3),
                            "notice_max_s": round(times[-1], 3),
                        }
                    )
            finally:
                if watcher:
                    watcher.stop()
    return rows


def run_fault(name: str, fn: Any, make: Any, images: dict[str, str], n: int, workdir: Path) -> dict[str, Any]:
    started = time.monotonic()
    with make() as st:
        hostnames = fn(st, images, n, workdir)
        final = {Status.REMOVED} if name == "kill-races" else {Status.ACTIVE, Status.FAILED}
        records = settle(st, hostnames, timeout=240)
        outcome = check_outcome(st, records)
        # A record that ends outside the fault's expected outcomes counts as stuck (e.g. ACTIVE
        # after a kill would mean the kill was lost).
        outcome.stuck += sum(1 for r in records if r is not None and r.status not in final)
    return {"fault": name, **asdict(outcome), "seconds": round(time.monotonic() - started, 1)}


def table(rows: list[dict[str, Any]]) -> str:
    cols = [
        "fault",
        "trials",
        "active",
        "failed",
        "removed",
        "lost",
        "stuck",
        "orphans",
        "duplicates",
        "broken",
        "seconds",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(str(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spawns", type=int, default=50)
    parser.add_argument(
        "--faults",
        default="worker-sigkill,worker-sigstop,resend-overlap,redis-restart,engine-restart,container-removed,kill-races,"
        "redis-failover,watch",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"where the JSON goes (default {RESULTS})")
    args = parser.parse_args()
    wanted = args.faults.split(",")
    client = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=120)
    images = build_images(client)
    rows = []
    with tempfile.TemporaryDirectory(prefix="smfaults-") as tmp:
        workdir = Path(tmp)
        redis = RedisServer(workdir / "redis")
        redis.start()
        try:
            plain = {
                "worker-sigkill": worker_sigkill,
                "worker-sigstop": worker_sigstop,
                "resend-overlap": resend_overlap,
                "redis-restart": redis_restart(redis),
                "container-removed": container_removed,
                "kill-races": kill_races,
            }
            for name in wanted:
                if name in plain:
                    rows.append(
                        run_fault(
                            name,
                            plain[name],
                            lambda name=name: stack(
                                redis,
                                client,
                                workdir,
                                name.replace("-", ""),
                                START_TIMEOUT=START_TIMEOUTS.get(name, 20),
                            ),
                            images,
                            args.spawns,
                            workdir,
                        )
                    )
                elif name == "engine-restart":
                    rows.append(engine_restart(redis, client, images, args.spawns, workdir))
                elif name == "redis-failover":
                    rows.append(redis_failover(client, images, args.spawns, workdir))
                elif name == "watch":
                    rows.extend(watch_rows(redis, client, images, min(args.spawns, 30), workdir))
                else:
                    parser.error(f"unknown fault {name}")
                print(table(rows[-1:]).splitlines()[-1], flush=True)
        finally:
            redis.stop()
    print()
    print(table(rows))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(
        json.dumps(
            {"spawns_per_fault": args.spawns, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows},
            indent=2,
        )
        + "\n"
    )
    bad = [r for r in rows if r["lost"] or r["stuck"] or r["orphans"] or r["duplicates"] or r["broken"]]
    return 1 if bad else 0


def engine_restart(
    redis: RedisServer, client: docker.DockerClient, images: dict[str, str], n: int, workdir: Path
) -> dict[str, Any]:
    started = time.monotonic()
    with running_tls_engine(images, workdir / "certs") as engine:
        env = {
            "DOCKER_HOST": engine.tls_host,
            "DOCKER_TLS_VERIFY": "1",
            "DOCKER_CERT_PATH": str(engine.good_certs),
            "PUBLISH_IP": "0.0.0.0",
            "START_TIMEOUT": 60,
        }
        with stack(redis, engine.client, workdir, "enginerestart", **env) as st:
            engine.stop_engine()
            try:
                hostnames = spawn_many(st, engine.image, n, "e")
                time.sleep(5)  # spawns retry against a dead engine
            finally:
                engine.start_engine()
            st.docker = engine.client  # the restarted engine's socket
            records = settle(st, hostnames, timeout=240)
            outcome = check_outcome(st, records)
            st.docker = engine.client
    return {"fault": "engine-restart", **asdict(outcome), "seconds": round(time.monotonic() - started, 1)}


if __name__ == "__main__":
    raise SystemExit(main())
