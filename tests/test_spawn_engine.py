"""Spawn and kill end to end: API -> Redis -> a real Celery worker -> the real Docker engine."""

from __future__ import annotations

import threading
import time
from typing import Any

import requests

from shared.status import Status
from testkit.support import wait_for

FINAL = {Status.ACTIVE, Status.FAILED}


def test_spawn_active_answers_then_kill_removes(stack: Any, images: dict[str, str]) -> None:
    hostname = stack.spawn(images["httpd"], user="odewahn")
    record = stack.wait(hostname, FINAL, timeout=60)
    assert record.status == Status.ACTIVE, record.error

    # The seed's contract: the record names the container, which really runs and answers.
    container = stack.docker.containers.get(record.container_id)
    assert container.status == "running"
    assert container.attrs["Config"]["Hostname"] == hostname
    assert container.attrs["Config"]["Domainname"] == "nb.test"
    labels = container.labels
    assert labels["swarm-manager.hostname"] == hostname
    assert labels["swarm-manager.user"] == "odewahn"
    assert labels["swarm-manager.instance"] == stack.settings.instance
    assert labels["interlock.hostname"] == hostname and labels["interlock.domain"] == "nb.test"
    assert record.url == f"{hostname}.nb.test"
    assert record.node
    answer = requests.get(record.address + "/", timeout=5)
    assert answer.status_code == 200 and "test notebook" in answer.text

    body = stack.http.get(f"/container/{hostname}/kill").get_json()  # the seed's GET form
    assert body["status"] == "DELETING"
    removed = stack.wait(hostname, {Status.REMOVED}, timeout=30)
    assert removed.status == Status.REMOVED
    assert [c for c in stack.containers() if c.labels["swarm-manager.hostname"] == hostname] == []

    again = stack.http.post(f"/container/{hostname}/kill")  # killing a removed notebook: a no-op
    assert again.status_code == 200 and again.get_json()["status"] == "REMOVED"


def test_twenty_concurrent_spawns_then_twenty_kills(stack: Any, images: dict[str, str]) -> None:
    hostnames: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        client = stack.app.test_client()  # one client per thread
        response = client.post("/spawn", data={"image": images["httpd"], "user": f"crowd{i}"})
        assert response.status_code == 202
        with lock:
            hostnames.append(response.get_json()["hostname"])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(set(hostnames)) == 20

    records = [stack.wait(h, FINAL, timeout=120) for h in hostnames]
    assert all(r.status == Status.ACTIVE for r in records), [r.error for r in records if r.error]
    ids = {r.container_id for r in records}
    assert len(ids) == 20
    running = {c.id for c in stack.containers(all=False)}
    assert ids <= running

    for h in hostnames:
        stack.kill(h)
    for h in hostnames:
        assert stack.wait(h, {Status.REMOVED}, timeout=90).status == Status.REMOVED
    assert not ids & {c.id for c in stack.containers()}


def test_kill_right_after_spawn_leaves_nothing(stack: Any, images: dict[str, str]) -> None:
    hostnames = []
    for i in range(5):
        h = stack.spawn(images["httpd"], user=f"hasty{i}")
        stack.kill(h)
        hostnames.append(h)
    for h in hostnames:
        assert stack.wait(h, {Status.REMOVED}, timeout=60).status == Status.REMOVED
    # The spawn may still be finishing after the record says REMOVED: give it a moment to
    # notice and clean up, then nothing of these notebooks may exist.
    wait_for(
        lambda: not [c for c in stack.containers() if c.labels["swarm-manager.hostname"] in hostnames],
        30,
        "the killed notebooks' containers to be gone",
    )
    time.sleep(2)
    assert not [c for c in stack.containers() if c.labels["swarm-manager.hostname"] in hostnames]


def test_kill_while_starting_wins(stack: Any, images: dict[str, str]) -> None:
    h = stack.spawn(images["slow5"], user="impatient")
    stack.wait(h, {Status.STARTING}, timeout=30)
    assert [c for c in stack.containers() if c.labels["swarm-manager.hostname"] == h]
    stack.kill(h)
    assert stack.wait(h, {Status.REMOVED}, timeout=30).status == Status.REMOVED
    time.sleep(6)  # past the moment the server would have answered
    assert stack.record(h).status == Status.REMOVED
    assert not [c for c in stack.containers() if c.labels["swarm-manager.hostname"] == h]


def test_missing_image_fails_with_reason(stack: Any) -> None:
    h = stack.spawn("swarm-manager-test/not-built-anywhere:1", user="typo")
    record = stack.wait(h, FINAL, timeout=30)
    assert record.status == Status.FAILED
    assert "not present" in record.error
    assert not [c for c in stack.containers() if c.labels["swarm-manager.hostname"] == h]


def test_container_that_exits_fails_fast_with_exit_code(stack: Any, images: dict[str, str]) -> None:
    h = stack.spawn(images["crash"], user="crashy")
    record = stack.wait(h, FINAL, timeout=30)
    assert record.status == Status.FAILED
    assert "exited with code 3" in record.error
    assert "boom" in record.error  # the notebook's own last words
    assert not [c for c in stack.containers() if c.labels["swarm-manager.hostname"] == h]


def test_a_repeated_start_takes_the_container_an_earlier_attempt_made(stack: Any, images: dict[str, str]) -> None:
    """A redelivered spawn: create meets a 409 and the first container is used, even once the
    image's name is gone from the engine (the create then fails on the image, not the name)."""
    from worker.containers import ContainerEngine
    from worker.engine import NotebookSpec

    engine = ContainerEngine(stack.docker, stack.settings)
    gone = "swarm-manager-test/renamed:repeat"
    stack.docker.images.get(images["httpd"]).tag(gone)
    spec = NotebookSpec("repeatstart1", gone, "rita", "nb.test", 8888, stack.settings.instance)
    try:
        first = engine.start(spec)
        assert engine.start(spec).object_id == first.object_id
        stack.docker.images.remove(gone)  # untags only: the container keeps its image
        again = engine.start(spec)
        assert again.object_id == first.object_id and again.address == first.address
        assert [c.id for c in stack.containers() if c.name == spec.name] == [first.object_id]
    finally:
        engine.remove(spec)
        if any(gone in i.tags for i in stack.docker.images.list()):
            stack.docker.images.remove(gone)
    assert engine.state(spec) is None


def test_an_unreachable_engine_is_a_retryable_error_for_every_call() -> None:
    """docker-py lets requests' ConnectionError through unwrapped: it must still become EngineUnavailable."""
    import pytest

    from shared.errors import EngineUnavailable
    from shared.settings import Settings
    from testkit.support import unreachable_client
    from worker.containers import ContainerEngine
    from worker.engine import NotebookSpec
    from worker.services import ServiceEngine

    settings = Settings.from_env({})
    client = unreachable_client()  # made without asking the engine anything
    spec = NotebookSpec("unreachable1", "img", "u", "nb.test", 8888, settings.instance)
    for engine in (ContainerEngine(client, settings), ServiceEngine(client, settings)):
        with pytest.raises(EngineUnavailable, match="unreachable"):
            engine.start(spec)
        with pytest.raises(EngineUnavailable, match="unreachable"):
            engine.inventory()
        with pytest.raises(EngineUnavailable, match="unreachable"):
            engine.state(spec)
        with pytest.raises(EngineUnavailable, match="unreachable"):
            engine.remove(spec)
        assert engine.logs_tail(spec) == ""
