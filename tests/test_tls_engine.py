"""Spawning through a real mutual-TLS engine endpoint (a dockerd in its own network namespace).

The worker processes run with REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE set, as on many corporate
hosts: ``requests`` lets those override docker-py's own CA, so an engine client that trusts
the environment fails verification against the engine's private CA. The product's engine
client must verify against DOCKER_CERT_PATH/ca.pem whatever the environment says.
"""

from __future__ import annotations

import time
from contextlib import closing
from typing import Any

import pytest
import requests

from shared.errors import EngineError
from shared.settings import Settings
from shared.status import Status
from testkit.tls_engine import TlsEngine
from worker.engine import engine_call, make_client

SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
CA_BUNDLE_ENV = {"REQUESTS_CA_BUNDLE": SYSTEM_BUNDLE, "CURL_CA_BUNDLE": SYSTEM_BUNDLE}
FINAL = {Status.ACTIVE, Status.FAILED}


def tls_env(engine: TlsEngine, cert_path: Any, host: str | None = None, **extra: Any) -> dict[str, str]:
    return {
        "DOCKER_HOST": host or engine.tls_host,
        "DOCKER_TLS_VERIFY": "1",
        "DOCKER_CERT_PATH": str(cert_path),
        "PUBLISH_IP": "0.0.0.0",
        **CA_BUNDLE_ENV,
        **{k: str(v) for k, v in extra.items()},
    }


def mine(engine: TlsEngine, stack: Any, hostname: str | None = None) -> list[Any]:
    """The stack's containers on the namespace engine (optionally only this notebook's)."""
    found = engine.containers(stack.settings.instance)
    return [c for c in found if hostname is None or c.labels.get("swarm-manager.hostname") == hostname]


def test_spawn_and_kill_through_mutual_tls(tls_engine: TlsEngine, stack_factory: Any) -> None:
    stack = stack_factory("tls", **tls_env(tls_engine, tls_engine.good_certs))
    hostname = stack.spawn(tls_engine.image, user="tlsuser")
    record = stack.wait(hostname, FINAL, timeout=60)
    assert record.status == Status.ACTIVE, record.error

    # Reached over the veth at the namespace engine's address, on the port it published.
    assert record.address.startswith(f"http://{tls_engine.engine_ip}:"), record.address
    with requests.Session() as http:
        http.trust_env = False  # no proxy between us and our own namespace
        answer = http.get(record.address + "/", timeout=5)
    assert answer.status_code == 200 and "test notebook" in answer.text

    # The container lives in the namespace engine (not the main one), labelled as ours.
    container = tls_engine.client.containers.get(record.container_id)
    assert container.status == "running"
    assert container.labels["swarm-manager.instance"] == stack.settings.instance
    assert container.labels["swarm-manager.hostname"] == hostname
    assert container.labels["swarm-manager.user"] == "tlsuser"
    assert container.attrs["Config"]["Hostname"] == hostname
    published = container.attrs["NetworkSettings"]["Ports"]["8888/tcp"][0]["HostPort"]
    assert record.address == f"http://{tls_engine.engine_ip}:{published}"
    assert stack.containers() == []  # nothing of this stack on the main engine
    assert record.node  # the namespace engine's name, asked over TLS

    stack.kill(hostname)
    assert stack.wait(hostname, {Status.REMOVED}, timeout=30).status == Status.REMOVED
    assert mine(tls_engine, stack, hostname) == []


def test_engine_with_wrong_ca_fails_fast_with_tls_error(tls_engine: TlsEngine, stack_factory: Any) -> None:
    stack = stack_factory("tlsbadca", **tls_env(tls_engine, tls_engine.wrong_ca_certs, START_TIMEOUT=30))
    began = time.monotonic()
    hostname = stack.spawn(tls_engine.image, user="mallory")
    record = stack.wait(hostname, FINAL, timeout=20)
    took = time.monotonic() - began
    assert record.status == Status.FAILED
    assert took < 20, f"a TLS failure is permanent: no retries until the 30 s deadline (took {took:.1f}s)"
    assert "TLS" in record.error, record.error
    assert "certificate" in record.error.lower(), record.error
    assert "DOCKER_CERT_PATH" in record.error, record.error
    assert mine(tls_engine, stack) == []


def test_unreachable_engine_fails_after_deadline(tls_engine: TlsEngine, stack_factory: Any) -> None:
    stack = stack_factory(
        "tlsdown", **tls_env(tls_engine, tls_engine.good_certs, host=tls_engine.closed_host, START_TIMEOUT=4)
    )
    began = time.monotonic()
    hostname = stack.spawn(tls_engine.image, user="lonely")
    record = stack.wait(hostname, FINAL, timeout=30)
    took = time.monotonic() - began
    assert record.status == Status.FAILED
    assert "unreachable" in record.error, record.error
    assert "gave up after 4s" in record.error, record.error
    # Retried with backoff up to the 4 s deadline; the last retry's countdown is at most ~8 s.
    assert 3.5 <= took < 25, f"took {took:.1f}s"
    assert mine(tls_engine, stack) == []


@pytest.mark.parametrize("bundle_env", [True, False], ids=["with-REQUESTS_CA_BUNDLE", "clean-env"])
def test_make_client_verifies_against_engine_ca(
    tls_engine: TlsEngine,
    monkeypatch: pytest.MonkeyPatch,
    bundle_env: bool,
) -> None:
    """The engine's CA is used whatever the environment says (the clean-env case is the control)."""
    for name, value in CA_BUNDLE_ENV.items():
        if bundle_env:
            monkeypatch.setenv(name, value)
        else:
            monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env(
        {"DOCKER_HOST": tls_engine.tls_host, "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(tls_engine.good_certs)}
    )
    client = make_client(settings)
    try:
        assert client.ping() is True
        assert client.info()["ID"] == tls_engine.client.info()["ID"]  # the namespace engine, over TLS
    finally:
        client.close()


@pytest.mark.parametrize("folder", ["wrong_ca_certs", "untrusted_client_certs"])
def test_make_client_rejects_wrong_certificates(
    tls_engine: TlsEngine,
    monkeypatch: pytest.MonkeyPatch,
    folder: str,
) -> None:
    """The engine's certificate from another CA, or our certificate from a CA it does not trust."""
    for name, value in CA_BUNDLE_ENV.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env(
        {
            "DOCKER_HOST": tls_engine.tls_host,
            "DOCKER_TLS_VERIFY": "1",
            "DOCKER_CERT_PATH": str(getattr(tls_engine, folder)),
        }
    )
    began = time.monotonic()
    with (
        closing(make_client(settings)) as client,
        pytest.raises(EngineError, match="TLS") as caught,
        engine_call("pinging the engine"),
    ):
        client.ping()  # the first request: making the client asks the engine nothing
    assert time.monotonic() - began < 15
    assert caught.type is EngineError
