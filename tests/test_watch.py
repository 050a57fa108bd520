"""The engine's events move records at once (worker/watcher.py, ``swarm-manager watch``).

A real watcher process, a real worker, Redis and the engine; no beat runs, so no reconcile pass
can be what moves a record here: each record below stays ACTIVE until the watcher sees the
engine's event. How fast (event to FAILED) is measured in bench/faults.py, not asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from shared.locks import Lease
from shared.status import Status
from testkit.support import ROOT, WatchProcess, wait_for
from worker.engine import LABEL_HOSTNAME

FAILED = frozenset({Status.FAILED})


@pytest.fixture
def watched(stack_factory: Any, images: dict[str, str], tmp_path: Path) -> Any:
    profiles = tmp_path / "profiles.yaml"
    # A notebook that serves at once, then runs out of memory 4 s later in its main process's
    # own pipeline (the container ends with the engine's OOM flag set).
    hog = "/bin/httpd -p 8888 -h /www; sleep 4; /bin/busybox head -c 400m /dev/zero | /bin/busybox tail"
    profiles.write_text(
        json.dumps(
            {
                "profiles": [
                    {
                        "name": "hog",
                        "images": [images["status"]],
                        "command": ["/bin/sh", "-c", hog],
                        "mem_limit": "48m",
                        "token": False,
                    }
                ]
            }
        )
    )
    stack = stack_factory("watch", PROFILES_FILE=str(profiles))
    watcher = WatchProcess(stack.env, tmp_path / "watch.log", name="watch")
    stack.watcher = watcher
    yield stack
    watcher.stop()


def active(stack: Any, image: str) -> str:
    hostname = str(stack.spawn(image))
    assert stack.wait(hostname).status == Status.ACTIVE, stack.record(hostname)
    return hostname


def container_of(stack: Any, hostname: str) -> Any:
    (container,) = [c for c in stack.containers() if c.labels.get(LABEL_HOSTNAME) == hostname]
    return container


def test_a_killed_notebook_is_failed_by_the_watcher_with_its_exit_code(watched: Any, images: dict[str, str]) -> None:
    stack = watched
    before = active(stack, images["httpd"])
    container_of(stack, before).kill()  # SIGKILL: exit 137, as a crash
    time.sleep(2)
    # Nobody else moves records here: without the watcher the record stays ACTIVE.
    assert stack.record(before).status == Status.ACTIVE
    # A watcher that starts now replays the events of its lease's TTL (what a previous holder missed).
    stack.watcher.start()
    record = stack.wait(before, FAILED, timeout=30)
    assert record.error == "the notebook's container exited with code 137", record.error
    wait_for(lambda: not any(c.labels.get(LABEL_HOSTNAME) == before for c in stack.containers()), 30, "removal")

    during = active(stack, images["httpd"])
    container_of(stack, during).kill()
    record = stack.wait(during, FAILED, timeout=30)
    assert record.error == "the notebook's container exited with code 137", record.error


def test_a_removed_notebook_is_failed_as_gone(watched: Any, images: dict[str, str]) -> None:
    stack = watched
    stack.watcher.start()
    hostname = active(stack, images["httpd"])
    container_of(stack, hostname).remove(force=True)  # `docker rm -f`
    record = stack.wait(hostname, FAILED, timeout=30)
    # `rm -f` kills first (the engine's die event, exit 137), then removes (destroy): the
    # watcher may look between the two or after both; either reason is what happened.
    assert record.error in (
        "the notebook's container disappeared",
        "the notebook's container exited with code 137",
    ), record.error


def test_a_notebook_out_of_memory_is_failed_as_oom(watched: Any, images: dict[str, str]) -> None:
    stack = watched
    stack.watcher.start()
    response = stack.http.post("/spawn", data={"image": images["status"], "user": "hog"})
    assert response.status_code == 202, response.get_json()
    hostname = response.get_json()["hostname"]
    stack.created.append(hostname)
    assert stack.wait(hostname, timeout=30).status == Status.ACTIVE
    record = stack.wait(hostname, FAILED, timeout=60)
    assert record.error == "the notebook's container was killed for exceeding its memory limit (OOM)", record.error


def test_one_watcher_follows_and_another_takes_over_when_it_dies(
    watched: Any, images: dict[str, str], tmp_path: Path
) -> None:
    stack = watched
    stack.watcher.start()
    standby = WatchProcess(stack.env, tmp_path / "standby.log", name="standby")
    standby.start(wait=False)
    try:
        wait_for(lambda: "watch" in standby.log_tail() or standby.proc.poll() is None, 10, "the stand-by to run")
        time.sleep(2)
        assert "following the engine's events" not in standby.log_tail()  # the lease is held
        stack.watcher.kill()  # SIGKILL: the lease is not given back, it lapses
        wait_for(lambda: "following the engine's events" in standby.log_tail(), Lease.TTL + 10, "take-over")
        hostname = active(stack, images["httpd"])
        container_of(stack, hostname).kill()
        record = stack.wait(hostname, FAILED, timeout=30)
        assert record.error == "the notebook's container exited with code 137"
    finally:
        standby.stop()


def test_watch_stops_on_sigterm_and_gives_the_lease_back(watched: Any) -> None:
    stack = watched
    stack.watcher.start()
    key = f"{stack.settings.key_prefix}lock:watch"
    assert stack.store.redis.get(key)
    stack.watcher.proc.terminate()
    assert stack.watcher.proc.wait(15) == 0
    assert stack.store.redis.get(key) is None  # a stand-by takes over at once, not after the TTL


def test_watch_refuses_bad_settings_with_the_reason() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli", "watch"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "START_TIMEOUT": "soon"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "START_TIMEOUT" in done.stderr, done.stderr
