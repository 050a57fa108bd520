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
