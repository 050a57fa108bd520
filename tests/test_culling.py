"""Nothing runs forever by accident: lifetimes, idle culling, record retention."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests

from shared.pool import ANONYMOUS_USER
from shared.record import parse_rfc3339
from shared.status import Status
from testkit.support import make_reconciler, wait_for
from worker.activity import last_activity


def active(stack: Any, image: str, user: str, **extra: Any) -> Any:
    response = stack.http.post("/spawn", data={"image": image, "user": user, **extra})
    assert response.status_code == 202, response.get_json()
    record = stack.wait(response.get_json()["hostname"], {Status.ACTIVE, Status.FAILED}, timeout=60)
    assert record.status == Status.ACTIVE, record.error
    return record


def test_ttl_sets_expiry_and_an_expired_notebook_is_killed(stack: Any, images: dict[str, str]) -> None:
    record = active(stack, images["httpd"], "brief", ttl="120")
    start, expires = parse_rfc3339(record.start_time), parse_rfc3339(record.expires_at)
    assert abs((expires - start) - 120) < 2
    # Before its time nothing happens; after it, the reconciler kills it.
    assert record.hostname not in make_reconciler(stack).run(lock=False).culled
    report = make_reconciler(stack, clock=lambda: time.time() + 130).run(lock=False)
    assert record.hostname in report.culled
    after = stack.wait(record.hostname, {Status.REMOVED}, timeout=30)
    assert "expired" in after.error
    assert not [c for c in stack.containers() if c.id == record.container_id]


def test_ttl_is_capped_by_max_age(stack_factory: Any, images: dict[str, str]) -> None:
    capped = stack_factory("maxage", worker=False, MAX_AGE=300)
    body = capped.http.post("/spawn", data={"image": images["httpd"], "user": "greedy", "ttl": "999999"}).get_json()
    assert abs(parse_rfc3339(body["expires_at"]) - parse_rfc3339(body["start_time"]) - 300) < 2
    default = capped.http.post("/spawn", json={"image": images["httpd"], "user": "plain"}).get_json()
    assert abs(parse_rfc3339(default["expires_at"]) - parse_rfc3339(default["start_time"]) - 300) < 2


def test_bad_ttl_is_refused(stack: Any, images: dict[str, str]) -> None:
    for ttl in ("0", "-5", "abc", "1.5", "١٢", "9" * 20):
        response = stack.http.post("/spawn", data={"image": images["httpd"], "user": "bad", "ttl": ttl})
        assert response.status_code == 400, ttl
        assert "ttl" in response.get_json()["error"]
    for ttl in (True, [], {"a": 1}, 2.5):
        response = stack.http.post("/spawn", json={"image": images["httpd"], "user": "bad", "ttl": ttl})
        assert response.status_code == 400, ttl


@pytest.fixture(scope="module")
def open_stack(stack_factory: Any) -> Any:
    """Notebooks without tokens: the ``status`` image serves Jupyter's /api/status to anyone, which
    the token check (worker/readiness.py) would rightly fail."""
    return stack_factory("culling", NOTEBOOK_TOKEN="off")


def test_idle_notebook_is_culled_and_unreporting_one_is_not(open_stack: Any, images: dict[str, str]) -> None:
    stack = open_stack
    # The test image's /api/status reports last_activity 2026-01-01, long ago.
    record = active(stack, images["status"], "idler")
    assert last_activity(record.address) == parse_rfc3339("2026-01-01T00:00:00Z")
    report = make_reconciler(stack, idle_timeout=3600).run(lock=False)
    assert record.hostname in report.culled
    after = stack.wait(record.hostname, {Status.REMOVED}, timeout=30)
    assert "idle" in after.error


def test_last_activity_is_unknown_for_servers_that_do_not_report_it(open_stack: Any, images: dict[str, str]) -> None:
    stack = open_stack
    record = active(stack, images["status"], "plainserver")
    container = stack.docker.containers.get(record.container_id)
    container.exec_run(["/bin/sh", "-c", "echo not-json > /www/api/status"])
    assert requests.get(record.address + "/api/status", timeout=5).status_code == 200
    assert last_activity(record.address) is None
    assert record.hostname not in make_reconciler(stack, idle_timeout=1).run(lock=False).culled
    assert last_activity("http://127.0.0.1:9/") is None  # nothing listening: unknown, no exception
    stack.kill(record.hostname)
    stack.wait(record.hostname, {Status.REMOVED}, timeout=30)


def test_ended_records_expire_after_retention(stack: Any, images: dict[str, str]) -> None:
    h = stack.spawn("swarm-manager-test/never-built:1", user="retired")
    assert stack.wait(h, {Status.FAILED}, timeout=30).status == Status.FAILED
    assert h in [r.hostname for r in stack.store.records(user="retired")]
    assert h not in make_reconciler(stack).run(lock=False).purged  # 7 days by default
    report = make_reconciler(stack, clock=lambda: time.time() + 8 * 86400).run(lock=False)
    assert h in report.purged
    assert stack.store.get(h) is None
    assert h not in [r.hostname for r in stack.store.records(user="retired")]
    assert h not in [r.hostname for r in stack.store.records(status=Status.FAILED)]
    assert h not in [r.hostname for r in stack.store.records()]
    assert wait_for(lambda: stack.http.get(f"/container/{h}").status_code == 404, 5, "404 after purge")


def test_an_idle_anonymous_notebook_is_culled_sooner_than_a_users(stack_factory: Any, images: dict[str, str]) -> None:
    """ANONYMOUS_IDLE_TIMEOUT: a reader who left a public page frees the slot, with IDLE_TIMEOUT off."""
    admin = "a-test-admin-token-0123456789"
    stack = stack_factory(
        "cullanon",
        AUTH="on",
        ADMIN_TOKEN=admin,
        NOTEBOOK_TOKEN="off",
        ANONYMOUS_IMAGES=images["status"],
        ANONYMOUS_IDLE_TIMEOUT="600",
    )
    launched = stack.http.post(
        "/api/spawn/", data=json.dumps({"image_name": images["status"], "wait": False}), content_type="text/plain"
    )
    assert launched.status_code == 202, launched.get_json()
    anonymous = stack.wait(launched.get_json()["hostname"], {Status.ACTIVE, Status.FAILED}, timeout=60)
    stack.created.append(anonymous.hostname)
    assert anonymous.status == Status.ACTIVE and anonymous.user == ANONYMOUS_USER, anonymous.error
    spawned = stack.http.post(
        "/spawn", data={"image": images["status"], "user": "reader"}, headers={"Authorization": f"Bearer {admin}"}
    )
    assert spawned.status_code == 202, spawned.get_json()
    owned = stack.wait(spawned.get_json()["hostname"], {Status.ACTIVE, Status.FAILED}, timeout=60)
    stack.created.append(owned.hostname)
    assert owned.status == Status.ACTIVE, owned.error

    # Both servers report their last activity on 2026-01-01, long ago; IDLE_TIMEOUT is off.
    report = make_reconciler(stack).run(lock=False)
    assert report.culled == [anonymous.hostname]
    assert "idle for more than 600s" in stack.wait(anonymous.hostname, {Status.REMOVED}, timeout=30).error
    assert owned.hostname not in make_reconciler(stack, anonymous_idle_timeout=0).run(lock=False).culled
    # With both set, the shorter applies to an anonymous notebook, IDLE_TIMEOUT to everyone else.
    assert owned.hostname in make_reconciler(stack, idle_timeout=3600).run(lock=False).culled
    stack.wait(owned.hostname, {Status.REMOVED}, timeout=30)
