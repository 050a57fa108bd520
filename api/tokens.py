"""/tokens: the admin creates, lists and revokes user tokens (admin only: see ``api/auth.py``).

- ``POST /tokens`` (``user`` as a form field or JSON) → 201 ``{id, user, token, created}``; the
  token itself is in this answer only (Redis keeps its SHA-256).
- ``GET /tokens[?user=U]`` → the live tokens, newest first, without secrets.
- ``DELETE /tokens/<id>`` → 200 ``{id, user, created, revoked}``; the token stops working at once,
  every /manage session signed in with it is ended, and the event streams either opened are told
  to close (``shared.tokenstore.Tokens.revoke``: one step in Redis). An unknown id is 404.
"""

from __future__ import annotations

import re

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from api.auth import ADMIN_ONLY, policy, tokens
from api.models import TokenRequest, parse
from shared.errors import InvalidInput, NotFound, UnsupportedMediaType
from shared.record import now_rfc3339
from shared.validation import validate_user

bp = Blueprint("tokens", __name__)

TOKEN_ID = re.compile(r"^[0-9a-f]{16}$", re.ASCII)


def user_field() -> object:
    """The ``user`` of a form or JSON body (None when absent: reported as missing)."""
    mimetype = request.mimetype
    if mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        values = request.form.getlist("user")
        if len(values) > 1:
            raise InvalidInput("user is given more than once")
        return values[0] if values else None
    if mimetype == "application/json" or mimetype.endswith("+json"):
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise InvalidInput("the body must be a JSON object with user")
        return data.get("user")
    if not mimetype and not request.content_length and not request.data:
        return None
    raise UnsupportedMediaType("send user as a form (application/x-www-form-urlencoded) or as JSON")


@bp.post("/tokens", strict_slashes=False)
@policy(ADMIN_ONLY)
def create() -> ResponseReturnValue:
    token, secret = tokens().create(parse(TokenRequest, {"user": user_field()}).user)
    return {"id": token.id, "user": token.user, "token": secret, "created": token.created}, 201


@bp.get("/tokens", strict_slashes=False)
@policy(ADMIN_ONLY)
def listing() -> ResponseReturnValue:
    user = request.args.get("user") or None
    return jsonify([t.to_json() for t in tokens().list(validate_user(user) if user else None)])


@bp.delete("/tokens/<token_id>", strict_slashes=False)
@policy(ADMIN_ONLY)
def revoke(token_id: str) -> ResponseReturnValue:
    if not TOKEN_ID.fullmatch(token_id):
        raise NotFound(f"no token with id {token_id[:40]!r}")
    return {**tokens().revoke(token_id).to_json(), "revoked": now_rfc3339()}
