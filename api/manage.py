"""/manage: a plain server-rendered page listing notebooks, with a spawn form and kill buttons.

Mutations are POST forms answered with a redirect back to the page (no GET that kills).
"""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from api.routes import checked_hostname, kill_notebook, spawn_notebook, store
from shared.errors import InvalidInput, NotFound, QueueUnavailable, StoreUnavailable
from shared.status import KILLABLE, Status

bp = Blueprint("manage", __name__, template_folder="templates")


@bp.get("/manage", strict_slashes=False)
def page() -> ResponseReturnValue:
    error = None
    try:
        records = store().list(limit=500)
    except StoreUnavailable as exc:
        records, error = [], str(exc)
    return render_template(
        "manage.html",
        records=records,
        killable={s.value for s in KILLABLE},
        statuses=[s.value for s in Status],
        message=request.args.get("message", "")[:200],
        error=error or request.args.get("error", "")[:300],
    ), (503 if error else 200)


@bp.post("/manage/spawn")
def spawn() -> ResponseReturnValue:
    try:
        record = spawn_notebook(request.form.get("image"), request.form.get("user"))
    except (InvalidInput, QueueUnavailable, StoreUnavailable) as exc:
        return redirect(url_for(".page", error=str(exc)), 303)
    return redirect(url_for(".page", message=f"spawning {record.hostname}"), 303)


@bp.post("/manage/kill/<hostname>")
def kill(hostname: str) -> ResponseReturnValue:
    try:
        record, _ = kill_notebook(checked_hostname(hostname))
    except (NotFound, QueueUnavailable, StoreUnavailable) as exc:
        return redirect(url_for(".page", error=str(exc)), 303)
    return redirect(url_for(".page", message=f"{record.hostname} is {record.status}"), 303)
