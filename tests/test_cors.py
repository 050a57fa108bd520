"""CORS (``CORS_ORIGINS``): no CORS headers at all by default; with origins set, exactly those
origins get ``Access-Control-Allow-Origin`` (and answered preflights), with Bearer tokens and
never cookies. A real Redis, AUTH on."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from flask import Flask

from api import create_app
from shared.errors import ConfigError
from shared.settings import Settings
from testkit.stack import base_env
from testkit.support import RedisServer, unique_instance

ADMIN_TOKEN = "adm-" + secrets.token_urlsafe(24)
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ALLOWED = "https://app.example.org"
ALSO = "http://[::1]:8080"
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"}


def make_app(redis_server: RedisServer, **env: str) -> Iterator[Flask]:
    full = base_env(redis_server.url, unique_instance("cors"), AUTH="on", ADMIN_TOKEN=ADMIN_TOKEN, **env)
    app = create_app(Settings.from_env(full))
    yield app
    store = app.extensions["store"]
    for key in store.redis.scan_iter(match=f"{store.prefix}*", count=1000):
        store.redis.delete(key)
    store.redis.close()


@pytest.fixture
def closed(redis_server: RedisServer) -> Iterator[Flask]:
    yield from make_app(redis_server)


@pytest.fixture
def open_to_app(redis_server: RedisServer) -> Iterator[Flask]:
    yield from make_app(redis_server, CORS_ORIGINS=f"{ALLOWED}, {ALSO}/")


def cors_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower().startswith("access-control-")}


@pytest.mark.parametrize("origin", [ALLOWED, "https://evil.example", "null"])
def test_no_cors_headers_by_default(closed: Flask, origin: str) -> None:
    http = closed.test_client()
    for response in (
        http.get("/containers", headers={**BEARER, "Origin": origin}),
        http.get("/healthz", headers={"Origin": origin}),
        http.options("/spawn", headers={"Origin": origin, **PREFLIGHT}),
        http.get("/containers", headers={"Origin": origin}),  # a 401
    ):
        assert cors_headers(dict(response.headers)) == {}, response.headers


@pytest.mark.parametrize("origin", [ALLOWED, ALSO, "HTTPS://APP.EXAMPLE.ORG"])
def test_an_allowed_origin_gets_the_headers(open_to_app: Flask, origin: str) -> None:
    http = open_to_app.test_client()
    response = http.get("/containers", headers={**BEARER, "Origin": origin})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert "Access-Control-Allow-Credentials" not in response.headers  # Bearer tokens, never cookies
    assert "Location" in response.headers["Access-Control-Expose-Headers"]
    assert "Origin" in response.headers.get_all("Vary") or "Origin" in response.headers["Vary"]
    # An error answer is readable by the allowed page too (so it can say "sign in again").
    refused = http.get("/containers", headers={"Origin": origin})
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"] == origin


def test_an_allowed_preflight_is_answered(open_to_app: Flask) -> None:
    response = open_to_app.test_client().options("/spawn", headers={"Origin": ALLOWED, **PREFLIGHT})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed
    assert "Access-Control-Allow-Credentials" not in response.headers
    # A preflight carries no token: answering it reads nothing and decides nothing.
    assert response.get_data() == b""


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "https://app.example.org.evil.example",
        "http://app.example.org",
        "http://1:8080",
        "https://app.example.org:443",
        "null",
    ],
)
def test_a_disallowed_origin_gets_nothing(open_to_app: Flask, origin: str) -> None:
    http = open_to_app.test_client()
    response = http.get("/containers", headers={**BEARER, "Origin": origin})
    assert response.status_code == 200  # CORS is the browser's rule: the server just does not allow it
    assert cors_headers(dict(response.headers)) == {}
    preflight = http.options("/spawn", headers={"Origin": origin, **PREFLIGHT})
    assert cors_headers(dict(preflight.headers)) == {}


def test_no_origin_no_headers(open_to_app: Flask) -> None:
    response = open_to_app.test_client().get("/containers", headers=BEARER)
    assert cors_headers(dict(response.headers)) == {}


@pytest.mark.parametrize("value", ["*", "app.example.org", "https://app.example.org/path", "ftp://x.example"])
def test_bad_origins_do_not_start(value: str) -> None:
    with pytest.raises(ConfigError, match="CORS_ORIGINS"):
        Settings.from_env({"CORS_ORIGINS": value})
