"""Limits on what can be started: the image allowlist and the quotas.

Image allowlist (``ALLOWED_IMAGES``)
------------------------------------
A comma-separated list of glob patterns (``fnmatch``: ``*``, ``?``, ``[...]``). A spawn's image is
allowed when one pattern matches it; ``*`` (the default) allows every image name (an image ID
only as below). Both the reference and each pattern are first brought to the engine's canonical
form, so different spellings of one image cannot slip past a pattern (or be refused by it):

- a name whose first component is not a registry host (no ``.`` or ``:`` in it, and not
  ``localhost``) is on Docker Hub: ``jupyter/base`` is ``docker.io/jupyter/base``;
- a Docker Hub name with one component is an official image: ``python`` is
  ``docker.io/library/python``; ``index.docker.io`` is ``docker.io``;
- registry hosts are compared in lower case; a port is part of the host
  (``registry.example:5000/x`` is not ``registry.example/x``);
- a reference with neither a tag nor a digest is ``:latest``, what the engine runs.

Then a pattern is split into name, tag and digest like a reference, and:

=================================  =====================================================
pattern                            allows
=================================  =====================================================
``jupyter/base``                   the repository at any tag or digest
``jupyter/base:*`` / ``:2024-*``   tags that match; **not** a reference with a digest
                                   (``name:tag@sha256:...`` runs the digest, whatever the tag)
``jupyter/base@*`` / ``@sha256:…``  digests that match (a tag beside the digest is ignored)
``jupyter/*``                      every repository under ``docker.io/jupyter/``, any tag
``registry.example:5000/*``        everything on that registry (and that port)
``*`` (first component a glob)     matched as written against the canonical name
=================================  =====================================================

A ``*`` in the name part matches across ``/`` (``jupyter/*`` includes ``jupyter/a/b``), never
across the tag or digest separator. References that are not valid (upper case, ``..``) are
refused as bad input before the allowlist is consulted.

Image IDs: a bare all-hex name (``044a0057ae76``) is the valid reference
``docker.io/library/044a0057ae76:latest``, but an engine with no image of that name reads the
string as an image ID prefix, and ``sha256:<hex>`` as an ID: it would run whatever image that
is, past any pattern that admits the name (``library/*``, ``*/*``, ``*``). Such a reference is
allowed only by a pattern that names that exact reference (no glob), and even then the workers
give the engine the canonical name (:func:`canonical`), never the string as written, so the
engine never reads it as an ID.

Quotas (``MAX_NOTEBOOKS``, ``MAX_NOTEBOOKS_PER_USER``, ``SPAWN_RATE``)
------------------------------------------------------------------
Checked and recorded in the same Lua script that creates the record (or claims a warm-pool
member), so concurrent spawns can never both take the last slot. See :class:`Quota`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
from dataclasses import dataclass

from shared.errors import ImageNotAllowed
from shared.validation import IMAGE_RE

DOCKER_HUB = "docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io"})
_GLOB = re.compile(r"[*?\[]")
# What a pattern may contain: the reference grammar's characters plus the glob ones.
_PATTERN_CHARS = re.compile(r"^[A-Za-z0-9._:/@*?\[\]!+-]+$")
# What the engine may read as an image ID rather than a name (see the module doc): any length, as
# the engine takes a prefix; either case, as refusing one more spelling costs nothing.
_IMAGE_ID = re.compile(r"(?:sha256:)?[0-9a-fA-F]+", re.ASCII)


@dataclass(frozen=True)
class ImageRef:
    """A reference (or pattern) split into its canonical name, tag and digest."""

    name: str  # registry/path, e.g. docker.io/library/python
    tag: str | None
    digest: str | None

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def _canonical_name(name: str) -> str:
    if name == "*":
        return name
    first, sep, rest = name.partition("/")
    if sep and _GLOB.search(first):
        return name  # a pattern for any registry, such as "*/jupyter/*": as written
    if sep and ("." in first or ":" in first or first == "localhost"):
        host = first.lower()
        if host not in _HUB_ALIASES:
            return f"{host}/{rest}"
        if rest == "*" or "/" in rest:
            return f"{DOCKER_HUB}/{rest}"
        return f"{DOCKER_HUB}/library/{rest}"
    return f"{DOCKER_HUB}/{name}" if sep else f"{DOCKER_HUB}/library/{name}"


def _split(text: str) -> tuple[str, str | None, str | None]:
    """name, tag, digest of a reference or pattern (a tag is a ``:`` after the last ``/``)."""
    head, at, digest = text.partition("@")
    slash = head.rfind("/")
    colon = head.rfind(":")
    if colon > slash:
        return head[:colon], head[colon + 1 :], digest if at else None
    return head, None, digest if at else None


def normalize(image: str) -> ImageRef:
    """The canonical form of a *valid* image reference (see the module doc)."""
    match = IMAGE_RE.fullmatch(image)
    if not match:
        raise ValueError(f"not a valid image reference: {image[:80]!r}")
    tag, digest = match.group("tag"), match.group("digest")
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(_canonical_name(match.group("name")), tag, digest)


def canonical(image: str) -> str:
    """The reference to give the engine for a *valid* ``image``: the canonical form the allowlist
    checked (``python`` -> ``docker.io/library/python:latest``). Raises ValueError.

    The engine reads these exactly as it reads the short forms, except that it never takes one
    for an image ID.
    """
    return str(normalize(image))


def looks_like_id(image: str) -> bool:
    """Whether the engine could read ``image`` as an image ID (a bare hex name, ``sha256:<hex>``)."""
    return bool(_IMAGE_ID.fullmatch(image.strip()))


def parse_pattern(pattern: str) -> ImageRef:
    """A pattern in canonical form: tag/digest None mean "any" (see the module doc)."""
    value = pattern.strip()
    if not value or not _PATTERN_CHARS.fullmatch(value) or ".." in value or value.count("@") > 1:
        raise ValueError(f"not an image pattern: {pattern!r}")
    if value == "*":
        return ImageRef("*", None, None)
    name, tag, digest = _split(value)
    if not name or tag == "" or digest == "":
        raise ValueError(f"not an image pattern: {pattern!r}")
    return ImageRef(_canonical_name(name), tag, digest)


def matches(ref: ImageRef, pattern: ImageRef) -> bool:
    if pattern.name == "*" and pattern.tag is None and pattern.digest is None:
        return True
    if not fnmatch.fnmatchcase(ref.name, pattern.name):
        return False
    if pattern.tag is None and pattern.digest is None:
        return True  # the whole repository
    if pattern.digest is not None:
        if ref.digest is None or not fnmatch.fnmatchcase(ref.digest, pattern.digest):
            return False
        return pattern.tag is None or (ref.tag is not None and fnmatch.fnmatchcase(ref.tag, pattern.tag))
    # A tag pattern only: a digest would decide which image runs, whatever the tag says.
    return ref.digest is None and ref.tag is not None and fnmatch.fnmatchcase(ref.tag, pattern.tag or "")


class Allowlist:
    """``ALLOWED_IMAGES``, parsed. ``Allowlist(("*",))`` allows everything."""

    def __init__(self, patterns: tuple[str, ...] = ("*",)) -> None:
        self.patterns = tuple(patterns)
        self._parsed = [parse_pattern(p) for p in self.patterns]
        # The patterns that are references as they stand (no glob): the only ones that can name an ID.
        self._exact = {normalize(p) for p in self.patterns if IMAGE_RE.fullmatch(p.strip())}

    @property
    def allows_everything(self) -> bool:
        return any(p.name == "*" and p.tag is None and p.digest is None for p in self._parsed)

    def allows(self, image: str) -> bool:
        """Whether a valid ``image`` reference matches a pattern (an invalid one never does)."""
        try:
            ref = normalize(image)
        except ValueError:
            return False
        if looks_like_id(image):
            return ref in self._exact
        return any(matches(ref, p) for p in self._parsed)

    def check(self, image: str) -> None:
        """Raise ImageNotAllowed, with the reason, unless ``image`` is allowed."""
        if not self.allows(image):
            if looks_like_id(image):
                raise ImageNotAllowed(
                    f"image {image[:80]!r} looks like an image ID, and image IDs are not allowed unless a pattern "
                    "in ALLOWED_IMAGES names that exact reference: give the image's name and tag, or name@sha256:..."
                )
            shown = ", ".join(self.patterns) if len(self.patterns) <= 8 else ", ".join(self.patterns[:8]) + ", ..."
            canonical = ""
            with contextlib.suppress(ValueError):
                canonical = f" ({normalize(image)})"
            raise ImageNotAllowed(f"image {image[:120]!r}{canonical} is not allowed here; ALLOWED_IMAGES: {shown}")


def parse_allowed_images(raw: str) -> tuple[str, ...]:
    """The ``ALLOWED_IMAGES`` setting: comma-separated patterns, each checked; raises ValueError."""
    patterns = tuple(dict.fromkeys(p.strip() for p in raw.split(",") if p.strip()))
    if not patterns:
        raise ValueError("expected at least one image pattern (* allows every image)")
    for pattern in patterns:
        parse_pattern(pattern)
    return patterns


# -- quotas ------------------------------------------------------------------------------
#: Seconds of the spawn-rate window (SPAWN_RATE is spawns per user per minute).
RATE_WINDOW = 60

#: The Retry-After hint when a live-notebook quota is full.
FULL_RETRY_AFTER = 30


@dataclass(frozen=True)
class Quota:
    """Limits one spawn is checked against; 0 means no limit.

    ``max_total`` counts every notebook in :data:`shared.status.COUNTED` statuses, warm-pool members
    included; ``max_per_user`` the user's own; ``rate`` is spawns per user in the last
    ``window`` seconds (a sliding log, one entry per accepted spawn).
    """

    max_total: int = 0
    max_per_user: int = 0
    rate: int = 0
    window: int = RATE_WINDOW

    def args(self) -> list[int]:
        return [self.max_total, self.max_per_user, self.rate, self.window]


def quota_error(refusal: list[object], user: str, quota: Quota, now: float) -> Exception:
    """The QuotaExceeded for a refusal returned by ``quota_refusal`` (shared/lua/quota.lua)."""
    from shared.errors import QuotaExceeded

    kind = str(refusal[1])
    limit = int(str(refusal[2]))
    if kind == "total":
        return QuotaExceeded(
            f"the service runs its most notebooks at once ({limit}, MAX_NOTEBOOKS); try again later",
            FULL_RETRY_AFTER,
            kind,
        )
    if kind == "user":
        return QuotaExceeded(
            f"user {user!r} already has {limit} live notebook(s), the most allowed (MAX_NOTEBOOKS_PER_USER); "
            "kill one to start another",
            FULL_RETRY_AFTER,
            kind,
        )
    try:
        oldest = float(str(refusal[3]))
    except ValueError:
        oldest = now
    wait = oldest + quota.window - now
    return QuotaExceeded(
        f"user {user!r} started {limit} notebook(s) in the last {quota.window}s, the most allowed (SPAWN_RATE)",
        int(wait) + (1 if wait > int(wait) else 0),
        kind,
    )
