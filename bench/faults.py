"""Fault injection at scale: N spawns per fault on real parts, then a table of outcomes.

    .venv/bin/python -m bench.faults [--spawns 50] [--faults worker-sigkill,redis-restart,...]

Every fault runs against a real redis-server, real Celery worker and beat processes and a real
Docker engine (the engine outage uses a second, mutual-TLS engine in a network namespace, as the
tests do). Each row counts how the notebooks ended and checks the invariants: no record lost,
none stuck, at most one container per notebook, no container left for a FAILED or REMOVED one.
Results go to stdout and to bench/results/faults.json. Traffic stays on loopback and the
namespace made here; every loop is bounded.
"""

from __future__ import annotations

import argparse
import json
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
from tests.conftest import Stack, base_env
from tests.faults import check_outcome, settle
from tests.support import BeatProcess, RedisServer, WorkerProcess, build_images, unique_instance, wait_for
from tests.tls_engine import running_tls_engine

RESULTS = Path(__file__).parent / "results" / "faults.json"


@contextmanager
def stack(redis: RedisServer, client: docker.DockerClient, workdir: Path, tag: str, **env: Any) -> Iterator[Stack]:
    full = base_env(redis.url, unique_instance(tag), RECONCILE_INTERVAL=1, **env)
    settings = Settings.from_env(full)
    app = create_app(settings)
    st = Stack(settings, app, app.test_client(), Store(connect(settings.redis_url), settings.key_prefix), client)
    st.worker = WorkerProcess(full, workdir / f"{tag}-worker.log", name=tag)
    beat = BeatProcess(full, workdir / f"{tag}-beat.log", name=f"{tag}-beat")
    try:  # a beat (or worker) that fails to start leaves nothing running
        st.worker.start()
        beat.start()
        yield st
    finally:
        beat.stop()
        st.worker.stop()
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
    assert st.worker is not None
    st.worker.kill(signal.SIGKILL)
    st.worker = WorkerProcess(st.worker.env, workdir / "replacement.log", name="replacement")
    st.worker.start()
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
    parser.add_argument("--faults", default="worker-sigkill,redis-restart,engine-restart,container-removed,kill-races")
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
                            lambda name=name: stack(redis, client, workdir, name.replace("-", ""), START_TIMEOUT=20),
                            images,
                            args.spawns,
                            workdir,
                        )
                    )
                elif name == "engine-restart":
                    rows.append(engine_restart(redis, client, images, args.spawns, workdir))
                else:
                    parser.error(f"unknown fault {name}")
                print(table(rows[-1:]).splitlines()[-1], flush=True)
        finally:
            redis.stop()
    print()
    print(table(rows))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
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
