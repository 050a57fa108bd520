"""The Lua scripts in shared/lua: each documents its KEYS and ARGV, and each loads as Redis runs it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from importlib import resources

import pytest
import redis as redislib

from shared import lua
from shared.status import GROUPS, TRANSITIONS, Status
from testkit.support import RedisServer

SCRIPTS = sorted(p.name[:-4] for p in resources.files("shared.lua").iterdir() if p.name.endswith(".lua"))
#: Files holding functions for other scripts, not run on their own.
LIBRARIES = {"quota", "record_event"}


def header(name: str) -> list[str]:
    text = resources.files("shared.lua").joinpath(f"{name}.lua").read_text()
    return list(re.match(r"(?:--[^\n]*\n)+", text).group(0).splitlines())  # type: ignore[union-attr]


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redislib.Redis]:
    made = redislib.Redis.from_url(redis_server.url, decode_responses=True)
    yield made
    made.close()


@pytest.mark.parametrize("name", sorted(set(SCRIPTS) - LIBRARIES))
def test_every_script_names_its_keys_and_argv_at_the_top(name: str) -> None:
    lines = header(name)
    text = lua.source(name)
    for kind in ("KEYS", "ARGV"):
        used = {int(n) for n in re.findall(rf"{kind}\[(\d+)\]", text)}
        documented = {int(n) for n in re.findall(rf"^-- {kind}\[(\d+)\]", "\n".join(lines), re.MULTILINE)}
        assert used <= documented, f"{name}.lua uses {kind} {sorted(used - documented)} its header does not name"


@pytest.mark.parametrize("name", sorted(set(SCRIPTS) - LIBRARIES))
def test_every_script_compiles_in_redis(client: redislib.Redis, name: str) -> None:
    assert client.script_load(lua.source(name))


def test_libraries_come_first_once_each() -> None:
    text = lua.source("pool_claim")  # uses quota and record_event, which uses record_defaults
    assert text.count("local function quota_refusal") == 1
    assert text.index("local PUBLIC_DEFAULTS") < text.index("local function record_event") < text.index("LPOP")


def test_the_status_tables_are_the_status_machine(client: redislib.Redis) -> None:
    probe = lua.GENERATED["status"]() + "return cjson.encode({TRANSITIONS, {" + ", ".join(GROUPS) + "}})"
    transitions, groups = json.loads(client.eval(probe, 0))
    assert {s: set(nxt) for s, nxt in transitions.items() if nxt} == {
        s.value: {n.value for n in nxt} for s, nxt in TRANSITIONS.items() if nxt
    }
    for (name, group), found in zip(GROUPS.items(), groups, strict=True):
        assert set(found) == {s.value for s in group}, name
    assert set(Status) >= {Status(s) for g in groups for s in g}
