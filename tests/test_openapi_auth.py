"""schemathesis with tokens (AUTH on): the run of tests/test_openapi.py again, as the admin and as
a user, on a real Redis with other users' notebooks in it. No answer is a server error or
outside the document, and a user token never receives anything of another user: no record,
no event, no token list."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode

from api import create_app
from shared.settings import Settings
from shared.status import Status
from testkit.stack import base_env
from testkit.support import RedisServer, unique_instance
from tests.test_openapi import CHECKS, _runs

ADMIN_TOKEN = "adm-" + secrets.token_urlsafe(24)
USER = "alice"
OTHERS = ("bob", "carol")


@dataclass
class Secured:
    app: Flask
    bearer: dict[str, str]  # "admin" / "user" -> token
    others: set[str]  # hostnames of the other users' notebooks


@pytest.fixture(scope="module")
def secured(redis_server: RedisServer) -> Iterator[Secured]:
    settings_ = Settings.from_env(
        base_env(redis_server.url, unique_instance("openapi-auth"), AUTH="on", ADMIN_TOKEN=ADMIN_TOKEN)
    )
    app = create_app(settings_, EVENTS_LIFETIME=0.2, CONTAINER_EVENTS_LIFETIME=0.2, EVENTS_HEARTBEAT=0.1)
    http = app.test_client(use_cookies=False)
    made = http.post("/tokens", json={"user": USER}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert made.status_code == 201, made.get_data(as_text=True)
    store = app.extensions["store"]
    others = set()
    for user in (USER, *OTHERS):  # something to leak: records of every status for several users
        for status in (None, Status.FAILED, Status.DELETING):
            record = store.create(image="busybox", user=user, domain=settings_.domain)
            if status is not None:
                store.transition(record.hostname, status, error="made by the test")
            if user != USER:
                others.add(record.hostname)
    yield Secured(app, {"admin": ADMIN_TOKEN, "user": made.get_json()["token"]}, others)
    client = redis.Redis.from_url(settings_.redis_url)
    try:
        for key in client.scan_iter(match=f"{settings_.key_prefix}*", count=1000):
            client.delete(key)
    finally:
        client.close()
        store.redis.close()


@pytest.fixture(scope="module")
def secured_schema(secured: Secured) -> Any:
    return schemathesis.openapi.from_wsgi("/openapi.json", secured.app)


def leaks(secured: Secured, response: Any) -> list[str]:
    """What of another user's data a user token's answer carries (nothing, it must be)."""
    found: list[str] = []
    ctype = (response.headers.get("content-type") or response.headers.get("Content-Type") or [""])[0]
    items: list[Any] = []
    if ctype.startswith("application/json"):
        body = json.loads(response.content or b"null")
        items = body if isinstance(body, list) else [body]
    elif ctype.startswith("text/event-stream"):
        for line in response.content.decode(errors="replace").splitlines():
            if line.startswith("data:"):
                data = json.loads(line[len("data:") :])
                items += [data, data.get("record")]
    for item in items:
        if not isinstance(item, dict):
            continue
        if item.get("hostname") in secured.others:
            found.append(f"another user's notebook {item['hostname']}")
        if "user" in item and item["user"] != USER:
            found.append(f"data of user {item['user']!r}: {str(item)[:200]}")
        if "id" in item and "created" in item:
            found.append(f"a token: {item}")
    return found


@pytest.mark.timeout(180)
@pytest.mark.parametrize("who", ["admin", "user"])
@pytest.mark.parametrize(
    ("method", "path", "mode"), [p for p in _runs() if p.values[2] is GenerationMode.POSITIVE or "spawn" in p.values[1]]
)
def test_api_conforms_with_tokens_and_leaks_nothing(
    secured: Secured, secured_schema: Any, who: str, method: str, path: str, mode: GenerationMode
) -> None:
    operation = secured_schema[path][method]
    headers = {"Authorization": f"Bearer {secured.bearer[who]}"}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=10, deadline=5000, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        response = case.call_and_validate(headers=headers, checks=CHECKS)
        if mode is GenerationMode.POSITIVE:  # negative cases may leave the credentials out on purpose
            assert response.status_code != 401, f"a valid {who} token was refused: {response.text[:200]}"
        if who == "user":
            found = leaks(secured, response)
            assert not found, f"{case.method} {case.formatted_path} as {USER}: {found}"

    check()


def test_a_user_token_probing_other_notebooks_learns_nothing(secured: Secured) -> None:
    """The run above rarely guesses a real hostname: ask for every other user's notebook directly."""
    http = secured.app.test_client(use_cookies=False)
    headers = {"Authorization": f"Bearer {secured.bearer['user']}"}
    store = secured.app.extensions["store"]
    before = {h: store.require(h).status for h in secured.others}
    unknown = http.get("/container/zzzzzzzzzzzz", headers=headers).get_json()
    for hostname in sorted(secured.others):
        for method, path in [
            ("GET", f"/container/{hostname}"),
            ("GET", f"/api/container/{hostname}"),
            ("GET", f"/container/{hostname}/events"),
            ("DELETE", f"/container/{hostname}"),
            ("POST", f"/container/{hostname}/kill"),
            ("GET", f"/container/{hostname}/kill"),
        ]:
            response = http.open(path, method=method, headers=headers)
            assert response.status_code == 404, (method, path, response.status_code)
            # Word for word what an unknown hostname gets: nothing tells "exists" from "absent".
            assert response.get_json() == {**unknown, "error": unknown["error"].replace("zzzzzzzzzzzz", hostname)}
    assert {h: store.require(h).status for h in secured.others} == before
