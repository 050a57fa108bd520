"""Anonymous launches within limits (api/anonymous.py, api/auth.py, api/binder.py), on the API as
`make run` serves it (gunicorn's gevent workers) on a real socket and a real Redis, with
authentication on and no worker (launches stay queued, and a queued notebook takes its slot).

Client addresses are real: each request leaves from an address of its own in 127.0.0.0/8 (all of
it is this machine's loopback), so the per-address limits see what a server on the internet would.
``X-Forwarded-For`` is believed only as far as TRUSTED_PROXY_HOPS says (0 here): a client that
sends one changes nothing. An anonymous client reaches one notebook, the one whose token it
holds (``?token=``); any other is the 404 of an unknown notebook, and nothing else is open to it.
"""

from __future__ import annotations

import http.client
import json
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from api import create_app
from api.anonymous import client_key
from shared.pool import ANONYMOUS_USER
from shared.settings import Settings
from shared.status import Status
from testkit.stack import Stack, base_env
from testkit.support import ApiServer, RedisServer, unique_instance, wait_for

ADMIN_TOKEN = "adm-" + secrets.token_urlsafe(24)
PER_ADDRESS, RATE, TOTAL = 2, 4, 5


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


@dataclass
class Anon:
    stack: Stack
    api: ApiServer
    image: str
    launched: list[str] = field(default_factory=list)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        source: str = "127.0.0.1",
        headers: dict[str, str] | None = None,
        content_type: str = "text/plain;charset=UTF-8",
    ) -> Answer:
        """One request from ``source`` (a loopback address of its own), as a browser page would send it."""
        conn = http.client.HTTPConnection("127.0.0.1", self.api.port, timeout=30, source_address=(source, 0))
        try:
            data = body if isinstance(body, (str, bytes)) or body is None else json.dumps(body)
            sent = {**({"Content-Type": content_type} if data is not None else {}), **(headers or {})}
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            raw = response.read()
            kind = response.getheader("Content-Type", "")
            parsed = json.loads(raw) if kind.startswith("application/json") else raw.decode()
            return Answer(response.status, dict(response.getheaders()), parsed)
        finally:
            conn.close()

    def launch(self, source: str, **extra: Any) -> Answer:
        answer = self.call("POST", "/api/spawn/", {"image_name": self.image, "wait": False, **extra}, source=source)
        if answer.status == 202:
            self.launched.append(answer.body["hostname"])
        return answer

    def kill_all(self) -> None:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        for hostname in self.launched:
            self.call("DELETE", f"/container/{hostname}", headers=admin)
        self.launched.clear()


@pytest.fixture(scope="module")
def anon(stack_factory: Any, images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anon]:
    work = tmp_path_factory.mktemp("anon")
    profiles = work / "profiles.yml"
    profiles.write_text(f"binder:\n  - spec: gh/org/repo/*\n    image: {images['httpd']}\n")
    stack = stack_factory(
        "anon",
        worker=False,
        AUTH="on",
        ADMIN_TOKEN=ADMIN_TOKEN,
        ALLOWED_IMAGES="swarm-manager-test/*",
        ANONYMOUS_IMAGES=images["httpd"],
        ANONYMOUS_PER_ADDRESS=PER_ADDRESS,
        ANONYMOUS_SPAWN_RATE=RATE,
        ANONYMOUS_MAX_NOTEBOOKS=TOTAL,
        TRUSTED_PROXY_HOPS="0",
        START_TIMEOUT="2",
        PROFILES_FILE=str(profiles),
    )
    api = ApiServer(stack.env, work / "gunicorn.log")
    api.start()
    try:
        yield Anon(stack, api, images["httpd"])
    finally:
        api.stop()


@pytest.fixture
def clean(anon: Anon) -> Iterator[Anon]:
    yield anon
    anon.kill_all()


def spoofed(i: int) -> dict[str, str]:
    return {"X-Forwarded-For": f"203.0.113.{i}", "X-Real-IP": f"198.51.100.{i}", "Forwarded": f"for=192.0.2.{i}"}


def test_per_address_quota_and_a_spoofed_forwarded_for_changes_nothing(clean: Anon) -> None:
    first = [clean.launch("127.0.0.2") for _ in range(PER_ADDRESS)]
    assert [a.status for a in first] == [202] * PER_ADDRESS, [a.body for a in first]
    assert all(a.body["user"] == ANONYMOUS_USER and a.body["token"] for a in first)
    refused = clean.launch("127.0.0.2")
    assert refused.status == 429 and refused.body["status"] == "full", refused.body  # tmpnb's answer
    assert refused.body["code"] == "quota_exceeded" and "ANONYMOUS_PER_ADDRESS" in refused.body["error"]
    assert int(refused.headers["Retry-After"]) >= 1
    # Claiming to be someone else through the proxy headers, from a peer nobody trusts: still this address.
    for i in range(1, 4):
        again = clean.call(
            "POST", "/api/spawn/", {"image_name": clean.image, "wait": False}, source="127.0.0.2", headers=spoofed(i)
        )
        assert again.status == 429, again.body
    # Another address is counted on its own.
    assert clean.launch("127.0.0.3").status == 202
    # Killing one (with its own capability) gives the address its slot back.
    mine = first[0].body
    killed = clean.call("DELETE", f"/container/{mine['hostname']}?token={mine['token']}", source="127.0.0.2")
    assert killed.status == 202 and killed.body["status"] == "DELETING", killed.body
    assert clean.launch("127.0.0.2").status == 202


def test_per_address_launch_rate_with_retry_after(clean: Anon) -> None:
    for _ in range(RATE):
        answer = clean.launch("127.0.0.4")
        assert answer.status == 202, answer.body
        body = answer.body
        assert clean.call("DELETE", f"/container/{body['hostname']}?token={body['token']}").status == 202
    refused = clean.launch("127.0.0.4")
    assert refused.status == 429 and "ANONYMOUS_SPAWN_RATE" in refused.body["error"], refused.body
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    spoof = clean.call(
        "POST", "/api/spawn/", {"image_name": clean.image, "wait": False}, source="127.0.0.4", headers=spoofed(9)
    )
    assert spoof.status == 429
    # Binder's route counts the same launches: its refusal is BinderHub's failed phase with the status.
    build = clean.call("GET", "/build/gh/org/repo/main", source="127.0.0.4")
    assert build.status == 200 and build.headers["Content-Type"].startswith("text/event-stream")
    (event,) = [json.loads(line[6:]) for line in build.body.splitlines() if line.startswith("data: ")]
    assert event["phase"] == "failed" and event["status_code"] == 429 and "ANONYMOUS_SPAWN_RATE" in event["message"]


def test_a_total_cap_on_anonymous_notebooks(clean: Anon) -> None:
    live = len([r for r in clean.stack.store.records(user=ANONYMOUS_USER) if r.status is Status.PENDING])
    sources = iter(f"127.0.1.{i}" for i in range(1, 50))
    for _ in range(TOTAL - live):
        assert clean.launch(next(sources)).status == 202
    refused = clean.launch(next(sources))
    assert refused.status == 429 and "ANONYMOUS_MAX_NOTEBOOKS" in refused.body["error"], refused.body
    # The address whose launch the total refused got nothing counted against it.
    clean.kill_all()
    assert clean.launch("127.0.1.50").status == 202


def test_an_anonymous_client_reaches_only_the_notebook_whose_token_it_holds(clean: Anon) -> None:
    a, b = clean.launch("127.0.0.5").body, clean.launch("127.0.0.6").body
    unknown = clean.call("GET", f"/container/zzzzzzzzzzzz?token={b['token']}", source="127.0.0.6")
    assert unknown.status == 404
    for method, path in (
        ("GET", f"/container/{a['hostname']}"),
        ("GET", f"/api/container/{a['hostname']}"),
        ("GET", f"/container/{a['hostname']}/events"),
        ("DELETE", f"/container/{a['hostname']}"),
        ("POST", f"/container/{a['hostname']}/kill"),
    ):
        # B's own token on A's notebook: exactly the answer for a notebook that does not exist.
        other = clean.call(method, f"{path}?token={b['token']}", source="127.0.0.6")
        assert other.status == 404, (method, path, other.body)
        assert other.body == {**unknown.body, "error": unknown.body["error"].replace("zzzzzzzzzzzz", a["hostname"])}
        # No token at all: the 401 every route without credentials gives.
        assert clean.call(method, path, source="127.0.0.6").status == 401
    for path in ("/containers", f"/containers?user={ANONYMOUS_USER}", "/events", "/metrics", "/tokens"):
        assert clean.call("GET", f"{path}?token={b['token']}", source="127.0.0.6").status == 401, path
    assert clean.call("POST", f"/spawn?token={b['token']}", {"image": clean.image}, source="127.0.0.6").status == 401
    assert clean.stack.record(a["hostname"]).status is Status.PENDING  # nothing B did touched A

    # A's own capability: its record (with its secrets), its events as an EventSource opens them,
    # and its kill, but not by a GET (link previews and prefetchers fetch URLs).
    mine = clean.call("GET", f"/container/{a['hostname']}?token={a['token']}", source="127.0.0.7")
    assert mine.status == 200 and mine.body["token"] == a["token"] and mine.body["notebook_url"], mine.body
    stream = socket.create_connection(("127.0.0.1", clean.api.port), timeout=10)
    try:
        stream.sendall(
            f"GET /container/{a['hostname']}/events?token={a['token']} HTTP/1.1\r\nHost: api\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        head = b""
        while b"event: queued" not in head:
            chunk = stream.recv(4096)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
    finally:
        stream.close()
    get_kill = clean.call("GET", f"/container/{a['hostname']}/kill?token={a['token']}")
    assert get_kill.status == 403 and clean.stack.record(a["hostname"]).status is Status.PENDING
    assert clean.call("POST", f"/container/{a['hostname']}/kill?token={a['token']}").status == 202


def test_launch_requests_as_tmpnb_clients_send_them(clean: Anon) -> None:
    plain = clean.launch("127.0.0.8")  # text/plain JSON with image_name: the 2015 Thebe's request
    assert plain.status == 202 and plain.body["url"] == f"http://{plain.body['hostname']}.nb.test/"
    assert plain.headers["Location"] == f"/container/{plain.body['hostname']}"
    form = clean.call(
        "POST", "/api/spawn", f"image={clean.image}&wait=false", content_type="application/x-www-form-urlencoded"
    )
    assert form.status == 202, form.body
    clean.launched.append(form.body["hostname"])
    for body, status, words in (
        ({}, 400, "image is required"),
        ({"image": clean.image, "image_name": "swarm-manager-test/slow3:2"}, 400, "different images"),
        ({"image_name": clean.image, "user": "alice"}, 403, "cannot name a user"),
        ({"image_name": clean.image, "profile": "x"}, 400, "image's own profile"),
        ({"image_name": clean.image, "wait": "maybe"}, 400, "wait must be"),
        ({"image_name": "swarm-manager-test/slow3:2"}, 403, "not open to anonymous clients"),
        ({"image_name": "elsewhere/image:1"}, 403, "not open to anonymous clients"),
        ("not json", 415, "JSON object"),
        ([1, 2], 400, "JSON object"),
    ):
        answer = clean.call("POST", "/api/spawn/", body, source="127.0.0.9")
        assert answer.status == status and words in answer.body["error"], (body, answer.body)


def test_a_launch_never_ready_is_killed_when_its_client_gives_up_or_leaves(clean: Anon) -> None:
    # tmpnb's wait ends at START_TIMEOUT (2 s here; no worker runs): 504, and the notebook is killed.
    waited = clean.call("POST", "/api/spawn/", {"image_name": clean.image}, source="127.0.0.10")
    assert waited.status == 504 and waited.body["code"] == "launch_timed_out", waited.body
    record = clean.stack.record(waited.body["error"].split()[0])
    assert record.status is Status.DELETING and record.error == "abandoned: not ready within START_TIMEOUT"
    # Binder's launch: a reader who closes the page before it is ready leaves nothing running.
    sock = socket.create_connection(("127.0.0.1", clean.api.port), timeout=10, source_address=("127.0.0.11", 0))
    try:
        sock.sendall(b"GET /build/gh/org/repo/main HTTP/1.1\r\nHost: api\r\nAccept: text/event-stream\r\n\r\n")
        seen = b""
        while b'"phase": "launching"' not in seen:
            chunk = sock.recv(4096)
            assert chunk, seen
            seen += chunk
    finally:
        sock.close()
    assert b'"phase": "built"' in seen
    hostname = wait_for(
        lambda: [
            r for r in clean.stack.store.records(user=ANONYMOUS_USER) if r.error.startswith("abandoned: its launch")
        ],
        10,
        "the abandoned launch to be killed",
    )[0].hostname
    assert clean.stack.record(hostname).status is Status.DELETING


def test_trusted_proxy_hops_believe_the_proxy_and_only_it(redis_server: RedisServer, images: dict[str, str]) -> None:
    # The same limits behind one trusted proxy: the address it saw is what counts.
    env = base_env(
        redis_server.url,
        unique_instance("anonproxy"),
        AUTH="on",
        ADMIN_TOKEN=ADMIN_TOKEN,
        ANONYMOUS_IMAGES=images["httpd"],
        ANONYMOUS_PER_ADDRESS="1",
        TRUSTED_PROXY_HOPS="1",
    )
    app = create_app(Settings.from_env(env))
    http = app.test_client()
    try:

        def launch(client: str) -> int:
            answer = http.post(
                "/api/spawn/",
                data=json.dumps({"image_name": images["httpd"], "wait": False}),
                content_type="text/plain",
                headers={"X-Forwarded-For": client},
                environ_base={"REMOTE_ADDR": "10.0.0.1"},  # the proxy
            )
            return answer.status_code

        assert [launch("198.51.100.1"), launch("198.51.100.1"), launch("198.51.100.2")] == [202, 429, 202]
        # An IPv6 client is counted by its /64: another address in it is the same client.
        assert launch("2001:db8:1:2::1") == 202 and launch("2001:db8:1:2:ffff::9") == 429
    finally:
        store = app.extensions["store"]
        for key in store.redis.scan_iter(match=f"{store.prefix}*", count=1000):
            store.redis.delete(key)
        store.redis.close()


def test_without_anonymous_images_nothing_opens_without_a_token(redis_server: RedisServer) -> None:
    env = base_env(redis_server.url, unique_instance("noanon"), AUTH="on", ADMIN_TOKEN=ADMIN_TOKEN)
    app = create_app(Settings.from_env(env))
    http = app.test_client()
    try:
        answer = http.post("/api/spawn/", data=json.dumps({"image_name": "busybox"}), content_type="text/plain")
        assert answer.status_code == 401 and answer.headers["WWW-Authenticate"].startswith("Bearer")
        build = http.get("/build/gh/org/repo/main")
        assert build.status_code == 200
        assert json.loads(build.get_data(as_text=True)[6:])["phase"] == "failed"
        assert http.get("/containers").status_code == 401
    finally:
        store = app.extensions["store"]
        for key in store.redis.scan_iter(match=f"{store.prefix}*", count=1000):
            store.redis.delete(key)
        store.redis.close()


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("198.51.100.7", "198.51.100.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
        ("fe80::1%eth0", "fe80::/64"),
        ("", "unknown"),
        ("not an address", "not an address"),
    ],
)
def test_client_keys(address: str, key: str) -> None:
    assert client_key(address) == key


def test_the_anonymous_settings_are_checked(tmp_path: Path) -> None:
    assert Settings.from_env({}).anonymous_images == ()
    with pytest.raises(Exception, match="ANONYMOUS_IMAGES: image 'x/y:1' is not allowed by ALLOWED_IMAGES"):
        Settings.from_env({"ANONYMOUS_IMAGES": "x/y:1", "ALLOWED_IMAGES": "jupyter/*"})
    with pytest.raises(Exception, match="ANONYMOUS_MAX_AGE"):
        Settings.from_env({"ANONYMOUS_MAX_AGE": "5"})
