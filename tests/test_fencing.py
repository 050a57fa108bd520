"""A stale spawn never removes a live notebook: spawn attempts with an identity (fencing).

Each test drives real Spawners (real Redis, the real engine) on one record, with a pause at a
chosen point of one of them, so the interleaving the fault runs found is reproduced every time:
an attempt paused inside ``engine.start`` or inside its readiness probe while another attempt (a
redelivered or resent task) or the reconciler takes over; two copies of a spawn at once; a kill
while the container is being created. The stale attempt must leave the record and the container
alone, and every FAILED reason must be true.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from shared.status import Status
from testkit.support import make_reconciler, wait_for
from worker.containers import ContainerEngine
from worker.engine import NotebookSpec, Placement
from worker.readiness import answers_http
from worker.spawner import Spawner


class Gate:
    """A pause point: the paused side sets ``reached`` and waits for ``release``."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.release = threading.Event()

    def pause(self) -> None:
        self.reached.set()
        assert self.release.wait(60), "the test never released the paused attempt"


class PausingEngine(ContainerEngine):
    """The containers backend with a pause before or after the container is created and started."""

    def __init__(self, client: Any, settings: Any, before: Gate | None = None, after: Gate | None = None) -> None:
        super().__init__(client, settings)
        self.before, self.after = before, after

    def start(self, spec: NotebookSpec) -> Placement:
        if self.before:
            self.before.pause()
        placement = super().start(spec)
        if self.after:
            self.after.pause()
        return placement


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    thread.start()
    return thread, result


def pending(stack: Any, image: str, user: str) -> str:
    record = stack.store.create(
        image=image,
        user=user,
        domain=stack.settings.domain,
        internal={"queue_deadline": str(time.time() + stack.settings.start_timeout)},
    )
    stack.created.append(record.hostname)
    return str(record.hostname)


def containers_of(stack: Any, hostname: str) -> list[Any]:
    return [c for c in stack.containers() if c.labels.get("swarm-manager.hostname") == hostname]


@pytest.fixture(scope="module")
def fstack(stack_factory: Any) -> Any:
    # No worker: the tests are the workers. Tokens off: busybox answers no token check either way.
    return stack_factory("fencing", worker=False, NOTEBOOK_TOKEN="off")


def test_an_attempt_paused_in_engine_start_leaves_the_notebook_to_the_one_that_took_over(
    fstack: Any, images: dict[str, str]
) -> None:
    h = pending(fstack, images["httpd"], "paused-start")
    gate = Gate()
    stale = Spawner(fstack.store, PausingEngine(fstack.docker, fstack.settings, after=gate), fstack.settings)
    thread, result = in_thread(lambda: stale.spawn(h))
    assert gate.reached.wait(30)  # it created and started the container, and stopped there
    # Its task was given up on and sent again: the new attempt takes the container over.
    current = Spawner(fstack.store, ContainerEngine(fstack.docker, fstack.settings), fstack.settings)
    assert current.spawn(h) == Status.ACTIVE
    active = fstack.record(h)
    gate.release.set()
    thread.join(60)
    assert result == [Status.ACTIVE]  # it found itself superseded and did nothing
    after = fstack.record(h)
    assert after.status == Status.ACTIVE and after.error == "" and after.container_id == active.container_id
    (container,) = containers_of(fstack, h)
    container.reload()
    assert container.status == "running" and container.id == active.container_id


def test_an_attempt_paused_in_its_probe_past_its_deadline_removes_nothing(fstack: Any, images: dict[str, str]) -> None:
    settings = replace(fstack.settings, start_timeout=2.0)
    h = pending(fstack, images["httpd"], "paused-probe")
    gate = Gate()

    def stuck_probe(address: str) -> bool:
        gate.pause()  # the worker stops (SIGSTOP) in its first probe, past its ready deadline
        return False

    stale = Spawner(fstack.store, ContainerEngine(fstack.docker, settings), settings, probe=stuck_probe)
    thread, result = in_thread(lambda: stale.spawn(h))
    assert gate.reached.wait(30)
    assert fstack.record(h).status == Status.STARTING
    # The reconciler finds it STARTING while its server answers, and adopts it (fenced).
    report = make_reconciler(fstack, start_timeout=2.0).run(lock=False)
    assert h in report.adopted, report
    time.sleep(2.5)  # the paused attempt's deadline passes
    gate.release.set()
    thread.join(60)
    assert result == [Status.ACTIVE]  # its fail() was refused: the notebook is not its own any more
    after = fstack.record(h)
    assert after.status == Status.ACTIVE and after.error == ""
    (container,) = containers_of(fstack, h)
    container.reload()
    assert container.status == "running"


def test_a_stuck_attempt_failed_by_the_reconciler_cannot_make_it_active_again(
    fstack: Any, images: dict[str, str]
) -> None:
    h = pending(fstack, images["slow3"], "failed-then-ready")
    gate = Gate()

    def late_probe(address: str) -> bool:
        gate.pause()
        return answers_http(address)

    stale = Spawner(fstack.store, ContainerEngine(fstack.docker, fstack.settings), fstack.settings, probe=late_probe)
    thread, result = in_thread(lambda: stale.spawn(h))
    assert gate.reached.wait(30)
    # Long past its deadline (as the reconciler's clock sees it), and not answering yet: failed.
    later = time.time() + 10 * fstack.settings.start_timeout
    report = make_reconciler(fstack, clock=lambda: later).run(lock=False)
    assert h in report.failed, report
    time.sleep(3.5)  # slow3 answers by now
    gate.release.set()
    thread.join(60)
    after = fstack.record(h)
    assert after.status == Status.FAILED and result == [Status.FAILED]
    assert "did not become ready in time" in after.error  # the reason that was true when it failed
    wait_for(lambda: not containers_of(fstack, h), 15, "the failed notebook's container to be removed")


def test_two_copies_of_a_spawn_at_once_make_one_active_notebook(fstack: Any, images: dict[str, str]) -> None:
    hostnames = [pending(fstack, images["httpd"], f"twice{i}") for i in range(8)]

    def copy() -> Spawner:
        return Spawner(fstack.store, ContainerEngine(fstack.docker, fstack.settings), fstack.settings)

    threads = [in_thread(lambda h=h: copy().spawn(h)) for h in hostnames for _ in range(2)]
    for thread, _ in threads:
        thread.join(90)
    for h in hostnames:
        record = fstack.record(h)
        assert record.status == Status.ACTIVE, (h, record.error)
        (container,) = containers_of(fstack, h)
        assert container.id == record.container_id


def test_a_kill_during_creation_is_finished_by_the_attempt_and_nothing_outlives_removed(
    fstack: Any, images: dict[str, str]
) -> None:
    h = pending(fstack, images["httpd"], "killed-early")
    gate = Gate()
    spawning = Spawner(fstack.store, PausingEngine(fstack.docker, fstack.settings, before=gate), fstack.settings)
    thread, result = in_thread(lambda: spawning.spawn(h))
    assert gate.reached.wait(30)  # claimed, about to create the container
    # The API's kill: DELETING, then the kill task, which finds no container yet.
    fstack.store.transition(h, Status.DELETING)
    killer = Spawner(fstack.store, ContainerEngine(fstack.docker, fstack.settings), fstack.settings)
    assert killer.kill(h) == Status.DELETING  # left to the attempt that may still create one
    gate.release.set()
    thread.join(60)
    assert result == [Status.REMOVED]
    # The record says REMOVED only once the container the attempt made is gone.
    assert fstack.record(h).status == Status.REMOVED and not containers_of(fstack, h)


def test_a_kill_left_to_an_attempt_that_died_is_finished_by_the_next_task(fstack: Any, images: dict[str, str]) -> None:
    h = pending(fstack, images["httpd"], "orphaned-kill")
    claimed = fstack.store.claim_spawn(h)  # an attempt claims it, then its worker dies
    assert not isinstance(claimed, type(None)) and not isinstance(claimed, Status)
    fstack.store.transition(h, Status.DELETING)
    spawner = Spawner(fstack.store, ContainerEngine(fstack.docker, fstack.settings), fstack.settings)
    assert spawner.kill(h) == Status.DELETING  # the kill task leaves it to that attempt...
    assert spawner.spawn(h) == Status.REMOVED  # ...the spawn's redelivery finishes it


class PausingAfterCreate(ContainerEngine):
    """The containers backend with a pause between creating the container and starting it."""

    def __init__(self, client: Any, settings: Any, gate: Gate) -> None:
        super().__init__(client, settings)
        self.gate = gate

    def _create(self, spec: NotebookSpec) -> Any:
        container = super()._create(spec)
        self.gate.pause()
        return container


def test_a_kill_between_create_and_start_is_finished_by_the_attempt_whose_start_failed(
    fstack: Any, images: dict[str, str]
) -> None:
    # The kill task removes the container the attempt has just created, so the attempt's start
    # fails ("marked for removal", or no such container). The attempt cannot mark the record
    # FAILED (it is DELETING), and the kill task left the end to it: it must finish the kill.
    h = pending(fstack, images["httpd"], "killed-before-start")
    gate = Gate()
    spawning = Spawner(fstack.store, PausingAfterCreate(fstack.docker, fstack.settings, gate), fstack.settings)
    thread, result = in_thread(lambda: spawning.spawn(h))
    assert gate.reached.wait(30)  # the container exists, not started
    assert containers_of(fstack, h)
    fstack.store.transition(h, Status.DELETING)
    killer = Spawner(fstack.store, ContainerEngine(fstack.docker, fstack.settings), fstack.settings)
    assert killer.kill(h) == Status.DELETING  # it removed the container, and left the end to the attempt
    gate.release.set()
    thread.join(60)
    assert result == [Status.REMOVED]
    assert fstack.record(h).status == Status.REMOVED and not containers_of(fstack, h)
