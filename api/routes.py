"""JSON routes: spawn, status, kill, list, health. The first API's paths and field names."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, current_app, jsonify, request, url_for
from flask.blueprints import BlueprintSetupState
from flask.typing import ResponseReturnValue

from api import auth
from api.fastjson import json_array_response
from api.models import MAX_LIFETIME, SPAWN_FIELDS, ContainersQuery, SpawnRequest, parse
from shared.errors import (
    InvalidInput,
    InvalidTransition,
    NotFound,
    QueueUnavailable,
    StoreUnavailable,
    Unauthorized,
    UnsupportedMediaType,
)
from shared.failover import Replication
from shared.limits import Allowlist, Quota
from shared.notebook_token import FIELD as TOKEN_FIELD
from shared.notebook_token import new_token, wanted
from shared.pool import Pool
from shared.profiles import Limits, Profiles
from shared.public_url import notebook_url, public_url
from shared.queue import Queue
from shared.record import Internal, Notebook, rfc3339
from shared.settings import Settings
from shared.status import KILLABLE, TERMINAL, Status
from shared.store import Store
from shared.validation import is_hostname

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__)

#: Where a record is once a kill was accepted: DELETING, or past it by the time the kill is confirmed.
KILLED = (Status.DELETING.value, *sorted(s.value for s in TERMINAL))


def store() -> Store:
    return current_app.extensions["store"]


def queue() -> Queue:
    return current_app.extensions["queue"]


def settings() -> Settings:
    return current_app.extensions["settings"]


def replicated(hostname: str, field: str = "status", allowed: tuple[str, ...] = ()) -> None:
    """Return once the write just accepted for ``hostname`` (the record with ``field`` one of
    ``allowed``, and every write before it: the task sent) is on REDIS_WAIT_REPLICAS replicas, so
    that a failover cannot lose what the caller is about to be told was accepted. Raises
    StoreUnavailable (503) when it is not (shared/failover.py)."""
    replication: Replication = current_app.extensions["replication"]
    replication.confirm(store().key_for(hostname), field, allowed)


def profiles() -> Profiles:
    return current_app.extensions["profiles"]


@functools.lru_cache(maxsize=8)
def _allowlist(patterns: tuple[str, ...]) -> Allowlist:
    return Allowlist(patterns)


def allowlist() -> Allowlist:
    """ALLOWED_IMAGES, parsed once per set of patterns."""
    return _allowlist(settings().allowed_images)


def quota() -> Quota:
    """The limits every spawn is checked against (MAX_NOTEBOOKS, MAX_NOTEBOOKS_PER_USER, SPAWN_RATE)."""
    s = settings()
    return Quota(max_total=s.max_notebooks, max_per_user=s.max_notebooks_per_user, rate=s.spawn_rate)


@bp.record_once
def _warn_about_open_allowlist(state: BlueprintSetupState) -> None:
    s: Settings = state.app.extensions["settings"]
    if s.auth and _allowlist(s.allowed_images).allows_everything:
        log.warning(
            "ALLOWED_IMAGES allows every image: any signed-in user may start any image on the engine; "
            "set it to the images this service is for (e.g. ALLOWED_IMAGES='jupyter/*')"
        )


# -- output -----------------------------------------------------------------------
def may_see_secrets(record: Notebook) -> bool:
    """Whether the caller owns ``record`` or is an admin (with AUTH off everyone is the admin)."""
    return secrets_visibility()(record.user)


def secrets_visibility() -> Callable[[str], bool]:
    """For the caller: whether it may see the secrets of a notebook owned by a given user.

    Asks who the caller is once, for listings that decide it for thousands of records.
    """
    try:
        who = auth.caller()
    except Unauthorized:
        return lambda owner: False  # fail closed: no caller, no secrets
    if who.is_admin or who.via == auth.CAPABILITY:
        # A notebook's capability is shown only its one notebook (auth.check_visible), whose token it holds.
        return lambda owner: True
    if who.user is None:
        return lambda owner: False  # anonymous: nothing (a launch's own answer says launched=True)
    return lambda owner: owner == who.user


def link(hostname: str, domain: str) -> str:
    """The notebook's public address (PUBLIC_URL), without its token."""
    return public_url(settings().public_url, hostname, domain)


def public_record(record: Notebook, token: str | None = None, *, launched: bool = False) -> dict[str, str]:
    """The record as the caller may see it: every route serialises records through this.

    Its owner and admins also get ``token`` (the notebook's own secret, "" when it has none),
    ``notebook_url`` (ready to open: PUBLIC_URL's address with ``?token=<token>``) and
    ``public_url`` (the same without the token); nobody else does, but the client whose launch
    (Binder, tmpnb) made it, in that launch's own answer (``launched``: an anonymous client has no
    other way to learn the token it needs).
    ``token`` None reads it from the record's internal field.
    """
    out = record.to_json()
    if not (launched or may_see_secrets(record)):
        return out
    if token is None:
        token = store().internal(record.hostname, TOKEN_FIELD) or ""
    public = link(record.hostname, record.domainname)
    out["token"] = token
    out["notebook_url"] = notebook_url(public, token)
    out["public_url"] = public
    return out


def public_rows(rows: list[dict[str, str]], sees: Callable[[str], bool] | None = None) -> list[dict[str, str]]:
    """:func:`public_record` for the rows of ``Store.iter_public(..., internal=[TOKEN_FIELD])``.

    The same answer without a Notebook per record (``GET /containers`` of thousands of records
    spends its time per record): the token came in the same read; it is popped from every row
    and shown only where the caller may see it (``sees``: :func:`secrets_visibility`, asked
    once per listing). Changes the rows in place.
    """
    sees = sees or secrets_visibility()
    key = TOKEN_FIELD.key
    for row in rows:
        token = row.pop(key, "")
        if sees(row["user"]):
            public = link(row["hostname"], row["domainname"])
            row["token"] = token
            row["notebook_url"] = notebook_url(public, token)
            row["public_url"] = public
    return rows


# -- input ------------------------------------------------------------------------
def form_fields(names: tuple[str, ...]) -> dict[str, Any]:
    """The request's form as one value per field; raises InvalidInput for a field of ``names`` given twice."""
    form = request.form
    for name in names:
        if len(form.getlist(name)) > 1:
            raise InvalidInput(f"{name} is given more than once")
    return dict(form.items())


def spawn_input() -> dict[str, Any]:
    """The spawn request's fields, from a form (the first API's curl) or a JSON object."""
    mimetype = request.mimetype
    if mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return form_fields(SPAWN_FIELDS)
    if mimetype == "application/json" or mimetype.endswith("+json"):
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise InvalidInput("the body must be a JSON object with image and user")
        return data
    if not mimetype and not request.content_length and not request.data:
        return {}  # no body at all: reported as the missing fields
    raise UnsupportedMediaType()


def checked_hostname(hostname: str) -> str:
    # Anything that is not a well-formed hostname cannot name a record: the same 404 as an
    # unknown one, and no Redis lookup with attacker-chosen key material.
    if not is_hostname(hostname):
        raise NotFound(f"no notebook with hostname {hostname[:40]!r}")
    return hostname


# -- actions shared with /manage ------------------------------------------------------
def lifetime(seconds: int | None) -> float | None:
    """Seconds this notebook may live: the client's ``ttl`` (whole seconds, checked by
    shared/validation.py's validate_ttl) capped by MAX_AGE (or, when MAX_AGE is 0, by
    MAX_LIFETIME); without a ttl MAX_AGE, and None for no limit."""
    if seconds is None:
        return settings().max_age or None
    return float(min(seconds, settings().max_age or MAX_LIFETIME))


def spawn_request(data: dict[str, Any]) -> SpawnRequest:
    """The spawn ``data`` asks for, checked (400). Whom it is for is decided first, on what the
    caller sent: a user token spawns only for itself (403 for anyone else, however spelled)."""
    return parse(SpawnRequest, {**data, "user": auth.spawn_user(data.get("user"))})


def spawn_notebook(spawn: SpawnRequest) -> tuple[Notebook, str | None]:
    """Write the PENDING record (or claim a warm-pool member) for a checked request, enqueue the
    spawn; no engine call here. Also the token it gave the notebook ("" none; None: not known
    here, as for a warm-pool member), so the answer need not read back what was just written."""
    allowlist().check(spawn.image)  # 403 with the reason
    return start_notebook(
        spawn.image, spawn.user, lifetime(spawn.ttl), spawn.profile, spawn.mem_limit, spawn.cpu_limit, quota()
    )


def start_notebook(
    image: str,
    user: str,
    life: float | None,
    profile: object,
    mem_limit: object,
    cpu_limit: object,
    quotas: Quota,
) -> tuple[Notebook, str | None]:
    """The spawn of a checked ``image`` for a checked ``user`` (who may run it was decided before):
    a warm-pool member, or a PENDING record and its task. ``quotas`` are checked atomically with
    the write. Returns the record and its token as :func:`spawn_notebook` does."""
    chosen, limits = choose_profile(image, profile, mem_limit, cpu_limit)
    now = time.time()
    # A pooled notebook was started with the image's defaults: not for a named profile or own limits.
    claimed = claim_from_pool(image, user, now, life, quotas) if not profile and limits == Limits() else None
    if claimed is not None:
        return claimed, None
    token = new_token() if wanted(settings().notebook_token, profiles().get(chosen) if chosen else None) else ""
    record = store().create(
        image=image,
        user=user,
        domain=settings().domain,
        expires_at=rfc3339(now + life) if life else "",
        profile=chosen,
        internal={
            Internal.QUEUE_DEADLINE: str(now + settings().start_timeout),
            **limits.internal(),
            **({TOKEN_FIELD: token} if token else {}),
        },
        quota=quotas,  # 429 over a limit, checked atomically with the write
    )
    try:
        queue().spawn(record.hostname)
    except QueueUnavailable:
        # Do not leave a PENDING record that no task will ever pick up.
        refused(record.hostname, "the task queue was unavailable")
        raise
    try:
        replicated(record.hostname)
    except StoreUnavailable:
        refused(record.hostname, "Redis could not confirm the spawn on its replicas")
        raise
    return record, token


#: Seconds a refused spawn keeps being marked FAILED while Redis has no master: longer than a
#: Sentinel failover takes with its usual settings (down-after-milliseconds plus the election).
REFUSED_PATIENCE = 120.0


def refused(hostname: str, why: str) -> None:
    """The caller is told 503 for this spawn, so it must not go on behind the caller's back: its
    record is made FAILED with ``why`` (fenced: a spawn attempt in flight can then move it no
    further). When Redis has no master just then (a failover), the record may still reach the
    promoted replica, task and all: it is marked there, in the background, once there is one."""
    current = store()
    if not _refuse(current, hostname, why):
        threading.Thread(
            target=_refuse_later, args=(current, hostname, why), name=f"refuse-{hostname}", daemon=True
        ).start()


def _refuse(current: Store, hostname: str, why: str) -> bool:
    """One try at :func:`refused`'s mark; False if Redis was away."""
    try:
        current.transition(hostname, Status.FAILED, error=why, fence=True)
    except (InvalidTransition, NotFound):
        pass  # killed or failed meanwhile, or lost with the master: nothing will start it
    except StoreUnavailable:
        return False
    return True


def _refuse_later(current: Store, hostname: str, why: str) -> None:
    deadline, pause = time.monotonic() + REFUSED_PATIENCE, 0.25
    while time.monotonic() < deadline:
        time.sleep(pause)
        if _refuse(current, hostname, why):
            return
        pause = min(pause * 2, 2.0)
    log.warning("%s: could not mark a refused spawn FAILED within %gs", hostname, REFUSED_PATIENCE)


def choose_profile(image: str, name: object, mem_limit: object, cpu_limit: object) -> tuple[str, Limits]:
    """The spawn's profile name ("" for none) and the limits it asks for, checked; raises InvalidInput."""
    profile = profiles().choose(image, name)
    if profile is None:
        if mem_limit not in (None, "") or cpu_limit not in (None, ""):
            raise InvalidInput(f"mem_limit and cpu_limit need a profile that allows them; none applies to {image!r}")
        return "", Limits()
    return profile.name, profile.requested(mem_limit, cpu_limit)


def claim_from_pool(image: str, user: str, now: float, life: float | None, quotas: Quota) -> Notebook | None:
    """An ACTIVE notebook from the warm pool, if ``image`` has one ready; a refill is queued."""
    pool: Pool | None = current_app.extensions.get("pool")
    if pool is None or not pool.pooled(image):
        return None
    record = pool.claim(image, user, rfc3339(now), now, rfc3339(now + life) if life else "", quota=quotas)
    if record is not None:
        replicated(record.hostname, "user", (user,))
    try:
        queue().refill(image)  # whether or not one was ready: a pool that ran dry needs refilling too
    except QueueUnavailable:
        pass  # the reconciler refills every pass
    return record


def kill_notebook(hostname: str) -> tuple[Notebook, bool]:
    """Move the record to DELETING and enqueue the kill; (record, whether a kill was started).

    Killing a notebook that is already deleting, removed or failed is a no-op.
    """
    for _ in range(5):  # the spawn may move the record between our read and our write
        record = auth.check_visible(store().require(hostname))  # another user's: 404
        if record.status not in KILLABLE:
            return record, False
        try:
            record = store().transition(hostname, Status.DELETING)
        except InvalidTransition:
            continue
        # If this send fails the record stays DELETING and the reconciler sends the kill again.
        queue().kill(hostname)
        replicated(hostname, allowed=KILLED)
        return record, True
    return store().require(hostname), False


# -- routes -----------------------------------------------------------------------
@bp.post("/spawn", strict_slashes=False)
def spawn() -> ResponseReturnValue:
    record, token = spawn_notebook(spawn_request(spawn_input()))
    response = jsonify(public_record(record, token))
    response.status_code = 202
    response.headers["Location"] = url_for(".container", hostname=record.hostname)
    return response


@bp.get("/container/<hostname>", strict_slashes=False)
@auth.policy(auth.NOTEBOOK)
def container(hostname: str) -> ResponseReturnValue:
    # The record and its token in one read, not a second round trip for the token.
    row = store().row(checked_hostname(hostname), internal=[TOKEN_FIELD])
    if row is None:
        raise NotFound(f"no notebook with hostname {hostname!r}")
    auth.check_visible(Notebook.from_hash(row))
    return public_rows([row])[0]


@bp.route("/container/<hostname>/kill", methods=["GET", "POST"], strict_slashes=False)
@bp.delete("/container/<hostname>", strict_slashes=False)
@auth.policy(auth.NOTEBOOK)
@auth.kills_on_get
def kill(hostname: str) -> ResponseReturnValue:
    record, started = kill_notebook(checked_hostname(hostname))
    return public_record(record), 202 if started else 200


@bp.get("/containers", strict_slashes=False)
def containers() -> ResponseReturnValue:
    # Whose notebooks the caller may list is decided first, on what it sent: a user token its own only.
    user = auth.scoped_user(request.args.get("user") or None)
    asked = parse(ContainersQuery, {**request.args.to_dict(), "user": user})
    offset, limit = asked.offset, asked.limit
    chunks = store().iter_public(
        user=asked.user, status=asked.status, offset=offset, limit=limit, internal=[TOKEN_FIELD]
    )
    sees = secrets_visibility()
    listed = 0

    def shaped() -> Iterator[list[dict[str, str]]]:
        nonlocal listed
        for chunk in chunks:  # each shaped and encoded while Redis reads the next
            listed += len(chunk)
            yield public_rows(chunk, sees)

    response = json_array_response(shaped())
    if limit is not None and listed == limit:
        # A full page: there may be more. The next page as an RFC 8288 link, for clients that
        # page through thousands of records (the unpaginated form still answers with all of them).
        query: dict[str, Any] = {k: v for k, v in request.args.items() if k in ("user", "status") and v}
        following = url_for(".containers", **query, offset=offset + limit, limit=limit)
        response.headers["Link"] = f'<{following}>; rel="next"'
    return response


@bp.get("/healthz", strict_slashes=False)
@auth.policy(auth.PUBLIC)
def healthz() -> ResponseReturnValue:
    try:
        store().ping()
    except StoreUnavailable as exc:
        return {"status": "unavailable", "redis": str(exc), "error": str(exc), "code": exc.code}, 503
    return {"status": "ok", "redis": "ok"}
