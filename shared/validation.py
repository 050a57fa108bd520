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
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"  # the engine's [\w][\w.-]{0,127}, \w being ASCII
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
IMAGE_RE = re.compile(rf"^(?P<name>{_NAME})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$", re.ASCII)
#: The same grammar as a JSON Schema (ECMA-262) pattern, for the OpenAPI document: without the
#: named groups (Python's ``(?P<name>`` is not ECMA's).
IMAGE_PATTERN = re.sub(r"\(\?P<\w+>", "(?:", IMAGE_RE.pattern)

NAME_TOTAL_LENGTH_MAX = 255  # the engine's own limit on the name part
#: The longest image reference accepted: the name's limit plus room for a tag and a digest.
IMAGE_MAX_LENGTH = NAME_TOTAL_LENGTH_MAX + 200

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


#: A ttl (seconds a notebook may live) as a client gives it: 1 to 12 digits.
MAX_TTL = 999_999_999_999
TTL_PATTERN = "^[0-9]{1,12}$"


def validate_ttl(value: object) -> int | None:
    """A spawn's ``ttl`` as whole seconds from 1 to :data:`MAX_TTL`, from a JSON number or a
    string of ASCII digits (a form's); None when there is none (absent or ""). Raises InvalidInput."""
    if value is None or value == "":
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one number type: 3600.0 is a whole number of seconds too
    raw = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        seconds = parse_whole(raw) if isinstance(raw, str) and len(raw) <= 12 else 0
    except ValueError:
        seconds = 0
    if seconds < 1:
        raise InvalidInput(f"ttl must be a whole number of seconds from 1 to {MAX_TTL}")
    return seconds


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
    if len(image) > IMAGE_MAX_LENGTH:
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
