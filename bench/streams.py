"""The serving model under a hostile load: thousands of event streams and idle sockets (`make bench`).

    .venv/bin/python -m bench.streams [--users 250] [--per-user 20] [--idle 1000] [--rate 50] [--seconds 20]

The API as `make run` serves it (``swarm-manager serve``: gunicorn's gevent workers, two
processes, authentication on) on its own redis-server. ``POST /spawn`` (a user of its own) and
``GET /healthz`` are timed at a fixed rate from a second process (bench/loadgen.py), first on a
quiet server, then with ``users`` x ``per-user`` open ``GET /events`` streams and ``idle`` silent
sockets held by a third process (bench/streamload.py, which reopens whatever the server drops),
and the p99s are compared side by side (loaded / quiet). Then how long a closed stream keeps its
slot: a stream is opened and closed 20 times and its slot watched in Redis every 5 ms.

Figures go to stdout and ``bench/results/streams-<tag>.json``; the ``streams`` section of
``bench.spawn`` runs the same. Counts and times are bounded, traffic stays on loopback, and
the keys are removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import math
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from bench.common import RESULTS, Gunicorn, delete_keys, ms, stats
from shared.store import connect
from shared.streams import StreamSlots
from testkit.stack import base_env
from testkit.support import VENV_BIN, RedisServer, unique_instance

ROOT = Path(__file__).resolve().parent.parent
#: The issue's goal for each route's p99 under the load.
TARGETS = {"post_spawn_p99": 0.020, "healthz_p99": 0.010, "freed": 2.0}


def log(text: str) -> None:
    print(text, flush=True)


def loadgen(url: str, extra: list[str], rate: float, seconds: float) -> dict[str, Any]:
    """Latencies of ``rate`` requests a second for ``seconds``; a server that leaves the load
    generator hanging past its own limits counts as not answering (every figure infinite)."""
    count = int(rate * seconds)
    try:
        done = subprocess.run(
            [
                str(VENV_BIN / "python"),
                "-m",
                "bench.loadgen",
                "--url",
                url,
                "--rate",
                str(rate),
                "--count",
                str(count),
                "--max-seconds",
                str(seconds + 30),
                "--threads",
                "8",
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 120,
            check=True,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired:
        inf = float("inf")
        return {"n": 0, "median": inf, "p95": inf, "p99": inf, "statuses": {"no answer in time": count}}
    result = json.loads(done.stdout)
    return {**stats(result["service"]), "statuses": result["statuses"]}


def measure(url: str, token: str, rate: float, seconds: float) -> dict[str, Any]:
    auth = ["--header", f"Authorization: Bearer {token}"]
    spawn = ["--method", "POST", "--path", "/spawn", "--form", "image=busybox", *auth]
    return {
        "post_spawn": loadgen(url, spawn, rate, seconds),
        "healthz": loadgen(url, ["--method", "GET", "--path", "/healthz"], rate, seconds),
    }


def freed_after_close(url: str, port: int, token: str, slots: StreamSlots, who: str, n: int = 20) -> list[float]:
    """Seconds from a client's hanging up until its stream's slot is back, ``n`` times."""
    out = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(f"GET /events HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        sock.recv(4096)  # the answer's head: the stream is open and holds its slot
        deadline = time.monotonic() + 10
        while slots.count(who) < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        closed = time.perf_counter()
        sock.close()
        while slots.count(who) > 0 and time.monotonic() < deadline + 20:
            time.sleep(0.005)
        out.append(time.perf_counter() - closed)
    return out


def wait_for_load(proc: subprocess.Popen[str], streams: int, idle: int, timeout: float) -> dict[str, Any]:
    """The load process's report once it holds (nearly) every stream and idle socket."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        last = json.loads(line)
        if last["streams"] >= streams and last["idle"] >= idle * 0.9:
            return last
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"the load never reached {streams} streams and {idle} idle sockets; last: {last}")


#: gunicorn options of the serving model before this one: two processes of 32 threads each, a
#: thread per open connection (for the comparison in the README).
THREADS_MODEL = ["--workers", "2", "--threads", "32", "--graceful-timeout", "3", "--access-logfile", "-"]


def bench_streams(
    redis_url: str,
    workdir: Path,
    users: int,
    per_user: int,
    idle: int,
    rate: float,
    seconds: float,
    model: str = "gevent",
) -> dict[str, Any]:
    """``model``: ``gevent`` (what `swarm-manager serve` runs) or ``threads`` (the model it replaced)."""
    admin = secrets.token_urlsafe(32)
    env = base_env(redis_url, unique_instance("benchstreams"), AUTH="on", ADMIN_TOKEN=admin, STREAMS_PER_USER=per_user)
    api = Gunicorn(env, workdir / f"gunicorn-{model}.log", options=THREADS_MODEL if model == "threads" else None)
    api.start()
    store_client = connect(redis_url)
    prefix = f"{env['INSTANCE']}:"
    load: subprocess.Popen[str] | None = None
    try:
        http = requests.Session()
        http.trust_env = False

        def token(user: str) -> str:
            made = http.post(
                f"{api.url}/tokens", json={"user": user}, headers={"Authorization": f"Bearer {admin}"}, timeout=10
            )
            made.raise_for_status()
            return str(made.json()["token"])

        prober = token("prober")
        tokens = [token(f"watcher{i}") for i in range(users)]
        tokens_file = workdir / "tokens.txt"
        tokens_file.write_text("\n".join(tokens) + "\n")

        log(f"quiet: POST /spawn and GET /healthz at {rate:g}/s for {seconds:g} s each")
        measure(api.url, prober, rate, min(seconds, 3))  # warm-up: connections, first imports
        quiet = measure(api.url, prober, rate, seconds)
        log(f"  POST /spawn p99 {ms(quiet['post_spawn']['p99'])}, GET /healthz p99 {ms(quiet['healthz']['p99'])}")

        streams = users * per_user
        log(f"load: {streams} event streams ({users} users x {per_user}) and {idle} silent sockets")
        load = subprocess.Popen(
            [
                str(VENV_BIN / "python"),
                "-m",
                "bench.streamload",
                "--url",
                api.url,
                "--tokens-file",
                str(tokens_file),
                "--per-token",
                str(per_user),
                "--idle",
                str(idle),
                "--seconds",
                str(4 * seconds + 300),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        opened = time.monotonic()
        if model == "threads":  # it cannot hold them all: give it a while, then measure as it is
            held = wait_for_load(load, 0, 0, timeout=1)
            time.sleep(15)
        else:
            held = wait_for_load(load, streams, idle, timeout=240)
        log(f"  after {time.monotonic() - opened:.0f} s: {held}")
        loaded = measure(api.url, prober, rate, seconds)
        log(f"  POST /spawn p99 {ms(loaded['post_spawn']['p99'])}, GET /healthz p99 {ms(loaded['healthz']['p99'])}")

        if model == "threads":
            freed = {"n": 0}  # no slots in that model
        else:
            slots = StreamSlots(store_client, prefix)
            freed = stats(freed_after_close(api.url, api.port, prober, slots, "user:prober"))
            log(f"  a closed stream's slot back after: median {ms(freed['median'])}, max {ms(freed['max'])}")
        load.send_signal(signal.SIGTERM)
        out, _ = load.communicate(timeout=60)
        lines = [json.loads(line) for line in out.splitlines() if line.strip()]
        during = lines[-1] if lines else held
    finally:
        if load is not None and load.poll() is None:
            load.kill()
            load.wait(30)
        api.stop()
        delete_keys(store_client, prefix)
        store_client.close()
    result = {
        "model": model,
        "users": users,
        "per_user": per_user,
        "streams": streams,
        "idle": idle,
        "rate": rate,
        "seconds": seconds,
        "held": held,
        "load_at_end": during,
        "quiet": quiet,
        "loaded": loaded,
        "freed": freed,
        "ratio_post_spawn_p99": loaded["post_spawn"]["p99"] / quiet["post_spawn"]["p99"],
        "ratio_healthz_p99": loaded["healthz"]["p99"] / quiet["healthz"]["p99"],
    }
    result["met"] = {
        "post_spawn_p99": loaded["post_spawn"]["p99"] <= TARGETS["post_spawn_p99"],
        "healthz_p99": loaded["healthz"]["p99"] <= TARGETS["healthz_p99"],
        "freed": freed.get("max", float("inf")) <= TARGETS["freed"],
    }
    return result


def ratio(value: float) -> str:
    return "—" if math.isinf(value) or math.isnan(value) else f"{value:.2f}x"


def rows(result: dict[str, Any]) -> list[list[str]]:
    """Summary rows: measure, quiet, loaded, ratio, target, met."""
    q, lo, m = result["quiet"], result["loaded"], result["met"]
    load = f"{result['streams']:,} streams + {result['idle']:,} idle sockets"
    return [
        [
            f"`POST /spawn` p99 at {result['rate']:g}/s, with {load}",
            ms(q["post_spawn"]["p99"]),
            ms(lo["post_spawn"]["p99"]),
            ratio(result["ratio_post_spawn_p99"]),
            "<= 20 ms",
            "yes" if m["post_spawn_p99"] else "no",
        ],
        [
            f"`GET /healthz` p99 at {result['rate']:g}/s, with {load}",
            ms(q["healthz"]["p99"]),
            ms(lo["healthz"]["p99"]),
            ratio(result["ratio_healthz_p99"]),
            "<= 10 ms",
            "yes" if m["healthz_p99"] else "no",
        ],
        [
            "a closed stream's slot given back (max of 20)",
            "",
            ms(result["freed"].get("max", float("nan"))),
            "",
            "<= 2 s",
            "yes" if m["freed"] else "no",
        ],
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=250)
    parser.add_argument("--per-user", type=int, default=20)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--tag", default="latest")
    parser.add_argument(
        "--compare-threads",
        action="store_true",
        help="also run the threads model `make run` used before, under --threads-streams streams",
    )
    parser.add_argument("--threads-streams", type=int, default=100)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="smstreams-") as tmp:
        workdir = Path(tmp)
        redis = RedisServer(workdir / "redis")
        redis.start()
        try:
            result = bench_streams(redis.url, workdir, args.users, args.per_user, args.idle, args.rate, args.seconds)
            if args.compare_threads:
                log(f"\nthe threads model (2 x 32 threads) under {args.threads_streams} streams and 130 idle sockets")
                result["threads_model"] = bench_streams(
                    redis.url,
                    workdir,
                    max(1, args.threads_streams // args.per_user),
                    min(args.per_user, args.threads_streams),
                    130,
                    args.rate,
                    args.seconds,
                    model="threads",
                )
        finally:
            redis.stop()
    result["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"streams-{args.tag}.json"
    out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    log("")
    log("| measure | quiet | loaded | loaded / quiet | target | met |")
    log("|---|---|---|---|---|---|")
    for row in rows(result):
        log("| " + " | ".join(row) + " |")
    if "threads_model" in result:
        log("\nthe threads model it replaced:")
        for row in rows(result["threads_model"])[:2]:
            log("| " + " | ".join(row) + " |")
    log(f"\n{out} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
