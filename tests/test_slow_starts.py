"""Slow notebook servers: waiting for them must not starve the workers, and must end."""

from __future__ import annotations

import time
from typing import Any

from shared.status import Status
from testkit.support import wait_for

FINAL = {Status.ACTIVE, Status.FAILED}


def test_twenty_slow_starts_wait_side_by_side(stack: Any, images: dict[str, str]) -> None:
    """20 notebooks whose server answers after 5 s, with the default worker settings.

    One at a time that is 100 s; the worker waits for them side by side, so many are
    STARTING at the same moment (observed here, instead of timing the run).
    """
    hostnames = [stack.spawn(images["slow5"], user=f"slow{i}") for i in range(20)]
    most_starting = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        statuses = [stack.record(h).status for h in hostnames]
        most_starting = max(most_starting, statuses.count(Status.STARTING))
        if all(s in FINAL for s in statuses):
            break
        time.sleep(0.2)
    records = [stack.wait(h, FINAL, timeout=5) for h in hostnames]
    assert [r.status for r in records] == [Status.ACTIVE] * 20, [r.error for r in records]
    assert most_starting >= 10, f"at most {most_starting} notebooks were starting at once"
    for h in hostnames:
        stack.kill(h)
    for h in hostnames:
        stack.wait(h, {Status.REMOVED}, timeout=60)
    assert not [c for c in stack.containers() if c.labels["swarm-manager.hostname"] in hostnames]


def test_server_that_never_answers_fails_after_start_timeout(stack_factory: Any, images: dict[str, str]) -> None:
    short = stack_factory("timeout", START_TIMEOUT=3)
    h = short.spawn(images["silent"], user="quiet")
    assert short.wait(h, {Status.STARTING}, timeout=30).container_id
    record = short.wait(h, FINAL, timeout=30)
    assert record.status == Status.FAILED
    assert "did not answer HTTP on port 8888 within 3s" in record.error
    wait_for(lambda: short.containers() == [], 10, "its container to be removed, not left running")
