"""docs/configuration.md, made from the settings' own declarations (``make docs`` writes it).

Each setting's variable, default and description live once, where ``shared/settings.py`` declares
it; this turns them into the table, with setting names set as code. The variables only the process
commands read (``make run``, ``swarm-manager serve`` and ``flower``) are listed here, beside them.
tests/test_docs.py checks that the committed file is what this makes.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from shared.settings import documented_settings

TARGET = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

#: Read by the process commands, not by Settings: (variable, default, description).
PROCESS_VARIABLES = (
    ("PORT", "3000", "(`make run`) the API's port."),
    ("API_WORKERS", "2", "(`make run`, `swarm-manager serve`) gunicorn worker processes (gevent)."),
    (
        "API_CONNECTIONS",
        "10000",
        "(`make run`, `swarm-manager serve`) open connections per gunicorn worker process, event streams and "
        "idle ones included (see [Serving](operations.md#serving)).",
    ),
    ("FLOWER_PORT", "5555", "(`make run`) Flower's port."),
    (
        "FLOWER_BASIC_AUTH",
        "",
        "(`make run`; required by compose) Flower's own setting: `user:password[,user:password]` it asks for "
        "on its pages and API ([Metrics and Flower](operations.md#metrics-and-flower)).",
    ),
    (
        "PROXY",
        "chp",
        "(`make run`) `chp`: run configurable-http-proxy (public `:8000`, API `:8001`; `PUBLIC_URL` then "
        "defaults to its port); `off`: no proxy.",
    ),
)

HEAD = """# Configuration

<!-- Made by `make docs` (cli/docs.py) from shared/settings.py: edit the settings, not this file. -->

Every setting is an environment variable, read and validated once at start-up (a bad value stops the
process with a message naming it; `swarm-manager check` runs the same validation). A secret
(`ADMIN_TOKEN`, `SECRET_KEY`, `PROXY_AUTH_TOKEN`, `REGISTRY_AUTH`, the Redis passwords) may instead come from a file
named by `<NAME>_FILE`. The engine connection uses the Docker CLI's own variables.

| Variable | Default | Meaning |
|---|---|---|
"""

TAIL = """
**TLS to the engine always verifies the server.** Setting `DOCKER_CERT_PATH` or `DOCKER_TLS_VERIFY`
turns on mutual TLS with the engine's CA; there is no "TLS without verification". The engine client
ignores `REQUESTS_CA_BUNDLE`/`CURL_CA_BUNDLE` (which `requests` would otherwise let override the
engine's CA, a real failure on hosts that set them) and proxy variables. A wrong CA makes spawns
`FAILED` at once with a TLS error; an unreachable engine is retried with backoff until the spawn's
deadline, then `FAILED` with "engine unreachable". The client speaks Docker API 1.41 (Docker 20.10)
without asking the engine for its version first, so an engine must accept that version.
"""


#: Code and links, left as they are.
_KEPT = re.compile(r"(`[^`]*`|\[[^\]]*\]\([^)]*\))")
#: A word with a placeholder (``<hostname>``, ``{domain}``) or a URL: code, so that Markdown shows it as
#: written (``<hostname>`` would be taken for an HTML tag); trailing punctuation stays outside.
_LITERAL = re.compile(r"[^\s`(]*(?:<[A-Za-z_]+>|\{[a-z_]+\}|://)[^\s`]*?(?=[,.;:)]*(?:\s|$))")


def _as_code(text: str, names: frozenset[str]) -> str:
    """Literals and setting names in ``text`` as code, outside what already is code."""
    pieces = _KEPT.split(text)
    for i in range(0, len(pieces), 2):
        pieces[i] = _LITERAL.sub(lambda m: f"`{m.group(0)}`", pieces[i])
    text = "".join(pieces)
    pieces = _KEPT.split(text)
    for i in range(0, len(pieces), 2):
        pieces[i] = re.sub(
            r"\b[A-Z][A-Z0-9_]{2,}(?:_FILE)?\b",
            lambda m: f"`{m.group(0)}`" if m.group(0).removesuffix("_FILE") in names else m.group(0),
            pieces[i],
        )
    return "".join(pieces)


def configuration_markdown() -> str:
    rows = [*documented_settings(), *PROCESS_VARIABLES]
    names = frozenset(name for name, _, _ in rows)
    lines = [
        f"| `{name}` | {f'`{default}`' if default else '(none)'} | {_as_code(doc, names).replace('|', '&#124;')} |"
        for name, default, doc in rows
    ]
    return HEAD + "\n".join(lines) + "\n" + TAIL


def main(argv: list[str] | None = None) -> int:
    TARGET.write_text(configuration_markdown())
    print(f"{TARGET} written")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
