"""shared/validation.py, table-driven: image references, user names, hostnames."""

from __future__ import annotations

import pytest

from shared.errors import InvalidInput
from shared.validation import (
    HOSTNAME_ALPHABET,
    HOSTNAME_LENGTH,
    NAME_TOTAL_LENGTH_MAX,
    is_hostname,
    validate_image,
    validate_user,
)

SHA = "sha256:" + "0123456789abcdef" * 4  # 64 hex digits

VALID_IMAGES = [
    "busybox",
    "busybox:latest",
    "jupyter/minimal-notebook",
    "jupyter/minimal-notebook:2024-01-02",
    "zischwartz/notebook",
    "ipython/scipystack",
    "registry.example.com:5000/team/nb:2024.1",
    "registry.example.com/team/sub/nb",
    "localhost/x",
    "localhost:5000/x:1",
    f"name@{SHA}",
    f"name:tag@{SHA}",
    f"registry.example.com:5000/team/nb:v1@{SHA}",
    "[::1]:5000/x",
    "[::1]/x:tag",
    "a",
    "a_b",
    "a__b",
    "a---b",
    "a.b",
    "my-org/my_image.v2",
    "nb:" + "t" * 128,  # the longest tag the grammar allows
    "nb:_private",
    "nb:Tag.With-Upper_1",
    "a" * NAME_TOTAL_LENGTH_MAX,
]

INVALID_IMAGES = [
    ("empty", ""),
    ("whitespace only", "   \t "),
    ("inner space", "busy box"),
    ("space before tag", "busybox :latest"),
    ("uppercase repo", "Busybox"),
    ("uppercase path", "jupyter/Minimal-Notebook"),
    ("path traversal", "../etc/passwd"),
    ("dot segment", "a/../b"),
    ("double slash", "a//b"),
    ("leading slash", "/busybox"),
    ("trailing slash", "busybox/"),
    ("leading dash", "-leading"),
    ("leading dot", ".hidden"),
    ("leading underscore", "_x"),
    ("trailing separator", "busybox-"),
    ("triple underscore", "a___b"),
    ("trailing colon", "busybox:"),
    ("tag starts with dot", "busybox:.x"),
    ("tag starts with dash", "busybox:-x"),
    ("tag too long", "nb:" + "t" * 129),
    ("name over 255", "a" * (NAME_TOTAL_LENGTH_MAX + 1)),
    ("name over 255 with path", "r/" + "a" * NAME_TOTAL_LENGTH_MAX),
    ("way too long", "a" * 10_000),
    ("non-ASCII name", "büsybox"),
    ("non-ASCII tag", "busybox:tåg"),
    ("non-ASCII digit tag", "busybox:١٢"),
    ("fullwidth letters", "\uff42\uff55\uff53\uff59\uff42\uff4f\uff58"),
    ("inner newline", "busybox\nrm"),
    ("newline before tag", "busybox\n:latest"),
    ("carriage return", "busy\rbox"),
    ("null byte", "busybox\x00"),
    ("inner null byte", "busy\x00box"),
    ("shell semicolon", "image;rm -rf /"),
    ("command substitution", "$(id)"),
    ("backticks", "`id`"),
    ("pipe", "busybox|sh"),
    ("ampersand", "busybox&&id"),
    ("url", "http://example.com/x"),
    ("at without digest", "busybox@"),
    ("short digest", "busybox@sha256:abc"),
    ("digest without algorithm", "busybox@" + "0" * 64),
    ("digest non-hex", "busybox@sha256:" + "g" * 64),
    ("two tags", "busybox:1:2"),
    ("empty tag before digest", f"busybox:@{SHA}"),
    ("bad ipv6", "[::1/x"),
    ("quote", 'busybox"'),
    ("html", "<script>"),
]


@pytest.mark.parametrize("image", VALID_IMAGES)
def test_valid_image(image: str) -> None:
    assert validate_image(image) == image


@pytest.mark.parametrize(("why", "image"), INVALID_IMAGES, ids=[w for w, _ in INVALID_IMAGES])
def test_invalid_image(why: str, image: str) -> None:
    with pytest.raises(InvalidInput):
        validate_image(image)


@pytest.mark.parametrize("value", [None, 5, 1.5, True, ["busybox"], {"image": "busybox"}, b"busybox"], ids=repr)
def test_image_must_be_a_string(value: object) -> None:
    with pytest.raises(InvalidInput):
        validate_image(value)


def test_image_messages_say_what_is_wrong() -> None:
    with pytest.raises(InvalidInput, match="required"):
        validate_image(None)
    with pytest.raises(InvalidInput, match="string"):
        validate_image(42)
    with pytest.raises(InvalidInput, match="empty"):
        validate_image("  ")
    with pytest.raises(InvalidInput, match="longer than 255"):
        validate_image("a" * 256)
    with pytest.raises(InvalidInput, match="too long"):
        validate_image("a" * 10_000)


def test_image_message_is_bounded() -> None:
    with pytest.raises(InvalidInput) as info:
        validate_image("a/" * 200 + "B")
    assert len(str(info.value)) < 200


def test_image_is_returned_stripped() -> None:
    assert validate_image("  busybox:latest \n") == "busybox:latest"


# -- users -----------------------------------------------------------------------------
VALID_USERS = [
    "odewahn",
    "rmadsen",
    "a",
    "A",
    "7",
    "Alice",
    "alice@example.com",
    "first.last+tag@example.co.uk",
    "under_score",
    "dash-ed",
    "x" * 64,
]

INVALID_USERS = [
    ("empty", ""),
    ("whitespace only", "   "),
    ("inner space", "a b"),
    ("slash", "a/b"),
    ("backslash", "a\\b"),
    ("colon", "a:b"),
    ("non-ASCII", "ünïcode"),
    ("non-ASCII letter", "josé"),
    ("emoji", "bob😀"),
    ("too long 65", "x" * 65),
    ("way too long", "x" * 10_000),
    ("leading dot", ".alice"),
    ("leading dash", "-alice"),
    ("leading at", "@alice"),
    ("leading plus", "+alice"),
    ("inner newline", "ali\nce"),
    ("null byte", "alice\x00"),
    ("tab inside", "ali\tce"),
    ("html", "<script>alert(1)</script>"),
    ("quote", 'al"ice'),
    ("redis glob", "al*ice"),
    ("shell", "$(id)"),
]


@pytest.mark.parametrize("user", VALID_USERS)
def test_valid_user(user: str) -> None:
    assert validate_user(user) == user


@pytest.mark.parametrize(("why", "user"), INVALID_USERS, ids=[w for w, _ in INVALID_USERS])
def test_invalid_user(why: str, user: str) -> None:
    with pytest.raises(InvalidInput):
        validate_user(user)


@pytest.mark.parametrize("value", [None, 7, ["alice"], {"u": 1}, False], ids=repr)
def test_user_must_be_a_string(value: object) -> None:
    with pytest.raises(InvalidInput):
        validate_user(value)


def test_user_is_returned_stripped() -> None:
    assert validate_user(" alice \n") == "alice"


# -- hostnames -------------------------------------------------------------------------
VALID_HOSTNAMES = ["ki60dje40khk", "rstnjd3zyu25", "000000000000", "zzzzzzzzzzzz", "abcdef123456"]

INVALID_HOSTNAMES = [
    ("empty", ""),
    ("11 chars", "ki60dje40kh"),
    ("13 chars", "ki60dje40khkk"),
    ("uppercase", "KI60DJE40KHK"),
    ("one uppercase", "Ki60dje40khk"),
    ("with dot", "ki60dje.0khk"),
    ("with dash", "ki60dje-0khk"),
    ("with underscore", "ki60dje_0khk"),
    ("dot dot", ".."),
    ("traversal", "../../etc/pa"),
    ("slash", "ki60dje/0khk"),
    ("space", "ki60dje 0khk"),
    ("leading space", " ki60dje40kh"),
    ("trailing newline", "ki60dje40khk\n"),
    ("leading newline", "\nki60dje40khk"),
    ("null byte", "ki60dje40kh\x00"),
    ("non-ASCII digits", "١٢٣٤٥٦٧٨٩٠١٢"),
    ("non-ASCII letters", "ķi60dje40khk"),
    ("redis glob", "ki60dje40kh*"),
    ("very long", "a" * 5000),
]


@pytest.mark.parametrize("hostname", VALID_HOSTNAMES)
def test_valid_hostname(hostname: str) -> None:
    assert is_hostname(hostname)


@pytest.mark.parametrize(("why", "hostname"), INVALID_HOSTNAMES, ids=[w for w, _ in INVALID_HOSTNAMES])
def test_invalid_hostname(why: str, hostname: str) -> None:
    assert not is_hostname(hostname)


def test_hostname_alphabet_and_length() -> None:
    assert HOSTNAME_LENGTH == 12
    assert HOSTNAME_ALPHABET == "0123456789abcdefghijklmnopqrstuvwxyz"
    assert is_hostname(HOSTNAME_ALPHABET[:12]) and is_hostname(HOSTNAME_ALPHABET[-12:])
