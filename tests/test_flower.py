"""Flower, as `make run` starts it, shows the task history: a real Flower process on the stack's
broker sees a completed spawn task named swarm_manager.spawn with the notebook's hostname."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.queue import SPAWN_TASK
from shared.status import Status
from tests.support import VENV_BIN, WorkerProcess, free_port, wait_for


class FlowerProcess(WorkerProcess):
    """``celery -A worker.celery_app flower`` on a free loopback port, with the stack's settings."""

    def __init__(self, env: dict[str, str], logfile: Path) -> None:
        super().__init__({**env, "FLOWER_UNAUTHENTICATED_API": "true"}, logfile, name="flower")
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            str(VENV_BIN / "celery"),
            "-A",
            "worker.celery_app",
            "flower",
            f"--port={self.port}",
            "--address=127.0.0.1",
        ]

    def _ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"Flower exited early:\n{self.log_tail()}")
        return requests.get(f"{self.url}/healthcheck", timeout=2).text.strip() == "OK"

    def get(self, path: str, **params: Any) -> Any:
        response = requests.get(f"{self.url}{path}", params=params, timeout=10)
        response.raise_for_status()
        return response.json()


@pytest.fixture
def flower(stack: Any, tmp_path: Path) -> Iterator[FlowerProcess]:
    proc = FlowerProcess(stack.worker.env, tmp_path / "flower.log")
    try:
        proc.start()
        # Flower builds its task history from worker events: wait until it has heard the stack's
        # worker (its heartbeats), so the spawn's events are not sent before Flower listens.
        worker_name = wait_for(
            lambda: [
                name
                for name, alive in proc.get("/api/workers", status="true").items()
                if alive and name.startswith(f"{stack.worker.name}-")
            ],
            30,
            "Flower to see the stack's worker alive",
            0.3,
        )
        assert worker_name
        yield proc
    finally:
        proc.stop()


def test_flower_shows_a_completed_spawn_with_its_hostname(
    flower: FlowerProcess, stack: Any, images: dict[str, str]
) -> None:
    hostname = stack.spawn(images["httpd"], user="flower")
    try:
        assert stack.wait(hostname).status.value == "ACTIVE"

        def spawn_task() -> dict[str, Any] | None:
            tasks = flower.get("/api/tasks", taskname=SPAWN_TASK, state="SUCCESS")
            return next((t for t in tasks.values() if hostname in str(t.get("args"))), None)

        try:
            task = wait_for(spawn_task, 20, f"Flower to list a SUCCESS {SPAWN_TASK} for {hostname}", 0.3)
        except AssertionError:
            print(f"--- flower log ---\n{flower.log_tail()}")
            raise
        assert task["name"] == SPAWN_TASK
        assert task["state"] == "SUCCESS"
        assert task["uuid"] == f"spawn-{hostname}"
        assert task["args"] == repr([hostname])  # the hostname is the task's only argument
        assert task["result"] == repr("ACTIVE")
        assert task["sent"], "the API's send event (task_send_sent_event) reached Flower"
        assert task["worker"].startswith(f"{stack.worker.name}-")
        # The task's own detail page in Flower's API names it too.
        info = flower.get(f"/api/task/info/spawn-{hostname}")
        assert info["name"] == SPAWN_TASK and hostname in info["args"]
    finally:
        stack.kill(hostname)  # a no-op for one that FAILED
        stack.wait(hostname, {Status.REMOVED, Status.FAILED}, timeout=30)
