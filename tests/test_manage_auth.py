"""/manage with AUTH on: signing in with a token, the session cookie, the CSRF token on every
request through it, the GET kill that never takes the cookie, and sessions shared by several
processes. A real Redis; no worker (spawns stay queued), except gunicorn for the several-processes
case and the page in Chromium. tests/test_manage_sessions.py holds the server-side sessions on a
real socket (what the cookie holds, replay after sign-out and revocation, the control message)."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from api import create_app
from shared.settings import Settings
from shared.status import Status
from shared.store import Store
from shared.tokenstore import control_channel, new_secret, revoked_message
from testkit.stack import base_env
from testkit.support import ROOT, ApiServer, RedisServer, free_port, unique_instance, wait_for

ADMIN_TOKEN = "adm-" + secrets.token_urlsafe(24)
CSRF_INPUT = re.compile(r'<input type="hidden" name="csrf_token" value="([^"]+)">')
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]*)">')
CHROMIUM = "/usr/bin/chromium"


@dataclass
class Site:
    app: Flask
    settings: Settings
    env: dict[str, str]

    @property
    def store(self) -> Store:
        return self.app.extensions["store"]  # type: ignore[no-any-return]

    def browser(self) -> FlaskClient:
        """A client that keeps cookies, as a browser does."""
        return self.app.test_client()

    def api(self, method: str, path: str, **kwargs: Any) -> TestResponse:
        client = self.app.test_client(use_cookies=False)
        return client.open(path, method=method, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, **kwargs)

    def user_token(self, user: str) -> dict[str, Any]:
        response = self.api("POST", "/tokens", json={"user": user})
        assert response.status_code == 201
        return dict(response.get_json())

    def notebook(self, user: str = "alice") -> str:
        return self.store.create(image="busybox", user=user, domain="nb.test").hostname


def make_site(redis_server: RedisServer, tag: str, **env: str) -> Site:
    full = base_env(redis_server.url, unique_instance(tag), AUTH="on", ADMIN_TOKEN=ADMIN_TOKEN, **env)
    settings = Settings.from_env(full)
    return Site(create_app(settings), settings, full)


def drop(site: Site) -> None:
    client = site.store.redis
    for key in client.scan_iter(match=f"{site.settings.key_prefix}*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture
def site(redis_server: RedisServer) -> Iterator[Site]:
    made = make_site(redis_server, "signin")  # no SECRET_KEY: the generated one, kept in Redis
    yield made
    drop(made)


def csrf_of(html: str) -> str:
    found = CSRF_INPUT.search(html)
    assert found, f"no CSRF field in the page: {html[:500]}"
    return found.group(1)


def sign_in(site: Site, browser: FlaskClient, token: str = ADMIN_TOKEN) -> TestResponse:
    form = browser.get("/manage")
    assert form.status_code == 401 and "Sign in" in form.get_data(as_text=True)
    return browser.post("/manage/signin", data={"token": token, "csrf_token": csrf_of(form.get_data(as_text=True))})


def signed_in(site: Site, token: str = ADMIN_TOKEN) -> tuple[FlaskClient, str]:
    """A browser signed in with ``token`` and the session's CSRF token (from the page)."""
    browser = site.browser()
    response = sign_in(site, browser, token)
    assert response.status_code == 303, response.get_data(as_text=True)
    page = browser.get("/manage")
    assert page.status_code == 200, page.get_data(as_text=True)[:300]
    html = page.get_data(as_text=True)
    token_in_meta = CSRF_META.search(html)
    assert token_in_meta and token_in_meta.group(1) == csrf_of(html)
    return browser, csrf_of(html)


# -- signing in ---------------------------------------------------------------------------------------
def test_the_page_asks_for_a_token(site: Site) -> None:
    response = site.browser().get("/manage")
    assert response.status_code == 401
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert '<form id="signin"' in html and 'name="token" type="password"' in html
    assert "Content-Security-Policy" in response.headers
    assert 'id="notebooks"' not in html and "/manage/kill" not in html  # nothing listed before signing in


def test_sign_in_sets_an_httponly_samesite_session_cookie(site: Site) -> None:
    browser = site.browser()
    response = sign_in(site, browser)
    assert response.status_code == 303 and response.headers["Location"] == "/manage"
    cookie = response.headers["Set-Cookie"]
    attributes = [part.strip().lower() for part in cookie.split(";")]
    assert cookie.startswith(f"{site.settings.instance}-session=")
    assert "httponly" in attributes
    assert "samesite=lax" in attributes
    assert "path=/" in attributes
    assert "secure" not in attributes  # SESSION_COOKIE_SECURE is off by default (plain-HTTP `make run`)
    assert ADMIN_TOKEN not in cookie
    page = browser.get("/manage")
    assert page.status_code == 200
    assert "signed in as admin" in page.get_data(as_text=True)


def test_secure_cookies_when_configured(redis_server: RedisServer) -> None:
    made = make_site(redis_server, "secure", SESSION_COOKIE_SECURE="1", SECRET_KEY=secrets.token_urlsafe(32))
    try:
        form = made.browser().get("/manage")
        assert form.headers["Set-Cookie"].startswith(f"__Host-{made.settings.instance}-session=")
        assert "secure" in [part.strip().lower() for part in form.headers["Set-Cookie"].split(";")]
    finally:
        drop(made)


@pytest.mark.parametrize("token", ["", "not-a-token", ADMIN_TOKEN + "x"])
def test_a_bad_token_does_not_sign_in(site: Site, token: str) -> None:
    browser = site.browser()
    response = sign_in(site, browser, token)
    assert response.status_code == 401
    assert "That token is not valid" in response.get_data(as_text=True)
    assert browser.get("/manage").status_code == 401


def test_sign_in_needs_the_forms_csrf_token(site: Site) -> None:
    browser = site.browser()
    browser.get("/manage")
    # Another site posting its own token for the visitor (login CSRF): refused.
    response = browser.post("/manage/signin", data={"token": ADMIN_TOKEN})
    assert response.status_code == 403
    fresh = site.browser().post("/manage/signin", data={"token": ADMIN_TOKEN, "csrf_token": "guess"})
    assert fresh.status_code == 403
    assert browser.get("/manage").status_code == 401


def test_sign_out_needs_the_csrf_token_and_ends_the_session(site: Site) -> None:
    browser, csrf = signed_in(site)
    assert browser.post("/manage/signout").status_code == 403
    assert browser.get("/manage").status_code == 200
    out = browser.post("/manage/signout", data={"csrf_token": csrf})
    assert out.status_code == 303
    assert browser.get("/manage").status_code == 401


# -- CSRF --------------------------------------------------------------------------------------------
def test_kill_without_the_csrf_token_is_refused_and_with_it_works(site: Site) -> None:
    browser, csrf = signed_in(site)
    hostname = site.notebook()
    for headers, data in [({}, {}), ({}, {"csrf_token": "wrong"}), ({"X-CSRF-Token": "wrong"}, {})]:
        refused = browser.post(f"/manage/kill/{hostname}", headers=headers, data=data)
        assert refused.status_code == 403, refused.get_data(as_text=True)
        assert refused.get_json()["code"] == "forbidden"
        assert site.store.require(hostname).status is Status.PENDING

    done = browser.post(f"/manage/kill/{hostname}", data={"csrf_token": csrf})  # the page's form
    assert done.status_code == 303
    assert site.store.require(hostname).status is Status.DELETING

    other = site.notebook()
    fetched = browser.post(f"/manage/kill/{other}", headers={"X-CSRF-Token": csrf, "Accept": "application/json"})
    assert fetched.status_code == 202  # the page's script
    assert fetched.get_json()["status"] == "DELETING"


def test_spawn_through_the_page_needs_the_csrf_token(site: Site) -> None:
    browser, csrf = signed_in(site)
    form = {"image": "busybox", "user": "alice"}
    assert browser.post("/manage/spawn", data=form).status_code == 403
    assert list(site.store.records()) == []
    done = browser.post("/manage/spawn", data={**form, "csrf_token": csrf})
    assert done.status_code == 303
    assert [r.user for r in site.store.records()] == ["alice"]


def test_the_json_api_through_the_cookie_needs_the_csrf_token_too(site: Site) -> None:
    browser, csrf = signed_in(site)
    hostname = site.notebook()
    # Reads too: the cookie reaches every port of this host, the token only the page.
    assert browser.get("/containers").status_code == 403
    assert browser.get("/containers", headers={"X-CSRF-Token": csrf}).status_code == 200  # the page's refresh
    assert browser.delete(f"/container/{hostname}").status_code == 403
    assert browser.post("/spawn", json={"image": "busybox", "user": "alice"}).status_code == 403
    assert site.store.require(hostname).status is Status.PENDING
    assert browser.delete(f"/container/{hostname}", headers={"X-CSRF-Token": csrf}).status_code == 202


@pytest.mark.parametrize("path", ["/container/{}/kill", "/api/container/{}/kill", "/api/container/{}/kill/"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_the_get_kill_never_takes_the_cookie(site: Site, path: str, method: str) -> None:
    browser, csrf = signed_in(site)
    hostname = site.notebook()
    refused = browser.open(path.format(hostname), method=method, headers={"X-CSRF-Token": csrf})
    assert refused.status_code == 403
    assert site.store.require(hostname).status is Status.PENDING
    # An API client with its Bearer token may (the seed's contract).
    killed = site.api("GET", path.format(hostname))
    assert killed.status_code == 202 and killed.get_json()["status"] == "DELETING"


# -- roles on the page ---------------------------------------------------------------------------------
def test_a_user_session_sees_and_spawns_only_its_own(site: Site) -> None:
    alice = site.user_token("alice")
    mine, theirs = site.notebook("alice"), site.notebook("bob")
    browser, csrf = signed_in(site, alice["token"])
    html = browser.get("/manage").get_data(as_text=True)
    assert f"nb-{mine}" in html and f"nb-{theirs}" not in html
    assert "signed in as alice" in html
    assert re.search(r'name="user"[^>]*value="alice" readonly', html), "the spawn form's user is fixed"
    filtered = browser.get("/manage?user=bob").get_data(as_text=True)
    assert "filter ignored" in filtered and f"nb-{theirs}" not in filtered and f"nb-{mine}" in filtered

    killed = browser.post(f"/manage/kill/{theirs}", data={"csrf_token": csrf})
    assert killed.status_code == 303 and "error=" in killed.headers["Location"]  # the same as an unknown one
    assert site.store.require(theirs).status is Status.PENDING
    for_bob = browser.post("/manage/spawn", data={"image": "busybox", "user": "bob", "csrf_token": csrf})
    assert for_bob.status_code == 303 and "error=" in for_bob.headers["Location"]
    own = browser.post("/manage/spawn", data={"image": "busybox", "csrf_token": csrf})
    assert own.status_code == 303 and "message=" in own.headers["Location"]
    assert sorted(r.user for r in site.store.records()) == ["alice", "alice", "bob"]
    # The page's admin-only neighbours stay closed to the session too, with its CSRF token.
    for path in ("/metrics", "/tokens"):
        refused = browser.get(path, headers={"X-CSRF-Token": csrf})
        assert refused.status_code == 403 and "only the admin" in refused.get_json()["error"]


def test_revoking_a_token_ends_its_sessions(site: Site) -> None:
    alice = site.user_token("alice")
    browser, _ = signed_in(site, alice["token"])
    assert site.api("DELETE", f"/tokens/{alice['id']}").status_code == 200
    assert browser.get("/manage").status_code == 401
    assert browser.get("/containers").status_code == 401


def test_a_session_from_another_deployment_is_not_accepted(redis_server: RedisServer, site: Site) -> None:
    other = make_site(redis_server, "other", SECRET_KEY=secrets.token_urlsafe(32))
    try:
        browser, _ = signed_in(other)
        cookie = browser.get_cookie(f"{other.settings.instance}-session")
        assert cookie is not None
        stranger = site.browser()
        stranger.set_cookie(f"{site.settings.instance}-session", cookie.value)
        assert stranger.get("/manage").status_code == 401
    finally:
        drop(other)


def test_processes_share_sessions_and_the_generated_key(redis_server: RedisServer, site: Site) -> None:
    # A second app on the same instance is what a second gunicorn worker is: sessions are in
    # Redis, and the generated key (the sign-in form's CSRF token, admin sessions) is too.
    second = Site(create_app(site.settings), site.settings, site.env)
    browser, csrf = signed_in(site)
    cookie = browser.get_cookie(f"{site.settings.instance}-session")
    assert cookie is not None
    elsewhere = second.browser()
    elsewhere.set_cookie(f"{site.settings.instance}-session", cookie.value)
    assert elsewhere.get("/manage").status_code == 200
    hostname = site.notebook()
    assert elsewhere.post(f"/manage/kill/{hostname}", data={"csrf_token": csrf}).status_code == 303
    client = redis.Redis.from_url(site.settings.redis_url, decode_responses=True)
    try:
        assert client.get(f"{site.settings.key_prefix}session-secret")
    finally:
        client.close()


def test_gunicorn_workers_accept_each_others_sessions(redis_server: RedisServer, tmp_path: Path) -> None:
    made = make_site(redis_server, "gunicorn")
    port = free_port()
    log = tmp_path / "gunicorn.log"
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "3",
            "--threads",
            "2",
            "api.wsgi:app",
        ],
        cwd=ROOT,
        env={**os.environ, **made.env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(base + "/healthz", timeout=1).ok, 30, f"gunicorn (log: {log})")
        browser = requests.Session()
        form = browser.get(base + "/manage", timeout=5)
        assert form.status_code == 401
        signed = browser.post(
            base + "/manage/signin",
            data={"token": ADMIN_TOKEN, "csrf_token": csrf_of(form.text)},
            allow_redirects=False,
            timeout=5,
        )
        assert signed.status_code == 303, signed.text
        cookies = browser.cookies.get_dict()
        # A new connection each time: gunicorn hands them to whichever worker accepts first.
        for _ in range(30):
            page = requests.get(base + "/manage", cookies=cookies, headers={"Connection": "close"}, timeout=5)
            assert page.status_code == 200, page.text[:300]
        assert log.read_text().count("Booting worker") == 3
    finally:
        proc.terminate()
        proc.wait(15)
        drop(made)


# -- in a real browser -------------------------------------------------------------------------------
@pytest.fixture
def served_site(redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[Site, str]]:
    """The signin site under gunicorn, as `make run` serves it."""
    made = make_site(redis_server, "browser-auth")
    server = ApiServer(made.env, tmp_path / "gunicorn.log")
    server.start()
    try:
        yield made, server.url
    finally:
        server.stop()
        drop(made)


def test_the_page_in_a_browser_signs_in_and_its_script_sends_the_csrf_token(served_site: tuple[Site, str]) -> None:
    from playwright.sync_api import Dialog, expect, sync_playwright

    site, url = served_site
    alice = site.user_token("alice")
    theirs = site.notebook("bob")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing (Debian package chromium; `make test` installs it)", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_context().new_page()
            page.set_default_timeout(15_000)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url + "/manage")
            page.fill("#signin input[name=token]", alice["token"])
            page.click("#signin button")
            expect(page.locator("#signout")).to_contain_text("signed in as alice")
            expect(page.locator("#live")).to_have_text("live")  # the event stream took the cookie and ?csrf=
            expect(page.locator(f"#nb-{theirs}")).to_have_count(0)
            # Followed live: a notebook of alice's made elsewhere appears without a reload.
            elsewhere = site.notebook("alice")
            expect(page.locator(f"#nb-{elsewhere} .badge")).to_have_text("PENDING")
            site.store.transition(elsewhere, Status.DELETING)
            expect(page.locator(f"#nb-{elsewhere} .badge")).to_have_text("DELETING")

            page.fill("#spawn input[name=image]", "busybox")  # user: fixed to alice
            page.click("#spawn button")  # fetch with X-CSRF-Token
            rows = page.locator("#notebooks tbody tr[id^='nb-']")
            expect(rows).to_have_count(2)
            row = page.locator(f"#notebooks tbody tr[id^='nb-']:not(#nb-{elsewhere})")
            expect(row.locator(".badge")).to_have_text("PENDING")
            hostname = str(row.get_attribute("data-hostname"))
            assert site.store.require(hostname).user == "alice"

            def confirm(dialog: Dialog) -> None:
                dialog.accept()

            page.on("dialog", confirm)
            row.locator("form.kill button").click()
            expect(row.locator(".badge")).to_have_text("DELETING")
            assert site.store.require(hostname).status is Status.DELETING
            assert site.store.require(theirs).status is Status.PENDING

            page.click("#signout button")
            expect(page.locator("#signin")).to_be_visible()
            assert errors == []
        finally:
            browser.close()


def test_the_page_reloads_the_list_after_a_reconnect_with_the_csrf_token(served_site: tuple[Site, str]) -> None:
    from playwright.sync_api import expect, sync_playwright

    site, url = served_site
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing (Debian package chromium; `make test` installs it)", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_context().new_page()
            page.set_default_timeout(15_000)
            page.goto(url + "/manage")
            page.fill("#signin input[name=token]", ADMIN_TOKEN)
            page.click("#signin button")
            expect(page.locator("#live")).to_have_text("live")
            # End the page's stream under it, as the events hub does for a control message naming
            # its session; the browser reconnects and the page reloads the list once
            # (GET /containers, which needs the X-CSRF-Token header).
            cookie = next(c for c in page.context.cookies() if c["name"] == f"{site.settings.instance}-session")
            ended = revoked_message(session_id=hashlib.sha256(cookie["value"].encode()).hexdigest())
            with page.expect_response(lambda r: "/containers?" in r.url) as reloaded:
                site.store.redis.publish(control_channel(site.settings.key_prefix), ended)
            assert reloaded.value.status == 200
            expect(page.locator("#live")).to_have_text("live")
            expect(page.locator("#live-error")).to_be_hidden()
        finally:
            browser.close()


def test_a_user_token_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # A token passed as `--token T` must not read as an option (tests/test_cli.py passes one so).
    draws = iter(["-starts-with-a-dash", "_fine"])
    monkeypatch.setattr(secrets, "token_urlsafe", lambda _n: next(draws))
    assert new_secret() == "_fine"
