"""The Lua scripts the Redis writes run as, one file each (``shared/lua/<name>.lua``), and their loader.

Every file opens with a comment block: what the script does, then its KEYS and ARGV one per line
(``-- KEYS[1] ...``, ``-- ARGV[1] ...``), then what it returns. A line ``-- uses: a, b`` names the
libraries the script needs: other files here (``quota.lua``, ``record_event.lua``: local functions)
or a table generated from Python's single definition of it (:data:`GENERATED`). :func:`source`
puts each library, once, before the script that uses it, so Redis runs one self-contained text.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from importlib import resources

import redis
from redis.commands.core import Script

_USES = re.compile(r"^--\s*uses:\s*(.+)$", re.MULTILINE)


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid Lua string for the characters used here


def _lua_set(values: list[str]) -> str:
    return "{" + ", ".join(f"[{_lua_string(v)}] = true" for v in sorted(values)) + "}"


def _status_tables() -> str:
    """The status machine of shared/status.py as Lua tables: ``STATUS.<NAME>``, ``TRANSITIONS[from][to]``
    and one set per named group of statuses (``TERMINAL[s]``, ``COUNTED[s]``, ...)."""
    from shared import status as machine

    lines = ["-- Generated from shared/status.py when the script is loaded: the one status machine."]
    lines.append("local STATUS = {" + ", ".join(f"{s.name} = {_lua_string(s.value)}" for s in machine.Status) + "}")
    lines.append(
        "local TRANSITIONS = {"
        + ", ".join(
            f"[{_lua_string(s.value)}] = {_lua_set([n.value for n in nxt])}" for s, nxt in machine.TRANSITIONS.items()
        )
        + "}"
    )
    # Where a status's key is among KEYS given one per status, in Status's order (idx:status:<s>).
    lines.append("local STATUS_AT = {" + ", ".join(f"{s.name} = {i}" for i, s in enumerate(machine.Status)) + "}")
    for name, group in machine.GROUPS.items():
        lines.append(f"local {name} = {_lua_set([s.value for s in group])}")
    return "\n".join(lines) + "\n"


def _record_defaults() -> str:
    """What the public record shows for a field its hash lacks (shared/record.py), as a Lua table."""
    from shared.record import PUBLIC_DEFAULTS

    pairs = ", ".join(f"[{_lua_string(k)}] = {_lua_string(v)}" for k, v in PUBLIC_DEFAULTS.items())
    return "-- Generated from shared/record.py when the script is loaded.\nlocal PUBLIC_DEFAULTS = {" + pairs + "}\n"


def _internal_fields() -> str:
    """The record's internal fields (shared/record.py Internal) as ``INTERNAL.<NAME>``, their names in the hash."""
    from shared.record import Internal

    pairs = ", ".join(f"{f.name} = {_lua_string(f.key)}" for f in Internal)
    return "-- Generated from shared/record.py when the script is loaded.\nlocal INTERNAL = {" + pairs + "}\n"


#: Libraries made from Python's definitions rather than read from a file.
GENERATED: dict[str, Callable[[], str]] = {
    "status": _status_tables,
    "record_defaults": _record_defaults,
    "internal": _internal_fields,
}


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


def _text(name: str) -> str:
    return GENERATED[name]() if name in GENERATED else _read(name)


def _uses(text: str) -> list[str]:
    found = _USES.search(text)
    return [n.strip() for n in found.group(1).split(",") if n.strip()] if found else []


@functools.cache
def source(name: str) -> str:
    """The text Redis runs for script ``name``: its libraries (and theirs), each once, then the script."""
    done: list[str] = []

    def add(lib: str, seen: tuple[str, ...]) -> None:
        if lib in done:
            return
        if lib in seen:
            raise ValueError(f"Lua libraries use each other in a cycle: {' -> '.join((*seen, lib))}")
        for dep in _uses(_text(lib)):
            add(dep, (*seen, lib))
        done.append(lib)

    script = _read(name)
    for lib in _uses(script):
        add(lib, (name,))
    return "".join(_text(lib) for lib in done) + script


def register(client: redis.Redis, name: str) -> Script:
    """Script ``name`` registered on ``client`` (run by its SHA, loaded again when Redis lost it)."""
    return client.register_script(source(name))
