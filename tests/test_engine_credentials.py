"""Engine credentials: expired certificates fail closed, with a clear error, and no certificate
path or content ever reaches a record, a log line or an API answer.

Against the real mutual-TLS engine in a network namespace (testkit/tls_engine.py), whose CA also
signed two certificates that expired in 2020: a client one (the engine must refuse it) and a
server one (the client must refuse an engine that presents it).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest

from shared.errors import EngineError
from shared.settings import Settings
from shared.status import Status
from testkit.tls_engine import TlsEngine
from tests.test_tls_engine import CA_BUNDLE_ENV, mine, tls_env
from worker.engine import engine_call, make_client

FINAL = {Status.ACTIVE, Status.FAILED}


def settings_for(engine: TlsEngine, cert_path: Any) -> Settings:
    return Settings.from_env(
        {"DOCKER_HOST": engine.tls_host, "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(cert_path)}
    )


def connect_error(settings: Settings) -> EngineError:
    began = time.monotonic()
    with (
        closing(make_client(settings)) as client,
        pytest.raises(EngineError) as caught,
        engine_call("pinging the engine"),
    ):
        client.ping()  # the first request: making the client asks the engine nothing
    assert time.monotonic() - began < 15, "a TLS failure is permanent: no retrying"
    return caught.value


def assert_no_credentials(text: str, engine: TlsEngine) -> None:
    assert ".pem" not in text and "BEGIN" not in text, text
    for path in engine.certs.values():
        assert str(path) not in text and str(path.parent) not in text, text


def test_expired_client_certificate_is_refused_by_the_engine(
    tls_engine: TlsEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in CA_BUNDLE_ENV.items():
        monkeypatch.setenv(name, value)
    error = connect_error(settings_for(tls_engine, tls_engine.certs["expired_client"]))
    text = str(error)
    assert "TLS to the engine failed" in text and "client certificate" in text, text
    assert_no_credentials(text, tls_engine)


def test_expired_client_certificate_fails_the_spawn_at_once(tls_engine: TlsEngine, stack_factory: Any) -> None:
    folder = tls_engine.certs["expired_client"]
    stack = stack_factory("tlsexpired", **tls_env(tls_engine, folder, START_TIMEOUT=30))
    began = time.monotonic()
    hostname = stack.spawn(tls_engine.image, user="late")
    record = stack.wait(hostname, FINAL, timeout=20)
    assert record.status == Status.FAILED
    assert time.monotonic() - began < 20, "fail closed at once, not after the 30 s deadline"
    assert "TLS" in record.error and "client certificate" in record.error, record.error
    assert_no_credentials(record.error, tls_engine)
    body = stack.http.get(f"/container/{hostname}").get_data(as_text=True)
    assert_no_credentials(body, tls_engine)
    assert stack.worker is not None
    log = stack.worker.logfile.read_text(errors="replace")
    assert "TLS to the engine failed" in log
    assert str(folder) not in log and "BEGIN" not in log
    assert mine(tls_engine, stack) == []


@pytest.fixture
def expired_server(tls_engine: TlsEngine) -> Iterator[TlsEngine]:
    """The namespace engine restarted with its expired server certificate; restored afterwards."""
    good = dict(tls_engine.certs)
    tls_engine.certs = {
        **good,
        "server_cert": good["expired_server_cert"],
        "server_key": good["expired_server_key"],
    }
    try:
        tls_engine.stop_engine()
        tls_engine.start_engine()
        yield tls_engine
    finally:
        tls_engine.certs = good
        tls_engine.stop_engine()
        tls_engine.start_engine()


def test_engine_with_expired_certificate_is_refused(expired_server: TlsEngine) -> None:
    error = connect_error(settings_for(expired_server, expired_server.good_certs))
    text = str(error)
    assert "TLS to the engine failed" in text and "expired" in text, text
    assert_no_credentials(text, expired_server)
