"""Reconciliation on the real engine: records and containers agree whatever happened between."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from shared.status import Status
from testkit.support import BeatProcess, wait_for
from testkit.support import make_reconciler as reconciler
from worker.containers import ContainerEngine
from worker.engine import NotebookSpec
from worker.spawner import Spawner


def active(stack: Any, image: str, user: str) -> Any:
    h = stack.spawn(image, user=user)
    record = stack.wait(h, {Status.ACTIVE, Status.FAILED}, timeout=60)
    assert record.status == Status.ACTIVE, record.error
    return record


def test_container_removed_behind_our_back_leaves_active(stack: Any, images: dict[str, str]) -> None:
    record = active(stack, images["httpd"], "victim")
    stack.docker.containers.get(record.container_id).remove(force=True)
    report = reconciler(stack).run(lock=False)
    assert record.hostname in report.failed
    after = stack.record(record.hostname)
    assert after.status == Status.FAILED and "disappeared" in after.error


def test_container_that_died_is_reported_with_exit_code(stack: Any, images: dict[str, str]) -> None:
    record = active(stack, images["httpd"], "dying")
    stack.docker.containers.get(record.container_id).kill()  # SIGKILL: exit code 137
    wait_for(lambda: stack.docker.containers.get(record.container_id).status == "exited", 20, "the container to exit")
    reconciler(stack).run(lock=False)
    after = stack.record(record.hostname)
    assert after.status == Status.FAILED and "exited with code 137" in after.error
    assert not [c for c in stack.containers() if c.id == record.container_id]  # and it is cleaned up


def test_orphans_removed_but_foreign_containers_untouched(stack: Any, images: dict[str, str]) -> None:
    spec = NotebookSpec(
        hostname="orphan000001",
        image=images["httpd"],
        user="nobody",
        domain="nb.test",
        port=8888,
        instance=stack.settings.instance,
    )
    ours = stack.docker.containers.create(images["httpd"], name=spec.name, labels=spec.labels)
    foreign_spec = NotebookSpec(
        hostname="orphan000002",
        image=images["httpd"],
        user="nobody",
        domain="nb.test",
        port=8888,
        instance=stack.settings.instance + "-other",
    )
    foreign = stack.docker.containers.create(images["httpd"], name=foreign_spec.name, labels=foreign_spec.labels)
    unlabelled = stack.docker.containers.create(images["httpd"], name=f"{stack.settings.instance}-plain")
    try:
        # Within the grace period an orphan is left alone (its spawn may be about to record it).
        assert "orphan000001" not in reconciler(stack, orphan_grace=3600).run(lock=False).removed_orphans
        report = reconciler(stack, orphan_grace=0).run(lock=False)
        assert report.removed_orphans == ["orphan000001"]
        with pytest.raises(docker.errors.NotFound):
            ours.reload()
        foreign.reload()
        unlabelled.reload()
    finally:
        for c in (ours, foreign, unlabelled):
            try:
                c.remove(force=True)
            except docker.errors.NotFound:
                pass


def test_stuck_starting_record_is_failed_and_its_container_removed(stack: Any, images: dict[str, str]) -> None:
    record = stack.store.create(
        image=images["httpd"], user="stuck", domain="nb.test", internal={"queue_deadline": str(time.time())}
    )
    spec = Spawner(stack.store, ContainerEngine(stack.docker, stack.settings), stack.settings).spec_for(record)
    container = stack.docker.containers.create(images["httpd"], name=spec.name, labels=spec.labels)
    stack.store.transition(
        record.hostname, Status.STARTING, container_id=container.id, internal={"ready_deadline": str(time.time() + 5)}
    )
    # Before the deadline (plus margin) nothing happens: a live spawn may still be waiting.
    assert record.hostname not in reconciler(stack).run(lock=False).failed
    report = reconciler(stack, clock=lambda: time.time() + 60).run(lock=False)
    assert record.hostname in report.failed
    assert "did not become ready in time" in stack.record(record.hostname).error
    with pytest.raises(docker.errors.NotFound):
        container.reload()


def test_stuck_pending_record_with_a_lost_task_fails(stack: Any, images: dict[str, str]) -> None:
    record = stack.store.create(
        image=images["httpd"], user="lost", domain="nb.test", internal={"queue_deadline": str(time.time())}
    )  # no task was ever sent
    later = time.time() + stack.settings.start_timeout + 30
    assert record.hostname in reconciler(stack, clock=lambda: later).run(lock=False).failed
    assert stack.record(record.hostname).status == Status.FAILED


def test_stuck_deleting_record_is_finished(stack: Any, images: dict[str, str]) -> None:
    record = active(stack, images["httpd"], "half-killed")
    stack.store.transition(record.hostname, Status.DELETING)  # as if the kill task was lost
    report = reconciler(stack, clock=lambda: time.time() + 120).run(lock=False)
    assert report.finished_kills == [record.hostname]
    assert stack.record(record.hostname).status == Status.REMOVED
    assert not [c for c in stack.containers() if c.id == record.container_id]


def test_beat_runs_reconcile_periodically(stack_factory: Any, images: dict[str, str], tmp_path: Path) -> None:
    fast = stack_factory("beat", RECONCILE_INTERVAL=1)
    record = active(fast, images["httpd"], "watched")
    beat = BeatProcess(fast.worker.env, tmp_path / "beat.log", name="beat")
    try:
        beat.start()
        fast.docker.containers.get(record.container_id).remove(force=True)
        after = fast.wait(record.hostname, {Status.FAILED}, timeout=30)
        assert "disappeared" in after.error
    finally:
        beat.stop()


def test_starting_notebook_that_answers_is_adopted(stack: Any, images: dict[str, str]) -> None:
    """A spawn lost with its worker leaves a STARTING record whose server answers: it becomes ACTIVE."""
    record = stack.store.create(
        image=images["httpd"],
        user="orphaned-spawn",
        domain="nb.test",
        internal={"queue_deadline": str(time.time() + 60)},
    )
    engine = ContainerEngine(stack.docker, stack.settings)
    spec = Spawner(stack.store, engine, stack.settings).spec_for(record)
    placement = engine.start(spec)  # what the dead spawn had done
    stack.store.transition(
        record.hostname,
        Status.STARTING,
        container_id=placement.object_id,
        address=placement.address,
        internal={"ready_deadline": str(time.time() + 60)},
    )
    wait_for(lambda: requests.get(placement.address, timeout=1).ok, 20, "the server to answer")
    report = reconciler(stack).run(lock=False)
    assert report.adopted == [record.hostname]
    assert stack.record(record.hostname).status == Status.ACTIVE
