"""GET /metrics: Prometheus text format, rendered from Redis at scrape time.

Nothing is counted in this process (gunicorn runs several, the workers count most things):
every scrape reads the counters, the status indexes and the queue length from Redis
(``shared/metrics.py``) and renders them through a fresh registry. Redis away: 503 JSON.
"""

from __future__ import annotations

from collections.abc import Iterator

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from api.auth import ADMIN_ONLY, policy
from api.routes import store
from shared.metrics import Snapshot

bp = Blueprint("metrics", __name__)


class SnapshotCollector(Collector):
    """Turns one :class:`Snapshot` into metric families (read before rendering, so a Redis
    failure becomes a 503 and never a half-written page)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        spawns = CounterMetricFamily(
            "swarm_manager_spawns",
            "Spawns by outcome (active, failed, killed before ACTIVE), counted once per notebook.",
            labels=["outcome"],
        )
        for outcome, n in s.spawns.items():
            spawns.add_metric([outcome], n)
        yield spawns

        buckets = [(repr(float(bound)), n) for bound, n in s.latency_buckets.items()]  # le="0.5", "1.0"
        buckets.append(("+Inf", s.latency_count))
        yield HistogramMetricFamily(
            "swarm_manager_spawn_duration_seconds",
            "Seconds from a spawn request (start_time) to its notebook being ACTIVE.",
            buckets=buckets,
            sum_value=s.latency_sum,
        )

        notebooks = GaugeMetricFamily("swarm_manager_notebooks", "Notebook records by status.", labels=["status"])
        for status, n in s.notebooks.items():
            notebooks.add_metric([status.value], n)
        yield notebooks

        yield GaugeMetricFamily(
            "swarm_manager_queue_depth", "Tasks waiting in the Celery queue for a worker.", value=s.queue_depth
        )

        errors = CounterMetricFamily(
            "swarm_manager_engine_errors",
            "Engine errors met by spawns and kills: engine_error (refused for good) or "
            "engine_unavailable (unreachable or a server error; retried).",
            labels=["kind"],
        )
        for kind, n in s.engine_errors.items():
            errors.add_metric([kind], n)
        yield errors


@bp.get("/metrics")
@policy(ADMIN_ONLY)
def metrics() -> Response:
    snapshot = store().metrics.snapshot()  # StoreUnavailable -> 503 JSON (api/errors.py)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return Response(generate_latest(registry), mimetype=None, content_type=CONTENT_TYPE_LATEST)
