"""The images' HEALTHCHECK: whether the swarm-manager process this container runs is doing its job.

One script for every process, so compose and the stack need no healthcheck of their own: it reads
the container's main process (PID 1, which ``swarm-manager serve|worker|beat|flower`` replaced with
the server itself, cli/servers.py) and checks that server the way it can be checked from outside:

- the API (gunicorn): ``GET /healthz`` on its port answers 200 (503 while Redis is unreachable);
- a Celery worker: it answers a ``ping`` over the broker by its own node name (a hung or
  disconnected worker does not);
- Celery beat: its schedule file was written recently (beat writes it when it starts and then at
  least every 3 minutes plus one reconcile interval while it sends tasks);
- Flower: ``GET /healthcheck`` on its port answers 200.

Exit 0: healthy; 1: not, with the reason on stdout (``docker inspect`` shows it).
"""

from __future__ import annotations

import glob
import os
import socket
import sys
import time
import urllib.request

#: Seconds one check may take (the HEALTHCHECK's own timeout is longer).
TIMEOUT = 5
#: Celery beat writes its schedule at most this many seconds apart, plus one reconcile interval.
BEAT_SYNC_EVERY = 180


def main_process() -> list[str]:
    with open("/proc/1/cmdline", "rb") as f:
        return [arg.decode(errors="replace") for arg in f.read().split(b"\0") if arg]


def option(argv: list[str], name: str, default: str = "") -> str:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``argv``."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


def http_ok(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return "" if response.status == 200 else f"{url} answered {response.status}"
    except OSError as exc:  # HTTPError (non-2xx), URLError, timeouts
        return f"{url}: {exc}"


def check_api(argv: list[str]) -> str:
    port = option(argv, "--bind", "127.0.0.1:3000").rsplit(":", 1)[-1]
    return http_ok(f"http://127.0.0.1:{port}/healthz")


def check_flower(argv: list[str]) -> str:
    return http_ok(f"http://127.0.0.1:{option(argv, '--port', '5555')}/healthcheck")


def check_worker(argv: list[str]) -> str:
    from celery.utils.nodenames import host_format

    from worker.celery_app import app

    node = host_format(option(argv, "--hostname") or "celery@%h", hostname=socket.gethostname())
    try:
        replies = app.control.ping(destination=[node], timeout=TIMEOUT)
    except Exception as exc:  # the broker is unreachable: the worker cannot work either
        return f"cannot reach the broker to ping {node}: {exc}"
    if not any(node in reply for reply in replies):
        return f"worker {node} did not answer a ping within {TIMEOUT} s"
    return ""


def check_beat(argv: list[str]) -> str:
    from shared.settings import Settings

    schedule = option(argv, "--schedule", "celerybeat-schedule")
    files = glob.glob(glob.escape(schedule) + "*")  # the dbm module may add a suffix
    if not files:
        return f"beat has not written its schedule {schedule} yet"
    age = time.time() - max(os.path.getmtime(path) for path in files)
    limit = 2 * (BEAT_SYNC_EVERY + Settings.from_env().reconcile_interval)
    return f"beat last wrote its schedule {age:.0f} s ago (more than {limit:.0f} s)" if age > limit else ""


def check() -> str:
    argv = main_process()
    words = [os.path.basename(arg) for arg in argv]
    if "gunicorn" in words:
        return check_api(argv)
    if "celery" in words:
        for command, fn in (("worker", check_worker), ("beat", check_beat), ("flower", check_flower)):
            if command in argv:
                return fn(argv)
    return f"not a swarm-manager server process: {' '.join(argv)[:200]}"


if __name__ == "__main__":
    problem = check()
    if problem:
        print(problem)
    sys.exit(1 if problem else 0)
