"""Thebe, Binder and tmpnb clients: the launch APIs they speak, served by swarm-manager.

- ``GET /build/<provider>/<spec>``: BinderHub's launch API (what thebe's Binder mode, Jupyter Book
  and MyST sites open with an ``EventSource``). The operator maps specs to images in PROFILES_FILE's
  ``binder`` list (``shared/profiles.py``). The answer is always an event stream in BinderHub's
  format: unnamed ``data:`` messages, each a JSON object with a ``phase`` and a ``message``:
  ``built`` (the spec's image is known), ``launching`` (our stages: queued, creating, starting,
  waiting), then ``ready`` with ``url`` (the notebook's PUBLIC_URL address) and ``token``, or
  ``failed`` with the reason (and ``status_code`` when an HTTP status says it better: 404 for a spec
  nobody mapped, 403 for an image not allowed, 429 over a limit). The stream ends after ``ready``
  or ``failed``; a ``: keepalive`` comment goes out every EVENTS_HEARTBEAT seconds meanwhile. A
  pooled image is ready at once.
- ``POST /api/spawn/``: tmpnb's spawn (the 2015 Thebe): a JSON body whatever its content type
  (``text/plain`` spares a CORS preflight) or a form, ``image_name`` or ``image``, no ``user``
  needed. It answers once the notebook is ACTIVE (at once from the pool; else it waits up to
  START_TIMEOUT) with ``{"url": "<full public URL>", ...the record, token}``; ``"wait": false``
  answers at once (202) and the client follows ``/container/<hostname>/events?token=<token>``.
  Over a limit it is 429 ``{"status": "full", ...}``, as tmpnb said.

Who may launch what is decided in ``api/auth.py`` (:func:`~api.auth.launch_as`: a user token for
its user, the admin for whom it names, anyone else anonymously, within ANONYMOUS_IMAGES);
anonymous limits are counted in ``api/anonymous.py`` and by the store's quota script. The client
that launched a notebook gets its token in the launch's answer and nowhere else; with it, it may
read, follow and kill that notebook (its capability, ``?token=``). An anonymous launch whose client
goes away before it is ready is killed: nobody else could ever use it.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from flask import Blueprint, current_app, jsonify, request, stream_with_context, url_for
from flask.typing import ResponseReturnValue

from api import auth, events, routes
from api.anonymous import AnonymousLimits
from api.errors import LaunchFailed, LaunchTimedOut, error_response
from api.hub import Closed, close_when_gone
from api.models import SPAWN_FIELDS
from api.routes import (
    allowlist,
    form_fields,
    lifetime,
    link,
    profiles,
    public_record,
    queue,
    quota,
    settings,
    start_notebook,
    store,
)
from shared.errors import (
    InvalidInput,
    InvalidTransition,
    NotFound,
    QueueUnavailable,
    QuotaExceeded,
    StoreUnavailable,
    SwarmManagerError,
    UnsupportedMediaType,
)
from shared.limits import Quota
from shared.notebook_token import FIELD as TOKEN_FIELD
from shared.pool import ANONYMOUS_USER
from shared.record import Notebook
from shared.status import Status
from shared.store import Event
from shared.validation import validate_image, validate_ttl, validate_user

log = logging.getLogger(__name__)

bp = Blueprint("binder", __name__)

#: The HTTP status each kind of refusal would have had, for a ``failed`` event's ``status_code``.
STATUS_CODE = {"unauthorized": 401, "forbidden": 403, "image_not_allowed": 403, "not_found": 404}

#: How a stage the workers report reads in a launch's events (BinderHub's phases).
PHASE_OF_STATUS = {
    Status.PENDING: "launching",
    Status.STARTING: "launching",
    Status.ACTIVE: "ready",
    Status.FAILED: "failed",
    Status.DELETING: "failed",
    Status.REMOVED: "failed",
}


# -- launching ---------------------------------------------------------------------------------
def anonymous_limits() -> AnonymousLimits:
    limits = current_app.extensions.get("anonymous_limits")
    if limits is None:
        s = settings()
        # An anonymous notebook is counted until it ends: at most its lifetime, its start, a cull's delay.
        keys_live = s.anonymous_max_age + 2 * s.start_timeout + 2 * s.reconcile_interval + 60
        limits = AnonymousLimits(
            store().redis, store().prefix, s.anonymous_per_address, s.anonymous_spawn_rate, keys_live
        )
        current_app.extensions["anonymous_limits"] = limits
    return limits


def launch(
    image: object,
    user: object = None,
    ttl: object = None,
    *,
    profile: object = None,
    mem_limit: object = None,
    cpu_limit: object = None,
    operators_profile: str = "",
) -> tuple[Notebook, str, auth.Launch]:
    """Launch ``image`` for whom :func:`api.auth.launch_as` says; the record, its token, the launch.

    ``profile`` and the limits are the client's choice (as on ``POST /spawn``), ``operators_profile``
    a Binder entry's. An anonymous launch chooses nothing: it runs the image's own profile or the
    entry's, lives at most ANONYMOUS_MAX_AGE, and takes a slot of its address's
    (ANONYMOUS_PER_ADDRESS, ANONYMOUS_SPAWN_RATE) and of ANONYMOUS_MAX_NOTEBOOKS, or is 429.
    """
    who = auth.launch_as(user)
    image = validate_image(image)
    auth.check_launch_image(who, image)  # 403 (or 401) with the reason
    allowlist().check(image)
    chosen = operators_profile or profile
    if not who.anonymous:
        user_ = validate_user(who.user)
        record, token = start_notebook(image, user_, lifetime(validate_ttl(ttl)), chosen, mem_limit, cpu_limit, quota())
        return record, token if token is not None else store().internal(record.hostname, TOKEN_FIELD) or "", who
    if any(v not in (None, "") for v in (profile, mem_limit, cpu_limit)):
        raise InvalidInput("a launch without a user runs the image's own profile and limits: leave them out")
    s = settings()
    life = min(lifetime(validate_ttl(ttl)) or math.inf, s.anonymous_max_age)
    reservation = anonymous_limits().reserve(who.address)  # 429 over the address's limits
    try:
        limits = Quota(max_total=s.max_notebooks, max_per_user=s.anonymous_max_notebooks)
        record, token = start_notebook(image, ANONYMOUS_USER, life, chosen, None, None, limits)
    except QuotaExceeded as exc:
        reservation.release()
        if exc.limit == "user":  # ANONYMOUS_USER's own limit is ANONYMOUS_MAX_NOTEBOOKS
            raise QuotaExceeded(
                f"the service runs its most anonymous notebooks at once ({s.anonymous_max_notebooks}, "
                "ANONYMOUS_MAX_NOTEBOOKS); try again later",
                exc.retry_after,
                "anonymous_total",
            ) from None
        raise
    except BaseException:
        reservation.release()
        raise
    reservation.commit(record.hostname)
    log.info("%s: anonymous launch of %s from %s", record.hostname, image, who.address)
    return record, token if token is not None else store().internal(record.hostname, TOKEN_FIELD) or "", who


def server_url(record: Notebook) -> str:
    """The notebook's public address as Jupyter clients join paths to it: ending in ``/``."""
    parts = urlsplit(link(record.hostname, record.domainname))
    return urlunsplit(parts._replace(path=parts.path if parts.path.endswith("/") else parts.path + "/"))


def abandon(hostname: str, reason: str, store_: Any, queue_: Any) -> None:
    """Kill a launched notebook whose client can no longer use it (it left, or gave up waiting).

    Takes the store and queue (not the app's), since a stream's generator may run this as its
    response closes."""
    try:
        store_.transition(hostname, Status.DELETING, error=reason)
        queue_.kill(hostname)
    except (InvalidTransition, NotFound):
        return  # settled meanwhile (the reconciler culls what is left ACTIVE by its lifetime)
    except (StoreUnavailable, QueueUnavailable) as exc:
        log.warning("%s: could not kill an abandoned launch (the reconciler will): %s", hostname, exc)
        return
    log.info("%s: %s", hostname, reason)


# -- GET /build/<provider>/<spec> (BinderHub) -----------------------------------------------------
def binder_event(data: dict[str, Any]) -> str:
    """One of BinderHub's messages: an unnamed SSE event (``EventSource.onmessage``)."""
    return f"data: {json.dumps(data)}\n\n"


def failed(message: str, status_code: int | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"phase": "failed", "message": message.rstrip("\n") + "\n"}
    if status_code is not None:
        data["status_code"] = status_code
    return data


def failed_for(exc: SwarmManagerError) -> dict[str, Any]:
    code = STATUS_CODE.get(exc.code)
    if isinstance(exc, QuotaExceeded):
        code = 429
    elif isinstance(exc, (StoreUnavailable, QueueUnavailable)):
        code = 503
    return failed(str(exc), code if code is not None else 400)


def event_stream(body: Iterator[str], listener: Any = None) -> ResponseReturnValue:
    response = current_app.response_class(stream_with_context(body), mimetype="text/event-stream")
    response.headers["X-Accel-Buffering"] = "no"
    if listener is not None:
        response.call_on_close(listener.close)
        sock = request.environ.get("gunicorn.socket")
        if sock is not None:
            sock.settimeout(events.WRITE_TIMEOUT)
            close_when_gone(sock, listener)
    return response


@bp.get("/build/<provider>/<path:spec>", merge_slashes=False)
@auth.policy(auth.LAUNCH)
def build(provider: str, spec: str) -> ResponseReturnValue:
    """BinderHub's launch: every answer is an event stream, errors too (an EventSource cannot read
    an HTTP error), as BinderHub's own."""
    if request.method == "HEAD":
        return event_stream(iter([]))  # a HEAD (a link checker) launches nothing
    owner = ""
    try:
        entry = profiles().for_binder(provider, spec)
        if entry is None:
            raise NotFound(f"no image for {provider}/{spec.rstrip('/')[:200]} here (not in this service's binder list)")
        owner = events.take_slot()  # before the launch: a client over its stream cap starts nothing
        record, token, who = launch(entry.image, operators_profile=entry.profile)
    except SwarmManagerError as exc:
        if owner:
            events.hub().slots.release(owner)
        return event_stream(iter([binder_event(failed_for(exc))]))
    built = binder_event({"phase": "built", "message": "Found built image, launching...\n", "imageName": record.image})
    if record.status is Status.ACTIVE:  # from the warm pool: ready at once, nothing to follow
        events.hub().slots.release(owner)
        return event_stream(iter([built, binder_event(ready(record, token))]))
    try:
        listener = events.follow_as(owner, hostname=record.hostname)
        current = store().require(record.hostname)  # after following: no later change is missed
    except SwarmManagerError as exc:
        events.hub().slots.release(owner)
        if who.anonymous:
            abandon(record.hostname, "abandoned: its launch could not be followed", store(), queue())
        return event_stream(iter([built, binder_event(failed_for(exc))]))
    limit = float(current_app.config.get("CONTAINER_EVENTS_LIFETIME", settings().start_timeout * 2 + 60))
    body = follow_launch(listener, current, token, who, limit, events.heartbeat(), store(), queue())
    return event_stream(itertools.chain([built], body), listener)


def ready(record: Notebook, token: str) -> dict[str, Any]:
    url = server_url(record)
    return {
        "phase": "ready",
        "message": f"server running at {url}\n",
        "url": url,
        "token": token,
        "image": record.image,
        "hostname": record.hostname,
    }


def follow_launch(
    listener: Any,
    record: Notebook,
    token: str,
    who: auth.Launch,
    limit: float,
    heartbeat: float,
    store_: Any,
    queue_: Any,
) -> Iterator[str]:
    """The launch's events, from ``record`` as read, until it is ready or failed (``limit`` s at most)."""
    delivered = False
    try:
        yield binder_event({"phase": "launching", "message": "Launching server...\n"})
        last: tuple[Status, str] | None = None
        for item in itertools.chain([record], events.follow(listener, limit, heartbeat)):
            if item is None:
                yield ": keepalive\n\n"
                continue
            if isinstance(item, Event):
                if item.record is None:  # the workers' progress within a stage
                    yield binder_event({"phase": "launching", "message": item.message + "\n"})
                    continue
                item = item.record
            if (item.status, item.updated_at) == last:
                continue  # the record as read, arriving again as an event
            last = (item.status, item.updated_at)
            phase = PHASE_OF_STATUS[item.status]
            if phase == "ready":
                delivered = True
                yield binder_event(ready(item, token))
                return
            if phase == "failed":
                delivered = True  # nothing left to give back
                yield binder_event(failed(f"the notebook did not start: {item.error or 'stopped before it was ready'}"))
                return
            yield binder_event({"phase": "launching", "message": events.message_for(item) + "\n"})
        yield binder_event(failed(f"the notebook was not ready within {limit:g}s", 504))
    except (Closed, StoreUnavailable) as exc:
        log.info("%s: launch stream ended: %s", record.hostname, exc)
    finally:
        listener.close()
        if not delivered and who.anonymous:
            abandon(record.hostname, "abandoned: its launch's client left before it was ready", store_, queue_)


# -- POST /api/spawn/ (tmpnb) ------------------------------------------------------------------------
def tmpnb_input() -> dict[str, Any]:
    """tmpnb's request: a JSON object whatever the content type says (the 2015 Thebe sends
    ``text/plain`` to spare a CORS preflight), or a form; ``image_name`` is ``image``."""
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        data: Any = form_fields((*SPAWN_FIELDS, "image_name", "wait"))
    else:
        raw = request.get_data(cache=True)
        if not raw.strip():
            data = {}
        else:
            try:
                data = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                raise UnsupportedMediaType(
                    'send a JSON object (any content type) or a form, e.g. {"image_name": ...}'
                ) from None
            if not isinstance(data, dict):
                raise InvalidInput('the body must be a JSON object, e.g. {"image_name": ...}')
    alias = data.pop("image_name", None)
    data["_first_api"] = alias is None and data.get("user") not in (None, "")
    if alias is not None:
        if data.get("image") not in (None, alias):
            raise InvalidInput("image and image_name name different images; give one")
        data["image"] = alias
    if data.get("image") in (None, "") and not data["_first_api"]:
        raise InvalidInput("image is required (image_name, as tmpnb calls it, or image)")
    return dict(data)


def wants_wait(value: object) -> bool:
    if value is None or value is True:
        return True
    if value is False or (isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off")):
        return False
    if isinstance(value, str) and value.strip().lower() in ("", "1", "true", "yes", "on"):
        return True
    raise InvalidInput("wait must be true or false")


@auth.policy(auth.LAUNCH)
def tmpnb_spawn() -> ResponseReturnValue:
    """tmpnb's ``POST /api/spawn/`` (the view of the ``/api/spawn`` route: see ``api/__init__.py``).

    A request that names a ``user`` and no ``image_name`` is no tmpnb client's (tmpnb had no users):
    it is the first API's spawn, which this route served before, answered as ``POST /spawn`` answers it.
    """
    data = tmpnb_input()
    if data.pop("_first_api", False):
        return routes.spawn()
    wait = wants_wait(data.get("wait"))
    try:
        record, token, who = launch(
            data.get("image"),
            data.get("user"),
            data.get("ttl"),
            profile=data.get("profile"),
            mem_limit=data.get("mem_limit"),
            cpu_limit=data.get("cpu_limit"),
        )
    except QuotaExceeded as exc:
        response, status = error_response(429, exc.code, str(exc))
        response.set_data(json.dumps({"status": "full", "error": str(exc), "code": exc.code}))
        response.headers["Retry-After"] = str(exc.retry_after)
        return response, status
    if wait and record.status is not Status.ACTIVE:
        record = wait_until_ready(record, who)
    out = public_record(record, token, launched=True)
    out["url"] = server_url(record)  # tmpnb's url: the full address (the first API's ``url`` is host only)
    response = jsonify(out)
    response.status_code = 200 if record.status is Status.ACTIVE else 202
    response.headers["Location"] = url_for("api.container", hostname=record.hostname)
    return response


def wait_until_ready(record: Notebook, who: auth.Launch) -> Notebook:
    """Wait (at most START_TIMEOUT) for ``record`` to be ACTIVE; raise LaunchFailed or LaunchTimedOut."""
    limit = settings().start_timeout
    listener = events.follow_as("", hostname=record.hostname)  # no stream slot: this is one request
    sock = request.environ.get("gunicorn.socket")
    if sock is not None:
        close_when_gone(sock, listener)
    try:
        current = store().require(record.hostname)  # after following: no later change is missed
        deadline = time.monotonic() + limit
        while current.status in (Status.PENDING, Status.STARTING):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if who.anonymous:
                    abandon(record.hostname, "abandoned: not ready within START_TIMEOUT", store(), queue())
                raise LaunchTimedOut(
                    f"{record.hostname} was not ready within {limit:g}s (START_TIMEOUT); "
                    f"follow /container/{record.hostname}/events"
                )
            event = listener.get(timeout=remaining)
            if event is not None and event.record is not None:
                current = event.record
    except Closed:
        if who.anonymous:
            abandon(record.hostname, "abandoned: its launch's client left before it was ready", store(), queue())
        raise LaunchFailed("the launch's client went away") from None
    finally:
        listener.close()
    if current.status is not Status.ACTIVE:
        raise LaunchFailed(f"{record.hostname} did not start: {current.error or current.status.value}")
    return current
