"""/manage sessions on the real stack: kept in Redis and revocable, with only an opaque id in the
cookie (a notebook on another port of the same host receives it: cookies ignore ports).

gunicorn on a real socket as `make run` serves it, a real Redis, and Chromium for the notebook-port
case: the cookie's attributes (``__Host-`` when Secure), what the cookie and Redis hold, the replay
of a cookie after sign-out and after its token's revocation, the cookie alone refused on every
route but the page itself (the session's CSRF token must come with it, as the page's script sends
it), the control message the event streams act on, and the ids each request's caller carries.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from flask.testing import FlaskClient

from testkit.support import ApiServer, RedisServer, free_port, wait_for
from tests.test_manage_auth import (
    ADMIN_TOKEN,
    CHROMIUM,
    CSRF_META,
    Site,
    csrf_of,
    drop,
    make_site,
    signed_in,
)

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
LIFETIME = 12 * 3600


@dataclass
class Served:
    site: Site
    url: str

    def user_token(self, user: str) -> dict[str, Any]:
        response = requests.post(self.url + "/tokens", json={"user": user}, headers=ADMIN, timeout=5)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def redis(self) -> redis.Redis:
        return self.site.store.redis

    def key(self, name: str) -> str:
        return f"{self.site.settings.key_prefix}{name}"


@dataclass
class Cookie:
    name: str
    value: str
    attributes: dict[str, str]  # lower-case names; flags map to ""


@dataclass
class SignedIn:
    cookie: Cookie
    csrf: str  # from the page's HTML, as the page's script reads it

    @property
    def header(self) -> dict[str, str]:
        """The cookie alone, as a browser (or whoever received it) sends it."""
        return {"Cookie": f"{self.cookie.name}={self.cookie.value}"}

    @property
    def with_csrf(self) -> dict[str, str]:
        return {**self.header, "X-CSRF-Token": self.csrf}

    @property
    def session_key_suffix(self) -> str:
        return "session:" + hashlib.sha256(self.cookie.value.encode()).hexdigest()


def set_cookie(response: requests.Response) -> Cookie:
    """The one Set-Cookie of ``response``, parsed without a cookie jar (jars drop Secure cookies over HTTP)."""
    headers = response.raw.headers.getlist("Set-Cookie")
    assert len(headers) == 1, headers
    first, *rest = [part.strip() for part in headers[0].split(";")]
    name, _, value = first.partition("=")
    attributes = {}
    for part in rest:
        key, _, val = part.partition("=")
        attributes[key.lower()] = val
    return Cookie(name, value, attributes)


def sign_in(url: str, token: str) -> SignedIn:
    """Sign in over HTTP as the page's form does; the cookie and the CSRF token the page then shows."""
    form = requests.get(url + "/manage", timeout=5)
    assert form.status_code == 401, form.text[:300]
    nonce = set_cookie(form)
    signed = requests.post(
        url + "/manage/signin",
        data={"token": token, "csrf_token": csrf_of(form.text)},
        headers={"Cookie": f"{nonce.name}={nonce.value}"},
        allow_redirects=False,
        timeout=5,
    )
    assert signed.status_code == 303, signed.text[:300]
    cookie = set_cookie(signed)
    assert cookie.value != nonce.value, "signing in must start a new session id (no fixation)"
    page = requests.get(url + "/manage", headers={"Cookie": f"{cookie.name}={cookie.value}"}, timeout=5)
    assert page.status_code == 200, page.text[:300]
    found = CSRF_META.search(page.text)
    assert found and found.group(1)
    return SignedIn(cookie, found.group(1))


def serve(redis_server: RedisServer, logdir: Path, tag: str, **env: str) -> Iterator[Served]:
    made = make_site(redis_server, tag, **env)
    server = ApiServer(made.env, logdir / "gunicorn.log")
    server.start()
    try:
        yield Served(made, server.url)
    finally:
        server.stop()
        drop(made)


@pytest.fixture(scope="module")
def served(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve(redis_server, tmp_path_factory.mktemp("sessions"), "sessions")


@pytest.fixture(scope="module")
def served_secure(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve(redis_server, tmp_path_factory.mktemp("sessions-secure"), "secure", SESSION_COOKIE_SECURE="1")


def first_bytes(response: requests.Response) -> bytes:
    try:
        return next(response.iter_content(chunk_size=None))
    finally:
        response.close()


# -- the cookie -----------------------------------------------------------------------------------
def test_the_cookie_over_plain_http(served: Served) -> None:
    signed = sign_in(served.url, ADMIN_TOKEN)
    cookie = signed.cookie
    assert cookie.name == f"{served.site.settings.instance}-session"
    assert {"httponly", "path"} <= set(cookie.attributes)
    assert cookie.attributes["samesite"].lower() == "lax" and cookie.attributes["path"] == "/"
    assert "secure" not in cookie.attributes and "domain" not in cookie.attributes
    assert int(cookie.attributes["max-age"]) == LIFETIME


def test_a_secure_cookie_has_the_host_prefix(served_secure: Served) -> None:
    name = f"__Host-{served_secure.site.settings.instance}-session"
    form = requests.get(served_secure.url + "/manage", timeout=5)
    signed = sign_in(served_secure.url, ADMIN_TOKEN)  # a browser keeps it only if Secure, Path=/, no Domain
    for cookie in (set_cookie(form), signed.cookie):
        assert cookie.name == name
        assert {"secure", "httponly"} <= set(cookie.attributes)
        assert cookie.attributes["path"] == "/" and "domain" not in cookie.attributes
        assert cookie.attributes["samesite"].lower() == "lax"
    out = requests.post(
        served_secure.url + "/manage/signout",
        data={"csrf_token": signed.csrf},
        headers=signed.header,
        timeout=5,
        allow_redirects=False,
    )
    assert out.status_code == 303
    cleared = set_cookie(out)  # a __Host- cookie is only replaced by one with the same attributes
    assert cleared.name == name and cleared.value == "" and "secure" in cleared.attributes


def readable(value: str) -> list[bytes]:
    """Every reading of a cookie value: as is, and each dot-separated part base64-decoded (and
    inflated), as Flask's signed cookies and JWTs are made."""
    found = [value.encode()]
    for part in value.lstrip(".").split("."):
        try:
            raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        except (binascii.Error, ValueError):
            continue
        found.append(raw)
        try:
            found.append(zlib.decompress(raw))
        except zlib.error:
            pass
    return found


def test_the_cookie_is_an_opaque_id_and_the_session_lives_in_redis(served: Served) -> None:
    alice = served.user_token("alice")
    signed = sign_in(served.url, alice["token"])
    value = signed.cookie.value
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", value), value  # 32 random bytes, nothing else
    for reading in readable(value):
        for secret in (signed.csrf, "alice", alice["id"], "csrf", "auth", "token", "user"):
            assert secret.encode() not in reading, (secret, reading)

    client = served.redis()
    key = served.key(signed.session_key_suffix)
    session = client.hgetall(key)
    assert session["csrf"] == signed.csrf
    assert (session["user"], session["token_id"], session["role"]) == ("alice", alice["id"], "user")
    assert LIFETIME - 120 < client.ttl(key) <= LIFETIME
    session_id = key.rpartition(":")[2]
    assert client.smembers(served.key(f"token-sessions:{alice['id']}")) == {session_id}
    # Redis holds the cookie's digest only: a copy of the database signs nobody in.
    for name in client.scan_iter(match=served.key("*"), count=1000):
        assert value not in name
        kind = client.type(name)
        held = client.hvals(name) if kind == "hash" else [client.get(name)] if kind == "string" else []
        assert all(value not in str(v) for v in held), name


# -- replay ------------------------------------------------------------------------------------------
def assert_refused_everywhere(served: Served, signed: SignedIn, hostname: str) -> None:
    """The cookie and its CSRF token, replayed: the page asks to sign in, everything else is 401."""
    page = requests.get(served.url + "/manage", headers=signed.header, timeout=5)
    assert page.status_code == 401 and 'id="signin"' in page.text and f"nb-{hostname}" not in page.text
    for method, path in [
        ("GET", "/containers"),
        ("GET", f"/container/{hostname}"),
        ("POST", "/tokens"),
        ("GET", f"/events?csrf={signed.csrf}"),
    ]:
        response = requests.request(
            method, served.url + path, headers=signed.with_csrf, json={"user": "mallory"}, timeout=5
        )
        assert response.status_code == 401, (method, path, response.status_code, response.text[:200])
        response.close()


def test_replaying_the_cookie_after_sign_out_is_refused(served: Served) -> None:
    signed = sign_in(served.url, ADMIN_TOKEN)
    hostname = served.site.notebook()
    out = requests.post(
        served.url + "/manage/signout",
        data={"csrf_token": signed.csrf},
        headers=signed.header,
        timeout=5,
        allow_redirects=False,
    )
    assert out.status_code == 303
    assert set_cookie(out).value == ""  # the browser forgets it, but whoever kept a copy...
    assert_refused_everywhere(served, signed, hostname)
    assert not served.redis().exists(served.key(signed.session_key_suffix))  # ...holds nothing the server knows


def test_replaying_the_cookie_after_its_token_is_revoked_is_refused(served: Served) -> None:
    alice = served.user_token("alice")
    signed = sign_in(served.url, alice["token"])
    hostname = served.site.notebook("alice")
    assert requests.get(served.url + "/containers", headers=signed.with_csrf, timeout=5).status_code == 200
    revoked = requests.delete(f"{served.url}/tokens/{alice['id']}", headers=ADMIN, timeout=5)
    assert revoked.status_code == 200
    # Ended at once, in Redis, not only when the cookie next comes back.
    assert not served.redis().exists(served.key(signed.session_key_suffix))
    assert not served.redis().exists(served.key(f"token-sessions:{alice['id']}"))
    assert_refused_everywhere(served, signed, hostname)


def test_the_cookie_alone_is_refused_except_for_the_page(served: Served) -> None:
    signed = sign_in(served.url, ADMIN_TOKEN)
    hostname = served.site.notebook()
    routes = [
        ("GET", "/containers"),
        ("GET", "/api/containers"),
        ("GET", f"/container/{hostname}"),
        ("GET", "/events"),
        ("GET", f"/container/{hostname}/events"),
        ("GET", "/tokens"),
        ("POST", "/tokens"),
        ("GET", "/metrics"),
        ("POST", "/spawn"),
        ("DELETE", f"/container/{hostname}"),
    ]
    for headers in (signed.header, {**signed.header, "X-CSRF-Token": "wrong"}):
        for method, path in routes:
            response = requests.request(method, served.url + path, headers=headers, json={"user": "mallory"}, timeout=5)
            assert response.status_code == 403, (method, path, response.status_code, response.text[:200])
            assert response.json()["code"] == "forbidden"
    # The query parameter is for the page's EventSource only, which cannot send headers.
    listed = requests.get(f"{served.url}/containers?csrf={signed.csrf}", headers=signed.header, timeout=5)
    assert listed.status_code == 403
    assert served.site.store.require(hostname).status.value == "PENDING"
    assert list(served.site.store.records(user="mallory")) == []

    # The page itself renders with the cookie alone (a top-level navigation sends no header)...
    assert requests.get(served.url + "/manage", headers=signed.header, timeout=5).status_code == 200
    # ...and its script's requests carry the token: allowed.
    listed = requests.get(served.url + "/containers", headers=signed.with_csrf, timeout=5)
    assert listed.status_code == 200 and hostname in listed.text
    assert "Cookie" in listed.headers["Vary"]  # an answer for this cookie only: no cache may share it
    created = requests.post(served.url + "/tokens", headers=signed.with_csrf, json={"user": "carol"}, timeout=5)
    assert created.status_code == 201
    for path, headers in [
        (f"/events?csrf={signed.csrf}", signed.header),  # the page's EventSource
        ("/events", signed.with_csrf),
        (f"/container/{hostname}/events?csrf={signed.csrf}", signed.header),
    ]:
        stream = requests.get(served.url + path, headers=headers, stream=True, timeout=5)
        assert stream.status_code == 200 and stream.headers["Content-Type"].startswith("text/event-stream")
        assert first_bytes(stream).startswith(b"retry:")


class CookieCatcher(BaseHTTPRequestHandler):
    """A stand-in for a notebook's port on the API's host: keeps the Cookie headers it is sent."""

    seen: list[str] = []

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Cookie", ""))
        body = b"<!doctype html><title>notebook</title><p>a notebook"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_what_a_notebook_port_receives_reads_nothing_alone(served: Served) -> None:
    """The review's case: signed in at 127.0.0.1:<api>, the admin opens http://127.0.0.1:<port>/."""
    from playwright.sync_api import expect, sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing (Debian package chromium; `make test` installs it)", pytrace=False)
    catcher = ThreadingHTTPServer(("127.0.0.1", free_port()), CookieCatcher)
    CookieCatcher.seen = []
    threading.Thread(target=catcher.serve_forever, daemon=True).start()
    hostname = served.site.notebook()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            try:
                page = browser.new_context().new_page()
                page.set_default_timeout(15_000)
                page.goto(served.url + "/manage")
                page.fill("#signin input[name=token]", ADMIN_TOKEN)
                page.click("#signin button")
                expect(page.locator("#signout")).to_contain_text("signed in as admin")
                csrf = str(page.locator('meta[name="csrf-token"]').get_attribute("content"))
                page.goto(f"http://127.0.0.1:{catcher.server_address[1]}/")
                expect(page.locator("p")).to_have_text("a notebook")
            finally:
                browser.close()
    finally:
        catcher.shutdown()
        catcher.server_close()
    name = f"{served.site.settings.instance}-session"
    stolen = dict(part.strip().partition("=")[::2] for part in CookieCatcher.seen[-1].split(";") if part.strip())
    assert name in stolen, f"the premise: cookies ignore ports ({CookieCatcher.seen})"
    assert csrf not in CookieCatcher.seen[-1]
    replay = {"Cookie": f"{name}={stolen[name]}"}
    for method, path in [("GET", "/containers"), ("GET", f"/container/{hostname}"), ("POST", "/tokens")]:
        response = requests.request(method, served.url + path, headers=replay, json={"user": "mallory"}, timeout=5)
        assert response.status_code == 403, (method, path, response.text[:200])
    stream = requests.get(served.url + "/events", headers=replay, stream=True, timeout=5)
    assert stream.status_code == 403
    stream.close()


# -- what the event streams act on ----------------------------------------------------------------------
@pytest.fixture
def site(redis_server: RedisServer) -> Iterator[Site]:
    made = make_site(redis_server, "control")
    yield made
    drop(made)


def cookie_value(site: Site, browser: FlaskClient) -> str:
    cookie = browser.get_cookie(f"{site.settings.instance}-session")
    assert cookie is not None
    return cookie.value


def session_id(site: Site, browser: FlaskClient) -> str:
    return hashlib.sha256(cookie_value(site, browser).encode()).hexdigest()


def next_control(pubsub: Any, within: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.5)
        if message and message["type"] == "message":
            return dict(json.loads(message["data"]))
    raise AssertionError(f"no control message within {within}s")


def test_revocation_and_sign_out_publish_a_control_message(site: Site) -> None:
    pubsub = site.store.redis.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe(f"{site.settings.key_prefix}control")
    wait_for(lambda: (m := pubsub.get_message(timeout=0.5)) and m["type"] == "subscribe", 5, "the subscription")
    try:
        alice = site.user_token("alice")
        browser, _ = signed_in(site, alice["token"])
        assert site.api("DELETE", f"/tokens/{alice['id']}").status_code == 200
        assert next_control(pubsub) == {"event": "revoked", "token_id": alice["id"], "session_id": ""}

        # Signing out ends that session only: bob's token, its other sessions and streams stay.
        bob = site.user_token("bob")
        browser, csrf = signed_in(site, bob["token"])
        other, _ = signed_in(site, bob["token"])
        ended = session_id(site, browser)
        assert browser.post("/manage/signout", data={"csrf_token": csrf}).status_code == 303
        assert next_control(pubsub) == {"event": "revoked", "token_id": "", "session_id": ended}
        assert other.get("/manage").status_code == 200

        admin, csrf = signed_in(site)
        ended = session_id(site, admin)
        assert admin.post("/manage/signout", data={"csrf_token": csrf}).status_code == 303
        assert next_control(pubsub) == {"event": "revoked", "token_id": "", "session_id": ended}
    finally:
        pubsub.close()


def test_a_new_admin_token_ends_the_admin_sessions(redis_server: RedisServer, site: Site) -> None:
    """The same deployment restarted with another ADMIN_TOKEN: sessions of the old one are ended
    (in Redis and for their streams), user sessions are not."""
    from api import create_app
    from shared.settings import Settings

    alice = site.user_token("alice")
    admin, _ = signed_in(site)
    user, _ = signed_in(site, alice["token"])
    rotated = Settings.from_env({**site.env, "ADMIN_TOKEN": "adm-" + secrets.token_urlsafe(24)})
    restarted = create_app(rotated)
    name = f"{site.settings.instance}-session"
    pubsub = site.store.redis.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe(f"{site.settings.key_prefix}control")
    wait_for(lambda: (m := pubsub.get_message(timeout=0.5)) and m["type"] == "subscribe", 5, "the subscription")
    try:
        client = restarted.test_client()
        client.set_cookie(name, cookie_value(site, admin))
        assert client.get("/manage").status_code == 401
        assert next_control(pubsub) == {"event": "revoked", "token_id": "", "session_id": session_id(site, admin)}
        assert not site.store.redis.exists(f"{site.settings.key_prefix}session:{session_id(site, admin)}")
        client.set_cookie(name, cookie_value(site, user))
        assert client.get("/manage").status_code == 200
    finally:
        pubsub.close()
        restarted.extensions["store"].redis.close()


def test_the_caller_carries_the_token_and_session_ids(site: Site) -> None:
    from flask import g

    alice = site.user_token("alice")
    user_browser, user_csrf = signed_in(site, alice["token"])
    admin_browser, admin_csrf = signed_in(site)
    name = f"{site.settings.instance}-session"
    cases = [
        ({"Authorization": f"Bearer {ADMIN_TOKEN}"}, ("admin", None, "bearer", "", "")),
        ({"Authorization": f"Bearer {alice['token']}"}, ("user", "alice", "bearer", alice["id"], "")),
        (
            {"Cookie": f"{name}={cookie_value(site, user_browser)}", "X-CSRF-Token": user_csrf},
            ("user", "alice", "session", alice["id"], session_id(site, user_browser)),
        ),
        (
            {"Cookie": f"{name}={cookie_value(site, admin_browser)}", "X-CSRF-Token": admin_csrf},
            ("admin", None, "session", "", session_id(site, admin_browser)),
        ),
    ]
    for headers, expected in cases:
        with site.app.test_request_context("/containers", headers=headers):
            assert site.app.preprocess_request() is None
            who = g.caller
            assert (who.role, who.user, who.via, who.token_id, who.session_id) == expected


def test_revoking_a_token_ends_the_stream_its_session_opened(served: Served) -> None:
    """End to end with the events hub (api/hub.py): the control message closes the stream."""
    alice = served.user_token("alice")
    signed = sign_in(served.url, alice["token"])
    stream = requests.get(f"{served.url}/events?csrf={signed.csrf}", headers=signed.header, stream=True, timeout=10)
    assert stream.status_code == 200
    chunks = stream.iter_content(chunk_size=None)
    assert next(chunks).startswith(b"retry:")
    assert requests.delete(f"{served.url}/tokens/{alice['id']}", headers=ADMIN, timeout=5).status_code == 200
    started = time.monotonic()
    rest = b"".join(chunks)  # returns when the server ends the stream
    stream.close()
    assert time.monotonic() - started < 5, rest
    assert b"revoked" in rest
