"""The server-side processes, each defined once: ``swarm-manager serve|worker|beat|watch|flower|check``.

``make run`` (its supervisord configuration, ``scripts/run-local.sh``), the Dockerfiles and the
compose and stack files all start the processes through these commands, so a process's command
line lives here and nowhere else. Each command replaces this process (``exec``) with the server
from the same virtualenv, so signals from a supervisor reach the server itself.

``check`` validates the settings (``Settings.from_env``) and exits: 0 with nothing printed when
they are good, 1 with every problem named otherwise. ``make run`` runs it before it starts
anything, so a bad value stops the run with that message instead of a restart loop.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import NoReturn


class ServerError(Exception):
    """A server process cannot be started; the message says why."""


def _exec(program: str, argv: list[str]) -> NoReturn:
    beside = Path(sys.executable).parent / program  # the same virtualenv as this command
    path = str(beside) if beside.exists() else shutil.which(program)
    if not path:
        raise ServerError(f"{program} is not installed (pip install -r requirements.txt)")
    sys.stdout.flush()
    os.execv(path, [path, *argv])


def _check_settings() -> None:
    """Stop with the settings' own message before exec'ing a server that would fail the same way."""
    from shared.errors import ConfigError
    from shared.settings import Settings

    try:
        Settings.from_env()
    except ConfigError as exc:
        raise ServerError(str(exc)) from None


def cmd_check(args: argparse.Namespace, extra: list[str]) -> int:
    _check_settings()
    return 0


def cmd_serve(args: argparse.Namespace, extra: list[str]) -> int:
    _check_settings()
    bind = args.bind or f"127.0.0.1:{os.environ.get('PORT', '3000')}"
    _exec("gunicorn", [*serve_options(bind, args.workers, args.connections), *extra, "api.wsgi:app"])


#: Seconds a client has to send a whole request (its line and headers), and to send the next one on a
#: kept-alive connection: a silent or trickling client is dropped then, holding nothing but a greenlet.
REQUEST_TIMEOUT = 5


def serve_options(bind: str, workers: int, connections: int) -> list[str]:
    """gunicorn's options for the API: the one serving model (docs/operations.md: Serving).

    gunicorn's gevent worker: every connection is a greenlet, so thousands of open event streams
    and idle sockets cost memory, not threads, and never hold up other requests (with threads, 64
    streams took the API offline). ``connections`` bounds a worker's open connections.
    """
    return [
        "--bind",
        bind,
        "--workers",
        str(workers),
        "--worker-class",
        "gevent",
        "--worker-connections",
        str(connections),
        "--keep-alive",
        str(REQUEST_TIMEOUT),
        "--graceful-timeout",
        "10",
        # The workers' heartbeat files on tmpfs where there is one: a slow disk (a container's
        # overlay filesystem) can make gunicorn kill healthy workers.
        *(["--worker-tmp-dir", "/dev/shm"] if os.path.isdir("/dev/shm") else []),
        "--access-logfile",
        "-",
    ]


def cmd_worker(args: argparse.Namespace, extra: list[str]) -> int:
    _check_settings()
    hostname = args.hostname or f"worker-{os.getpid()}@%h"
    _exec("celery", ["-A", "worker.celery_app", "worker", "--loglevel", args.loglevel, "--hostname", hostname, *extra])


def cmd_beat(args: argparse.Namespace, extra: list[str]) -> int:
    _check_settings()
    schedule = args.schedule or os.path.join(tempfile.gettempdir(), f"swarm-manager-beat-{os.getuid()}")
    _exec("celery", ["-A", "worker.celery_app", "beat", "--loglevel", args.loglevel, "--schedule", schedule, *extra])


def cmd_watch(args: argparse.Namespace, extra: list[str]) -> int:
    """Follow the engine's events (worker/watcher.py) in this process until SIGTERM or SIGINT."""
    _check_settings()
    import logging
    import signal
    import threading

    from worker import tasks
    from worker.watcher import Watcher

    logging.basicConfig(level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    stop = threading.Event()

    def stopping(signum: int, frame: object) -> None:
        stop.set()
        raise SystemExit(0)  # out of a blocking read of the event stream; run() lets the lease go

    signal.signal(signal.SIGTERM, stopping)
    signal.signal(signal.SIGINT, stopping)
    Watcher(tasks.spawner().engine, tasks.reconciler(), tasks.watch_lease()).run(stop)
    return 0


def cmd_flower(args: argparse.Namespace, extra: list[str]) -> int:
    _check_settings()
    # Flower reads FLOWER_BASIC_AUTH (user:password[,...]) itself; FLOWER_BASIC_AUTH_FILE names a
    # file holding it (a Docker secret, make run's .state file).
    path = os.environ.pop("FLOWER_BASIC_AUTH_FILE", "")
    if path and not os.environ.get("FLOWER_BASIC_AUTH"):
        try:
            with open(path, encoding="utf-8") as f:
                os.environ["FLOWER_BASIC_AUTH"] = f.read().strip()
        except OSError as exc:
            raise ServerError(f"cannot read FLOWER_BASIC_AUTH_FILE {path!r}: {exc.strerror}") from None
    if not os.environ.get("FLOWER_BASIC_AUTH"):
        # Flower shows every user's notebooks and can revoke tasks and shut workers down; open, it
        # would also answer any web page that rebinds a name of its own to this address.
        raise ServerError(
            "Flower needs a password: set FLOWER_BASIC_AUTH=user:password (or FLOWER_BASIC_AUTH_FILE, a file "
            "holding it); `make run` makes one in .state/run/flower-auth"
        )
    _exec(
        "celery",
        ["-A", "worker.celery_app", "flower", f"--port={args.port}", f"--address={args.address}", *extra],
    )


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The server commands on the ``swarm-manager`` parser; each sets ``server`` to its function."""
    serve = commands.add_parser(
        "serve", help="run the API under gunicorn (as `make run` does); other options are passed to gunicorn"
    )
    serve.add_argument("--bind", help="address:port (default 127.0.0.1:$PORT, PORT defaulting to 3000)")
    serve.add_argument(
        "--workers",
        type=int,
        default=os.environ.get("API_WORKERS", "2"),  # a string: parsed by type=int only for serve
        help="gunicorn worker processes (default $API_WORKERS or 2)",
    )
    serve.add_argument(
        "--connections",
        type=int,
        default=os.environ.get("API_CONNECTIONS", "10000"),
        help="open connections per worker process, event streams and idle ones included "
        "(default $API_CONNECTIONS or 10000)",
    )
    serve.set_defaults(server=cmd_serve)

    worker = commands.add_parser("worker", help="run a Celery worker; other options are passed to celery")
    worker.add_argument("--hostname", help="the worker's node name (default worker-<pid>@<host>)")
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(server=cmd_worker)

    beat = commands.add_parser("beat", help="run Celery beat (the reconcile schedule): exactly one per deployment")
    beat.add_argument("--schedule", help="beat's state file (default: one in the temporary folder)")
    beat.add_argument("--loglevel", default="INFO")
    beat.set_defaults(server=cmd_beat)

    watch = commands.add_parser(
        "watch",
        help="follow the engine's events and fail a notebook that stops at once (one follows, others stand by)",
    )
    watch.add_argument("--loglevel", default="INFO")
    watch.set_defaults(server=cmd_watch)

    flower = commands.add_parser("flower", help="run Flower, the task monitor; other options are passed to it")
    flower.add_argument("--port", type=int, default=os.environ.get("FLOWER_PORT", "5555"), help="default 5555")
    flower.add_argument(
        "--address", default=os.environ.get("FLOWER_ADDRESS", "127.0.0.1"), help="default 127.0.0.1 (loopback)"
    )
    flower.set_defaults(server=cmd_flower)

    check = commands.add_parser("check", help="validate the settings from the environment and exit (0: good)")
    check.set_defaults(server=cmd_check)
