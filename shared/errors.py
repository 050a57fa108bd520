"""Small exception classes shared by the API and the workers.

The API maps each of these to one HTTP status in one place (``api/errors.py``).
"""

from __future__ import annotations


class SwarmManagerError(Exception):
    """Base class; ``code`` is the machine-readable slug in JSON error bodies."""

    code = "error"


class ConfigError(SwarmManagerError):
    """A setting has a bad value; raised once at start-up."""

    code = "bad_config"


class InvalidInput(SwarmManagerError):
    """A request carried a value that fails validation."""

    code = "invalid_input"


class UnsupportedMediaType(InvalidInput):
    """The request body is neither a form nor JSON (HTTP 415)."""

    code = "unsupported_media_type"

    def __init__(self, message: str = "send image and user as a form (application/x-www-form-urlencoded) or as JSON"):
        super().__init__(message)


class NotFound(SwarmManagerError):
    code = "not_found"


class InvalidTransition(SwarmManagerError):
    """The record is not in a status from which the requested move is allowed."""

    code = "invalid_transition"

    def __init__(self, hostname: str, current: str | None, new: str) -> None:
        super().__init__(f"{hostname}: cannot move from {current} to {new}")
        self.hostname = hostname
        self.current = current
        self.new = new


class Superseded(InvalidTransition):
    """A spawn attempt's move refused because the attempt is no longer the record's: a later
    attempt took the spawn over (a redelivered or resent task), or the reconciler fenced it out.
    The attempt must leave the record and the notebook's engine objects alone."""

    code = "superseded"

    def __init__(self, hostname: str, attempt: int | None, current: str) -> None:
        message = f"{hostname}: spawn attempt {attempt} was superseded (now {current or 'none'})"
        SwarmManagerError.__init__(self, message)
        self.hostname = hostname
        self.current = current
        self.new = ""
        self.attempt = attempt


class StoreUnavailable(SwarmManagerError):
    """Redis did not answer."""

    code = "store_unavailable"


class QueueUnavailable(SwarmManagerError):
    """The task broker did not accept a message."""

    code = "queue_unavailable"


class EngineError(SwarmManagerError):
    """The engine refused the request for good (bad image, bad spec, TLS verification failed)."""

    code = "engine_error"


class EngineUnavailable(SwarmManagerError):
    """The engine could not be reached or answered with a server error; worth retrying."""

    code = "engine_unavailable"


class ProxyError(SwarmManagerError):
    """The routing proxy's API refused a route change or could not be reached."""

    code = "proxy_error"


class Unauthorized(SwarmManagerError):
    """No valid credentials: a missing, unknown or revoked token (HTTP 401 with a Bearer challenge)."""

    code = "unauthorized"

    def __init__(
        self, message: str = "this route needs a token: Authorization: Bearer <token>", *, invalid: bool = False
    ) -> None:
        super().__init__(message)
        # RFC 6750: a token that was sent but is no good is an "invalid_token" challenge.
        self.challenge = 'Bearer realm="swarm-manager"' + (', error="invalid_token"' if invalid else "")


class Forbidden(SwarmManagerError):
    """Valid credentials that do not allow this (HTTP 403): a user token on an admin route,
    a spawn for someone else, a form post without its CSRF token."""

    code = "forbidden"


class ImageNotAllowed(SwarmManagerError):
    """The image is not on the operator's allowlist (``ALLOWED_IMAGES``); HTTP 403."""

    code = "image_not_allowed"


class QuotaExceeded(SwarmManagerError):
    """A spawn would go over a quota or the spawn rate; HTTP 429 with ``Retry-After``.

    ``retry_after`` is a whole number of seconds (at least 1): exact for the spawn rate, a
    hint for live-notebook quotas (a slot frees when one of the notebooks ends or is killed).
    """

    code = "quota_exceeded"

    def __init__(self, message: str, retry_after: int, limit: str = "") -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))
        self.limit = limit  # which limit: "total", "user" or "rate"


class TooManyStreams(QuotaExceeded):
    """The caller has as many event streams open as STREAMS_PER_USER / STREAMS_PER_ADDRESS allow; HTTP 429."""

    code = "too_many_streams"
