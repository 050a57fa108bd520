"""How fast is swarm-manager, side by side with raw Docker in the same run (`make bench`).

    .venv/bin/python -m bench.spawn [--sections cold,burst,api,store,pool] [--n 20] [--tag latest]

Sections (every one on real parts: its own redis-server, real Celery worker processes with the
default worker settings, the real Docker engine, gunicorn on loopback):

- ``cold``: N sequential spawns of an image whose server answers at once (httpd), of one that
  answers 50-200 ms after its start (quick) and of one that answers after 3 s (slow3), from the
  POST to the moment the record's ACTIVE event arrives on the store's channel, interleaved one by
  one with raw Docker doing the same work (create + start + an HTTP probe every 20 ms, through the
  SDK, no queue).
- ``kill``: N kills of an ACTIVE notebook (KILL_GRACE=0) until its record is REMOVED, interleaved
  with raw ``docker rm -f`` of a running container.
- ``burst``: 50 concurrent spawns of slow3 until all are ACTIVE, with 1 and with 2 worker
  processes, against 50 concurrent raw create+start+probe threads, in rounds.
- ``api``: POST /spawn and GET /container/<h> at a fixed 200 requests/s from a second process
  (bench/loadgen.py) against gunicorn as `make run` serves it, with no worker (spawns stay queued).
- ``store``: GET /containers with 10,000 and 100,000 records, and Redis memory per record.
- ``scale``: a reconcile pass and GET /containers against the number of notebooks (bench/scale.py,
  also runnable on its own; bench/results/scale-latest.json and .png).
- ``swarm``: services mode on a three-node Swarm in network namespaces against raw services: single
  spawns, bursts, 1,000 live notebooks, kills, 1/2/4 worker processes (bench/swarm.py, also
  runnable on its own; bench/results/swarm-latest.json).
- ``pool``: the warm pool's spawn-to-ACTIVE; runs only when shared/settings.py has a POOL setting.
- ``streams``: POST /spawn and GET /healthz p99 with 5,000 open event streams and 1,000 silent
  sockets against the same without them, and how fast a closed stream's slot comes back
  (bench/streams.py, also runnable on its own).
- ``jupyterhub``: single spawns, kills, bursts and reads beside JupyterHub 6.1.1 + DockerSpawner
  14.0.0 and raw Docker on the same engine and images, from outside (bench/jupyterhub.py, also
  runnable on its own; bench/results/jupyterhub-latest.json).
- ``icc``: spawn-to-ACTIVE of isolated notebooks on an engine whose default bridge keeps containers
  apart (dockerd ``--icc=false``, in a namespace), beside raw (bench/icc.py, also runnable on its own;
  bench/results/icc-latest.json).
- ``thebe``: a reader's page load to the first output with thebe in Binder mode, cold and from the
  warm pool, beside raw Docker spawns of the same image (bench/thebe.py, also runnable on its own).

Figures go to stdout, ``bench/results/bench-<tag>.json`` and ``bench/results/bench-<tag>.png``.
Every count and wait is bounded; containers (by instance label) and Redis keys are removed after.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import docker
import requests

from api import create_app
from bench.common import (
    RESULTS,
    EventTimer,
    Gunicorn,
    delete_keys,
    isolated_network,
    ms,
    raw_spawn,
    remove_containers,
    remove_everything,
    remove_one,
    server_seconds,
    stats,
)
from bench.streams import bench_streams
from bench.streams import rows as streams_rows
from bench.thebe import bench_thebe
from bench.thebe import rows as thebe_rows
from shared.settings import Settings
from shared.status import Status
from shared.store import Store, connect, new_hostname
from testkit.stack import base_env
from testkit.support import VENV_BIN, RedisServer, WorkerProcess, build_images, unique_instance
from worker.engine import EngineState, Placement

ALL_SECTIONS = (
    *("cold", "kill", "burst", "api", "store", "pool", "streams", "thebe", "scale", "swarm"),
    *("jupyterhub", "icc"),
)

#: Raw Docker's readiness probe interval: a tight loop a script would write (the physical limit
#: our readiness has to approach), not the worker's setting.
RAW_PROBE_INTERVAL = 0.02

#: The issue's targets (ratios are ours / raw Docker in the same run).
TARGETS = {
    "cold_ratio": 1.05,
    "kill_ratio": 1.05,
    "cold_slow_extra": 0.100,  # seconds: notice readiness within ~100 ms of the server answering
    "burst_ratio": 1.2,
    "post_p99": 0.010,
    "get_p50": 0.002,
    "list_10k": 0.100,
    "bytes_per_record": 1024,
    "pool_median": 0.050,
}


@dataclass
class Context:
    args: argparse.Namespace
    redis: RedisServer
    docker: docker.DockerClient
    images: dict[str, str]
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    settings: Settings | None = None
    store: Store | None = None
    app: Any = None
    worker: WorkerProcess | None = None
    timer: EventTimer | None = None

    @property
    def instance(self) -> str:
        assert self.settings is not None
        return self.settings.instance

    @property
    def raw_instance(self) -> str:
        return f"{self.instance}-raw"

    def post(self, image: str, user: str) -> dict[str, Any]:
        client = self.app.test_client()  # one per call: safe from many threads
        response = client.post("/spawn", data={"image": image, "user": user})
        if response.status_code != 202:
            raise RuntimeError(f"POST /spawn answered {response.status_code}: {response.get_data(as_text=True)}")
        return dict(response.get_json())


def log(text: str) -> None:
    print(text, flush=True)


# -- the stack: in-process API, own Redis, real worker processes ---------------------------------
def start_stack(ctx: Context, tag: str = "bench", **overrides: Any) -> None:
    # START_TIMEOUT as `make run` has it; KILL_GRACE=0, so a kill is SIGKILL and remove on both sides
    # (raw `docker rm -f`); everything else as the tests' base (plain containers).
    ctx.env = base_env(ctx.redis.url, unique_instance(tag), START_TIMEOUT=60, KILL_GRACE=0, **overrides)
    ctx.settings = Settings.from_env(ctx.env)
    ctx.app = create_app(ctx.settings)
    ctx.store = Store(connect(ctx.settings.redis_url), ctx.settings.key_prefix)
    ctx.worker = WorkerProcess(ctx.env, ctx.workdir / f"worker-{tag}.log", name=tag)
    ctx.worker.start()
    ctx.timer = EventTimer(ctx.store)


def stop_stack(ctx: Context) -> None:
    if ctx.timer:
        ctx.timer.close()
    if ctx.worker:
        ctx.worker.stop()
    if ctx.settings:
        remove_everything(ctx.docker, ctx.instance)
        remove_everything(ctx.docker, ctx.raw_instance)
    if ctx.store:
        delete_keys(ctx.store.redis, ctx.settings.key_prefix if ctx.settings else "")


def ours_once(ctx: Context, image: str, user: str, timeout: float = 120) -> tuple[float, float, float, str]:
    """One spawn through the API until its ACTIVE event.

    (seconds until ACTIVE as the client sees it, the same by the record's times, seconds until
    STARTING (queue + engine create/start), hostname).
    """
    assert ctx.timer is not None
    started = time.perf_counter()
    hostname = ctx.post(image, user)["hostname"]
    seen = ctx.timer.wait([hostname], timeout)[hostname]
    if Status.ACTIVE not in seen.at:
        error = seen.record.error if seen.record else "no event"
        raise RuntimeError(f"{hostname} did not become ACTIVE: {sorted(seen.at)} {error}")
    starting = seen.at.get(Status.STARTING, math.nan) - started
    return seen.at[Status.ACTIVE] - started, server_seconds(seen.record), starting, hostname


def warm_up(ctx: Context, spawns: int = 4) -> None:
    """A few spawns so every worker process has made its Docker client and asked the engine once."""
    image = ctx.images["httpd"]
    with ThreadPoolExecutor(spawns) as pool:
        names = list(pool.map(lambda i: ctx.post(image, f"warm{i}")["hostname"], range(spawns)))
    assert ctx.timer is not None
    ctx.timer.wait(names, 60)
    remove_containers(ctx.docker, ctx.instance)


# -- 1. cold spawn-to-ACTIVE ------------------------------------------------------------------
def bench_cold(ctx: Context, image_name: str, n: int, open_ctx: Context | None = None) -> dict[str, Any]:
    """Ours, raw on the default bridge and raw on a bridge isolated as the worker's own, interleaved;
    with ``open_ctx`` (a stack with NOTEBOOK_ISOLATION=off) ours on the default bridge too.

    Raw on the default bridge is what a script would do; raw on the isolated bridge does the same
    work as a spawn with NOTEBOOK_ISOLATION=on (the default), so ours / raw isolated, and ours
    without isolation / raw, are what the worker itself adds."""
    image = ctx.images[image_name]
    interval = RAW_PROBE_INTERVAL
    isolated = isolated_network(ctx.docker, ctx.raw_instance)
    ours: list[float] = []
    raw: list[float] = []
    raw_isolated: list[float] = []
    ours_open: list[float] = []
    server: list[float] = []
    to_starting: list[float] = []
    for i in range(ctx.args.warmup + n):
        # A, B, C, A, B, C: drift in the engine or the machine's load hits all alike.
        took, recorded, starting, hostname = ours_once(ctx, image, f"cold{i}")
        remove_one(ctx.docker, f"{ctx.instance}-{hostname}")
        time.sleep(ctx.args.pause)
        raw_took = raw_spawn(
            ctx.docker, image, f"{ctx.raw_instance}-{secrets.token_hex(6)}", ctx.raw_instance, interval
        )
        remove_containers(ctx.docker, ctx.raw_instance, threads=1)
        time.sleep(ctx.args.pause)
        if open_ctx is not None:
            open_took, _, _, open_hostname = ours_once(open_ctx, image, f"open{i}")
            remove_one(ctx.docker, f"{open_ctx.instance}-{open_hostname}")
            time.sleep(ctx.args.pause)
        iso_name = f"{ctx.raw_instance}-{secrets.token_hex(6)}"
        iso_took = raw_spawn(ctx.docker, image, iso_name, ctx.raw_instance, interval, network=isolated)
        remove_containers(ctx.docker, ctx.raw_instance, threads=1)
        time.sleep(ctx.args.pause)
        if i >= ctx.args.warmup:
            ours.append(took)
            raw.append(raw_took)
            raw_isolated.append(iso_took)
            if open_ctx is not None:
                ours_open.append(open_took)
            server.append(recorded)
            to_starting.append(starting)
            log(
                f"  {image_name} #{i - ctx.args.warmup + 1:>2}: ours {ms(took):>9}  raw {ms(raw_took):>9}  "
                f"raw isolated {ms(iso_took):>9}"
                + (f"  ours, isolation off {ms(open_took):>9}" if open_ctx is not None else "")
            )
    o, r, ri = stats(ours), stats(raw), stats(raw_isolated)
    paired = [a - b for a, b in zip(ours, raw, strict=True)]
    return {
        "image": image,
        "n": n,
        "ours": o,
        "raw": r,
        "raw_isolated": ri,
        "server_side": stats(x for x in server if not math.isnan(x)),
        "ratio_median": o["median"] / r["median"],
        "ratio_isolated_median": o["median"] / ri["median"],
        "isolation_ratio_median": ri["median"] / r["median"],
        "ratio_p95": o["p95"] / r["p95"],
        "extra_median": o["median"] - r["median"],
        "extra_isolated_median": o["median"] - ri["median"],
        "paired_extra": stats(paired),
        "ours_until_starting": stats(to_starting),
        "samples": {
            "ours": ours,
            "raw": raw,
            "raw_isolated": raw_isolated,
            "ours_isolation_off": ours_open,
            "ours_until_starting": to_starting,
        },
        **(
            {
                "ours_isolation_off": stats(ours_open),
                "ratio_isolation_off_median": stats(ours_open)["median"] / r["median"],
            }
            if ours_open
            else {}
        ),
    }


# -- 1b. kill-to-gone ----------------------------------------------------------------------------
def raw_started(ctx: Context, image: str) -> str:
    """A raw container made as raw_spawn makes it, answering; its name (not timed)."""
    name = f"{ctx.raw_instance}-{secrets.token_hex(6)}"
    raw_spawn(ctx.docker, image, name, ctx.raw_instance, RAW_PROBE_INTERVAL)
    return name


def bench_kill(ctx: Context, n: int) -> dict[str, Any]:
    """Kill of an ACTIVE notebook until its record is REMOVED (the container is gone by then),
    from the kill request, against raw ``docker rm -f`` of a running container, interleaved."""
    assert ctx.timer is not None
    image = ctx.images["httpd"]
    ours: list[float] = []
    raw: list[float] = []
    for i in range(ctx.args.warmup + n):
        _, _, _, hostname = ours_once(ctx, image, f"kill{i}")
        time.sleep(ctx.args.pause)
        started = time.perf_counter()
        response = ctx.app.test_client().post(f"/container/{hostname}/kill")
        if response.status_code != 202:
            raise RuntimeError(f"kill answered {response.status_code}: {response.get_data(as_text=True)}")
        seen = ctx.timer.wait([hostname], 60, frozenset({Status.REMOVED}))[hostname]
        if Status.REMOVED not in seen.at:
            raise RuntimeError(f"{hostname} was not REMOVED: {sorted(seen.at)}")
        took = seen.at[Status.REMOVED] - started
        name = raw_started(ctx, image)
        time.sleep(ctx.args.pause)
        started = time.perf_counter()
        ctx.docker.api.remove_container(name, force=True)
        raw_took = time.perf_counter() - started
        time.sleep(ctx.args.pause)
        if i >= ctx.args.warmup:
            ours.append(took)
            raw.append(raw_took)
            log(f"  kill #{i - ctx.args.warmup + 1:>2}: ours {ms(took):>9}  raw {ms(raw_took):>9}")
    o, r = stats(ours), stats(raw)
    return {
        "image": image,
        "n": n,
        "ours": o,
        "raw": r,
        "ratio_median": o["median"] / r["median"],
        "extra_median": o["median"] - r["median"],
        "samples": {"ours": ours, "raw": raw},
    }


# -- 2. burst -------------------------------------------------------------------------------------
def burst_raw(ctx: Context, image: str, n: int) -> dict[str, Any]:
    client = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=120, max_pool_size=n + 4)
    interval = RAW_PROBE_INTERVAL
    go = threading.Event()
    done: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    started = 0.0

    def one(i: int) -> None:
        go.wait()
        try:
            raw_spawn(
                client,
                image,
                f"{ctx.raw_instance}-b{i:03d}-{secrets.token_hex(3)}",
                ctx.raw_instance,
                interval,
                timeout=240,
            )
        except Exception as exc:
            with lock:
                errors.append(str(exc)[:200])
            return
        with lock:
            done.append(time.perf_counter() - started)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    started = time.perf_counter()
    go.set()
    for t in threads:
        t.join(300)
    client.close()
    remove_containers(ctx.docker, ctx.raw_instance)
    return {"total": max(done) if len(done) == n else math.nan, "done": sorted(done), "errors": errors}


def burst_ours(ctx: Context, image: str, n: int) -> dict[str, Any]:
    assert ctx.timer is not None
    started = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        hostnames = list(pool.map(lambda i: ctx.post(image, f"burst{i}")["hostname"], range(n)))
    posted = time.perf_counter() - started
    seen = ctx.timer.wait(hostnames, 300)
    done = sorted(s.at[Status.ACTIVE] - started for s in seen.values() if Status.ACTIVE in s.at)
    errors = [
        f"{h}: {s.record.status if s.record else '?'} {s.record.error if s.record else ''}"
        for h, s in seen.items()
        if Status.ACTIVE not in s.at
    ]
    remove_containers(ctx.docker, ctx.instance)
    return {"total": max(done) if len(done) == n else math.nan, "posted": posted, "done": done, "errors": errors}


def bench_burst(ctx: Context, n: int, rounds: int) -> dict[str, Any]:
    image = ctx.images["slow3"]
    runs: dict[str, list[dict[str, Any]]] = {"raw": [], "workers_1": [], "workers_2": []}
    for r in range(rounds):
        runs["raw"].append(burst_raw(ctx, image, n))
        log(f"  round {r + 1}: raw {runs['raw'][-1]['total']:.2f} s")
        time.sleep(1)
        runs["workers_1"].append(burst_ours(ctx, image, n))
        log(f"  round {r + 1}: ours, 1 worker process {runs['workers_1'][-1]['total']:.2f} s")
        time.sleep(1)
        second = WorkerProcess(ctx.env, ctx.workdir / f"worker-2-{r}.log", name="bench2")
        second.start()
        try:
            warm_up(ctx)
            runs["workers_2"].append(burst_ours(ctx, image, n))
        finally:
            second.stop()
        log(f"  round {r + 1}: ours, 2 worker processes {runs['workers_2'][-1]['total']:.2f} s")
        time.sleep(1)
    out: dict[str, Any] = {"image": image, "n": n, "rounds": rounds, "runs": runs}
    raw_total = stats(x["total"] for x in runs["raw"])["median"]
    out["raw_total"] = raw_total
    for key in ("workers_1", "workers_2"):
        total = stats(x["total"] for x in runs[key])["median"]
        out[f"{key}_total"] = total
        out[f"{key}_ratio"] = total / raw_total
    return out


# -- 3. API latency at a fixed rate, from a second process ------------------------------------------
def loadgen(url: str, extra: list[str], rate: float, count: int) -> dict[str, Any]:
    cmd = [
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
        str(count / rate + 30),
        *extra,
    ]
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=count / rate + 90,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def summarize_load(result: dict[str, Any]) -> dict[str, Any]:
    service, due = stats(result.pop("service")), stats(result.pop("from_due"))
    return {**result, "latency": service, "latency_from_due": due}


def bench_api(ctx: Context, api: Gunicorn, store: Store, rate: float, seconds: float) -> dict[str, Any]:
    count = int(rate * seconds)
    image = ctx.images["httpd"]
    spawn_args = ["--method", "POST", "--path", "/spawn", "--form", f"image={image}", "--form", "user=load"]
    loadgen(api.url, spawn_args, rate, min(count, 200))  # warm-up: connections, scripts, first imports
    post = summarize_load(loadgen(api.url, spawn_args, rate, count))
    log(
        f"  POST /spawn at {rate:g}/s: p50 {ms(post['latency']['median'])}, p99 {ms(post['latency']['p99'])}, "
        f"{post['throughput']:.0f}/s, {post['statuses']}"
    )
    names = store.redis.zrange(f"{store.prefix}idx:all", 0, -1)
    paths = ctx.workdir / "paths.txt"
    paths.write_text("".join(f"/container/{h}\n" for h in names))
    get = summarize_load(loadgen(api.url, ["--method", "GET", "--paths-file", str(paths)], rate, count))
    log(
        f"  GET /container/<h> at {rate:g}/s: p50 {ms(get['latency']['median'])}, p99 {ms(get['latency']['p99'])}, "
        f"{get['throughput']:.0f}/s, {get['statuses']}"
    )
    # The floor of this setup (gunicorn, HTTP on loopback, this load generator): a route that
    # only PINGs Redis. What GET /container takes beyond it is the route's own.
    floor = summarize_load(loadgen(api.url, ["--method", "GET", "--path", "/healthz"], rate, count))
    log(
        f"  GET /healthz (the floor) at {rate:g}/s: p50 {ms(floor['latency']['median'])}, "
        f"p99 {ms(floor['latency']['p99'])}"
    )
    delete_keys(store.redis, store.prefix)
    return {"rate": rate, "seconds": seconds, "post_spawn": post, "get_container": get, "healthz_floor": floor}


# -- 4. the store at scale -------------------------------------------------------------------
@dataclass
class Template:
    """A real ACTIVE record as the product writes it: its hash and every set or sorted set naming it."""

    hash: dict[str, str]
    user: str
    zsets: list[str]  # keys whose members include the record (indexes), user name as {user}
    sets: list[str]  # the same for plain sets (e.g. quota sets)


class InstantEngine:
    """An engine whose notebooks start at once (for records shaped by the real Spawner, no Docker)."""

    def inventory(self) -> dict[str, Any]:
        return {}

    def pull(self, spec: Any, report: Any) -> Any:
        return spec  # nothing to pull: nothing is started

    def start(self, spec: Any) -> Placement:
        return Placement(object_id=secrets.token_hex(32), address="http://127.0.0.1:32768", node="bench-node")

    def state(self, spec: Any) -> EngineState | None:
        return EngineState(running=True)

    def remove(self, spec: Any) -> None:
        pass

    def logs_tail(self, spec: Any, lines: int = 20) -> str:
        return ""


def template_record(store: Store, spawn: Callable[[str], str], settings: Settings) -> Template:
    """Make one ACTIVE record the way the product does (``spawn(user)`` through the API, then the
    real Spawner on an engine that starts it at once) and note everything it wrote, then remove it.

    Seeding clones it, so the clones are shaped like real records whatever the layout is now.
    """
    from worker.spawner import Spawner

    user = "tmpl" + secrets.token_hex(3)
    hostname = spawn(user)
    status = Spawner(
        store, InstantEngine(), settings, probe=lambda address: True, token_check=lambda address, token: ""
    ).spawn(hostname)
    assert status == Status.ACTIVE, status
    data = {str(k): str(v) for k, v in store.redis.hgetall(store.key_for(hostname)).items()}
    zsets, sets = [], []
    for key in store.redis.scan_iter(match=f"{store.prefix}*", count=1000):
        kind = store.redis.type(key)
        if kind == "zset" and store.redis.zscore(key, hostname) is not None:
            zsets.append(key)
            store.redis.zrem(key, hostname)
        elif kind == "set" and store.redis.sismember(key, hostname):
            sets.append(key)
            store.redis.srem(key, hostname)
    store.redis.delete(store.key_for(hostname))
    # The queued spawn task of the template (no worker takes it) is not part of a record.
    for key in store.redis.scan_iter(match=f"{store.prefix}*", count=1000):
        if store.redis.type(key) == "list":
            store.redis.delete(key)
    return Template(data, user, [k.replace(user, "{user}") for k in zsets], [k.replace(user, "{user}") for k in sets])


def seed(store: Store, template: Template, start: int, count: int, users: int = 1000) -> None:
    """Write ``count`` records shaped exactly like ``template`` (hash, indexes, sets), pipelined."""
    pipe = store.redis.pipeline(transaction=False)
    base = time.time() - 86400
    domain = template.hash.get("domainname", "nb.test")
    for i in range(start, start + count):
        hostname = new_hostname()
        user = f"user{i % users:04d}"
        data = {
            **template.hash,
            "hostname": hostname,
            **({"url": f"{hostname}.{domain}"} if "url" in template.hash else {}),
            "user": user,
            "container_id": secrets.token_hex(32),
        }
        if "_token" in data:
            data["_token"] = secrets.token_urlsafe(24)
        pipe.hset(store.key_for(hostname), mapping=data)
        score = base + i * 0.001
        for key in template.zsets:
            pipe.zadd(key.replace("{user}", user), {hostname: score})
        for key in template.sets:
            pipe.sadd(key.replace("{user}", user), hostname)
        if len(pipe) >= 8000:
            pipe.execute()
    pipe.execute()


def http_spawner(url: str, image: str) -> Callable[[str], str]:
    """``spawn(user) -> hostname`` through the API on a socket."""

    def spawn(user: str) -> str:
        session = requests.Session()
        session.trust_env = False
        response = session.post(f"{url}/spawn", data={"image": image, "user": user}, timeout=30)
        response.raise_for_status()
        return str(response.json()["hostname"])

    return spawn


def used_memory(store: Store) -> int:
    return int(store.redis.info("memory")["used_memory"])


def timed_get(url: str, samples: int) -> tuple[list[float], int, int]:
    """``samples`` GETs of ``url`` on one keep-alive session: (seconds each, body bytes, records in the last)."""
    session = requests.Session()
    session.trust_env = False
    took: list[float] = []
    body = b""
    for _ in range(samples):
        started = time.perf_counter()
        response = session.get(url, timeout=120)
        body = response.content
        took.append(time.perf_counter() - started)
        response.raise_for_status()
    session.close()
    return took, len(body), len(json.loads(body))


def bench_store(ctx: Context, api: Gunicorn, store: Store, sizes: list[int]) -> dict[str, Any]:
    assert ctx.settings is not None
    delete_keys(store.redis, store.prefix)
    template = template_record(store, http_spawner(api.url, ctx.images["httpd"]), ctx.settings)
    store.redis.execute_command("MEMORY", "PURGE")
    before = used_memory(store)
    out: dict[str, Any] = {
        "template": {"fields": sorted(template.hash), "indexes": template.zsets, "sets": template.sets},
        "sizes": {},
    }
    have = 0
    for size in sizes:
        t = time.perf_counter()
        seed(store, template, have, size - have)
        have = size
        seeded = time.perf_counter() - t
        time.sleep(0.5)
        per_record = (used_memory(store) - before) / size
        samples = 10 if size <= 20_000 else 3
        took, body, records = timed_get(f"{api.url}/containers", samples)
        page, _, _ = timed_get(f"{api.url}/containers?limit=100", 20)
        deep, _, _ = timed_get(f"{api.url}/containers?offset={size // 2}&limit=100", 20)
        user, _, _ = timed_get(f"{api.url}/containers?user=user0007", 20)
        t = time.perf_counter()
        listed = sum(1 for _ in store.records())
        direct = time.perf_counter() - t
        out["sizes"][str(size)] = {
            "records": size,
            "seed_seconds": seeded,
            "bytes_per_record": per_record,
            "list_all": stats(took),
            "list_all_bytes": body,
            "list_all_records": records,
            "first_page_100": stats(page),
            "deep_page_100": stats(deep),
            "one_user": stats(user),
            "store_list_in_process": direct,
            "store_list_in_process_records": listed,
        }
        log(
            f"  {size:>7} records: GET /containers median {ms(stats(took)['median'])} ({body / 1e6:.1f} MB), "
            f"?limit=100 {ms(stats(page)['median'])}, deep page {ms(stats(deep)['median'])}, "
            f"one user {ms(stats(user)['median'])}; {per_record:.0f} bytes of Redis per record"
        )
    sample = store.redis.zrange(f"{store.prefix}idx:all", 0, 0)[0]
    out["hash_bytes_one_record"] = int(store.redis.execute_command("MEMORY", "USAGE", store.key_for(sample)))
    delete_keys(store.redis, store.prefix)
    return out


# -- 5. warm pool (only when shared/settings.py has POOL) ----------------------------------------
def pool_available() -> bool:
    return any(f.metadata.get("env") == "POOL" for f in fields(Settings))


def bench_pool(ctx: Context, n: int, size: int = 3) -> dict[str, Any]:
    """Spawn-to-ACTIVE of pooled spawns: POST until the record is ACTIVE (in the answer, or its event).

    Kept apart from the cold path on purpose: the pool is its own feature. Its own instance, API
    and worker with ``POOL=<httpd image>=<size>``; waits (bounded) for a ready member before each
    spawn, so every measured spawn could be served from the pool.
    """
    from shared.pool import Pool  # only exists with the pool

    image = ctx.images["httpd"]
    env = base_env(
        ctx.redis.url, unique_instance("benchpool"), START_TIMEOUT=60, POOL=f"{image}={size}", RECONCILE_INTERVAL=2
    )
    settings = Settings.from_env(env)
    app = create_app(settings)
    store = Store(connect(settings.redis_url), settings.key_prefix)
    pool = Pool(store, settings.pool_sizes)
    from testkit.support import BeatProcess

    worker = WorkerProcess(env, ctx.workdir / "worker-pool.log", name="benchpool")
    beat = BeatProcess(env, ctx.workdir / "beat-pool.log", name="benchpool-beat")
    timer: EventTimer | None = None
    took: list[float] = []
    from_pool = 0
    try:  # a beat (or worker) that fails to start leaves nothing running
        worker.start()
        beat.start()
        timer = EventTimer(store)
        for i in range(n):
            deadline = time.monotonic() + 60
            while pool.ready_count(image) < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            started = time.perf_counter()
            response = app.test_client().post("/spawn", data={"image": image, "user": f"pool{i}"})
            body = response.get_json()
            if body.get("status") == Status.ACTIVE.value:
                took.append(time.perf_counter() - started)
                from_pool += 1
            else:
                seen = timer.wait([body["hostname"]], 120)[body["hostname"]]
                took.append(seen.at.get(Status.ACTIVE, math.nan) - started)
    finally:
        if timer is not None:
            timer.close()
        beat.stop()
        worker.stop()
        remove_everything(ctx.docker, settings.instance)
        delete_keys(store.redis, settings.key_prefix)
    return {"image": image, "pool_size": size, "n": n, "from_pool": from_pool, "spawn_to_active": stats(took)}


# -- summary, plot -----------------------------------------------------------------------------
def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def row(what: str, ours: str, raw: str, figure: str, target: str, met: bool | None) -> None:
        rows.append(
            {
                "what": what,
                "ours": ours,
                "raw": raw,
                "figure": figure,
                "target": target,
                "met": "n/a" if met is None else ("yes" if met else "no"),
            }
        )

    cold = results.get("cold", {})
    labels = {"httpd": "httpd: answers at once", "quick": "quick: answers 50-200 ms after start"}
    for name, label in labels.items():
        if name not in cold:
            continue
        c = cold[name]
        row(
            f"cold spawn-to-ACTIVE, {label} (median)",
            ms(c["ours"]["median"]),
            ms(c["raw"]["median"]),
            f"{c['ratio_median']:.2f}x, +{c['extra_median'] * 1000:.0f} ms",
            f"<= {TARGETS['cold_ratio']}x",
            c["ratio_median"] <= TARGETS["cold_ratio"],
        )
        if "ours_isolation_off" in c:
            row(
                "the same with NOTEBOOK_ISOLATION=off: ours on the default bridge too (median)",
                ms(c["ours_isolation_off"]["median"]),
                ms(c["raw"]["median"]),
                f"{c['ratio_isolation_off_median']:.2f}x",
                f"<= {TARGETS['cold_ratio']}x",
                c["ratio_isolation_off_median"] <= TARGETS["cold_ratio"],
            )
        if "raw_isolated" in c:
            row(
                f"the same, raw on an isolated bridge as NOTEBOOK_ISOLATION makes (median; raw isolated / raw "
                f"{c['isolation_ratio_median']:.2f}x)",
                ms(c["ours"]["median"]),
                ms(c["raw_isolated"]["median"]),
                f"{c['ratio_isolated_median']:.2f}x, +{c['extra_isolated_median'] * 1000:.0f} ms",
                f"<= {TARGETS['cold_ratio']}x",
                c["ratio_isolated_median"] <= TARGETS["cold_ratio"],
            )
    if "slow3" in cold:
        c = cold["slow3"]
        row(
            "cold spawn-to-ACTIVE, slow3 (median)",
            ms(c["ours"]["median"]),
            ms(c["raw"]["median"]),
            f"{c['ratio_median']:.3f}x, +{c['extra_median'] * 1000:.0f} ms",
            f"<= {TARGETS['cold_ratio']}x, +<= {TARGETS['cold_slow_extra'] * 1000:.0f} ms",
            c["ratio_median"] <= TARGETS["cold_ratio"] and c["extra_median"] <= TARGETS["cold_slow_extra"],
        )
    k = results.get("kill")
    if k:
        row(
            "kill-to-gone, KILL_GRACE=0 (median)",
            ms(k["ours"]["median"]),
            ms(k["raw"]["median"]),
            f"{k['ratio_median']:.2f}x, +{k['extra_median'] * 1000:.0f} ms",
            f"<= {TARGETS['kill_ratio']}x",
            k["ratio_median"] <= TARGETS["kill_ratio"],
        )
    b = results.get("burst")
    if b:
        for key, label in (("workers_1", "1 worker process"), ("workers_2", "2 worker processes")):
            ratio = b[f"{key}_ratio"]
            row(
                f"burst of {b['n']} slow3, all ACTIVE, {label}",
                f"{b[f'{key}_total']:.2f} s",
                f"{b['raw_total']:.2f} s",
                f"{ratio:.2f}x",
                f"<= {TARGETS['burst_ratio']}x",
                ratio <= TARGETS["burst_ratio"],
            )
    a = results.get("api")
    if a:
        p, g = a["post_spawn"], a["get_container"]
        row(
            f"POST /spawn at {a['rate']:g}/s (p99)",
            ms(p["latency"]["p99"]),
            "",
            f"p50 {ms(p['latency']['median'])}, {p['throughput']:.0f}/s",
            f"p99 <= {TARGETS['post_p99'] * 1000:g} ms",
            p["latency"]["p99"] <= TARGETS["post_p99"],
        )
        row(
            f"GET /container/<h> at {a['rate']:g}/s (p50)",
            ms(g["latency"]["median"]),
            "",
            f"p99 {ms(g['latency']['p99'])}, {g['throughput']:.0f}/s"
            + (f"; GET /healthz p50 {ms(a['healthz_floor']['latency']['median'])}" if "healthz_floor" in a else ""),
            f"p50 <= {TARGETS['get_p50'] * 1000:g} ms",
            g["latency"]["median"] <= TARGETS["get_p50"],
        )
    s = results.get("store")
    if s:
        for size, fig in s["sizes"].items():
            target = size == "10000"
            row(
                f"GET /containers, {int(size):,} records (median)",
                ms(fig["list_all"]["median"]),
                "",
                f"?limit=100: {ms(fig['first_page_100']['median'])}",
                f"<= {TARGETS['list_10k'] * 1000:g} ms" if target else "",
                fig["list_all"]["median"] <= TARGETS["list_10k"] if target else None,
            )
        # The most per record of any size (fewer records carry more of the indexes' fixed cost).
        per = {int(k): v["bytes_per_record"] for k, v in s["sizes"].items()}
        worst = max(per.values())
        row(
            "Redis memory per record",
            ", ".join(f"{v:.0f} B at {k:,}" for k, v in sorted(per.items())),
            "",
            f"hash alone {s['hash_bytes_one_record']} B",
            f"<= {TARGETS['bytes_per_record']} B",
            worst <= TARGETS["bytes_per_record"],
        )
    st = results.get("streams")
    if st:
        for what, quiet, loaded, figure, target, met in streams_rows(st):
            row(what, loaded, quiet, figure, target, met == "yes")
    th = results.get("thebe")
    if th and "stats" in th:
        for what, ours, raw, figure, target, met in thebe_rows(th):
            row(what, ours, raw, figure, target, met == "yes" if met else None)
    p = results.get("pool")
    if p and "spawn_to_active" in p:
        med = p["spawn_to_active"].get("median", math.nan)
        row(
            "warm pool spawn-to-ACTIVE (median)",
            ms(med),
            "",
            f"{p['from_pool']}/{p['n']} from the pool",
            f"<= {TARGETS['pool_median'] * 1000:g} ms",
            med <= TARGETS["pool_median"],
        )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    cols = ["what", "ours", "raw", "figure", "target", "met"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    fig.suptitle(f"swarm-manager vs raw Docker, same run ({results['when']}, {results['machine']})")
    for ax, name in zip(axes[0][:2], ("httpd", "slow3"), strict=True):
        c = results.get("cold", {}).get(name)
        ax.set_title(f"cold spawn-to-ACTIVE, {name}")
        if c:
            data = [[x * 1000 for x in c["samples"]["raw"]], [x * 1000 for x in c["samples"]["ours"]]]
            ax.boxplot(data, tick_labels=["raw Docker", "swarm-manager"], showfliers=True)
            ax.set_ylabel("ms")
            ax.text(0.02, 0.95, f"median ratio {c['ratio_median']:.2f}x", transform=ax.transAxes, va="top")
    ax = axes[0][2]
    ax.set_title(f"burst of {results.get('burst', {}).get('n', '?')} slow3: notebooks ready over time")
    b = results.get("burst")
    if b:
        for key, label in (
            ("raw", "raw Docker"),
            ("workers_1", "1 worker process"),
            ("workers_2", "2 worker processes"),
        ):
            done = b["runs"][key][0]["done"]
            ax.step(done, range(1, len(done) + 1), where="post", label=label)
        ax.set_xlabel("s since the burst began")
        ax.set_ylabel("ready")
        ax.legend()
    ax = axes[1][0]
    ax.set_title("API at a fixed rate (loopback, gunicorn)")
    a = results.get("api")
    if a:
        keys = [k for k in ("post_spawn", "get_container", "healthz_floor") if k in a]
        names = {"post_spawn": "POST /spawn", "get_container": "GET /container", "healthz_floor": "GET /healthz"}
        p50 = [a[k]["latency"]["median"] * 1000 for k in keys]
        p99 = [a[k]["latency"]["p99"] * 1000 for k in keys]
        labels = [names[k] for k in keys]
        x = range(len(labels))
        ax.bar([i - 0.2 for i in x], p50, width=0.4, label="p50")
        ax.bar([i + 0.2 for i in x], p99, width=0.4, label="p99")
        ax.set_xticks(list(x), labels)
        ax.axhline(TARGETS["post_p99"] * 1000, color="red", linestyle=":", label="POST p99 target")
        ax.axhline(TARGETS["get_p50"] * 1000, color="grey", linestyle=":", label="GET p50 target")
        ax.set_ylabel(f"ms at {a['rate']:g} req/s")
        ax.legend()
    ax = axes[1][1]
    ax.set_title("GET /containers (median)")
    s = results.get("store")
    if s:
        sizes = list(s["sizes"])
        ax.bar([f"{int(k):,}\nall" for k in sizes], [s["sizes"][k]["list_all"]["median"] * 1000 for k in sizes])
        ax.bar(
            [f"{int(k):,}\n?limit=100" for k in sizes],
            [s["sizes"][k]["first_page_100"]["median"] * 1000 for k in sizes],
        )
        ax.axhline(TARGETS["list_10k"] * 1000, color="red", linestyle=":", label="10,000 target")
        ax.set_yscale("log")
        ax.set_ylabel("ms (log)")
        ax.legend()
    ax = axes[1][2]
    ax.set_title("Redis memory per record")
    if s:
        sizes = list(s["sizes"])
        ax.bar([f"{int(k):,} records" for k in sizes], [s["sizes"][k]["bytes_per_record"] for k in sizes])
        ax.axhline(TARGETS["bytes_per_record"], color="red", linestyle=":", label="target")
        ax.set_ylabel("bytes")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(s for s in ALL_SECTIONS if s != "pool" or pool_available()))
    parser.add_argument("--n", type=int, default=20, help="sequential spawns per image (cold)")
    parser.add_argument(
        "--cold-images", default="httpd,quick,slow3", help="cold section: images answering at once, soon, after 3 s"
    )
    parser.add_argument("--warmup", type=int, default=2, help="cold spawns of each kind not counted")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between cold trials")
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2, help="burst rounds (raw, 1 worker, 2 workers)")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of load per API route")
    parser.add_argument("--sizes", default="10000,100000", help="record counts for the store section")
    parser.add_argument(
        "--thebe-rounds", type=int, default=5, help="thebe section: one page load of each kind per round"
    )
    parser.add_argument("--tag", default="latest", help="results go to bench/results/bench-<tag>.json/.png")
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(ALL_SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")

    client = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=120)
    images = build_images(client)
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.node()}, {platform.machine()}, {subprocess.getoutput('nproc')} cores, "
        f"Python {platform.python_version()}",
        "docker": client.version().get("Version", ""),
        "args": vars(args),
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="smbench-") as tmp:
        workdir = Path(tmp)
        redis = RedisServer(workdir / "redis")
        redis.start()
        ctx = Context(args, redis, client, images, workdir)
        try:
            if {"cold", "kill", "burst"} & set(sections):
                start_stack(ctx)
                # The same with NOTEBOOK_ISOLATION=off (the engine's default bridge), for the cold rows.
                open_ctx = Context(args, redis, client, images, workdir) if "cold" in sections else None
                try:
                    warm_up(ctx)
                    if open_ctx is not None:
                        start_stack(open_ctx, "benchopen", NOTEBOOK_ISOLATION="off")
                        warm_up(open_ctx)
                    if "cold" in sections:
                        results["cold"] = {}
                        for name in args.cold_images.split(","):
                            log(f"cold spawn-to-ACTIVE, {name}, {args.n} of each, interleaved")
                            results["cold"][name] = bench_cold(ctx, name, args.n, open_ctx)
                        if open_ctx is not None:
                            stop_stack(open_ctx)
                            open_ctx = None
                    if "kill" in sections:
                        log(f"kill-to-gone (KILL_GRACE=0), {args.n} of each, interleaved")
                        results["kill"] = bench_kill(ctx, args.n)
                    if "burst" in sections:
                        log(f"burst of {args.burst} slow3, {args.rounds} rounds")
                        results["burst"] = bench_burst(ctx, args.burst, args.rounds)
                finally:
                    if open_ctx is not None:
                        stop_stack(open_ctx)
                    stop_stack(ctx)
            if {"api", "store"} & set(sections):
                env = base_env(redis.url, unique_instance("benchapi"), START_TIMEOUT=60)
                settings = Settings.from_env(env)
                ctx.settings = settings
                store = Store(connect(settings.redis_url), settings.key_prefix)
                api = Gunicorn(env, workdir / "gunicorn.log")
                api.start()
                try:
                    if "api" in sections:
                        log(f"API at {args.rate:g} requests/s for {args.seconds:g} s per route (gunicorn, no worker)")
                        results["api"] = bench_api(ctx, api, store, args.rate, args.seconds)
                    if "store" in sections:
                        log("store scale")
                        results["store"] = bench_store(ctx, api, store, [int(x) for x in args.sizes.split(",")])
                finally:
                    api.stop()
                    delete_keys(store.redis, settings.key_prefix)
            if "streams" in sections:
                log("event streams and idle sockets (gunicorn's gevent workers, no worker)")
                results["streams"] = bench_streams(redis.url, workdir, 250, 20, 1000, 50.0, 20.0)
            if "thebe" in sections:
                log(f"thebe pages to first output, {args.thebe_rounds} rounds (Binder mode, cold, pooled; raw)")
                results["thebe"] = bench_thebe(redis.url, workdir, args.thebe_rounds)
            if "scale" in sections:
                log("reconcile pass and listing vs the number of notebooks (bench/scale.py)")
                from bench import scale

                scale.main([])
                results["scale"] = {"results": str(RESULTS / "scale-latest.json")}
            if "swarm" in sections:
                log("services mode on a three-node Swarm in namespaces (bench/swarm.py)")
                from bench import swarm

                swarm.main([])
                results["swarm"] = {"results": str(RESULTS / "swarm-latest.json")}
            if "jupyterhub" in sections:
                log("beside JupyterHub + DockerSpawner and raw Docker, from outside (bench/jupyterhub.py)")
                from bench import jupyterhub

                jupyterhub.main([])
                results["jupyterhub"] = {"results": str(RESULTS / "jupyterhub-latest.json")}
            if "icc" in sections:
                log("isolated notebooks on an engine started with --icc=false (bench/icc.py)")
                from bench import icc

                icc.main([])
                results["icc"] = {"results": str(RESULTS / "icc-latest.json")}
            if "pool" in sections:
                if pool_available():
                    log("warm pool")
                    try:
                        results["pool"] = bench_pool(ctx, n=10)
                    except Exception as exc:  # the pool is someone else's work in progress: report, go on
                        results["pool"] = {"error": f"{type(exc).__name__}: {exc}"}
                        log(f"  pool benchmark failed: {results['pool']['error']}")
                else:
                    results["pool"] = {"skipped": "no POOL setting in shared/settings.py"}
        finally:
            redis.stop()
    results["seconds"] = round(time.monotonic() - started, 1)
    rows = summary_rows(results)
    results["summary"] = rows
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bench-{args.tag}.json"
    out.write_text(json.dumps(results, indent=1, default=float) + "\n")
    plot(results, RESULTS / f"bench-{args.tag}.png")
    log("")
    log(markdown(rows))
    log(f"\n{out} and {out.with_suffix('.png')} written in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
