"""GET /nodes (admin only): each engine node and which pre-pulled images it has, as the workers
last saw them (``shared/nodes.py``; the API never asks the engine)."""

from __future__ import annotations

import redis
from flask import Blueprint
from flask.typing import ResponseReturnValue

from api.auth import ADMIN_ONLY, policy
from api.routes import profiles, settings, store
from shared.errors import StoreUnavailable
from shared.nodes import NodeBook, prepull_images

bp = Blueprint("nodes", __name__)


@bp.get("/nodes", strict_slashes=False)
@policy(ADMIN_ONLY)
def nodes() -> ResponseReturnValue:
    book = NodeBook(store().redis, settings().key_prefix)
    try:
        found = book.read()
    except redis.RedisError as exc:
        raise StoreUnavailable(f"Redis is unavailable: {exc}") from exc
    listed = prepull_images(settings(), profiles())
    out = []
    for entry in sorted(found.values(), key=lambda e: (e.get("role") != "manager", str(e.get("hostname", "")))):
        images = entry.get("images") or {}
        # Only the images listed now: one dropped from POOL or the profiles is no longer tracked.
        unseen = {"state": "missing", "reason": "not looked at yet", "at": ""}
        entry["images"] = {image: images.get(image) or unseen for image in listed}
        out.append(entry)
    return {"images": listed, "nodes": out}
