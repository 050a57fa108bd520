"""Images from registries: the pull policy and registry credentials (a Docker ``config.json``).

Credentials are read from the file format ``docker login`` writes::

    {"auths": {"registry.example:5000": {"auth": "<base64 of user:password>"},
               "https://index.docker.io/v1/": {"username": "u", "password": "p"}}}

and handed to the engine only for a pull from that registry (and, in services mode, with the
service so its nodes can pull). They never appear in a ``repr``, a message or a log line: the
class below shows registry names only.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.limits import canonical, normalize

#: Pull the image only when the engine lacks it (the default).
IF_NOT_PRESENT = "if-not-present"
#: Pull on every spawn, so a tag that moved in the registry runs its new content.
ALWAYS = "always"
#: Never pull: an image the engine lacks fails the spawn at once.
NEVER = "never"
PULL_POLICIES = (IF_NOT_PRESENT, ALWAYS, NEVER)

#: How Docker Hub is named in config files (``docker login`` writes the first).
_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io", "docker.io")
HUB = "docker.io"


def parse_pull_policy(raw: str) -> str:
    value = raw.strip().lower()
    if value not in PULL_POLICIES:
        raise ValueError(f"expected one of {', '.join(PULL_POLICIES)}, got {raw!r}")
    return value


def registry_key(name: str) -> str:
    """A config file's registry key as the canonical registry host: scheme and path dropped,
    lower case, Docker Hub's spellings all ``docker.io``."""
    value = name.strip()
    if value in _HUB_KEYS:
        return HUB
    value = value.split("://", 1)[-1].split("/", 1)[0].lower()
    return HUB if value in _HUB_KEYS else value


def registry_of(image: str) -> str:
    """The registry host of an image reference, canonical (``jupyter/x`` is ``docker.io``)."""
    return normalize(image).name.split("/", 1)[0]


@dataclass(frozen=True)
class Credential:
    username: str = field(repr=False)
    password: str = field(repr=False)

    def auth_config(self) -> dict[str, str]:
        """docker-py's ``auth_config`` (what the engine gets in its X-Registry-Auth header)."""
        return {"username": self.username, "password": self.password}


@dataclass(frozen=True)
class RegistryAuths:
    """Credentials by canonical registry host; shows only the registries' names."""

    by_registry: Mapping[str, Credential] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"RegistryAuths({sorted(self.by_registry)})"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self.by_registry)

    def for_image(self, image: str) -> Credential | None:
        """The credential for the registry ``image`` comes from; None for an anonymous pull."""
        try:
            return self.by_registry.get(registry_of(image))
        except ValueError:
            return None

    def secrets(self) -> list[str]:
        """Every password and ``user:password`` pair (and its base64), for scrubbing texts."""
        out = []
        for cred in self.by_registry.values():
            pair = f"{cred.username}:{cred.password}"
            out += [cred.password, pair, base64.b64encode(pair.encode()).decode()]
        return [s for s in out if s]


def parse_registry_auth(raw: str) -> RegistryAuths:
    """A Docker ``config.json``'s ``auths`` (empty text: none). Raises ValueError naming the
    registry whose entry is wrong, never a credential's text."""
    if not raw.strip():
        return RegistryAuths()
    try:
        data = json.loads(raw)
    except ValueError:
        raise ValueError("not a JSON document (expected a Docker config.json, as `docker login` writes it)") from None
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object with an 'auths' object (a Docker config.json)")
    auths = data.get("auths") or {}
    if not isinstance(auths, dict):
        raise ValueError("'auths' must be an object of registry: {auth: base64(user:password)}")
    found: dict[str, Credential] = {}
    for name, entry in auths.items():
        key = registry_key(str(name))
        if not key or not isinstance(entry, dict):
            raise ValueError(f"auths entry {str(name)[:100]!r}: expected an object with 'auth' or username/password")
        username, password = entry.get("username"), entry.get("password")
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(str(entry["auth"]), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise ValueError(f"auths entry {key!r}: 'auth' is not base64 of user:password") from None
            username, sep, password = decoded.partition(":")
            if not sep:
                raise ValueError(f"auths entry {key!r}: 'auth' is not base64 of user:password")
        if not isinstance(username, str) or not isinstance(password, str) or not username or not password:
            if entry.get("identitytoken") or entry.get("registrytoken"):
                raise ValueError(f"auths entry {key!r}: tokens are not supported, give 'auth' (user:password)")
            if not entry:
                continue  # `docker login` with a credential store leaves an empty entry: nothing here
            raise ValueError(f"auths entry {key!r}: expected 'auth' or username and password")
        found[key] = Credential(username, password)
    if not found and (data.get("credsStore") or data.get("credHelpers")):
        raise ValueError(
            "the file names a credential store (credsStore/credHelpers) and holds no credentials itself: "
            "write them into 'auths' (e.g. `docker login` with DOCKER_CONFIG set to an empty folder)"
        )
    return RegistryAuths(found)


def pinned(image: str, digest: str) -> str:
    """``image`` (canonical) pinned to ``digest``: ``repo:tag@sha256:...`` (the tag kept for people)."""
    ref = normalize(image)
    if ref.digest:
        return canonical(image)
    return f"{canonical(image)}@{digest}"
