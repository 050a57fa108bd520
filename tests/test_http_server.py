"""The API as `make run` serves it: gunicorn on a real socket, a real worker, the real engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from testkit.support import ApiServer, wait_for


@pytest.fixture
def served(stack: Any, tmp_path: Path) -> Iterator[str]:
    server = ApiServer(stack.worker.env, tmp_path / "gunicorn.log", workers=1)
    try:
        server.start()
        yield server.url
    finally:
        server.stop()


def test_spawn_poll_kill_over_http_like_the_seed(served: str, stack: Any, images: dict[str, str]) -> None:
    # The seed's curl --data form.
    spawned = requests.post(
        served + "/spawn",
        data=f"image={images['httpd']}&user=odewahn",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=5,
    )
    assert spawned.status_code == 202
    assert spawned.headers["Location"].endswith(f"/container/{spawned.json()['hostname']}")
    hostname = spawned.json()["hostname"]

    def status() -> str:
        return str(requests.get(f"{served}/container/{hostname}", timeout=5).json()["status"])

    assert wait_for(lambda: status() in ("ACTIVE", "FAILED") and status(), 60, "ACTIVE") == "ACTIVE"
    record = requests.get(f"{served}/container/{hostname}", timeout=5).json()
    assert requests.get(record["address"], timeout=5).status_code == 200

    listed = requests.get(served + "/containers", params={"user": "odewahn"}, timeout=5).json()
    assert hostname in [r["hostname"] for r in listed]

    killed = requests.get(f"{served}/container/{hostname}/kill", timeout=5)
    assert killed.json()["status"] == "DELETING"
    assert wait_for(lambda: status() == "REMOVED", 30, "REMOVED")
    assert not [c for c in stack.containers() if c.labels["swarm-manager.hostname"] == hostname]
