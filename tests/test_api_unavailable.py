"""With Redis away every route answers 503 (JSON, or an HTML page for /manage), never 500."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from api import create_app
from shared.settings import Settings
from testkit.stack import base_env
from testkit.support import RedisServer, free_port, unique_instance

HOSTNAME = "ki60dje40khk"


@pytest.fixture(scope="module")
def down() -> Iterator[FlaskClient]:
    """The real app (real store, real Celery sender) on a Redis URL where nothing listens."""
    settings = Settings.from_env(base_env(f"redis://127.0.0.1:{free_port()}/0", unique_instance("down")))
    app = create_app(settings)
    yield app.test_client()
    app.extensions["store"].redis.close()


def assert_503_json(response: TestResponse, code: str = "store_unavailable") -> dict[str, str]:
    text = response.get_data(as_text=True)
    assert response.status_code != 500, text[:500]
    assert response.status_code == 503, text[:500]
    assert response.mimetype == "application/json", text[:300]
    body = response.get_json()
    assert isinstance(body, dict)
    assert body["code"] == code
    assert "Redis is unavailable" in body["error"], body
    assert response.headers.get("Retry-After") == "5"
    return dict(body)


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("POST", "/spawn", {"data": {"image": "busybox", "user": "alice"}}),
        ("POST", "/spawn", {"json": {"image": "busybox", "user": "alice"}}),
        ("POST", "/api/spawn", {"data": {"image": "busybox", "user": "alice"}}),
        ("GET", f"/container/{HOSTNAME}", {}),
        ("GET", f"/api/container/{HOSTNAME}", {}),
        ("GET", f"/container/{HOSTNAME}/kill", {}),
        ("POST", f"/container/{HOSTNAME}/kill", {}),
        ("DELETE", f"/container/{HOSTNAME}", {}),
        ("GET", "/containers", {}),
        ("GET", "/containers?user=alice&status=ACTIVE&limit=5", {}),
        ("GET", "/api/containers", {}),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_every_route_is_503_json(down: FlaskClient, method: str, path: str, kwargs: dict[str, object]) -> None:
    started = time.monotonic()
    assert_503_json(down.open(path, method=method, **kwargs))
    assert time.monotonic() - started < 30, "a dead Redis must fail fast"


def test_bad_input_is_still_400_without_redis(down: FlaskClient) -> None:
    # Validation comes first: a client error is reported as such even while Redis is away.
    response = down.post("/spawn", data={"image": "Not Valid", "user": "alice"})
    assert response.status_code == 400
    assert response.get_json()["code"] == "invalid_input"
    response = down.get("/container/NOT-A-HOST")
    assert response.status_code == 404
    assert response.get_json()["code"] == "not_found"


@pytest.mark.parametrize("path", ["/healthz", "/api/healthz", "/healthz/"])
def test_healthz_is_503_and_says_why(down: FlaskClient, path: str) -> None:
    response = down.get(path)
    assert response.status_code == 503
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["status"] == "unavailable"
    assert "Redis is unavailable" in body["redis"]
    assert "refused" in body["redis"].lower() or "connect" in body["redis"].lower(), body


def test_manage_is_503_html_with_the_error(down: FlaskClient) -> None:
    response = down.get("/manage")
    assert response.status_code == 503
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert 'role="alert"' in page
    assert "Redis is unavailable" in page
    assert "<form" in page  # still a usable page, with the spawn form


def test_manage_spawn_without_redis_redirects_with_the_error(down: FlaskClient) -> None:
    response = down.post("/manage/spawn", data={"image": "busybox", "user": "alice"})
    assert response.status_code == 303
    assert response.headers["Location"].startswith("/manage?")
    page = down.get(response.headers["Location"])
    assert page.status_code == 503
    assert "Redis is unavailable" in page.get_data(as_text=True)


def test_manage_kill_without_redis_redirects_with_the_error(down: FlaskClient) -> None:
    response = down.post(f"/manage/kill/{HOSTNAME}")
    assert response.status_code == 303
    assert "error=" in response.headers["Location"]


def test_healthz_200_with_a_real_redis(redis_server: RedisServer) -> None:
    settings = Settings.from_env(base_env(redis_server.url, unique_instance("health")))
    app = create_app(settings)
    try:
        response = app.test_client().get("/healthz")
        assert response.status_code == 200
        assert response.mimetype == "application/json"
        assert response.get_json() == {"status": "ok", "redis": "ok"}
    finally:
        app.extensions["store"].redis.close()
