"""Event streams and idle sockets cannot take the API down (the serving model, api/hub.py).

Against the API as `make run` serves it (gunicorn's gevent workers, two processes) on a real
socket and a real Redis, with authentication on: hundreds of open streams and silent sockets
beside ordinary requests, the per-user and per-address caps (429 with Retry-After) counted across
both processes, a stream's slot given back when its client hangs up, silent clients dropped, and
the streams holding no Redis connection of their own. Counts and waits are bounded; figures
(thousands of streams, latencies) belong to the benchmark (bench/streams.py), not here.
"""

from __future__ import annotations

import secrets
import select
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import requests

from cli.servers import REQUEST_TIMEOUT
from shared.streams import StreamSlots
from testkit.support import ApiServer, wait_for

ADMIN_TOKEN = "adm-" + secrets.token_urlsafe(24)
PER_USER = 20
PER_ADDRESS = 5


class Site:
    def __init__(self, stack: Any, server: ApiServer) -> None:
        self.stack = stack
        self.server = server
        self.tokens: dict[str, str] = {}

    def token(self, user: str) -> str:
        if user not in self.tokens:
            made = requests.post(
                self.server.url + "/tokens", json={"user": user}, headers=bearer(ADMIN_TOKEN), timeout=10
            )
            assert made.status_code == 201, made.text
            self.tokens[user] = made.json()["token"]
        return self.tokens[user]

    def slots(self, who: str) -> int:
        return StreamSlots(self.stack.store.redis, self.stack.store.prefix).count(who)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def site(stack_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    stack = stack_factory(
        "streams",
        worker=False,  # spawns stay queued: nothing here needs a notebook to start
        AUTH="on",
        ADMIN_TOKEN=ADMIN_TOKEN,
        STREAMS_PER_USER=PER_USER,
        STREAMS_PER_ADDRESS=PER_ADDRESS,
    )
    server = ApiServer(
        stack.env,
        tmp_path_factory.mktemp("streams-api") / "gunicorn.log",
        workers=2,
    )
    server.start()
    yield Site(stack, server)
    server.stop()


def open_stream(url: str, path: str, token: str = "", source: str = "127.0.0.1") -> socket.socket:
    """An event stream on a raw socket, its answer's status line read; the rest left unread."""
    parts = url.removeprefix("http://").split(":")
    sock = socket.create_connection((parts[0], int(parts[1])), timeout=10, source_address=(source, 0))
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: api\r\nAccept: text/event-stream\r\n{auth}\r\n".encode())
    return sock


def status_of(sock: socket.socket) -> int:
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            return 0
        head += chunk
    return int(head.split(b" ", 2)[1])


def test_hundreds_of_streams_and_silent_sockets_leave_the_api_answering(site: Site) -> None:
    # With one thread per stream (2 x 32), 64 streams took the API offline for everyone.
    users = [f"watcher{i}" for i in range(15)]
    with ExitStack() as held:
        for user in users:
            for _ in range(PER_USER):
                sock = held.enter_context(open_stream(site.server.url, "/events", site.token(user)))
                assert status_of(sock) == 200
        silent = [held.enter_context(socket.create_connection(("127.0.0.1", site.server.port))) for _ in range(200)]
        assert len(silent) == 200
        # Everyone else is still served: the health check, a spawn, a listing.
        assert requests.get(site.server.url + "/healthz", timeout=10).status_code == 200
        other = site.token("bystander")
        spawned = requests.post(
            site.server.url + "/spawn", json={"image": "busybox"}, headers=bearer(other), timeout=10
        )
        assert spawned.status_code == 202, spawned.text
        assert requests.get(site.server.url + "/containers", headers=bearer(other), timeout=10).status_code == 200
        assert sum(site.slots(f"user:{u}") for u in users) == len(users) * PER_USER
    # Every one of them hung up: every slot is given back (noticed from the sockets' ends).
    wait_for(lambda: sum(site.slots(f"user:{u}") for u in users) == 0, 20, "every stream slot to be given back")


def test_a_users_streams_are_capped_across_processes(site: Site) -> None:
    token = site.token("greedy")
    with ExitStack() as held:
        for _ in range(PER_USER):  # spread over both gunicorn workers by the kernel
            assert status_of(held.enter_context(open_stream(site.server.url, "/events", token))) == 200
        refused = requests.get(site.server.url + "/events", headers=bearer(token), timeout=10)
        assert refused.status_code == 429
        assert refused.json()["code"] == "too_many_streams" and "STREAMS_PER_USER" in refused.json()["error"]
        assert int(refused.headers["Retry-After"]) >= 1
        also = requests.get(site.server.url + "/container/zzzzzzzzzzzz/events", headers=bearer(token), timeout=10)
        assert also.status_code == 429  # one cap for both kinds of stream
        # Another user is not affected.
        with open_stream(site.server.url, "/events", site.token("modest")) as other:
            assert status_of(other) == 200
        assert site.slots("user:greedy") == PER_USER
    # Hung up: the slots come back at once, and the user may stream again.
    wait_for(lambda: site.slots("user:greedy") == 0, 10, "greedy's slots to be given back")
    with open_stream(site.server.url, "/events", token) as again:
        assert status_of(again) == 200


def test_streams_hold_no_redis_connection_of_their_own(site: Site) -> None:
    redis = site.stack.store.redis
    channel = site.stack.store.events_channel
    with ExitStack() as held:
        for i in range(40):
            sock = held.enter_context(open_stream(site.server.url, "/events", site.token(f"quiet{i % 4}")))
            assert status_of(sock) == 200
        # One subscription per API process (the hub), however many streams are open.
        subscribers = dict(redis.pubsub_numsub(channel))[channel]
        assert 1 <= subscribers <= site.server.workers, subscribers


def test_silent_and_trickling_clients_are_dropped(site: Site) -> None:
    with ExitStack() as held:
        silent = [held.enter_context(socket.create_connection(("127.0.0.1", site.server.port))) for _ in range(50)]
        trickle = held.enter_context(socket.create_connection(("127.0.0.1", site.server.port)))
        trickle.sendall(b"GET /healthz HTTP/1.1\r\nHost: api\r\n")
        # One more header byte a second: the request never completes, and the server hangs up on it.
        dropped, deadline = False, time.monotonic() + REQUEST_TIMEOUT + 10
        while not dropped and time.monotonic() < deadline:
            try:
                trickle.sendall(b"X")
                readable, _, _ = select.select([trickle], [], [], 1.0)
                dropped = (bool(readable) and trickle.recv(100) in (b"",)) or bool(readable)
            except OSError:
                dropped = True
        assert dropped, "a request trickled out a byte a second was never dropped"
        for sock in silent:  # a silent client holds nothing either: the server closed each one
            sock.settimeout(10)
            assert sock.recv(1) == b""
    assert requests.get(site.server.url + "/healthz", timeout=10).status_code == 200


def test_per_address_caps_for_anonymous_streams(stack_factory: Any, tmp_path: Any) -> None:
    stack = stack_factory("anonstreams", worker=False, STREAMS_PER_ADDRESS=PER_ADDRESS)
    server = ApiServer(stack.env, tmp_path / "api.log")
    server.start()
    try:
        with ExitStack() as held:
            for _ in range(PER_ADDRESS):
                assert status_of(held.enter_context(open_stream(server.url, "/events"))) == 200
            refused = requests.get(server.url + "/events", timeout=10)
            assert refused.status_code == 429 and "STREAMS_PER_ADDRESS" in refused.json()["error"]
            # Another client address (all of 127.0.0.0/8 is this machine's loopback) is its own count.
            with open_stream(server.url, "/events", source="127.0.0.2") as elsewhere:
                assert status_of(elsewhere) == 200
    finally:
        server.stop()
