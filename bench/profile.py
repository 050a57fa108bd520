"""Profile the hot paths and count their round trips: the API requests and the spawn task.

    .venv/bin/python -m bench.profile [--tag before] [--requests 500] [--spawns 10]

Everything runs in this one process on real parts (its own redis-server, the real Celery queue
in that Redis, the real Docker engine), so every Redis round trip and Docker API call can be
counted at the client:

- ``POST /spawn`` and ``GET /container/<h>`` through the Flask app (the WSGI test client: the
  same request handling gunicorn runs, without the socket);
- ``GET /containers`` with 10,000 records (``Store.iter_public`` plus JSON);
- ``Spawner.spawn`` of the httpd test image, what a worker's spawn task runs.

Per operation: wall time (median, mean), Redis round trips (a pipeline or a script is one),
Redis commands (the server's own INFO commandstats), Docker API calls. pyinstrument's call
trees go to ``bench/results/profile-<tag>.txt``, the figures to ``bench/results/profile-<tag>.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
import redis
import redis.connection
from pyinstrument import Profiler

from api import create_app
from bench.common import RESULTS, delete_keys, remove_containers, remove_everything, stats
from bench.spawn import seed, template_record
from shared.record import Internal
from shared.settings import Settings
from shared.status import Status
from shared.store import Store, connect
from testkit.stack import base_env
from testkit.support import RedisServer, build_images, unique_instance
from worker.containers import ContainerEngine
from worker.engine import make_client
from worker.spawner import Spawner


class Counter:
    """Counts Redis round trips (one per packed send: a command, a pipeline or a script call)."""

    def __init__(self) -> None:
        self.round_trips = 0
        self.docker_calls = 0
        self._original = redis.connection.AbstractConnection.send_packed_command

    def install(self) -> None:
        counter, original = self, self._original

        def counted(conn: Any, command: Any, check_health: bool = True) -> Any:
            counter.round_trips += 1
            return original(conn, command, check_health)

        redis.connection.AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]

    def docker_hook(self, response: Any, *args: Any, **kwargs: Any) -> Any:
        self.docker_calls += 1
        return response


def commands(client: redis.Redis) -> int:
    """Commands the Redis server has run (all clients; only this process talks to this Redis)."""
    info = client.info("commandstats")
    return sum(int(v["calls"]) for v in info.values())


@contextmanager
def measured(
    name: str,
    ops: int,
    counter: Counter,
    client: redis.Redis,
    out: dict[str, Any],
    profiles: list[str],
    interval: float = 0.0005,
) -> Iterator[list[float]]:
    """Profile a block of ``ops`` operations; the block appends each operation's seconds to the list."""
    times: list[float] = []
    before_rt, before_dc = counter.round_trips, counter.docker_calls
    before_cmd = commands(client)
    profiler = Profiler(interval=interval)
    profiler.start()
    try:
        yield times
    finally:
        profiler.stop()
    after_cmd = commands(client) - 1  # the INFO that read "before"
    s = stats(times)
    out[name] = {
        "ops": ops,
        "median_ms": s["median"] * 1000,
        "mean_ms": s["mean"] * 1000,
        "p99_ms": s["p99"] * 1000,
        "redis_round_trips_per_op": (counter.round_trips - before_rt - 2) / ops,  # minus both INFOs
        "redis_commands_per_op": (after_cmd - before_cmd) / ops,
        "docker_calls_per_op": (counter.docker_calls - before_dc) / ops,
    }
    print(
        f"{name:<28} median {s['median'] * 1000:8.2f} ms  mean {s['mean'] * 1000:8.2f} ms  "
        f"redis round trips/op {out[name]['redis_round_trips_per_op']:5.2f}  "
        f"commands/op {out[name]['redis_commands_per_op']:5.2f}  docker calls/op "
        f"{out[name]['docker_calls_per_op']:5.2f}",
        flush=True,
    )
    profiles.append(f"==== {name} ====\n" + profiler.output_text(unicode=False, color=False, show_all=False))


def timed(times: list[float], fn: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = fn()
    times.append(time.perf_counter() - started)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default="latest")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--spawns", type=int, default=10)
    parser.add_argument("--records", type=int, default=10_000)
    args = parser.parse_args(argv)

    client = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=120)
    images = build_images(client)
    counter = Counter()
    counter.install()
    out: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "args": vars(args)}
    profiles: list[str] = []
    with tempfile.TemporaryDirectory(prefix="smprofile-") as tmp:
        server = RedisServer(Path(tmp) / "redis")
        server.start()
        try:
            settings = Settings.from_env(base_env(server.url, unique_instance("profile"), START_TIMEOUT=60))
            store = Store(connect(settings.redis_url), settings.key_prefix)
            raw = store.redis
            try:
                app = create_app(settings)
                http = app.test_client()
                n = args.requests
                form = {"image": images["httpd"], "user": "prof"}
                for _ in range(20):  # warm-up: scripts loaded, producer pool and connections made
                    http.post("/spawn", data=form)
                with measured("POST /spawn", n, counter, raw, out, profiles) as times:
                    names = [
                        timed(times, lambda: http.post("/spawn", data=form)).get_json()["hostname"] for _ in range(n)
                    ]
                with measured("GET /container/<h>", n, counter, raw, out, profiles) as times:
                    for name in names:
                        timed(times, lambda name=name: http.get(f"/container/{name}"))
                delete_keys(raw, settings.key_prefix)

                def spawn(user: str) -> str:
                    return str(
                        http.post("/spawn", data={"image": images["httpd"], "user": user}).get_json()["hostname"]
                    )

                template = template_record(store, spawn, settings)
                seed(store, template, 0, args.records)
                http.get("/containers?limit=1")
                with measured(f"GET /containers ({args.records})", 5, counter, raw, out, profiles, 0.001) as times:
                    for _ in range(5):
                        timed(times, lambda: http.get("/containers"))
                with measured(f"Store.records ({args.records})", 5, counter, raw, out, profiles, 0.001) as times:
                    for _ in range(5):
                        timed(times, lambda: list(store.records()))
                delete_keys(raw, settings.key_prefix)

                docker_client = make_client(settings)
                docker_client.api.hooks["response"].append(counter.docker_hook)
                spawner = Spawner(store, ContainerEngine(docker_client, settings), settings)
                made = [
                    store.create(
                        image=images["httpd"],
                        user="prof",
                        domain=settings.domain,
                        internal={Internal.QUEUE_DEADLINE: str(time.time() + 600)},
                    ).hostname
                    for _ in range(args.spawns + 1)
                ]
                spawner.spawn(made[0])  # warm-up: the engine's name is asked once per process
                remove_containers(client, settings.instance)
                with measured("Spawner.spawn (httpd)", args.spawns, counter, raw, out, profiles) as times:
                    for name in made[1:]:
                        status = timed(times, lambda name=name: spawner.spawn(name))
                        assert status == Status.ACTIVE, status
                        # Not part of a spawn (untimed; another Docker client, so not counted either):
                        # each spawn finds the engine as empty as the first one did.
                        remove_containers(client, settings.instance, threads=1)
            finally:
                # Even after a failed run: no test container (or network) is left on the engine.
                remove_everything(client, settings.instance)
                delete_keys(raw, settings.key_prefix)
        finally:
            server.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"profile-{args.tag}.json").write_text(json.dumps(out, indent=1) + "\n")
    (RESULTS / f"profile-{args.tag}.txt").write_text("\n\n".join(profiles))
    print(f"bench/results/profile-{args.tag}.json and .txt written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
