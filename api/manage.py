"""/manage: the operator's page. Server-rendered, then kept live by a little JavaScript.

The page lists notebooks (filtered by ``?user=`` and ``?status=``), with a spawn form and a
kill button per notebook. Without JavaScript it is plain HTML: mutations are POST forms
answered with a redirect back to the page (no GET that kills). With JavaScript
(``static/manage.js``) the same forms are sent with ``fetch`` asking for JSON, and the table
follows ``GET /events`` (Server-Sent Events) so rows appear and change without a reload.
"""

from __future__ import annotations

import time

from flask import Blueprint, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from api import auth
from api.events import STAGES
from api.routes import (
    checked_hostname,
    kill_notebook,
    link,
    public_record,
    secrets_visibility,
    spawn_notebook,
    spawn_request,
    store,
)
from shared.errors import (
    Forbidden,
    ImageNotAllowed,
    InvalidInput,
    NotFound,
    QueueUnavailable,
    QuotaExceeded,
    StoreUnavailable,
)
from shared.notebook_token import FIELD as TOKEN_FIELD
from shared.public_url import notebook_url
from shared.record import Notebook, parse_rfc3339
from shared.status import KILLABLE, Status
from shared.validation import validate_user

bp = Blueprint("manage", __name__, template_folder="templates")

#: Most rows the page shows (newest first).
PAGE_LIMIT = 500

# Everything the page loads comes from this server: no inline script, no other origin.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def wants_json() -> bool:
    """The page's script asks for JSON; a plain form post (or curl) gets the redirect."""
    return request.accept_mimetypes.best_match(["text/html", "application/json"]) == "application/json"


@bp.app_template_filter("age")
def age(start_time: str, now: float | None = None) -> str:
    """How long ago ``start_time`` was, short: 42s, 5m, 3h, 2d."""
    started = parse_rfc3339(start_time)
    if not started:
        return ""
    seconds = max(0, int((now or time.time()) - started))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@bp.get("/manage", strict_slashes=False)
@auth.policy(auth.PAGE)  # without credentials: the sign-in form
def page() -> ResponseReturnValue:
    problems: list[str] = []
    user_filter = request.args.get("user", "").strip()[:64]
    status_filter = request.args.get("status", "").strip().upper()[:20]
    user = status = None
    if user_filter:
        try:
            user = validate_user(user_filter)
        except InvalidInput as exc:
            problems.append(f"user filter ignored: {exc}")
            user_filter = ""
    try:
        user = auth.scoped_user(user)  # signed in with a user token: its own notebooks only
    except Forbidden as exc:
        problems.append(f"user filter ignored: {exc}")
        user_filter, user = "", auth.scoped_user(None)
    if status_filter:
        try:
            status = Status(status_filter)
        except ValueError:
            problems.append(f"status filter ignored: {status_filter!r} is not a status")
            status_filter = ""
    unavailable = False
    try:
        records = list(store().records(user=user, status=status, limit=PAGE_LIMIT))
    except StoreUnavailable as exc:
        records, unavailable = [], True
        problems.insert(0, str(exc))
    try:
        links = links_for(records)
    except StoreUnavailable as exc:
        links, unavailable = {r.hostname: "" for r in records}, True
        problems.insert(0, str(exc))
    error = "; ".join(problems) or request.args.get("error", "")[:300]
    query = {k: v for k, v in (("user", user_filter), ("status", status_filter)) if v}
    response = render_template(
        "manage.html",
        records=records,
        links=links,
        killable={s.value for s in KILLABLE},
        statuses=[s.value for s in Status],
        stages=STAGES,
        filters={"user": user_filter, "status": status_filter},
        query=query,
        limit=PAGE_LIMIT,
        message=request.args.get("message", "")[:200],
        error=error,
    )
    headers = {"Content-Security-Policy": CSP, "Cache-Control": "no-store"}
    return response, (503 if unavailable else 200), headers


def links_for(records: list[Notebook]) -> dict[str, str]:
    """Each notebook's address to open: with its token where the caller may see it (one read for all)."""
    sees = secrets_visibility()
    tokens = store().internals((r.hostname for r in records if sees(r.user)), TOKEN_FIELD)
    return {r.hostname: notebook_url(link(r.hostname, r.domainname), tokens.get(r.hostname, "")) for r in records}


@bp.post("/manage/spawn")
def spawn() -> ResponseReturnValue:
    try:
        record, token = spawn_notebook(
            spawn_request({"image": request.form.get("image"), "user": request.form.get("user")})
        )
    except (InvalidInput, Forbidden, ImageNotAllowed, QuotaExceeded, QueueUnavailable, StoreUnavailable) as exc:
        if wants_json():
            raise  # the app's error handler answers with the JSON error and its status
        return redirect(url_for(".page", error=str(exc)), 303)
    if wants_json():
        return public_record(record, token), 202
    return redirect(url_for(".page", message=f"spawning {record.hostname}"), 303)


@bp.post("/manage/kill/<hostname>")
def kill(hostname: str) -> ResponseReturnValue:
    try:
        record, started = kill_notebook(checked_hostname(hostname))
    except (NotFound, QueueUnavailable, StoreUnavailable) as exc:
        if wants_json():
            raise
        return redirect(url_for(".page", error=str(exc)), 303)
    if wants_json():
        return public_record(record), 202 if started else 200
    return redirect(url_for(".page", message=f"{record.hostname} is {record.status}"), 303)
