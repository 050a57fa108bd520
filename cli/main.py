"""The ``swarm-manager`` command.

Client commands (``spawn``, ``status``, ``list``, ``kill``) talk to the API over HTTP with
``requests``; ``--wait`` follows the notebook's Server-Sent Events stream
(``GET /container/<hostname>/events``) and falls back to polling ``GET /container/<hostname>``
every 0.5 s where the API has no such stream. Server commands (``serve``, ``worker``, ``beat``,
``flower``, ``check``; ``cli/servers.py``) replace this process with gunicorn, Celery or Flower,
as ``make run``, the Dockerfiles and compose start them.

Output: tables and plain values on stdout for people, ``--json`` for scripts (the API's JSON as
it is); progress and errors go to stderr. Exit status: 0 done, 1 failed (a notebook that
FAILED or was killed, an error answer from the API, a wait that timed out), 2 bad usage,
3 the API could not be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import requests

from cli import servers
from shared.record import parse_rfc3339
from shared.status import SETTLED, TERMINAL, Status

DEFAULT_API = "http://127.0.0.1:3000"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
POLL_INTERVAL = 0.5
HTTP_TIMEOUT = 10.0
#: Longest silence accepted on an events stream (the API sends a keep-alive every 15 s).
STREAM_IDLE = 20.0

#: Where ``spawn --wait`` stops: usable, failed, or killed meanwhile.
SPAWN_DONE = frozenset(SETTLED | {Status.DELETING})


class CliError(Exception):
    """Reported on stderr as ``error: <message>``; ``exit_code`` is the process's exit status."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class NoEventStream(Exception):
    """The API answered the events route with something other than a stream (an older API)."""


# -- HTTP ----------------------------------------------------------------------------------------
def _reason(exc: Exception) -> str:
    """The useful end of a requests/urllib3 error ("Connection refused"), not its whole chain."""
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if found:
        return found.group(1).strip()
    if isinstance(exc, requests.Timeout):
        return "timed out"
    return text[:200] or type(exc).__name__


class Api:
    """The swarm-manager HTTP API at ``base``."""

    def __init__(self, base: str, token: str = "", timeout: float = HTTP_TIMEOUT) -> None:
        if not re.match(r"^https?://[^/\s]+", base):
            raise CliError(f"--api must be an http:// or https:// URL, got {base!r}", EXIT_USAGE)
        self.base = base.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def _unreachable(self, exc: Exception) -> CliError:
        return CliError(
            f"cannot reach the swarm-manager API at {self.base}: {_reason(exc)} "
            "(is it running? set --api or SWARM_MANAGER_URL)",
            EXIT_UNREACHABLE,
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of a 2xx; CliError with the API's own message for anything else."""
        try:
            response = self.session.request(method, self.base + path, timeout=self.timeout, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise self._unreachable(exc) from exc
        except requests.RequestException as exc:
            raise CliError(f"{method} {self.base}{path} failed: {exc}") from exc
        if not response.ok:
            raise self.error_of(response)
        try:
            return response.json()
        except ValueError:
            raise CliError(
                f"the API answered {method} {path} with something that is not JSON: {response.text[:200]!r}"
            ) from None

    @staticmethod
    def error_of(response: requests.Response) -> CliError:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            return CliError(f"{body['error']} (HTTP {response.status_code} {body.get('code', '')})".rstrip())
        return CliError(f"HTTP {response.status_code} from {response.url}: {response.text[:200]!r}")

    def record(self, hostname: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/container/{hostname}"))

    # -- following a notebook --------------------------------------------------------------
    def watch(
        self,
        hostname: str,
        until: frozenset[Status],
        timeout: float,
        report: Callable[[str, str | None, str], None],
    ) -> dict[str, Any]:
        """Follow ``hostname`` until its status is in ``until``; return that record.

        ``report(hostname, status or None, message)`` is called for every change seen. Uses the
        events stream while the API has one (reconnecting when it ends or goes quiet), else
        polls. Raises CliError when ``timeout`` seconds pass first.
        """
        deadline = time.monotonic() + timeout
        streaming = True
        last: dict[str, Any] | None = None
        while True:
            if streaming:
                try:
                    done = self._stream(hostname, until, deadline, report)
                except NoEventStream:
                    streaming = False
                    continue
                if done is not None:
                    return done
            # A stream that ended or went quiet, or no stream at all: look at the record itself.
            last = self.record(hostname)
            report(hostname, last.get("status"), describe(last))
            if last.get("status") in until:
                return last
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CliError(
                    f"{hostname} did not reach {' or '.join(sorted(s.value for s in until))} within "
                    f"{timeout:g}s; it is {last.get('status')}"
                )
            if not streaming:
                time.sleep(min(POLL_INTERVAL, remaining))

    def _stream(
        self,
        hostname: str,
        until: frozenset[Status],
        deadline: float,
        report: Callable[[str, str | None, str], None],
    ) -> dict[str, Any] | None:
        """Read the events stream until a record in ``until`` (returned), or it ends (None)."""
        idle = max(1.0, min(STREAM_IDLE, deadline - time.monotonic()))
        try:
            response = self.session.get(
                f"{self.base}/container/{hostname}/events",
                headers={"Accept": "text/event-stream"},
                stream=True,
                timeout=(self.timeout, idle),
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise self._unreachable(exc) from exc
        with response:
            if response.status_code == 404 or (
                response.ok and not response.headers.get("Content-Type", "").startswith("text/event-stream")
            ):
                # No events route (an API from before it), or no such notebook: polling tells which.
                raise NoEventStream()
            if not response.ok:
                raise self.error_of(response)
            response.encoding = "utf-8"
            try:
                for _name, data in parse_sse(response.iter_lines(chunk_size=None, decode_unicode=True)):
                    status = data.get("status")
                    record = data.get("record")
                    report(hostname, status, str(data.get("message") or status or ""))
                    if status in until and isinstance(record, dict):
                        # The ready event carries the addresses (notebook_url with the token,
                        # for the owner and admins); its record does not.
                        return {**record, **{k: data[k] for k in ("public_url", "notebook_url") if k in data}}
                    if time.monotonic() >= deadline:
                        return None
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError):
                return None  # quiet for too long or cut off: the caller checks and reconnects
        return None


def parse_sse(lines: Iterable[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event name, JSON data) for each Server-Sent Event; comments and other fields are skipped."""
    name, data = "message", list[str]()
    for line in lines:
        if line == "":
            if data:
                try:
                    payload = json.loads("\n".join(data))
                except ValueError:
                    payload = None
                if isinstance(payload, dict):
                    yield name, payload
            name, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)


# -- output --------------------------------------------------------------------------------------
def describe(record: dict[str, Any]) -> str:
    """A record's status in words (what the events stream says, for the polling fallback)."""
    status = record.get("status")
    if status == Status.PENDING:
        return "queued: waiting for a worker"
    if status == Status.STARTING:
        return "starting" + (f" on {record['node']}" if record.get("node") else "")
    if status == Status.ACTIVE:
        return f"ready at {record.get('public_url') or record.get('url', '')}"
    if status == Status.FAILED:
        return f"failed: {record.get('error') or 'no reason given'}"
    if status == Status.DELETING:
        return "stopping" + (f": {record['error']}" if record.get("error") else "")
    return str(status or "").lower()


def age(start_time: str, now: float | None = None) -> str:
    started = parse_rfc3339(start_time or "")
    if not started:
        return "-"
    seconds = max(0, int((time.time() if now is None else now) - started))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]
    ]
    return "\n".join(lines)


def show_record(record: dict[str, Any]) -> str:
    width = max(len(k) for k in record) if record else 0
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in record.items())


class Output:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self._last: tuple[str, str] | None = None

    def data(self, value: Any, human: str) -> None:
        print(json.dumps(value, indent=2) if self.as_json else human)

    def progress(self, hostname: str, status: str | None, message: str) -> None:
        if not message or (hostname, message) == self._last:
            return
        self._last = (hostname, message)
        print(f"{hostname}  {message}", file=sys.stderr, flush=True)


# -- commands ------------------------------------------------------------------------------------
def cmd_spawn(api: Api, out: Output, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"image": args.image}
    if args.user is not None:
        body["user"] = args.user
    if args.ttl is not None:
        body["ttl"] = args.ttl
    record = dict(api.request("POST", "/spawn", json=body))
    hostname = str(record["hostname"])
    if not args.wait:
        out.data(record, show_record(record))
        return EXIT_OK
    out.progress(hostname, record.get("status"), describe(record))
    record = api.watch(hostname, SPAWN_DONE, args.timeout, out.progress)
    status = record.get("status")
    if status == Status.ACTIVE:
        # What to open: with the token when we may see it, else the public address (an older
        # API has neither: its url, <hostname>.<DOMAIN>).
        out.data(record, str(record.get("notebook_url") or record.get("public_url") or record.get("url", "")))
        return EXIT_OK
    if out.as_json:
        out.data(record, "")
    if status == Status.FAILED:
        raise CliError(f"{hostname} failed: {record.get('error') or 'no reason given'}")
    raise CliError(f"{hostname} was killed before it was ready (it is {status})")


def cmd_status(api: Api, out: Output, args: argparse.Namespace) -> int:
    record = api.record(args.hostname)
    out.data(record, show_record(record))
    return EXIT_OK


def cmd_list(api: Api, out: Output, args: argparse.Namespace) -> int:
    params = {
        k: v
        for k, v in {"user": args.user, "status": args.status, "limit": args.limit, "offset": args.offset}.items()
        if v is not None
    }
    records = api.request("GET", "/containers", params=params)
    rows = [
        [
            r.get("hostname", ""),
            r.get("status", ""),
            r.get("user", ""),
            r.get("image", ""),
            age(r.get("start_time", "")),
            r.get("node", "") or "-",
            r.get("url", ""),
        ]
        for r in records
    ]
    human = table(rows, ["HOSTNAME", "STATUS", "USER", "IMAGE", "AGE", "NODE", "URL"]) if rows else "no notebooks"
    out.data(records, human)
    return EXIT_OK


def cmd_nodes(api: Api, out: Output, args: argparse.Namespace) -> int:
    found = api.request("GET", "/nodes")
    rows = []
    for node in found.get("nodes", []):
        where = [
            node.get("hostname") or node.get("id", "")[:12],
            node.get("role", ""),
            f"{node.get('state', '')}/{node.get('availability', '')}",
            node.get("address", "") or "-",
        ]
        images = node.get("images") or {}
        if not images:
            rows.append([*where, "-", "-"])
        for image, state in images.items():
            word = state.get("state", "")
            if state.get("reason"):
                word += f" ({state['reason'][:80]})"
            rows.append([*where, image, word])
    human = table(rows, ["NODE", "ROLE", "STATE", "ADDRESS", "IMAGE", "PRE-PULL"]) if rows else "no nodes seen yet"
    out.data(found, human)
    return EXIT_OK


def cmd_kill(api: Api, out: Output, args: argparse.Namespace) -> int:
    record = dict(api.request("DELETE", f"/container/{args.hostname}"))
    if args.wait and record.get("status") not in TERMINAL:
        out.progress(args.hostname, record.get("status"), describe(record))
        record = api.watch(args.hostname, TERMINAL, args.timeout, out.progress)
    out.data(record, f"{record.get('hostname')}  {record.get('status')}")
    return EXIT_OK


# -- user tokens (the admin's token only; see docs/security.md) ----------------------
def cmd_token_create(api: Api, out: Output, args: argparse.Namespace) -> int:
    made = dict(api.request("POST", "/tokens", json={"user": args.user}))
    if not out.as_json:  # stdout is the token alone: TOKEN=$(swarm-manager token create --user alice)
        print(f"token {made.get('id')} for {made.get('user')}; it is shown only now", file=sys.stderr)
    out.data(made, str(made.get("token", "")))
    return EXIT_OK


def cmd_token_list(api: Api, out: Output, args: argparse.Namespace) -> int:
    tokens = api.request("GET", "/tokens", params={"user": args.user} if args.user else None)
    rows = [[t.get("id", ""), t.get("user", ""), t.get("created", "")] for t in tokens]
    out.data(tokens, table(rows, ["ID", "USER", "CREATED"]) if rows else "no tokens")
    return EXIT_OK


def cmd_token_revoke(api: Api, out: Output, args: argparse.Namespace) -> int:
    revoked = dict(api.request("DELETE", f"/tokens/{args.id}"))
    out.data(revoked, f"{revoked.get('id')}  revoked (was {revoked.get('user')}'s)")
    return EXIT_OK


# -- arguments -----------------------------------------------------------------------------------
def positive(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {raw!r}")
    return value


def parser() -> argparse.ArgumentParser:
    # --api and --json work before or after the command: a parent on the main parser and on each
    # command, SUPPRESSed so the one given after the command does not reset the one before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--api",
        default=argparse.SUPPRESS,
        metavar="URL",
        help=f"the API's base URL (default: $SWARM_MANAGER_URL or {DEFAULT_API})",
    )
    common.add_argument(
        "--token",
        default=argparse.SUPPRESS,
        help="the admin's or a user's token, sent as Authorization: Bearer "
        "(default: $SWARM_MANAGER_TOKEN; needed when the API runs with AUTH on)",
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the API's JSON instead of tables (for scripts)",
    )

    main = argparse.ArgumentParser(
        prog="swarm-manager",
        parents=[common],
        description="Spawn, watch and kill Jupyter notebook servers through the swarm-manager API.",
        epilog="Exit status: 0 done, 1 failed, 2 bad usage, 3 API unreachable.",
    )
    commands = main.add_subparsers(dest="command", required=True, metavar="COMMAND")

    spawn = commands.add_parser("spawn", parents=[common], help="start a notebook")
    spawn.add_argument("--image", required=True, help="Docker image of the notebook server")
    spawn.add_argument("--user", help="whose notebook it is (with a user's token: that user)")
    spawn.add_argument("--ttl", type=int, metavar="SECONDS", help="kill it after this long (capped by MAX_AGE)")
    spawn.add_argument("--wait", action="store_true", help="follow it until ACTIVE or FAILED, then print its URL")
    spawn.add_argument(
        "--timeout", type=positive, default=300.0, metavar="SECONDS", help="how long --wait waits (default 300)"
    )
    spawn.set_defaults(run=cmd_spawn)

    status = commands.add_parser("status", parents=[common], help="show one notebook's record")
    status.add_argument("hostname")
    status.set_defaults(run=cmd_status)

    listing = commands.add_parser("list", parents=[common], help="list notebooks, newest first")
    listing.add_argument("--user")
    listing.add_argument("--status", type=str.upper, choices=[s.value for s in Status])
    listing.add_argument("--limit", type=int)
    listing.add_argument("--offset", type=int)
    listing.set_defaults(run=cmd_list)

    kill = commands.add_parser("kill", parents=[common], help="stop and remove a notebook")
    kill.add_argument("hostname")
    kill.add_argument("--wait", action="store_true", help="follow it until REMOVED")
    kill.add_argument(
        "--timeout", type=positive, default=120.0, metavar="SECONDS", help="how long --wait waits (default 120)"
    )
    kill.set_defaults(run=cmd_kill)

    nodes = commands.add_parser(
        "nodes", parents=[common], help="the engine's nodes and which pre-pulled images each has (admin)"
    )
    nodes.set_defaults(run=cmd_nodes)

    servers.add_commands(commands)

    token = commands.add_parser("token", help="create, list and revoke user tokens (needs the admin's token)")
    token_commands = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    token_create = token_commands.add_parser("create", parents=[common], help="a new token for a user (printed once)")
    token_create.add_argument("--user", required=True, help="the user the token acts as")
    token_create.set_defaults(run=cmd_token_create)
    token_list = token_commands.add_parser("list", parents=[common], help="live tokens, without their secrets")
    token_list.add_argument("--user", help="only this user's")
    token_list.set_defaults(run=cmd_token_list)
    token_revoke = token_commands.add_parser("revoke", parents=[common], help="revoke a token (stops it at once)")
    token_revoke.add_argument("id", help="the token's id (from token create or token list)")
    token_revoke.set_defaults(run=cmd_token_revoke)
    return main


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args, extra = p.parse_known_args(argv)
    try:
        if hasattr(args, "server"):
            return int(args.server(args, extra))
        if extra:
            p.error(f"unrecognized arguments: {' '.join(extra)}")
        api = Api(
            getattr(args, "api", None) or os.environ.get("SWARM_MANAGER_URL") or DEFAULT_API,
            token=getattr(args, "token", None) or os.environ.get("SWARM_MANAGER_TOKEN", ""),
        )
        return int(args.run(api, Output(getattr(args, "json", False)), args))
    except CliError as exc:
        print(f"swarm-manager: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except servers.ServerError as exc:
        print(f"swarm-manager: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
