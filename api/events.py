"""Server-Sent Events: live notebook changes, driven by Redis pub/sub (the API never polls).

- ``GET /container/<hostname>/events``: one notebook. Starts with its current state (a client
  that connects late sees where it is), then every change, and ends by itself once the notebook
  settles (ready, failed or removed), or after ``START_TIMEOUT * 2 + 60`` seconds.
- ``GET /events``: every notebook's changes (the /manage page), for at most ``EVENTS_LIFETIME``
  seconds (10 minutes); browsers' EventSource reconnects by itself.

Each event is one SSE message::

    event: <stage>
    data: {"hostname": "...", "status": "STARTING", "stage": "starting", "message": "...", "record": {...}}

``stage`` is one of :data:`STAGES`. Record changes (``queued``, ``starting``, ``ready``, ``failed``,
``stopping``, ``removed``) carry the record and its ``status``; the workers' progress within a
status (``pulling``, ``pulled``, ``creating``, ``waiting``) has ``"status": null`` and ``"record": null``;
``pulling`` also has ``progress``: the pull's bytes and layers, done and in total. Both streams send
a comment line (``: keep-alive``) every ``EVENTS_HEARTBEAT`` seconds (15) so proxies keep them open.

A stream holds no Redis connection of its own: it follows the process's one subscription
through ``api/hub.py``, and blocks only on its own queue (a greenlet under gunicorn's gevent
worker). Each caller may hold STREAMS_PER_USER streams at once (STREAMS_PER_ADDRESS per client
address when nobody is signed in), counted across every API process (``shared/streams.py``);
one more is ``429`` with ``Retry-After``. A stream ends, and gives its slot back, at once when
its client hangs up, when the token or session that opened it is revoked, or when its client
stops reading for ``WRITE_TIMEOUT`` seconds. If Redis is away when a stream is asked for, the
answer is the usual 503 JSON error, before any streaming starts.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from flask import Blueprint, Response, current_app, request, stream_with_context
from flask.typing import ResponseReturnValue

from api import auth
from api.hub import Closed, Hub, Listener, close_when_gone
from api.routes import checked_hostname, link, secrets_visibility, settings, store
from shared.errors import StoreUnavailable, TooManyStreams
from shared.notebook_token import FIELD as TOKEN_FIELD
from shared.public_url import notebook_url
from shared.record import Notebook
from shared.status import Status
from shared.store import Event

log = logging.getLogger(__name__)

bp = Blueprint("events", __name__)

#: Seconds between keep-alive comments (app config ``EVENTS_HEARTBEAT``).
HEARTBEAT = 15.0
#: Seconds /events stays open (app config ``EVENTS_LIFETIME``).
ALL_LIFETIME = 600.0
#: Milliseconds a browser waits before reconnecting a stream that ended.
RETRY_MS = 3000
#: Seconds a write to a stream's client may block (a client that stopped reading) before it is dropped.
WRITE_TIMEOUT = 30.0
#: The Retry-After of a 429 for too many open streams: a hint, a slot frees when one of them ends.
STREAMS_RETRY_AFTER = 10

#: The stage each record status is reported as.
STAGE_OF: dict[Status, str] = {
    Status.PENDING: "queued",
    Status.STARTING: "starting",
    Status.ACTIVE: "ready",
    Status.FAILED: "failed",
    Status.DELETING: "stopping",
    Status.REMOVED: "removed",
}
#: Every stage, in the order a notebook's life goes through them.
STAGES = ("queued", "pulling", "pulled", "creating", "starting", "waiting", "ready", "failed", "stopping", "removed")


def message_for(record: Notebook) -> str:
    """What a record's status means, in words for the person watching."""
    status = record.status
    if status is Status.PENDING:
        return "queued: waiting for a worker"
    if status is Status.STARTING:
        where = f" on {record.node}" if record.node else ""
        return f"starting: the container runs{where}"
    if status is Status.ACTIVE:
        return f"ready at {link(record.hostname, record.domainname)}"
    if status is Status.FAILED:
        return f"failed: {record.error or 'no reason given'}"
    if status is Status.DELETING:
        return "stopping" + (f": {record.error}" if record.error else "")
    return "removed"


def record_message(record: Notebook, sees: Callable[[str], bool]) -> str:
    """The SSE message for a record event. Every one carries ``public_url`` (PUBLIC_URL's address,
    no secret in it); ``ready`` also carries ``notebook_url`` with the token for a caller who may
    see it (the owner, admins: ``sees``, as on every other route), read when the event is sent."""
    public = link(record.hostname, record.domainname)
    data: dict[str, Any] = {
        "hostname": record.hostname,
        "status": record.status.value,
        "stage": STAGE_OF[record.status],
        "message": message_for(record),
        "public_url": public,
        "record": record.to_json(),
    }
    if record.status is Status.ACTIVE and sees(record.user):
        data["notebook_url"] = notebook_url(public, store().internal(record.hostname, TOKEN_FIELD) or "")
    return sse(STAGE_OF[record.status], data)


def progress_message(event: Event) -> str:
    data: dict[str, Any] = {
        "hostname": event.hostname,
        "status": None,
        "stage": event.stage,
        "message": event.message,
        "record": None,
    }
    if event.detail:  # a pull's numbers: bytes done and total, layers done and total
        data["progress"] = event.detail
    return sse(event.stage or "progress", data)


def sse(name: str, data: dict[str, Any]) -> str:
    # json.dumps escapes newlines inside strings, so the data is one line; the name is ours.
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


def follow(listener: Listener, lifetime: float, heartbeat: float) -> Iterator[Event | None]:
    """Events as they are published, and None each time a keep-alive is due, for ``lifetime`` seconds.

    Raises Closed when the listener is closed under it (the client left, its token was revoked,
    the hub lost Redis)."""
    now = time.monotonic()
    end, beat = now + lifetime, now + heartbeat
    while (now := time.monotonic()) < end:
        event = listener.get(timeout=min(beat, end) - now)
        if event is not None:
            yield event
        if time.monotonic() >= beat:
            yield None
            beat = time.monotonic() + heartbeat


def one_notebook(listener: Listener, record: Notebook, lifetime: float, heartbeat: float) -> Iterator[str]:
    sees = secrets_visibility()
    try:
        yield f"retry: {RETRY_MS}\n\n"
        yield record_message(record, sees)
        if record.settled:
            return
        # The listener was registered before the record was read, so a change made around that
        # read arrives again: skip the record exactly as already sent.
        last = (record.status, record.updated_at)
        for event in follow(listener, lifetime, heartbeat):
            if event is None:
                yield ": keep-alive\n\n"
            elif event.record is None:
                yield progress_message(event)
            elif (event.record.status, event.record.updated_at) != last:
                last = (event.record.status, event.record.updated_at)
                yield record_message(event.record, sees)
                if event.record.settled:
                    return
        yield ": time limit reached; reconnect to follow on\n\n"
    except (Closed, StoreUnavailable) as exc:
        log.info("%s: events stream ended: %s", record.hostname, exc)
        yield f": {exc}\n\n"
    finally:
        listener.close()


def every_notebook(listener: Listener, lifetime: float, heartbeat: float) -> Iterator[str]:
    """The events of every notebook the listener follows (the hub routes by owner: a user token's
    stream gets only its own notebooks')."""
    sees = secrets_visibility()
    try:
        yield f"retry: {RETRY_MS}\n\n"
        yield ": connected\n\n"  # sends the headers now, so the client knows it is listening
        for event in follow(listener, lifetime, heartbeat):
            if event is None:
                yield ": keep-alive\n\n"
            elif event.record is None:
                yield progress_message(event)
            else:
                yield record_message(event.record, sees)
        yield ": time limit reached; reconnect to follow on\n\n"
    except (Closed, StoreUnavailable) as exc:
        log.info("events stream ended: %s", exc)
        yield f": {exc}\n\n"
    finally:
        listener.close()


def stream(body: Iterator[str], listener: Listener) -> Response:
    response = current_app.response_class(stream_with_context(body), mimetype="text/event-stream")
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    # Also when the client is gone before the body was first read (the generator never ran).
    response.call_on_close(listener.close)
    sock = request.environ.get("gunicorn.socket")
    if sock is not None:
        # A client that stops reading blocks the stream's writes: give up on it after a while.
        sock.settimeout(WRITE_TIMEOUT)
        close_when_gone(sock, listener)
    return response


def heartbeat() -> float:
    return float(current_app.config.get("EVENTS_HEARTBEAT", HEARTBEAT))


def hub() -> Hub:
    return current_app.extensions["hub"]


def open_listener(**interest: Any) -> Listener:
    """Take one of the caller's stream slots (429 over STREAMS_PER_USER / STREAMS_PER_ADDRESS),
    then follow ``interest`` through this process's hub (503 when Redis is away)."""
    owner = take_slot()
    try:
        return follow_as(owner, **interest)
    except BaseException:
        hub().slots.release(owner)
        raise


def take_slot() -> str:
    """Take one of the caller's stream slots (429 over STREAMS_PER_USER / STREAMS_PER_ADDRESS,
    ``api/auth.py`` says which); return the owner it counts against, for :func:`follow_as`."""
    owner, what = auth.stream_owner()
    cap = settings().streams_per_address if what == "STREAMS_PER_ADDRESS" else settings().streams_per_user
    try:
        taken = hub().slots.acquire(owner, cap)
    except redis.RedisError as exc:
        raise StoreUnavailable(f"Redis is unavailable: {exc}") from exc
    if not taken:
        raise TooManyStreams(
            f"too many open event streams: {cap} at once ({what}); close one, or wait for one to end",
            retry_after=STREAMS_RETRY_AFTER,
            limit="streams",
        )
    return owner


def follow_as(owner: str, **interest: Any) -> Listener:
    """Follow ``interest`` through this process's hub, holding ``owner``'s slot (given back when
    the listener closes; "" holds none). The caller's credentials end it when they are revoked."""
    who = auth.caller()
    return hub().open(who=owner, token_id=who.token_id, session_id=who.session_id, **interest)


@bp.get("/container/<hostname>/events", strict_slashes=False)
@auth.policy(auth.NOTEBOOK)
@auth.stream
def container_events(hostname: str) -> ResponseReturnValue:
    hostname = checked_hostname(hostname)
    listener = open_listener(hostname=hostname)  # before reading the record: no later change is missed
    try:
        record = auth.check_visible(store().require(hostname))  # another user's: 404
    except BaseException:
        listener.close()
        raise
    lifetime = float(current_app.config.get("CONTAINER_EVENTS_LIFETIME", settings().start_timeout * 2 + 60))
    return stream(one_notebook(listener, record, lifetime, heartbeat()), listener)


@bp.get("/events", strict_slashes=False)
@auth.stream
def all_events() -> ResponseReturnValue:
    who = auth.caller()
    # The admin follows every notebook; a user token only its own (routed by owner in the hub).
    listener = open_listener(everything=True) if who.is_admin else open_listener(user=who.user or "")
    lifetime = float(current_app.config.get("EVENTS_LIFETIME", ALL_LIFETIME))
    return stream(every_notebook(listener, lifetime, heartbeat()), listener)
