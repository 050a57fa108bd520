"""Flower, as `make run` starts it (``swarm-manager flower``), shows the task history: a real
Flower process on the stack's broker sees a completed spawn task named swarm_manager.spawn with the
notebook's hostname. It asks for FLOWER_BASIC_AUTH's password on its pages and its API, whatever
Host a request names (a DNS-rebinding page included), and does not start without one."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.status import Status
from shared.tasknames import SPAWN_TASK
from testkit.support import VENV_BIN, WorkerProcess, free_port, wait_for

FLOWER_USER, FLOWER_PASSWORD = "ops", "flower-test-password"


class FlowerProcess(WorkerProcess):
    """``swarm-manager flower`` on a free loopback port, with the stack's settings and the
    password in a file named by FLOWER_BASIC_AUTH_FILE (as `make run` hands it over)."""

    def __init__(self, env: dict[str, str], logfile: Path) -> None:
        secret = logfile.with_name("flower-auth")
        secret.write_text(f"{FLOWER_USER}:{FLOWER_PASSWORD}\n")
        super().__init__({**env, "FLOWER_BASIC_AUTH_FILE": str(secret)}, logfile, name="flower")
        self.auth = (FLOWER_USER, FLOWER_PASSWORD)
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [str(VENV_BIN / "swarm-manager"), "flower", "--port", str(self.port), "--address", "127.0.0.1"]

    def _ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"Flower exited early:\n{self.log_tail()}")
        return requests.get(f"{self.url}/healthcheck", timeout=2).text.strip() == "OK"

    def get(self, path: str, **params: Any) -> Any:
        response = requests.get(f"{self.url}{path}", params=params, auth=self.auth, timeout=10)
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


def test_flower_asks_for_its_password_on_pages_and_api(flower: FlowerProcess) -> None:
    for path in ("/", "/tasks", "/api/workers"):
        assert requests.get(f"{flower.url}{path}", timeout=10).status_code == 401, path
        wrong = requests.get(f"{flower.url}{path}", auth=(FLOWER_USER, "wrong"), timeout=10)
        assert wrong.status_code == 401, path
        right = requests.get(f"{flower.url}{path}", auth=flower.auth, timeout=10)
        assert right.status_code == 200, path
    # Other web pages may not read it from an operator's browser.
    assert "Access-Control-Allow-Origin" not in right.headers


def test_a_rebinding_page_gets_only_the_password_prompt(flower: FlowerProcess) -> None:
    # A page of another site whose name the attacker made resolve to 127.0.0.1 (DNS rebinding):
    # its requests name the attacker's host, and Flower still asks for the password.
    for path in ("/", "/api/tasks", "/api/workers"):
        rebound = requests.get(f"{flower.url}{path}", headers={"Host": "attacker.example"}, timeout=10)
        assert rebound.status_code == 401, path
        assert "spawn-" not in rebound.text
    shutdown = requests.post(f"{flower.url}/api/worker/shutdown/x", headers={"Host": "attacker.example"}, timeout=10)
    assert shutdown.status_code in (401, 403)


@pytest.mark.parametrize("password", [None, ""])
def test_flower_does_not_start_without_a_password(stack: Any, password: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    env.update(stack.worker.env)
    if password is not None:
        env["FLOWER_BASIC_AUTH"] = password
    result = subprocess.run(
        [str(VENV_BIN / "swarm-manager"), "flower", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "FLOWER_BASIC_AUTH" in result.stderr, result.stderr
