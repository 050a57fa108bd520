"""Notebooks cannot reach each other (NOTEBOOK_ISOLATION), on the real engine.

A notebook runs whatever its user types, so from inside one notebook's container the tests open
TCP connections (busybox ``nc``, which the test images carry inside their busybox binary) to
another notebook: to its address on the network they share, and to its port published on the
host through the bridge's gateway. The worker's readiness probe reaching them is what makes a
spawn ACTIVE; the routing proxy reaches them the same way (tests/test_routing.py, whose
notebooks sit on an isolated network too: the session's, see tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import docker
import docker.errors
import pytest
import requests

from shared.errors import EngineError
from shared.settings import Settings
from shared.status import Status
from testkit.support import LABEL_INSTANCE, cleanup_engine, unique_instance
from testkit.tls_engine import TlsEngine
from worker.containers import BRIDGE_RECHECK, ContainerEngine
from worker.engine import NotebookSpec
from worker.hardening import ICC_OPTION

FINAL = {Status.ACTIVE, Status.FAILED}
PORT = 8888


def connects(container: Any, host: str, port: int) -> bool:
    """From inside ``container``: does an HTTP request to host:port get an answer (2 s to connect)?"""
    request = "printf 'GET / HTTP/1.0\\r\\n\\r\\n'"
    _code, out = container.exec_run(["/bin/sh", "-c", f"{request} | /bin/busybox nc -w 2 {host} {port}"])
    return bool(out.startswith(b"HTTP/1."))


def address(container: Any) -> tuple[str, str, str]:
    """(network name, IP address, gateway) of a container on its only network."""
    [(name, net)] = container.attrs["NetworkSettings"]["Networks"].items()
    return name, net["IPAddress"], net["Gateway"]


def test_notebooks_cannot_reach_each_other(stack_factory: Any, images: dict[str, str]) -> None:
    stack = stack_factory("iso", NOTEBOOK_NETWORK="")  # the default: the worker's own network
    a, b = stack.spawn(images["httpd"], user="iso-a"), stack.spawn(images["httpd"], user="iso-b")
    # ACTIVE: the worker's readiness probe reached each one through its published port.
    ra, rb = stack.wait(a, FINAL), stack.wait(b, FINAL)
    assert ra.status == rb.status == Status.ACTIVE, (ra.error, rb.error)
    ca, cb = (stack.docker.containers.get(r.container_id) for r in (ra, rb))
    network, ip_b, gateway = address(cb)
    published = urlsplit(rb.address).port
    assert published

    assert not connects(ca, ip_b, PORT)  # not on the network they share
    assert not connects(ca, gateway, published)  # nor through the host (PUBLISH_IP is 127.0.0.1)
    # The engine host (the worker, a proxy) still reaches a notebook by its address.
    assert requests.get(f"http://{ip_b}:{PORT}/", timeout=5).status_code == 200

    # The worker made the network: a bridge without traffic between its containers, labelled as ours.
    name = f"{stack.settings.instance}-notebooks"
    assert network == address(ca)[0] == name
    [made] = [n for n in stack.docker.networks.list(names=[name]) if n.name == name]
    assert made.attrs["Driver"] == "bridge" and made.attrs["Options"][ICC_OPTION] == "false"
    assert made.attrs["Labels"][LABEL_INSTANCE] == stack.settings.instance


@pytest.fixture
def settings(docker_client: docker.DockerClient) -> Iterator[Settings]:
    """Default settings with an INSTANCE of the test's own, for engines driven in-process; that
    instance's containers and networks are removed after the test."""
    made = Settings.from_env({"INSTANCE": unique_instance("isonet"), "ENGINE_BACKEND": "containers"})
    yield made
    cleanup_engine(docker_client, made.instance)


def spec(image: str, hostname: str, instance: str) -> NotebookSpec:
    return NotebookSpec(hostname, image, "iso", "nb.test", PORT, instance)


def test_with_isolation_off_notebooks_reach_each_other(
    settings: Settings, images: dict[str, str], docker_client: docker.DockerClient
) -> None:
    instance = settings.instance
    # The control: the same probe succeeds on the engine's default bridge, as before isolation.
    engine = ContainerEngine(docker_client, replace(settings, notebook_isolation=False))
    engine.start(spec(images["httpd"], "isooff000001", instance))
    engine.start(spec(images["httpd"], "isooff000002", instance))
    ca, cb = (docker_client.containers.get(f"{instance}-isooff00000{i}") for i in (1, 2))
    assert address(ca)[0] == address(cb)[0] == "bridge"
    assert connects(ca, address(cb)[1], PORT)
    assert not docker_client.networks.list(names=[f"{instance}-notebooks"])  # none made


def test_a_named_network_that_lets_notebooks_talk_is_used_with_a_warning(
    settings: Settings,
    images: dict[str, str],
    docker_client: docker.DockerClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    instance = settings.instance
    # As compose's workers need: notebooks on the operator's network, reached by address there.
    name = f"{instance}-open"
    docker_client.networks.create(name, driver="bridge", labels={LABEL_INSTANCE: instance})
    engine = ContainerEngine(docker_client, replace(settings, notebook_network=name))
    with caplog.at_level(logging.WARNING, logger="worker.containers"):
        engine.start(spec(images["httpd"], "isonamed0001", instance))
    container = docker_client.containers.get(f"{instance}-isonamed0001")
    assert address(container)[0] == name
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(name in w and "not isolated" in w for w in warnings), warnings


def test_the_workers_own_network_must_keep_notebooks_apart(
    settings: Settings, images: dict[str, str], docker_client: docker.DockerClient
) -> None:
    instance = settings.instance
    # <INSTANCE>-notebooks is the worker's by name: one that lets containers talk is not used.
    name = f"{instance}-notebooks"
    docker_client.networks.create(name, driver="bridge", labels={LABEL_INSTANCE: instance})
    engine = ContainerEngine(docker_client, settings)
    with pytest.raises(EngineError, match=f"network {name} lets containers on it reach each other"):
        engine.start(spec(images["httpd"], "isoopen00001", instance))
    with contextlib.suppress(docker.errors.NotFound):
        docker_client.containers.get(f"{instance}-isoopen00001")
        pytest.fail("a container was made on a network that does not isolate it")


def test_ports_published_on_every_host_address_are_open_to_other_notebooks(
    settings: Settings, images: dict[str, str], docker_client: docker.DockerClient, caplog: pytest.LogCaptureFixture
) -> None:
    # What isolation cannot cover: a port published on 0.0.0.0 is also on the notebooks' gateway.
    engine = ContainerEngine(docker_client, replace(settings, publish_ip="0.0.0.0"))
    with caplog.at_level(logging.WARNING, logger="worker.containers"):
        placement = engine.start(spec(images["httpd"], "isopub000001", settings.instance))
        engine.start(spec(images["httpd"], "isopub000002", settings.instance))
    assert any("PUBLISH_IP 0.0.0.0" in r.getMessage() for r in caplog.records), caplog.text
    other = docker_client.containers.get(f"{settings.instance}-isopub000002")
    _, _, gateway = address(other)
    published = urlsplit(placement.address).port
    assert published and connects(other, gateway, published)


def test_an_engine_whose_default_bridge_keeps_containers_apart_isolates_notebooks_there(
    tls_engine: TlsEngine, caplog: pytest.LogCaptureFixture
) -> None:
    # dockerd --icc=false: the default bridge isolates already, and a container starts faster on
    # it than on a network of its own (no embedded DNS to set up): the worker makes none.
    instance = unique_instance("iccoff")
    settings = Settings.from_env({"INSTANCE": instance, "ENGINE_BACKEND": "containers", "PUBLISH_IP": "0.0.0.0"})
    tls_engine.stop_engine()
    tls_engine.start_engine("--icc=false")
    try:
        engine = ContainerEngine(tls_engine.client, settings)
        with caplog.at_level(logging.INFO, logger="worker.containers"):
            for n in (1, 2):
                engine.start(spec(tls_engine.image, f"iccoff00000{n}", instance))
        ca, cb = (tls_engine.client.containers.get(f"{instance}-iccoff00000{n}") for n in (1, 2))
        assert address(ca)[0] == address(cb)[0] == "bridge"
        assert not [n for n in tls_engine.client.networks.list() if n.name == f"{instance}-notebooks"]
        assert any("default bridge keeps containers apart" in r.getMessage() for r in caplog.records)
        assert not connects(ca, address(cb)[1], PORT)
        assert connects(ca, "127.0.0.1", PORT)  # the probe works: it is the bridge that refuses

        # The engine restarted with inter-container traffic on: once the worker's finding is
        # BRIDGE_RECHECK old, the next notebook goes on a network of its own again.
        tls_engine.stop_engine()
        tls_engine.start_engine()
        engine._bridge_checked_at = time.monotonic() - BRIDGE_RECHECK - 1
        with caplog.at_level(logging.WARNING, logger="worker.containers"):
            engine.start(spec(tls_engine.image, "iccoff000003", instance))
        cc = tls_engine.client.containers.get(f"{instance}-iccoff000003")
        assert address(cc)[0] == f"{instance}-notebooks"
        assert any("lets containers talk now" in r.getMessage() for r in caplog.records)
    finally:
        cleanup_engine(tls_engine.client, instance)  # the containers, and the network the re-check made
        tls_engine.stop_engine()
        tls_engine.start_engine()  # as the other tests expect it: inter-container traffic on
