"""Fixtures on real parts: a redis-server process, the Docker engine, Celery worker processes.

A missing service is a failure with a clear message, never a skip: ``make test`` installs
and starts everything these need.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from api import create_app
from shared.settings import Settings
from shared.store import Store, connect
from testkit.stack import ENGINE_VARS, Stack, base_env
from testkit.support import (
    LABEL_INSTANCE,
    RedisServer,
    WorkerProcess,
    build_images,
    cleanup_engine,
    unique_instance,
)
from worker.hardening import isolated_network_options

# The second (mutual-TLS) engine in a network namespace, shared by the TLS and fault tests;
# the real Jupyter Notebook image (built once per machine), for the tests where a real server matters;
# a real registry (Debian's docker-registry); swarm-manager's own images for the deployment tests.
pytest_plugins = ["testkit.tls_engine", "testkit.jupyter_image", "testkit.registry", "tests.deploy_images"]


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
