"""Authentication and roles (api/auth.py) against the real stack: a real Redis, a real Celery
worker and the real engine, with AUTH on.

The authorization matrix is one table: every route by {no token, a bad token, a revoked token,
a notebook's capability, another notebook's capability, user A, user B, the admin}: the status it
must answer. "No token" is the anonymous identity (ANONYMOUS_IMAGES is set here): it may launch
through the Binder and tmpnb routes and nothing more. A capability (``?token=`` with a notebook's
own token) opens that notebook's routes and nothing else; another notebook's is the 404 of an
unknown one. User tokens are made through the API (``POST /tokens``) as an operator would. Around
it: what a user token sees in lists and event streams, a real spawn by a user token, token
storage, and the 401 answers themselves.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from shared.errors import ConfigError
from shared.settings import Settings
from shared.status import Status
from testkit.stack import Stack, base_env
from testkit.support import RedisServer, unique_instance

ADMIN_TOKEN = "adm-" + secrets.token_urlsafe(24)
SECRET_KEY = secrets.token_urlsafe(32)
A, B, C = "alice", "bob", "carol"
WHO = ("nobody", "bad", "revoked", "cap", "othercap", "A", "B", "admin")


@dataclass
class Secured:
    """The auth stack, its tokens (by who) and a client that keeps no cookies."""

    stack: Stack
    http: FlaskClient
    image: str
    secret: dict[str, str] = field(default_factory=dict)  # who -> bearer token ("" for nobody)
    spawned: list[str] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)  # hostname -> its notebook token (its capability)

    def headers(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret[who]}"} if self.secret.get(who) else {}

    def call(self, method: str, path: str, who: str, **kwargs: Any) -> TestResponse:
        headers = {**self.headers(who), **kwargs.pop("headers", {})}
        return self.http.open(path, method=method, headers=headers, **kwargs)

    def notebook(self, user: str, status: Status | None = None) -> str:
        """A record of ``user`` with its own token, written straight to the store (no container),
        optionally moved on."""
        token = secrets.token_urlsafe(24)
        record = self.stack.store.create(
            image=self.image, user=user, domain=self.stack.settings.domain, internal={"token": token}
        )
        self.tokens[record.hostname] = token
        if status is Status.FAILED:
            self.stack.store.transition(record.hostname, Status.FAILED, error="made by the test")
        return record.hostname

    def new_token(self, user: str) -> dict[str, Any]:
        response = self.call("POST", "/tokens", "admin", json={"user": user})
        assert response.status_code == 201, response.get_data(as_text=True)
        return dict(response.get_json())


@pytest.fixture(scope="module")
def secured(stack_factory: Any, images: dict[str, str]) -> Iterator[Secured]:
    stack = stack_factory(
        "auth",
        AUTH="on",
        ADMIN_TOKEN=ADMIN_TOKEN,
        SECRET_KEY=SECRET_KEY,
        ANONYMOUS_IMAGES=images["httpd"],  # the anonymous identity: launches of this image only
        ANONYMOUS_PER_ADDRESS="100",  # every anonymous cell comes from 127.0.0.1
        ANONYMOUS_SPAWN_RATE="1000",
    )
    # Event streams end quickly here: the matrix opens them like any route.
    stack.app.config.update(EVENTS_LIFETIME=1.0, CONTAINER_EVENTS_LIFETIME=1.0, EVENTS_HEARTBEAT=0.3)
    sec = Secured(stack, stack.app.test_client(use_cookies=False), images["httpd"])
    sec.secret = {"nobody": "", "bad": secrets.token_urlsafe(32), "admin": ADMIN_TOKEN}
    sec.secret["A"] = sec.new_token(A)["token"]
    sec.secret["B"] = sec.new_token(B)["token"]
    revoked = sec.new_token(A)
    assert sec.call("DELETE", f"/tokens/{revoked['id']}", "admin").status_code == 200
    sec.secret["revoked"] = revoked["token"]
    yield sec
    for hostname in sec.spawned:  # real notebooks the matrix started: stop them (the stack removes the rest)
        sec.call("DELETE", f"/container/{hostname}", "admin")


# -- the matrix -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    method: str
    path: str  # {mine}: a settled notebook of A; {live}: a new killable notebook of A; {token}: a new token
    expect: tuple[int, int, int, int, int, int, int, int]  # in WHO order
    body: dict[str, Any] | None = None  # JSON, or a form for /manage routes
    json_answer: bool = False  # Accept: application/json (the /manage script's requests)


N = 401  # no, bad or revoked token; a capability on anything but its notebook's routes
MATRIX: list[Row] = [
    #   method    path                          nobody, bad, revoked;  cap, othercap;  A, B, admin
    Row("POST",   "/spawn",                      (N, N, N,  N, N,  202, 403, 202), body={"user": A}),
    Row("POST",   "/spawn",                      (N, N, N,  N, N,  202, 202, 400), body={}),  # no user
    # Naming a user, the seed's spawn under /api/ (as before); naming none, tmpnb's spawn, which
    # without a token is an anonymous launch (of ANONYMOUS_IMAGES).
    Row("POST",   "/api/spawn",                  (N, N, N,  N, N,  202, 403, 202), body={"user": A}),
    Row("POST",   "/api/spawn",                  (202, N, N,  202, 202,  202, 202, 202),
        body={"wait": False}),
    Row("POST",   "/api/spawn",                  (403, N, N,  403, 403,  202, 403, 202),
        body={"image_name": "swarm-manager-test/httpd:2", "user": A, "wait": False}),
    Row("GET",    "/build/gh/org/nothing/HEAD",  (200, N, N,  200, 200,  200, 200, 200)),
    Row("GET",    "/container/{mine}",           (N, N, N,  200, 404,  200, 404, 200)),
    Row("GET",    "/api/container/{mine}",       (N, N, N,  200, 404,  200, 404, 200)),
    Row("GET",    "/container/zzzzzzzzzzzz",     (N, N, N,  404, 404,  404, 404, 404)),
    Row("GET",    "/container/{live}/kill",      (N, N, N,  403, 404,  202, 404, 202)),
    Row("POST",   "/container/{live}/kill",      (N, N, N,  202, 404,  202, 404, 202)),
    Row("DELETE", "/container/{live}",           (N, N, N,  202, 404,  202, 404, 202)),
    Row("GET",    "/api/container/{live}/kill",  (N, N, N,  403, 404,  202, 404, 202)),
    Row("GET",    "/containers",                 (N, N, N,  N, N,  200, 200, 200)),
    Row("GET",    "/containers?user=alice",      (N, N, N,  N, N,  200, 403, 200)),
    Row("GET",    "/api/containers?user=bob",    (N, N, N,  N, N,  403, 200, 200)),
    Row("GET",    "/container/{mine}/events",    (N, N, N,  200, 404,  200, 404, 200)),
    Row("GET",    "/events",                     (N, N, N,  N, N,  200, 200, 200)),
    Row("GET",    "/metrics",                    (N, N, N,  N, N,  403, 403, 200)),
    Row("POST",   "/tokens",                     (N, N, N,  N, N,  403, 403, 201), body={"user": C}),
    Row("GET",    "/tokens",                     (N, N, N,  N, N,  403, 403, 200)),
    Row("DELETE", "/tokens/{token}",             (N, N, N,  N, N,  403, 403, 200)),
    Row("GET",    "/healthz",                    (200, 200, 200,  200, 200,  200, 200, 200)),
    Row("GET",    "/openapi.json",               (200, 200, 200,  200, 200,  200, 200, 200)),
    Row("GET",    "/static/manage.css",          (200, 200, 200,  200, 200,  200, 200, 200)),
    Row("GET",    "/manage",                     (N, N, N,  N, N,  200, 200, 200)),
    Row("POST",   "/manage/spawn",               (N, N, N,  N, N,  202, 403, 202), body={"user": A},
        json_answer=True),
    Row("POST",   "/manage/kill/{live}",         (N, N, N,  N, N,  202, 404, 202), json_answer=True),
    Row("GET",    "/no/such/route",              (N, N, N,  N, N,  404, 404, 404)),
]  # fmt: skip


def cell_id(row: Row, who: str) -> str:
    body = "" if row.body is None else " " + json.dumps(row.body)
    return f"{row.method} {row.path}{body} as {who}"


CELLS = [pytest.param(row, who, row.expect[i], id=cell_id(row, who)) for row in MATRIX for i, who in enumerate(WHO)]


@pytest.mark.parametrize(("row", "who", "expected"), CELLS)
def test_authorization_matrix(secured: Secured, row: Row, who: str, expected: int) -> None:
    live = secured.notebook(A) if "{live}" in row.path else ""
    mine = secured.notebook(A, Status.FAILED) if "{mine}" in row.path else ""
    path = row.path.format(
        mine=mine,
        live=live,
        token=secured.new_token(C)["id"] if "{token}" in row.path else "",
    )
    if who in ("cap", "othercap"):
        # A notebook's capability: the row's own notebook's token (or, on routes of no notebook, some
        # notebook's), or that of another notebook of the same user.
        own = mine or live or secured.notebook(A)
        token = secured.tokens[own if who == "cap" else secured.notebook(A)]
        path += ("&" if "?" in path else "?") + f"token={token}"
    kwargs: dict[str, Any] = {}
    if row.body is not None:
        body = {"image": secured.image, **row.body}
        kwargs = {"data": body} if path.startswith("/manage") else {"json": body}
    if row.json_answer:
        kwargs["headers"] = {"Accept": "application/json"}
    response = secured.call(row.method, path, who, **kwargs)
    try:
        status = response.status_code
        text = "" if response.is_streamed else response.get_data(as_text=True)[:300]
        assert status == expected, f"{row.method} {path} as {who}: {status} {text}"
        if status in (401, 403, 404) and response.mimetype == "application/json":
            assert set(response.get_json()) == {"error", "code"}
        if status == 401:
            assert response.headers["WWW-Authenticate"].startswith("Bearer"), response.headers
        if status == 202 and row.body is not None:
            secured.spawned.append(response.get_json()["hostname"])
    finally:
        response.close()  # an event stream: ends the subscription
    if live and status >= 400:
        assert secured.stack.record(live).status is Status.PENDING, "a refused kill changed the record"


# -- what a user token sees -------------------------------------------------------------------------
def test_a_user_lists_only_its_own_notebooks(secured: Secured) -> None:
    mine = {secured.notebook(A) for _ in range(2)}
    theirs = {secured.notebook(B) for _ in range(2)}

    def listed(who: str, path: str = "/containers") -> list[dict[str, Any]]:
        response = secured.call("GET", path, who)
        assert response.status_code == 200, response.get_data(as_text=True)
        return list(response.get_json())

    for path in ("/containers", "/api/containers", "/containers?status=PENDING", "/containers?user=alice"):
        records = listed("A", path)
        assert {r["user"] for r in records} == {A}, path
        assert mine <= {r["hostname"] for r in records}, path
        assert not theirs & {r["hostname"] for r in records}, path
    assert {r["user"] for r in listed("B")} == {B}
    everything = {r["hostname"] for r in listed("admin")}
    assert mine | theirs <= everything
    # Another user's name, existing or not, is the same refusal: nothing to enumerate.
    for other in (B, "nobody-at-all", "_pool"):
        response = secured.call("GET", f"/containers?user={other}", "A")
        assert response.status_code == 403, response.get_data(as_text=True)
        assert response.get_json()["code"] == "forbidden"
    # And another user's notebook is exactly as unknown as one that does not exist.
    theirs_one = next(iter(theirs))
    unknown = secured.call("GET", "/container/zzzzzzzzzzzz", "A").get_json()
    hidden = secured.call("GET", f"/container/{theirs_one}", "A").get_json()
    assert hidden["code"] == unknown["code"] == "not_found"
    assert hidden["error"] == unknown["error"].replace("zzzzzzzzzzzz", theirs_one)


def test_a_spawn_for_someone_else_is_refused_and_writes_nothing(secured: Secured) -> None:
    before = {r.hostname for r in secured.stack.store.records()}
    for body in ({"user": B}, {"user": "nobody-at-all"}, {"user": f" {B} "}):
        response = secured.call("POST", "/spawn", "A", json={"image": secured.image, **body})
        assert response.status_code == 403, response.get_data(as_text=True)
        assert response.get_json() == {"error": "a user token spawns only for its own user", "code": "forbidden"}
    form = secured.call("POST", "/spawn", "A", data={"image": secured.image, "user": B})
    assert form.status_code == 403
    assert {r.hostname for r in secured.stack.store.records()} == before


def test_a_user_token_spawns_a_real_notebook_for_itself(secured: Secured) -> None:
    spawned = secured.call("POST", "/spawn", "A", data={"image": secured.image})  # no user: its own
    assert spawned.status_code == 202, spawned.get_data(as_text=True)
    record = spawned.get_json()
    hostname = record["hostname"]
    secured.spawned.append(hostname)
    assert record["user"] == A
    assert secured.stack.wait(hostname, {Status.ACTIVE, Status.FAILED}).status is Status.ACTIVE
    assert secured.call("GET", spawned.headers["Location"], "A").get_json()["status"] == "ACTIVE"
    assert secured.call("GET", f"/container/{hostname}", "B").status_code == 404
    assert secured.call("DELETE", f"/container/{hostname}", "B").status_code == 404
    assert secured.stack.record(hostname).status is Status.ACTIVE  # B's kill did nothing
    killed = secured.call("DELETE", f"/container/{hostname}", "A")
    assert killed.status_code == 202, killed.get_data(as_text=True)
    assert secured.stack.wait(hostname, {Status.REMOVED, Status.FAILED}, timeout=30).status is Status.REMOVED
    assert not [c for c in secured.stack.containers() if c.labels["swarm-manager.hostname"] == hostname]


def read_events(response: TestResponse) -> list[dict[str, Any]]:
    """The data of every event in a stream that ends by itself (EVENTS_LIFETIME)."""
    try:
        text = b"".join(response.response).decode()  # type: ignore[arg-type]
    finally:
        response.close()
    return [json.loads(line[len("data: ") :]) for line in text.splitlines() if line.startswith("data: ")]


def test_a_user_events_stream_carries_only_its_own_notebooks(secured: Secured) -> None:
    older_theirs = secured.notebook(B)
    seen: dict[str, list[dict[str, Any]]] = {}
    subscribed = {who: threading.Event() for who in ("A", "admin")}

    def follow(who: str) -> None:
        # One thread per stream: a streamed response keeps its request context until it ends.
        client = secured.stack.app.test_client(use_cookies=False)
        response = client.get("/events", headers=secured.headers(who))
        assert response.status_code == 200 and response.mimetype == "text/event-stream"
        subscribed[who].set()
        seen[who] = read_events(response)

    threads = [threading.Thread(target=follow, args=(who,), daemon=True) for who in subscribed]
    for thread in threads:
        thread.start()
    for who, ready in subscribed.items():
        assert ready.wait(10), f"the {who} stream did not open"
    # The streams are subscribed: everything from here on is delivered to them (or not).
    theirs, mine = secured.notebook(B), secured.notebook(A)
    # As a worker reports them: with their owner (the hub routes a user's events by it).
    for hostname, owner in ((theirs, B), (mine, A), (older_theirs, B)):
        secured.stack.store.progress(hostname, "creating", f"creating {hostname}", user=owner)
    for thread in threads:
        thread.join(15)
    assert set(seen) == {"A", "admin"}, "a stream did not end by itself (EVENTS_LIFETIME)"

    for data in seen["A"]:
        assert data["hostname"] not in (theirs, older_theirs), data
        assert data["record"] is None or data["record"]["user"] == A, data
    assert {(d["hostname"], d["stage"]) for d in seen["A"]} >= {(mine, "queued"), (mine, "creating")}
    admin_saw = {(d["hostname"], d["stage"]) for d in seen["admin"]}
    assert {(mine, "queued"), (theirs, "queued"), (theirs, "creating"), (older_theirs, "creating")} <= admin_saw


# -- tokens ---------------------------------------------------------------------------------------
def test_a_revoked_token_is_refused_at_once(secured: Secured) -> None:
    made = secured.new_token("dave")
    assert set(made) == {"id", "user", "token", "created"} and made["user"] == "dave"
    dave = {"Authorization": f"Bearer {made['token']}"}
    assert secured.http.get("/containers", headers=dave).status_code == 200
    listed = secured.call("GET", "/tokens?user=dave", "admin").get_json()
    assert listed == [{"id": made["id"], "user": "dave", "created": made["created"]}]  # never the secret

    revoked = secured.call("DELETE", f"/tokens/{made['id']}", "admin")
    assert revoked.status_code == 200
    assert revoked.get_json()["id"] == made["id"] and revoked.get_json()["revoked"]
    refused = secured.http.get("/containers", headers=dave)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == 'Bearer realm="swarm-manager", error="invalid_token"'
    assert secured.call("GET", "/tokens?user=dave", "admin").get_json() == []
    again = secured.call("DELETE", f"/tokens/{made['id']}", "admin")
    assert again.status_code == 404 and again.get_json()["code"] == "not_found"


def test_tokens_are_stored_hashed(secured: Secured) -> None:
    made = secured.new_token("erin")
    redis = secured.stack.store.redis
    prefix = secured.stack.settings.key_prefix
    for key in redis.scan_iter(match=f"{prefix}*", count=1000):
        kind = redis.type(key)
        values: list[str] = [key]
        if kind == "hash":
            values += [f"{k}={v}" for k, v in redis.hgetall(key).items()]
        elif kind == "string":
            values.append(redis.get(key) or "")
        for value in values:
            assert made["token"] not in value, f"the token's secret is in Redis at {key}"
            assert ADMIN_TOKEN not in value, f"the admin token is in Redis at {key}"


@pytest.mark.parametrize("user", ["", "bad user", "_pool", "x" * 65, None])
def test_a_token_needs_a_valid_user(secured: Secured, user: str | None) -> None:
    response = secured.call("POST", "/tokens", "admin", json={} if user is None else {"user": user})
    assert response.status_code == 400 and response.get_json()["code"] == "invalid_input"


@pytest.mark.parametrize("token_id", ["0000000000000000", "nope", "../../x", "A" * 16])
def test_revoking_an_unknown_token_is_404(secured: Secured, token_id: str) -> None:
    response = secured.call("DELETE", f"/tokens/{token_id}", "admin")
    assert response.status_code == 404 and response.get_json()["code"] == "not_found"


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer ",
        "Basic YWRtaW46cGFzc3dvcmQ=",
        f"Token {ADMIN_TOKEN}",
        f"Bearer {'x' * 5000}",
        f"Bearer {ADMIN_TOKEN}x",
        f"Bearer {ADMIN_TOKEN[:-1]}",
        "Bearer ünïcode",
    ],
    ids=["empty", "blank", "basic", "other-scheme", "5000-chars", "admin-plus-one", "admin-minus-one", "unicode"],
)
def test_malformed_or_wrong_credentials_are_401(secured: Secured, header: str) -> None:
    response = secured.http.get("/containers", headers={"Authorization": header})
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.get_json()["code"] == "unauthorized"
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_the_scheme_is_case_insensitive_the_token_is_not(secured: Secured) -> None:
    assert secured.http.get("/containers", headers={"Authorization": f"bearer {ADMIN_TOKEN}"}).status_code == 200
    assert secured.http.get("/containers", headers={"Authorization": f"BEARER  {ADMIN_TOKEN} "}).status_code == 200
    upper = {"Authorization": f"Bearer {ADMIN_TOKEN.upper()}"}  # "adm-..." has lower-case letters
    assert secured.http.get("/containers", headers=upper).status_code == 401


# -- settings ---------------------------------------------------------------------------------------
def test_auth_on_without_an_admin_token_does_not_start(redis_server: RedisServer) -> None:
    from api import create_app

    settings = Settings.from_env(base_env(redis_server.url, unique_instance("noadmin"), AUTH="on"))
    with pytest.raises(ConfigError, match="ADMIN_TOKEN"):
        create_app(settings)
    with pytest.raises(ConfigError, match="ADMIN_TOKEN"):
        Settings.from_env(base_env(redis_server.url, "x", AUTH="on", ADMIN_TOKEN="short"))


def test_auth_off_warns_loudly(redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    from api import create_app

    with caplog.at_level("WARNING", logger="api.auth"):
        app = create_app(Settings.from_env(base_env(redis_server.url, unique_instance("open"), AUTH="off")))
    assert any(r.levelname == "WARNING" and "AUTH is off" in r.getMessage() for r in caplog.records)
    app.extensions["store"].redis.close()


def test_auth_is_on_by_default() -> None:
    assert Settings.from_env({}).auth is True
    assert Settings.from_env({"AUTH": "off"}).auth is False
