"""A stack of real parts for tests and benchmarks: its settings' environment, and :class:`Stack`,
the API (in-process WSGI) over a real Redis, a real worker process and the real engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import docker
import redis
from flask import Flask
from flask.testing import FlaskClient

from shared.record import Notebook
from shared.settings import Settings
from shared.status import SETTLED, Status
from shared.store import Store
from testkit.support import WorkerProcess, cleanup_engine, our_containers, wait_for

# Engine settings from the developer's shell must not leak into workers the tests start.
ENGINE_VARS = ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")


def base_env(redis_url: str, instance: str, **overrides: Any) -> dict[str, str]:
    env = {
        "REDIS_URL": redis_url,
        "INSTANCE": instance,
        "DOMAIN": "nb.test",
        "START_TIMEOUT": "20",
        "KILL_GRACE": "1",
        "LOG_LEVEL": "INFO",
        # Tests of the plain-containers backend say so: the engine may be a Swarm manager while
        # the Swarm tests run (tests/swarm_cluster.py), and auto would then pick services.
        "ENGINE_BACKEND": "containers",
        # Authentication is the default; the tests of it turn it on (tests/test_auth_matrix.py),
        # every other test talks to an open API as before.
        "AUTH": "off",
        **{name: "" for name in ENGINE_VARS},
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return env


@dataclass
class Stack:
    """The API (in-process WSGI), a real Redis, a real worker process and the real engine."""

    settings: Settings
    app: Flask
    http: FlaskClient
    store: Store
    docker: docker.DockerClient
    worker: WorkerProcess | None = None
    created: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # the settings' environment (for processes of its own)

    def spawn(self, image: str, user: str = "alice") -> str:
        response = self.http.post("/spawn", data={"image": image, "user": user})
        assert response.status_code == 202, response.get_json()
        hostname = str(response.get_json()["hostname"])
        self.created.append(hostname)
        return hostname

    def record(self, hostname: str) -> Notebook:
        record = self.store.get(hostname)
        assert record is not None, f"record {hostname} vanished"
        return record

    def wait(self, hostname: str, statuses: frozenset[Status] | set[Status] = SETTLED, timeout: float = 60) -> Notebook:
        def reached() -> Notebook | None:
            record = self.record(hostname)
            return record if record.status in statuses else None

        try:
            return wait_for(reached, timeout, f"{hostname} to reach {sorted(statuses)}")
        except AssertionError:
            if self.worker:
                print(f"--- worker log ---\n{self.worker.log_tail()}")
            raise

    def kill(self, hostname: str) -> dict[str, Any]:
        response = self.http.delete(f"/container/{hostname}")
        assert response.status_code in (200, 202), response.get_json()
        return dict(response.get_json())

    def containers(self, all: bool = True) -> list[Any]:
        return our_containers(self.docker, self.settings.instance, all=all)

    def cleanup(self) -> None:
        cleanup_engine(self.docker, self.settings.instance)
        try:
            for key in self.store.redis.scan_iter(match=f"{self.settings.key_prefix}*", count=1000):
                self.store.redis.delete(key)
        except redis.RedisError:
            pass  # a test's own Redis that is already gone: nothing to clean there
