"""Fixtures on real parts: a redis-server process, the Docker engine, Celery worker processes.

A missing service is a failure with a clear message, never a skip: ``make test`` installs
and starts everything these need.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from shared.record import Notebook
from shared.settings import Settings
from shared.status import SETTLED, Status
from shared.store import Store, connect
from tests.support import (
    LABEL_INSTANCE,
    RedisServer,
    WorkerProcess,
    build_images,
    cleanup_engine,
    our_containers,
    unique_instance,
    wait_for,
)
from worker.hardening import isolated_network_options

# The second (mutual-TLS) engine in a network namespace, shared by the TLS and fault tests;
# the real Jupyter Notebook image (built once per machine), for the tests where a real server matters;
# a real registry (Debian's docker-registry); swarm-manager's own images for the deployment tests.
pytest_plugins = ["tests.tls_engine", "tests.jupyter_image", "tests.registry", "tests.deploy_images"]

# Engine settings from the developer's shell must not leak into workers the tests start.
ENGINE_VARS = ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=60)
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"no Docker engine at /var/run/docker.sock ({exc}); `make test` starts one", pytrace=False)
    yield client
    client.close()


@pytest.fixture(scope="session")
def images(docker_client: docker.DockerClient) -> dict[str, str]:
    return build_images(docker_client)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


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


@pytest.fixture(scope="session")
def notebook_network(docker_client: docker.DockerClient) -> Iterator[str]:
    """One isolated bridge, made as the worker makes its own, shared by the session's stacks.

    With NOTEBOOK_ISOLATION on (the default) each INSTANCE's worker makes ``<INSTANCE>-notebooks``,
    and a session's few dozen stacks (each kept to the end of the session) would use up the
    engine's default address pools (about 30 bridge networks), failing this run and any other
    on the engine. The stacks of the plain-containers backend on this engine get this one as
    NOTEBOOK_NETWORK instead; the tests of the worker's own network pass NOTEBOOK_NETWORK="".
    """
    instance = unique_instance("nb")
    name = f"{instance}-notebooks"
    docker_client.api.create_network(
        name,
        driver="bridge",
        options=isolated_network_options(),
        labels={LABEL_INSTANCE: instance},
        check_duplicate=True,
    )
    yield name
    cleanup_engine(docker_client, instance)


@pytest.fixture(scope="session")
def stack_factory(
    redis_server: RedisServer,
    docker_client: docker.DockerClient,
    images: dict[str, str],
    notebook_network: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Any]:
    """Make a Stack with its own instance name (keys, queue and labels) and worker settings."""
    made: list[Stack] = []

    def make(tag: str, *, worker: bool = True, **env_overrides: Any) -> Stack:
        env = base_env(redis_server.url, unique_instance(tag), **env_overrides)
        # The session's network (see notebook_network) only exists on this engine, and Swarm
        # services cannot join a local bridge.
        if env["ENGINE_BACKEND"] == "containers" and not env["DOCKER_HOST"] and "NOTEBOOK_NETWORK" not in env_overrides:
            env["NOTEBOOK_NETWORK"] = notebook_network
        settings = Settings.from_env(env)
        app = create_app(settings)
        stack = Stack(
            settings,
            app,
            app.test_client(),
            Store(connect(settings.redis_url), settings.key_prefix),
            docker_client,
            env=env,
        )
        made.append(stack)
        if worker:
            logdir = tmp_path_factory.mktemp(f"worker-{tag}")
            stack.worker = WorkerProcess(env, Path(logdir) / "worker.log", name=tag)
            stack.worker.start()
        return stack

    yield make
    for stack in made:
        if stack.worker:
            stack.worker.stop()
        stack.cleanup()


@pytest.fixture(scope="session")
def stack(stack_factory: Any) -> Stack:
    """The shared stack most end-to-end tests use (default worker settings, short timeouts)."""
    return stack_factory("core")  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def _no_engine_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENGINE_VARS:
        monkeypatch.delenv(name, raising=False)


def pytest_report_header() -> str:
    return f"swarm-manager tests; engine at unix:///var/run/docker.sock; uid {os.getuid()}"
