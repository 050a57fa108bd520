"""Each notebook's own secret token (``NOTEBOOK_TOKEN``), so knowing a hostname is not enough.

The token is made when the record is (by the API, or by the warm pool's refill), kept in the
record's internal field ``_token`` (internal fields are never published on the events channel,
never in ``GET /containers`` answers to anyone but the owner and admins, never logged), and
handed to the container by the worker: as ``JUPYTER_TOKEN``, which Jupyter Notebook 6+,
Jupyter Server and the jupyter/docker-stacks images read, or as the profile says
(``token_env``: another variable; ``token_arg``: an argument added to the profile's command;
``token: false``: none, for images that cannot take one).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from shared.profiles import Profile
from shared.record import Internal

#: The variable Jupyter servers read their token from.
DEFAULT_ENV = "JUPYTER_TOKEN"
#: The record's internal field that holds it (``_token`` in Redis).
FIELD = Internal.TOKEN


def new_token() -> str:
    """32 URL-safe characters from the OS's cryptographic random source."""
    return secrets.token_urlsafe(24)


def wanted(enabled: bool, profile: Profile | None) -> bool:
    """Does a notebook get a token: NOTEBOOK_TOKEN is on and its profile does not turn it off."""
    return enabled and (profile is None or profile.token)


@dataclass(frozen=True)
class Delivery:
    """How the container gets its token: in an environment variable, or as one more argument."""

    env: str = DEFAULT_ENV
    arg: str = ""  # e.g. "--ServerApp.token={token}"; when set, no variable is used

    @classmethod
    def for_profile(cls, profile: Profile | None) -> Delivery:
        if profile is None:
            return cls()
        return cls(env=profile.token_env or DEFAULT_ENV, arg=profile.token_arg)

    def environment(self, token: str) -> dict[str, str]:
        return {} if self.arg else {self.env: token}

    def arguments(self, token: str) -> list[str]:
        return [self.arg.replace("{token}", token)] if self.arg else []
