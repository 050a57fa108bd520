"""Server-Sent Events end to end: gunicorn on a real socket, Redis pub/sub, a real worker and engine.

The streams are read as a client reads them (``requests`` with ``stream=True``): every event the
tests see was pushed by the server while the test only waited on the socket.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import pytest
import requests

from api import create_app
from shared.settings import Settings
from shared.status import Status
from shared.store import PROGRESS_EVENT, Store, parse_event
from shared.streams import StreamSlots
from testkit.stack import base_env
from testkit.support import ApiServer, free_port, unique_instance, wait_for

MISSING_IMAGE = "swarm-manager-test/not-built:1"
READ_TIMEOUT = 40  # longer than the server's 15 s keep-alive: a silent stream is a broken one


@dataclass
class Message:
    event: str = "message"
    data: dict[str, Any] | None = None
    comments: list[str] = field(default_factory=list)


def parse_block(block: str) -> Message:
    msg, data = Message(), []
    for line in block.split("\n"):
        if line.startswith(":"):
            msg.comments.append(line[1:].strip())
        elif line.startswith("event:"):
            msg.event = line[len("event:") :].strip()
        elif line.startswith("data:"):
            data.append(line[len("data:") :].strip())
    if data:
        msg.data = json.loads("\n".join(data))
    return msg


def sse_messages(chunks: Iterator[bytes]) -> Iterator[Message]:
    """SSE messages (events and comment-only blocks; retry-only blocks dropped) as they arrive."""
    buf = ""
    for chunk in chunks:
        buf += chunk.decode()
        while "\n\n" in buf:
            block, buf = buf.split("\n\n", 1)
            msg = parse_block(block)
            if msg.data is not None or msg.comments:
                yield msg


class Stream:
    """One open SSE response, read with deadlines."""

    def __init__(self, url: str) -> None:
        self.response = requests.get(url, stream=True, timeout=(5, READ_TIMEOUT))
        self._messages = sse_messages(self.response.iter_content(chunk_size=None))
        self.ended = False

    def next_event(self, deadline: float) -> Message | None:
        """The next event (comments skipped); None when the server ended the stream."""
        for msg in self._messages:
            if msg.data is not None:
                return msg
            assert time.monotonic() < deadline, "no event before the deadline"
        self.ended = True
        return None

    def events_until(self, stop: Any, timeout: float, hostname: str | None = None) -> list[Message]:
        """Events (for ``hostname`` if given) up to and including the first for which ``stop`` is true."""
        deadline = time.monotonic() + timeout
        seen: list[Message] = []
        while True:
            msg = self.next_event(deadline)
            assert msg is not None, f"the stream ended early; saw {[m.event for m in seen]}"
            assert msg.data is not None
            if hostname and msg.data["hostname"] != hostname:
                continue
            seen.append(msg)
            if stop(msg):
                return seen
            assert time.monotonic() < deadline, f"timed out; saw {[m.event for m in seen]}"

    def rest(self, timeout: float) -> list[Message]:
        """Every remaining event until the server ends the stream (it must, within ``timeout``)."""
        deadline = time.monotonic() + timeout
        out = []
        while (msg := self.next_event(deadline)) is not None:
            out.append(msg)
        assert time.monotonic() < deadline + 1, "the stream did not end in time"
        return out

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture(scope="module")
def api(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    server = ApiServer(stack.worker.env, tmp_path_factory.mktemp("events-api") / "gunicorn.log")
    server.start()
    yield server
    server.stop()


def open_streams(stack: Any) -> int:
    """Stream slots held in Redis (shared/streams.py), across every API process of the stack."""
    slots = StreamSlots(stack.store.redis, stack.store.prefix)
    keys = stack.store.redis.scan_iter(match=f"{stack.store.prefix}streams:*", count=1000)
    return sum(slots.count(key.removeprefix(f"{stack.store.prefix}streams:")) for key in keys)


def no_streams_left(stack: Any, within: float = 10) -> None:
    """Every stream has ended and given its slot back (at once when its client hangs up)."""
    wait_for(lambda: open_streams(stack) == 0, within, "every stream to give its slot back", interval=0.1)


def names(messages: list[Message]) -> list[str]:
    return [m.event for m in messages]


def test_spawn_reports_every_stage_in_order_and_ends_when_ready(
    api: ApiServer, stack: Any, images: dict[str, str]
) -> None:
    # Record first, then enqueue (what POST /spawn does), with the stream opened in between so
    # the test sees the notebook from its first stage whatever the worker's speed.
    record = stack.store.create(
        image=images["httpd"],
        user="watcher",
        domain=stack.settings.domain,
        internal={"queue_deadline": str(time.time() + stack.settings.start_timeout)},
    )
    hostname = record.hostname
    stack.created.append(hostname)
    with Stream(f"{api.url}/container/{hostname}/events") as stream:
        assert stream.response.status_code == 200
        assert stream.response.headers["Content-Type"].startswith("text/event-stream")
        assert stream.response.headers["Cache-Control"] == "no-store"  # a ready event carries the token
        first = stream.next_event(time.monotonic() + 10)
        assert first is not None and first.data is not None
        assert (first.event, first.data["status"], first.data["stage"]) == ("queued", "PENDING", "queued")
        assert first.data["record"]["hostname"] == hostname
        assert open_streams(stack) == 1  # the stream holds one slot while it is open

        stack.app.extensions["queue"].spawn(hostname)
        rest = stream.rest(timeout=60)  # ends by itself once ACTIVE

    assert names([first, *rest]) == ["queued", "creating", "starting", "waiting", "ready"], [m.data for m in rest]
    by_stage = {m.event: m.data for m in rest if m.data}
    assert by_stage["creating"]["message"] == "creating and starting the container"
    assert by_stage["creating"]["status"] is None and by_stage["creating"]["record"] is None
    assert by_stage["starting"]["status"] == "STARTING"
    port = stack.settings.notebook_port
    assert by_stage["waiting"]["message"] == f"waiting for the notebook to answer on port {port}"
    ready = by_stage["ready"]
    assert ready["status"] == "ACTIVE" and ready["hostname"] == hostname
    assert ready["message"] == f"ready at http://{hostname}.nb.test/"
    assert ready["record"]["url"] == f"{hostname}.nb.test"
    assert ready["record"]["address"].startswith("http://")
    assert stack.record(hostname).status == Status.ACTIVE
    no_streams_left(stack)


def test_failed_spawn_reports_the_reason_and_ends(api: ApiServer, stack: Any) -> None:
    with Stream(f"{api.url}/events") as everything:
        spawned = requests.post(f"{api.url}/spawn", data={"image": MISSING_IMAGE, "user": "typo"}, timeout=10)
        assert spawned.status_code == 202
        hostname = spawned.json()["hostname"]
        stack.created.append(hostname)

        with Stream(f"{api.url}/container/{hostname}/events") as one:
            seen = one.rest(timeout=60)
        # Wherever it joined (it may have missed "creating", which changes no record), the
        # notebook's own stream is in order and ends with the failure.
        assert names(seen) in (["queued", "creating", "failed"], ["queued", "failed"], ["failed"]), names(seen)
        failed = seen[-1].data
        assert failed is not None and failed["status"] == "FAILED"
        assert failed["message"].startswith("failed: ") and "not present" in failed["message"], failed
        assert failed["record"]["error"] in failed["message"]

        # The all-notebooks stream saw every stage of it.
        mine = everything.events_until(lambda m: m.event == "failed", 60, hostname=hostname)
        # The image is in no registry: its pull fails before anything is created.
        assert names(mine) == ["queued", "failed"]
    no_streams_left(stack)


def test_kill_streams_stopping_then_removed_on_all_events(api: ApiServer, stack: Any, images: dict[str, str]) -> None:
    hostname = stack.spawn(images["httpd"], user="leaver")
    assert stack.wait(hostname, {Status.ACTIVE, Status.FAILED}).status == Status.ACTIVE
    with Stream(f"{api.url}/events") as everything:
        assert requests.delete(f"{api.url}/container/{hostname}", timeout=10).status_code == 202
        mine = everything.events_until(lambda m: m.event == "removed", 60, hostname=hostname)
    assert names(mine) == ["stopping", "removed"]
    assert mine[0].data and mine[0].data["status"] == "DELETING" and mine[0].data["message"] == "stopping"
    assert mine[1].data and mine[1].data["status"] == "REMOVED" and mine[1].data["message"] == "removed"
    no_streams_left(stack)


def test_late_subscriber_gets_ready_at_once_and_the_stream_ends(
    api: ApiServer, stack: Any, images: dict[str, str]
) -> None:
    hostname = stack.spawn(images["httpd"], user="latecomer")
    assert stack.wait(hostname, {Status.ACTIVE, Status.FAILED}).status == Status.ACTIVE
    started = time.monotonic()
    for path in (f"/container/{hostname}/events", f"/api/container/{hostname}/events"):
        with Stream(api.url + path) as stream:
            seen = stream.rest(timeout=10)
        assert names(seen) == ["ready"]
        assert seen[0].data and seen[0].data["record"]["status"] == "ACTIVE"
    assert time.monotonic() - started < 5
    no_streams_left(stack)


@pytest.mark.parametrize("name", ["zzzzzzzzzzzz", "NOT-A-HOST"])
@pytest.mark.parametrize("prefix", ["", "/api"])
def test_unknown_hostname_is_404_json_not_a_stream(api: ApiServer, stack: Any, name: str, prefix: str) -> None:
    response = requests.get(f"{api.url}{prefix}/container/{name}/events", timeout=10)
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["code"] == "not_found"
    no_streams_left(stack)


def test_a_client_going_away_frees_its_stream_at_once(api: ApiServer, stack: Any) -> None:
    stream = Stream(f"{api.url}/events")
    assert stream.response.status_code == 200
    next(stream._messages)  # ": connected": the server is in the stream
    assert open_streams(stack) == 1
    stream.close()
    # Noticed from the socket's end, not at the next keep-alive (15 s away): well within that.
    no_streams_left(stack, within=10)


# -- in-process: keep-alives, time limits, Redis away -------------------------------------------
def read_all(response: Any, timeout: float) -> list[Message]:
    deadline = time.monotonic() + timeout
    out = []
    for msg in sse_messages(iter(response.response)):
        out.append(msg)
        assert time.monotonic() < deadline, "the stream did not end in time"
    response.close()
    return out


def test_keep_alives_and_the_time_limit(stack: Any) -> None:
    app = create_app(stack.settings, EVENTS_HEARTBEAT=0.2, EVENTS_LIFETIME=1.2, CONTAINER_EVENTS_LIFETIME=1.2)
    http = app.test_client()
    try:
        started = time.monotonic()
        everything = read_all(http.get("/events", buffered=False), timeout=10)
        assert 1.0 < time.monotonic() - started < 5
        comments = [c for m in everything for c in m.comments]
        assert comments[0] == "connected"
        assert comments.count("keep-alive") >= 3
        assert "time limit reached" in comments[-1]

        # A notebook that stays queued (nothing sent to the queue): its stream ends at the limit too.
        record = app.extensions["store"].create(image="busybox", user="waiter", domain="nb.test")
        one = read_all(http.get(f"/container/{record.hostname}/events", buffered=False), timeout=10)
        assert [m.event for m in one if m.data] == ["queued"]
        assert "time limit reached" in one[-1].comments[-1]
        no_streams_left(stack)
    finally:
        app.extensions["store"].redis.close()


@pytest.mark.parametrize("path", ["/events", "/container/ki60dje40khk/events", "/api/events"])
def test_redis_away_is_503_json_before_streaming(path: str) -> None:
    settings = Settings.from_env(base_env(f"redis://127.0.0.1:{free_port()}/0", unique_instance("events-down")))
    app = create_app(settings)
    try:
        response = app.test_client().get(path)
        assert response.status_code == 503
        assert response.mimetype == "application/json"
        assert response.get_json()["code"] == "store_unavailable"
        assert response.headers["Retry-After"] == "5"
    finally:
        app.extensions["store"].redis.close()


# -- the event format on the channel (fakeredis) ---------------------------------------------------
def test_progress_and_record_events_are_told_apart() -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    store = Store(client, prefix="fmt:")
    sub = store.subscribe()
    try:
        record = store.create(image="busybox", user="alice", domain="nb.test")
        assert store.progress(record.hostname, "creating", "creating and starting the container") is True
        store.transition(record.hostname, Status.STARTING)

        created, progress, starting = sub.get(2), sub.get(2), sub.get(2)
        assert sub.get(0.05) is None
    finally:
        sub.close()
    assert created is not None and created.record is not None and created.record.status is Status.PENDING
    assert progress is not None and progress.record is None
    assert (progress.hostname, progress.stage, progress.message) == (
        record.hostname,
        "creating",
        "creating and starting the container",
    )
    assert starting is not None and starting.record is not None and starting.record.status is Status.STARTING

    # On the wire: a progress event has "event": "progress"; a record event is the bare record.
    raw = json.loads(json.dumps({"event": PROGRESS_EVENT, "hostname": "h", "stage": "s", "message": "m"}))
    assert parse_event(json.dumps(raw)) is not None
    assert parse_event(json.dumps(record.to_json())) is not None
    for junk in ("", "not json", "[]", '{"event": "other", "hostname": "h"}', '{"hostname": 3}', '{"hostname": "h"}'):
        assert parse_event(junk) is None, junk


def test_progress_never_raises_when_redis_is_away() -> None:
    server = fakeredis.FakeServer()
    store = Store(fakeredis.FakeRedis(server=server, decode_responses=True), prefix="fmt:")
    server.connected = False
    assert store.progress("ki60dje40khk", "creating", "creating and starting the container") is False


def test_subscribe_when_redis_is_away_is_store_unavailable() -> None:
    from shared.errors import StoreUnavailable
    from shared.store import connect

    store = Store(connect(f"redis://127.0.0.1:{free_port()}/0"), prefix="fmt:")
    with pytest.raises(StoreUnavailable):
        store.subscribe()
