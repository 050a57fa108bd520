"""Answers that can carry a secret say ``Cache-Control: no-store``.

A record shows its owner the notebook's token and ``notebook_url``; ``POST /tokens`` answers with a
user's token; a ready event carries its notebook's token. No browser or shared cache may keep any
of them, so every JSON answer and event stream of the API is ``no-store`` (set in one place,
api/__init__.py, so a new route cannot forget it), error answers included; /manage's HTML keeps
its own headers. On the real app and a real Redis (no worker: spawns stay queued).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from werkzeug.test import TestResponse

from api import create_app
from shared.settings import Settings
from shared.store import Store, connect
from testkit.stack import base_env
from testkit.support import RedisServer, unique_instance

ADMIN_TOKEN = "no-store-admin-" + secrets.token_hex(16)
AS_ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def made_app(redis_server: RedisServer, tag: str, **env: Any) -> Iterator[Flask]:
    settings = Settings.from_env(base_env(redis_server.url, unique_instance(tag), **env))
    # Event streams end at once here: only their headers are under test.
    app = create_app(settings, EVENTS_LIFETIME=0.2, CONTAINER_EVENTS_LIFETIME=0.2, EVENTS_HEARTBEAT=0.1)
    yield app
    store = Store(connect(settings.redis_url), settings.key_prefix)
    for key in store.redis.scan_iter(match=f"{settings.key_prefix}*", count=1000):
        store.redis.delete(key)
    store.redis.close()


@pytest.fixture(scope="module")
def app(redis_server: RedisServer) -> Iterator[Flask]:
    yield from made_app(redis_server, "nostore", AUTH="on", ADMIN_TOKEN=ADMIN_TOKEN)


@pytest.fixture(scope="module")
def open_app(redis_server: RedisServer) -> Iterator[Flask]:
    yield from made_app(redis_server, "nostore-open")


def no_store(response: TestResponse, what: str) -> None:
    response.get_data()  # an event stream: read to its end (its lifetime is short here)
    assert response.headers.get("Cache-Control") == "no-store", (what, response.status_code, dict(response.headers))


def test_every_answer_with_a_secret_is_no_store(app: Flask) -> None:
    http = app.test_client()
    created = http.post("/tokens", json={"user": "carol"}, headers=AS_ADMIN)
    assert created.status_code == 201 and created.get_json()["token"]
    no_store(created, "POST /tokens (the user's token)")
    as_carol = {"Authorization": f"Bearer {created.get_json()['token']}"}
    no_store(http.get("/tokens", headers=AS_ADMIN), "GET /tokens")

    for prefix in ("", "/api"):
        for who, headers in (("admin", AS_ADMIN), ("carol", as_carol)):
            spawned = http.post(f"{prefix}/spawn", json={"image": "busybox", "user": "carol"}, headers=headers)
            assert spawned.status_code == 202 and spawned.get_json()["token"], spawned.get_json()
            no_store(spawned, f"POST {prefix}/spawn as {who}")
            hostname = spawned.get_json()["hostname"]
            shown = http.get(f"{prefix}/container/{hostname}", headers=headers)
            assert shown.get_json()["notebook_url"]
            no_store(shown, f"GET {prefix}/container/<h> as {who}")
            listed = http.get(f"{prefix}/containers", headers=headers)
            assert any(r.get("token") for r in listed.get_json())
            no_store(listed, f"GET {prefix}/containers as {who}")
            no_store(http.get(f"{prefix}/containers?limit=1", headers=headers), f"a page of {prefix}/containers")
            stream = http.get(f"{prefix}/container/{hostname}/events", headers=headers)
            assert stream.status_code == 200 and stream.mimetype == "text/event-stream"
            no_store(stream, f"GET {prefix}/container/<h>/events as {who}")
            stream = http.get(f"{prefix}/events", headers=headers)
            assert stream.status_code == 200 and stream.mimetype == "text/event-stream"
            no_store(stream, f"GET {prefix}/events as {who}")
            no_store(http.delete(f"{prefix}/container/{hostname}", headers=headers), f"DELETE {prefix}/container/<h>")
            no_store(http.post(f"{prefix}/container/{hostname}/kill", headers=headers), f"POST {prefix}/.../kill")
            no_store(http.get(f"{prefix}/container/{hostname}/kill", headers=headers), f"GET {prefix}/.../kill")

    token_id = created.get_json()["id"]
    no_store(http.delete(f"/tokens/{token_id}", headers=AS_ADMIN), "DELETE /tokens/<id>")


def test_json_errors_and_the_rest_of_the_json_api_are_no_store_too(app: Flask) -> None:
    http = app.test_client()
    no_store(http.get("/containers"), "401")
    no_store(http.get("/container/zzzzzzzzzzzz", headers=AS_ADMIN), "404")
    no_store(http.post("/spawn", json={"image": "../x", "user": "u"}, headers=AS_ADMIN), "400")
    no_store(http.get("/healthz"), "GET /healthz")
    no_store(http.get("/openapi.json"), "GET /openapi.json")


def test_manage_keeps_its_own_headers_and_its_json_is_no_store(open_app: Flask) -> None:
    http = open_app.test_client()
    page = http.get("/manage")
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    as_json = {"Accept": "application/json"}
    spawned = http.post("/manage/spawn", data={"image": "busybox", "user": "dan"}, headers=as_json)
    assert spawned.status_code == 202 and spawned.get_json()["token"], spawned.get_json()
    no_store(spawned, "POST /manage/spawn (JSON)")
    static = http.get("/static/manage.js")
    assert static.status_code == 200 and static.headers.get("Cache-Control") != "no-store"  # nothing secret there
    static.close()
