"""Fault injection on real parts: a worker killed mid-spawn, Redis restarted under load.

Each test checks the same invariants (testkit.faults.check_outcome): every spawn ends ACTIVE
or FAILED, no record is lost, an ACTIVE notebook has exactly one running container and a
FAILED or REMOVED one has none.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.status import Status
from testkit.faults import check_outcome, settle
from testkit.support import BeatProcess, RedisServer, WorkerProcess, wait_for
from worker.containers import ContainerEngine
from worker.readiness import http_status
from worker.reconciler import Reconciler
from worker.spawner import Spawner


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def test_worker_killed_mid_spawn(stack_factory: Any, images: dict[str, str], tmp_path: Path) -> None:
    st = stack_factory("sigkill", START_TIMEOUT=6, RECONCILE_INTERVAL=1)
    beat = BeatProcess(st.worker.env, tmp_path / "beat.log", name="beat")
    beat.start()
    replacement = WorkerProcess(st.worker.env, tmp_path / "worker2.log", name="replacement")
    try:
        hostnames = [st.spawn(images["slow3"], user=f"k{i}") for i in range(10)]
        wait_for(
            lambda: sum(st.record(h).status == Status.STARTING for h in hostnames) >= 3, 30, "spawns to be in progress"
        )
        st.worker.kill(signal.SIGKILL)  # the worker dies with spawns half done
        replacement.start()
        records = settle(st, hostnames, timeout=120)
        outcome = check_outcome(st, records)
        assert (outcome.lost, outcome.stuck, outcome.duplicates, outcome.orphans, outcome.broken) == (0, 0, 0, 0, 0), (
            outcome
        )
        assert outcome.active + outcome.failed == len(hostnames), outcome
        for r in records:  # FAILED ones say why
            assert r.status == Status.ACTIVE or r.error, r
    finally:
        beat.stop()
        replacement.stop()


def test_redis_restarted_under_load(
    stack_factory: Any, own_redis: RedisServer, images: dict[str, str], tmp_path: Path
) -> None:
    # A spawn message the broker handed out just as the connection dropped can be lost in
    # transit (kombu's Redis transport pops it before it records it as unacknowledged); the
    # reconciler sends a PENDING spawn again after its queue deadline, so beat runs here too.
    st = stack_factory("redisrestart", REDIS_URL=own_redis.url, START_TIMEOUT=10, RECONCILE_INTERVAL=1)
    beat = BeatProcess(st.worker.env, tmp_path / "beat.log", name="beat")
    try:
        beat.start()
        hostnames = [st.spawn(images["slow3"], user=f"r{i}") for i in range(10)]
        own_redis.stop()
        try:
            # While Redis is away the API answers 503 JSON, never 500.
            for method, path in (
                ("get", f"/container/{hostnames[0]}"),
                ("get", "/containers"),
                ("post", "/spawn"),
                ("get", "/healthz"),
                ("delete", f"/container/{hostnames[1]}"),
            ):
                response = getattr(st.http, method)(path, data={"image": images["httpd"], "user": "x"})
                assert response.status_code == 503, (path, response.status_code)
                assert response.is_json and response.get_json()["error"], path
            time.sleep(2)
        finally:
            own_redis.start()  # same port and data folder: the append-only file brings the records back
        records = settle(st, hostnames, timeout=120)
        outcome = check_outcome(st, records)
        assert (outcome.lost, outcome.stuck, outcome.duplicates, outcome.orphans, outcome.broken) == (0, 0, 0, 0, 0), (
            outcome
        )
        assert outcome.active + outcome.failed == len(hostnames)
    finally:
        # Before the own_redis fixture stops its server: this stack's worker, beat and keys use it.
        beat.stop()
        st.worker.stop()
        st.cleanup()


def test_engine_outage_spawns_wait_then_complete(stack_factory: Any, tls_engine: Any, tmp_path: Path) -> None:
    """The engine stops for a while: queued spawns retry with backoff and finish when it is back;
    a notebook that was running dies with the engine and leaves ACTIVE with the reason."""
    st = stack_factory(
        "outage",
        DOCKER_HOST=tls_engine.tls_host,
        DOCKER_TLS_VERIFY="1",
        DOCKER_CERT_PATH=str(tls_engine.good_certs),
        PUBLISH_IP="0.0.0.0",
        START_TIMEOUT=45,
        RECONCILE_INTERVAL=1,
    )
    before = st.spawn(tls_engine.image, user="before")
    assert st.wait(before, {Status.ACTIVE, Status.FAILED}, timeout=60).status == Status.ACTIVE
    beat = BeatProcess(st.worker.env, tmp_path / "beat.log", name="beat")
    tls_engine.stop_engine()
    try:
        during = [st.spawn(tls_engine.image, user=f"during{i}") for i in range(5)]
        time.sleep(4)  # spawns are retrying against a dead engine
        assert {st.record(h).status for h in during} == {Status.PENDING}
    finally:
        tls_engine.start_engine()
    beat.start()
    try:
        records = settle(st, during, timeout=90)
        assert [r.status for r in records if r] == [Status.ACTIVE] * 5, [r.error for r in records if r]
        died = st.wait(before, {Status.FAILED}, timeout=60)
        assert "exited" in died.error or "disappeared" in died.error, died.error
    finally:
        beat.stop()
    mine = {c.labels["swarm-manager.hostname"]: c for c in tls_engine.containers(st.settings.instance)}
    assert sorted(mine) == sorted(during)  # the dead notebook's container is cleaned up, nothing extra
    for h in during:
        st.kill(h)
    for h in during:
        st.wait(h, {Status.REMOVED}, timeout=60)
    for c in tls_engine.containers(st.settings.instance):
        c.remove(force=True)


def test_engine_restart_with_notebooks_running_keeps_them_with_live_restore(
    stack_factory: Any, tls_engine: Any
) -> None:
    """With the engine's live-restore on (docs/deployment.md), notebooks outlive a restart of the
    engine: nothing fails them, and they still answer. Started again without it, the engine kills
    them, and each is FAILED with its exit code, not left ACTIVE."""
    st = stack_factory(
        "liverestore",
        DOCKER_HOST=tls_engine.tls_host,
        DOCKER_TLS_VERIFY="1",
        DOCKER_CERT_PATH=str(tls_engine.good_certs),
        PUBLISH_IP="0.0.0.0",
        START_TIMEOUT=45,
    )
    tls_engine.stop_engine()
    tls_engine.start_engine("--live-restore")
    try:
        running = [st.spawn(tls_engine.image, user=f"live{i}") for i in range(3)]
        records = settle(st, running, timeout=90)
        assert [r.status for r in records if r] == [Status.ACTIVE] * 3, [r.error for r in records if r]
        tls_engine.stop_engine()
        tls_engine.start_engine("--live-restore")
        engine = ContainerEngine(tls_engine.client, st.settings)
        reconciler = Reconciler(st.store, engine, Spawner(st.store, engine, st.settings), st.settings)
        assert reconciler.run(lock=False).failed == []
        for r in records:
            assert r is not None and st.record(r.hostname).status == Status.ACTIVE
            assert http_status(r.address) == 200, r.address  # served all along, through the restart
    finally:
        tls_engine.stop_engine()
        tls_engine.start_engine()  # as the other tests expect it: live-restore off
    engine = ContainerEngine(tls_engine.client, st.settings)
    reconciler = Reconciler(st.store, engine, Spawner(st.store, engine, st.settings), st.settings)
    assert sorted(reconciler.run(lock=False).failed) == sorted(running)
    for h in running:
        assert st.record(h).error.startswith("the notebook's container exited with code"), st.record(h).error
    assert tls_engine.containers(st.settings.instance) == []


def test_engine_down_past_the_deadline_fails_clearly(stack_factory: Any, tls_engine: Any) -> None:
    st = stack_factory(
        "outagelong",
        DOCKER_HOST=tls_engine.tls_host,
        DOCKER_TLS_VERIFY="1",
        DOCKER_CERT_PATH=str(tls_engine.good_certs),
        PUBLISH_IP="0.0.0.0",
        START_TIMEOUT=4,
    )
    tls_engine.stop_engine()
    try:
        h = st.spawn(tls_engine.image, user="unlucky")
        record = st.wait(h, {Status.ACTIVE, Status.FAILED}, timeout=60)
    finally:
        tls_engine.start_engine()
    assert record.status == Status.FAILED
    assert "unreachable" in record.error and "gave up" in record.error
