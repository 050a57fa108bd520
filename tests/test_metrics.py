"""GET /metrics: Prometheus text rendered from counters in Redis, against the real stack.

The session-shared stack has other tests' notebooks, so its checks compare values before and
after; a stack of its own (no worker: tasks stay queued) checks exact values.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from api import create_app
from shared.metrics import LATENCY_BUCKETS
from shared.settings import Settings
from shared.status import Status
from shared.store import Store
from shared.tasknames import QUEUE_NAME
from testkit.stack import base_env
from testkit.support import free_port, unique_instance

MISSING_IMAGE = "swarm-manager-test/missing:1"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(http: FlaskClient) -> Samples:
    """Every sample of one scrape, keyed by (sample name, sorted labels); checks the format."""
    response = http.get("/metrics")
    text = response.get_data(as_text=True)
    assert response.status_code == 200, text[:500]
    assert response.mimetype == "text/plain", response.content_type
    assert "version=" in response.content_type
    samples: Samples = {}
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {
        "swarm_manager_spawns",
        "swarm_manager_spawn_duration_seconds",
        "swarm_manager_notebooks",
        "swarm_manager_queue_depth",
        "swarm_manager_engine_errors",
    } <= set(families), sorted(families)
    assert families["swarm_manager_spawns"].type == "counter"
    assert families["swarm_manager_spawn_duration_seconds"].type == "histogram"
    assert families["swarm_manager_notebooks"].type == "gauge"
    for family in families.values():
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def spawns(samples: Samples, outcome: str) -> float:
    return samples[("swarm_manager_spawns_total", (("outcome", outcome),))]


def notebooks(samples: Samples, status: Status) -> float:
    return samples[("swarm_manager_notebooks", (("status", status.value),))]


def engine_errors(samples: Samples, kind: str) -> float:
    return samples[("swarm_manager_engine_errors_total", (("kind", kind),))]


def latency(samples: Samples, part: str) -> float:
    return samples[(f"swarm_manager_spawn_duration_seconds_{part}", ())]


def buckets(samples: Samples) -> list[tuple[float, float]]:
    out = [
        (float(dict(labels)["le"]), value)
        for (name, labels), value in samples.items()
        if name == "swarm_manager_spawn_duration_seconds_bucket"
    ]
    return sorted(out)


def assert_histogram_consistent(samples: Samples) -> None:
    found = buckets(samples)
    assert [bound for bound, _ in found] == [*map(float, LATENCY_BUCKETS), float("inf")]
    counts = [value for _, value in found]
    assert counts == sorted(counts), "buckets are cumulative"
    assert counts[-1] == latency(samples, "count")


def test_spawn_to_active_and_a_failed_spawn_are_counted(stack: Any, images: dict[str, str]) -> None:
    before = scrape(stack.http)
    assert_histogram_consistent(before)

    good = stack.spawn(images["httpd"], user="metrics")
    bad = stack.spawn(MISSING_IMAGE, user="metrics")
    try:
        check_counted(stack, before, good, bad)
    finally:
        if stack.record(good).status not in (Status.REMOVED, Status.FAILED):
            stack.kill(good)
            stack.wait(good, {Status.REMOVED, Status.FAILED}, timeout=30)


def check_counted(stack: Any, before: Samples, good: str, bad: str) -> None:
    assert stack.wait(good).status == Status.ACTIVE
    failed = stack.wait(bad)
    assert failed.status == Status.FAILED and "not present" in failed.error
    record = stack.record(good)

    after = scrape(stack.http)
    assert_histogram_consistent(after)
    assert spawns(after, "active") - spawns(before, "active") == 1
    assert spawns(after, "failed") - spawns(before, "failed") == 1
    assert latency(after, "count") - latency(before, "count") == 1
    added = latency(after, "sum") - latency(before, "sum")
    assert 0 < added < 60, added
    # The new observation sits in every bucket from the first bound at or above it.
    grew = [bound for (bound, n), (_, m) in zip(buckets(before), buckets(after), strict=True) if n != m]
    assert grew and grew[-1] == float("inf") and grew == [b for b, _ in buckets(after) if b >= grew[0]]
    assert engine_errors(after, "engine_error") - engine_errors(before, "engine_error") >= 1  # the missing image
    assert notebooks(after, Status.ACTIVE) - notebooks(before, Status.ACTIVE) == 1
    assert notebooks(after, Status.FAILED) - notebooks(before, Status.FAILED) == 1
    assert notebooks(after, Status.PENDING) == stack.store.redis.zcard(f"{stack.settings.key_prefix}idx:status:PENDING")

    # Counted once per notebook: counting the same record again, or a later move, adds nothing.
    assert stack.store.metrics.spawn_settled(record) is False
    stack.kill(good)
    assert stack.wait(good, {Status.REMOVED}, timeout=30).status == Status.REMOVED
    final = scrape(stack.http)
    assert spawns(final, "active") == spawns(after, "active")
    assert spawns(final, "killed") == spawns(after, "killed")  # killed only counts kills before ACTIVE
    assert latency(final, "count") == latency(after, "count")
    assert notebooks(final, Status.ACTIVE) - notebooks(after, Status.ACTIVE) == -1
    assert notebooks(final, Status.REMOVED) - notebooks(after, Status.REMOVED) >= 1


@pytest.fixture
def queued(stack_factory: Any) -> Iterator[Any]:
    """A stack of its own with no worker: spawns stay queued in Redis."""
    made = stack_factory("metricsq", worker=False)
    yield made
    made.cleanup()


def test_queue_depth_and_statuses_of_queued_tasks(queued: Any) -> None:
    prefix = queued.settings.key_prefix
    empty = scrape(queued.http)
    assert empty[("swarm_manager_queue_depth", ())] == 0
    assert all(notebooks(empty, s) == 0 for s in Status)
    assert spawns(empty, "active") == spawns(empty, "failed") == spawns(empty, "killed") == 0
    assert latency(empty, "count") == 0 and latency(empty, "sum") == 0

    names = [queued.spawn("busybox", user="queued") for _ in range(3)]
    # Where Celery keeps the queue: a list named after the queue under the instance's key prefix.
    assert queued.store.redis.llen(f"{prefix}{QUEUE_NAME}") == 3
    samples = scrape(queued.http)
    assert samples[("swarm_manager_queue_depth", ())] == 3
    assert notebooks(samples, Status.PENDING) == 3

    queued.kill(names[0])  # PENDING -> DELETING, and a kill task queued behind the spawns
    queued.kill(names[0])  # again: a no-op, nothing queued or counted
    samples = scrape(queued.http)
    assert samples[("swarm_manager_queue_depth", ())] == 4
    assert notebooks(samples, Status.PENDING) == 2
    assert notebooks(samples, Status.DELETING) == 1
    assert spawns(samples, "killed") == 1
    assert spawns(samples, "active") == spawns(samples, "failed") == 0


def test_a_spawn_is_counted_once_per_notebook_across_repeated_moves() -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    store = Store(client, prefix="unit:")
    try:
        record = store.create(image="busybox", user="alice", domain="nb.test")
        store.transition(record.hostname, Status.STARTING)
        store.transition(record.hostname, Status.ACTIVE)
        store.transition(record.hostname, Status.ACTIVE)  # a repeated move (redelivered task)
        store.transition(record.hostname, Status.FAILED, error="died")  # a later outcome
        snap = store.metrics.snapshot()
        assert snap.spawns == {"active": 1, "failed": 0, "killed": 0}
        assert snap.latency_count == 1
        assert snap.latency_buckets[LATENCY_BUCKETS[-1]] == 1
        assert snap.notebooks[Status.FAILED] == 1
        # A record that is gone (purged) is never recreated by counting.
        client.delete(store.key_for(record.hostname))
        assert store.metrics.spawn_settled(record) is False
        assert not client.exists(store.key_for(record.hostname))
    finally:
        client.flushall()
        client.close()


def test_metrics_with_redis_away_is_503_json() -> None:
    settings = Settings.from_env(base_env(f"redis://127.0.0.1:{free_port()}/0", unique_instance("down")))
    app = create_app(settings)
    try:
        response = app.test_client().get("/metrics")
        assert response.status_code == 503, response.get_data(as_text=True)[:300]
        assert response.mimetype == "application/json"
        body = response.get_json()
        assert body["code"] == "store_unavailable" and "Redis is unavailable" in body["error"]
        assert response.headers["Retry-After"] == "5"
    finally:
        app.extensions["store"].redis.close()
