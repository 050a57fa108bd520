"""The one place that maps errors to HTTP statuses and JSON bodies.

Every error answer is ``{"error": <human message>, "code": <slug>}``. Bad input is 4xx,
Redis or the queue being away is 503; anything else is a 500 with the traceback logged.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from shared.errors import (
    Forbidden,
    ImageNotAllowed,
    InvalidInput,
    InvalidTransition,
    NotFound,
    QueueUnavailable,
    QuotaExceeded,
    StoreUnavailable,
    SwarmManagerError,
    Unauthorized,
    UnsupportedMediaType,
)

log = logging.getLogger(__name__)


class LaunchFailed(SwarmManagerError):
    """A launch that waits for its notebook (tmpnb's /api/spawn/) saw it fail: HTTP 502 with the reason."""

    code = "launch_failed"


class LaunchTimedOut(SwarmManagerError):
    """A launch that waits for its notebook did not see it ready in time: HTTP 504."""

    code = "launch_timed_out"


# First match wins: subclasses before their bases.
STATUS_FOR: dict[type[SwarmManagerError], int] = {
    UnsupportedMediaType: 415,
    InvalidInput: 400,
    NotFound: 404,
    InvalidTransition: 409,
    StoreUnavailable: 503,
    QueueUnavailable: 503,
    Unauthorized: 401,
    Forbidden: 403,
    ImageNotAllowed: 403,
    QuotaExceeded: 429,
    LaunchFailed: 502,
    LaunchTimedOut: 504,
}


def error_response(status: int, code: str, message: str) -> tuple[Response, int]:
    response = jsonify(error=message, code=code)
    if status == 503:
        response.headers["Retry-After"] = "5"
    return response, status


def register(app: Flask) -> None:
    @app.errorhandler(SwarmManagerError)
    def _known(exc: SwarmManagerError) -> ResponseReturnValue:
        status = next((s for cls, s in STATUS_FOR.items() if isinstance(exc, cls)), 500)
        if status == 503:
            log.warning("dependency unavailable: %s", exc)
        elif status == 500:
            log.exception("unexpected error")
        response, status = error_response(status, exc.code, str(exc))
        if isinstance(exc, Unauthorized):
            response.headers["WWW-Authenticate"] = exc.challenge
        if isinstance(exc, QuotaExceeded):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response, status

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> ResponseReturnValue:
        code = (exc.name or "error").lower().replace(" ", "_")
        response, status = error_response(exc.code or 500, code, exc.description or exc.name)
        if exc.code == 405 and exc.response is None:
            allowed = getattr(exc, "valid_methods", None)
            if allowed:
                response.headers["Allow"] = ", ".join(allowed)
        return response, status

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> ResponseReturnValue:
        log.exception("unexpected error")
        return error_response(500, "internal_error", "internal error")
