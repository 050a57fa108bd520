"""Validation of values that come from outside: image references, user names, hostnames.

The image grammar is the one the Docker engine itself enforces (distribution/reference,
``reference.go``); checking it here turns a typo into a 400 at the API instead of a FAILED
record seconds later.
"""

from __future__ import annotations

import re

from shared.errors import InvalidInput

# distribution/reference grammar, transcribed.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
IMAGE_RE = re.compile(rf"^(?P<name>{_NAME})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$", re.ASCII)

NAME_TOTAL_LENGTH_MAX = 255  # the engine's own limit on the name part

# User names are opaque labels from the client (a course platform's login, an e-mail address).
# They end up in Docker labels, Redis keys and log lines, so keep them to a safe printable set.
USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$", re.ASCII)

# Numbers from requests, settings and PROFILES_FILE: plain ASCII decimals. int() and float() (and
# ``\d``) also read other scripts' digits (512 in Arabic-Indic digits is 512), "1_000", "1e3",
# "inf" and surrounding whitespace: nobody needs those to write a limit, and each is one more
# spelling that a check, a log line or a person reading a record would take for something else.
DECIMAL = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_WHOLE_RE = re.compile(r"[0-9]+")
_DECIMAL_RE = re.compile(DECIMAL)


def parse_whole(text: str) -> int:
    """``text`` (ASCII digits, nothing else) as an int; raises ValueError, as ``int()`` does."""
    if not _WHOLE_RE.fullmatch(text):
        raise ValueError(f"not a whole number: {text[:40]!r}")
    return int(text)


def parse_decimal(text: str) -> float:
    """``text`` (ASCII digits with at most one ``.``) as a float; raises ValueError, as ``float()`` does."""
    if not _DECIMAL_RE.fullmatch(text):
        raise ValueError(f"not a number: {text[:40]!r}")
    return float(text)


HOSTNAME_LENGTH = 12
HOSTNAME_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
HOSTNAME_RE = re.compile(rf"^[0-9a-z]{{{HOSTNAME_LENGTH}}}$", re.ASCII)


def _text(field: str, value: object) -> str:
    if value is None:
        raise InvalidInput(f"{field} is required")
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string")
    value = value.strip()
    if not value:
        raise InvalidInput(f"{field} must not be empty")
    return value


def validate_image(value: object) -> str:
    image = _text("image", value)
    if len(image) > NAME_TOTAL_LENGTH_MAX + 200:
        raise InvalidInput("image reference is too long")
    match = IMAGE_RE.fullmatch(image)
    if not match:
        raise InvalidInput(f"image is not a valid Docker image reference: {image[:80]!r}")
    if match.group("name") != match.group("name").lower():
        # The grammar admits an upper-case registry host, but the engine rejects any upper-case
        # repository name ("repository name must be lowercase"): refuse it here, clearly.
        raise InvalidInput(f"image name must be lower-case: {image[:80]!r}")
    if len(match.group("name")) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidInput(f"image name is longer than {NAME_TOTAL_LENGTH_MAX} characters")
    return image


def validate_user(value: object) -> str:
    user = _text("user", value)
    if not USER_RE.fullmatch(user):
        raise InvalidInput(
            "user must be 1-64 characters of letters, digits and . _ @ + -, starting with a letter or digit"
        )
    return user


def is_hostname(value: str) -> bool:
    return bool(HOSTNAME_RE.fullmatch(value))
