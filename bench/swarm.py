"""Services mode on a real three-node Swarm, side by side with raw Swarm services (`make bench`).

    .venv/bin/python -m bench.swarm [--n 10] [--burst 50] [--big-burst 200] [--live 1000] [--workers 1,2,4]

Builds a Swarm of engines in network namespaces (bench/cluster.py: a manager and two workers; the
host's engine is not touched), its own redis-server, real worker processes (ENGINE_BACKEND=services
against the manager) and the API, then measures, every raw figure in the same run:

- ``single``: spawn-to-ACTIVE of one notebook (from the POST to its ACTIVE event) against a raw
  ``create_service`` (the SDK, the same image and host-mode publish, restart none) whose task is
  polled every 20 ms until running, then its port every 20 ms until it answers; interleaved.
- ``burst``: ``--burst`` spawns at once until all are ACTIVE, against as many raw services started
  at once from as many threads; interleaved rounds.
- ``big``: ``--big-burst`` spawns at once spread over the three nodes, against raw; then the kill of
  those (until every record is REMOVED) against removing the raw services with as many threads as a
  worker runs tasks; then notebooks are spawned up to ``--live`` (capped by the machine's memory,
  measured as they start) and held: a reconcile pass (time, Redis commands), GET /containers
  (whole and a page of 100, through gunicorn), Redis memory, the worker's CPU; then all are killed.
- ``workers``: ``--scale-spawns`` spawns at once with 1, 2 and 4 worker processes: spawns per minute,
  and how long a spawn spent queued, creating (until STARTING) and waiting (until ACTIVE).

Figures go to stdout and bench/results/swarm-latest.json. Everything it made (the Swarm, its
engines and namespaces, the bridge and its iptables rule, Redis keys) is removed at the end, also
when it fails; counts and waits are bounded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import requests
from docker.types import ContainerSpec, EndpointSpec, RestartPolicy, ServiceMode, TaskTemplate

from api import create_app
from bench.cluster import Cluster, swarm_cluster
from bench.common import RESULTS, EventTimer, Gunicorn, delete_keys, ms, stats
from shared.settings import Settings
from shared.status import Status
from shared.store import Store, connect
from testkit.stack import base_env
from testkit.support import RedisServer, WorkerProcess, build_images, unique_instance
from worker.readiness import answers_http

RAW_POLL = 0.02
LABEL_INSTANCE = "swarm-manager.instance"
#: Memory the machine keeps free whatever --live asks for (other work shares it).
KEEP_FREE = 6 * 2**30


def log(text: str) -> None:
    print(text, flush=True)


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


# -- raw Swarm services: the physical limit ------------------------------------------------------
class RawServices:
    """Services made directly with the SDK, as a script would: same image, host-mode publish."""

    def __init__(self, cluster: Cluster, image: str, instance: str) -> None:
        self.cluster = cluster
        self.image = image
        self.instance = instance
        self.client = docker.DockerClient(base_url=cluster.manager.socket_url, timeout=120, max_pool_size=256)
        self.node_address = {n.node_id: n.address for n in cluster.nodes}

    def create(self, name: str, client: docker.DockerClient | None = None) -> str:
        spec = ContainerSpec(self.image, args=["/bin/httpd", "-f", "-p", "8888", "-h", "/www"], hostname=name[-12:])
        created = (client or self.client).api.create_service(
            TaskTemplate(spec, restart_policy=RestartPolicy(condition="none")),
            name=name,
            labels={LABEL_INSTANCE: self.instance},
            mode=ServiceMode("replicated", replicas=1),
            endpoint_spec=EndpointSpec(ports=[{"Protocol": "tcp", "TargetPort": 8888, "PublishMode": "host"}]),
        )
        return str(created["ID"])

    def spawn(self, name: str, timeout: float = 300, client: docker.DockerClient | None = None) -> float:
        """Create, poll the task until running, then the port until it answers; seconds taken."""
        api = (client or self.client).api
        started = time.perf_counter()
        service = self.create(name, client)
        deadline = started + timeout
        address = ""
        while not address:
            tasks = api.tasks(filters={"service": service})
            task = tasks[0] if tasks else {}
            status = task.get("Status") or {}
            if status.get("State") == "running":
                ports = (status.get("PortStatus") or {}).get("Ports") or []
                address = f"http://{self.node_address[task['NodeID']]}:{ports[0]['PublishedPort']}"
                break
            if status.get("State") in ("failed", "rejected", "complete", "shutdown"):
                raise RuntimeError(f"raw service {name}: task {status}")
            if time.perf_counter() > deadline:
                raise TimeoutError(f"raw service {name} did not run within {timeout}s")
            time.sleep(RAW_POLL)
        while not answers_http(address):
            if time.perf_counter() > deadline:
                raise TimeoutError(f"raw service {name} did not answer within {timeout}s")
            time.sleep(RAW_POLL)
        return time.perf_counter() - started

    def remove_all(self, threads: int = 16) -> tuple[int, float]:
        """Remove every raw service (``threads`` at once); (how many, seconds until every call returned)."""
        found = self.client.api.services(filters={"label": f"{LABEL_INSTANCE}={self.instance}"})
        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda s: self.client.api.remove_service(s["ID"]), found))
        return len(found), time.perf_counter() - started

    def burst(self, n: int) -> dict[str, Any]:
        go = threading.Event()
        done: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        started = 0.0

        # A client per thread, made before the clock starts: docker-py keeps at most 25 connection
        # pools per client over a unix socket, one per URL, and closes one still in use when more
        # URLs are in flight ("Pool is closed").
        clients = [docker.DockerClient(base_url=self.cluster.manager.socket_url, timeout=300) for _ in range(n)]

        def one(i: int) -> None:
            go.wait()
            try:
                self.spawn(f"{self.instance}-b{i:04d}-{secrets.token_hex(3)}", client=clients[i])
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
            t.join(600)
        for client in clients:
            client.close()
        return {"total": max(done) if len(done) == n else math.nan, "done": sorted(done), "errors": errors[:5]}

    def close(self) -> None:
        self.client.close()


# -- ours -------------------------------------------------------------------------------------------
class Ours:
    """The API in process, worker processes on the Swarm manager, a timer on the records' events."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.settings = Settings.from_env(env)
        self.app = create_app(self.settings)
        self.store = Store(connect(self.settings.redis_url), self.settings.key_prefix)
        self.timer = EventTimer(self.store)
        self.workers: list[WorkerProcess] = []

    def scale(self, count: int) -> None:
        while len(self.workers) < count:
            worker = WorkerProcess(
                self.env, self.workdir / f"worker-{len(self.workers)}.log", name=f"bsw{len(self.workers)}"
            )
            worker.start()
            self.workers.append(worker)
        while len(self.workers) > count:
            self.workers.pop().stop()

    def post(self, user: str) -> str:
        response = self.app.test_client().post("/spawn", data={"image": self.env["BENCH_IMAGE"], "user": user})
        if response.status_code != 202:
            raise RuntimeError(f"POST /spawn answered {response.status_code}: {response.get_data(as_text=True)}")
        return str(response.get_json()["hostname"])

    def kill(self, hostname: str) -> None:
        response = self.app.test_client().post(f"/container/{hostname}/kill")
        if response.status_code not in (200, 202):
            raise RuntimeError(f"kill answered {response.status_code}")

    def spawn_many(self, n: int, prefix: str, timeout: float) -> dict[str, Any]:
        """``n`` POSTs at once (16 clients); until every one is ACTIVE: seconds, per-notebook times."""
        started = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            hostnames = list(pool.map(lambda i: self.post(f"{prefix}{i % 100}"), range(n)))
        seen = self.timer.wait(hostnames, timeout)
        done = sorted(s.at[Status.ACTIVE] - started for s in seen.values() if Status.ACTIVE in s.at)
        queued = [s.at[Status.STARTING] - started for s in seen.values() if Status.STARTING in s.at]
        waiting = [s.at[Status.ACTIVE] - s.at[Status.STARTING] for s in seen.values() if Status.ACTIVE in s.at]
        errors = [
            f"{h}: {s.record.status if s.record else '?'} {s.record.error if s.record else ''}"[:200]
            for h, s in seen.items()
            if Status.ACTIVE not in s.at
        ]
        return {
            "hostnames": hostnames,
            "total": max(done) if len(done) == n else math.nan,
            "done": done,
            "until_starting": stats(queued),
            "starting_to_active": stats(waiting),
            "errors": errors[:5],
            "failed": len(errors),
        }

    def kill_many(self, hostnames: list[str], timeout: float) -> dict[str, Any]:
        started = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(self.kill, hostnames))
        seen = self.timer.wait(hostnames, timeout, frozenset({Status.REMOVED}))
        done = sorted(s.at[Status.REMOVED] - started for s in seen.values() if Status.REMOVED in s.at)
        return {"n": len(hostnames), "total": max(done) if len(done) == len(hostnames) else math.nan, "done": len(done)}

    def worker_cpu(self) -> float:
        return sum(cpu_seconds(w.proc.pid) for w in self.workers if w.proc is not None)

    def close(self) -> None:
        self.timer.close()
        self.scale(0)


def ours_single(ours: Ours, user: str, timeout: float = 120) -> float:
    started = time.perf_counter()
    hostname = ours.post(user)
    seen = ours.timer.wait([hostname], timeout)[hostname]
    if Status.ACTIVE not in seen.at:
        raise RuntimeError(f"{hostname}: {sorted(seen.at)} {seen.record.error if seen.record else ''}")
    took = seen.at[Status.ACTIVE] - started
    ours.kill(hostname)
    ours.timer.wait([hostname], 60, frozenset({Status.REMOVED}))
    return took


def wait_services_gone(client: docker.DockerClient, instance: str, timeout: float = 300) -> None:
    """Until no service of ``instance`` is left (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not client.api.services(filters={"label": f"{LABEL_INSTANCE}={instance}"}):
            return
        time.sleep(0.5)


def wait_nodes_empty(cluster: Cluster, timeout: float = 600) -> None:
    """Until no node runs a container any more (the Swarm stops and removes a removed service's
    task on its node later), so what is measured next does not share the nodes with that work."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(node.client.containers.list(all=True, sparse=True) for node in cluster.nodes):
            return
        time.sleep(1)
    log(f"  (containers still on the nodes after {timeout:g} s)")


# -- the sections --------------------------------------------------------------------------------
def bench_single(ours: Ours, raw: RawServices, n: int, warmup: int) -> dict[str, Any]:
    o: list[float] = []
    r: list[float] = []
    for i in range(warmup + n):
        took = ours_single(ours, f"single{i}")
        raw_took = raw.spawn(f"{raw.instance}-s{i:03d}-{secrets.token_hex(3)}")
        raw.remove_all()
        time.sleep(0.3)
        if i >= warmup:
            o.append(took)
            r.append(raw_took)
            log(f"  single #{i - warmup + 1:>2}: ours {ms(took):>9}  raw {ms(raw_took):>9}")
    so, sr = stats(o), stats(r)
    return {
        "n": n,
        "ours": so,
        "raw": sr,
        "ratio_median": so["median"] / sr["median"],
        "samples": {"ours": o, "raw": r},
    }


def bench_burst(ours: Ours, raw: RawServices, n: int, rounds: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "raw": []}
    for r in range(rounds):
        got = ours.spawn_many(n, f"burst{r}-", 600)
        runs["ours"].append({k: v for k, v in got.items() if k != "hostnames"})
        ours.kill_many(got["hostnames"], 300)
        wait_services_gone(raw.client, ours.settings.instance)
        wait_nodes_empty(raw.cluster)
        log(f"  round {r + 1}: ours {got['total']:.2f} s ({got['failed']} not ACTIVE)")
        runs["raw"].append(raw.burst(n))
        raw.remove_all()
        wait_services_gone(raw.client, raw.instance)
        wait_nodes_empty(raw.cluster)
        log(f"  round {r + 1}: raw {runs['raw'][-1]['total']:.2f} s")
    o = stats(x["total"] for x in runs["ours"])["median"]
    w = stats(x["total"] for x in runs["raw"])["median"]
    return {"n": n, "rounds": rounds, "ours_total": o, "raw_total": w, "ratio": o / w, "runs": runs}


def timed_get(url: str, samples: int) -> tuple[list[float], int]:
    session = requests.Session()
    session.trust_env = False
    took: list[float] = []
    size = 0
    for _ in range(samples):
        started = time.perf_counter()
        response = session.get(url, timeout=120)
        size = len(response.content)
        took.append(time.perf_counter() - started)
        response.raise_for_status()
    session.close()
    return took, size


def redis_commands(store: Store) -> int:
    return int(store.redis.info("stats")["total_commands_processed"])


def bench_big(
    ours: Ours, raw: RawServices, cluster: Cluster, api: Gunicorn, args: argparse.Namespace
) -> dict[str, Any]:
    out: dict[str, Any] = {"nodes": len(cluster.nodes)}
    n = args.big_burst
    cpu0 = ours.worker_cpu()
    got = ours.spawn_many(n, "big", 900)
    out["burst_ours"] = {k: v for k, v in got.items() if k not in ("hostnames", "done")}
    out["burst_worker_cpu_seconds"] = ours.worker_cpu() - cpu0
    log(f"  burst of {n}: ours {got['total']:.1f} s ({got['failed']} not ACTIVE)")
    rb = raw.burst(n)
    out["burst_raw"] = {k: v for k, v in rb.items() if k != "done"}
    out["burst_ratio"] = got["total"] / rb["total"]
    log(f"  burst of {n}: raw {rb['total']:.1f} s; ratio {out['burst_ratio']:.2f}x")
    spread: dict[str, int] = {}
    for task in raw.client.api.tasks(filters={"label": f"{LABEL_INSTANCE}={ours.settings.instance}"}):
        node = next((x.hostname for x in cluster.nodes if x.node_id == task.get("NodeID")), "?")
        spread[node] = spread.get(node, 0) + 1
    out["burst_spread_over_nodes"] = spread

    threads = ours.settings.worker_concurrency
    killed = ours.kill_many(got["hostnames"], 600)
    removed, raw_kill = raw.remove_all(threads=min(threads, 64))
    out["kill_ours"] = killed
    out["kill_raw"] = {"n": removed, "total": raw_kill, "threads": min(threads, 64)}
    out["kill_ratio"] = killed["total"] / raw_kill
    log(f"  kill of {n}: ours {killed['total']:.2f} s, raw {raw_kill:.2f} s; ratio {out['kill_ratio']:.2f}x")
    wait_services_gone(raw.client, ours.settings.instance)
    wait_services_gone(raw.client, raw.instance)
    wait_nodes_empty(cluster)

    # Up to --live notebooks held, in batches, while memory allows.
    before = mem_available()
    live: list[str] = []
    per_notebook = 0.0
    batch = args.batch
    while len(live) < args.live:
        room = mem_available() - KEEP_FREE
        want = min(batch, args.live - len(live))
        if per_notebook > 0:  # (a few notebooks' memory is lost in the machine's own noise)
            want = min(want, int(room / per_notebook))
        elif room <= 0:
            want = 0
        if want <= 0:
            log(
                f"  memory cap: {len(live)} live notebooks "
                f"({per_notebook / 2**20:.1f} MiB each, {KEEP_FREE >> 30} GiB kept free)"
            )
            out["memory_capped"] = True
            break
        got = ours.spawn_many(want, "live", 900)
        live += [h for h, s in ours.timer.wait(got["hostnames"], 1).items() if Status.ACTIVE in s.at]
        per_notebook = (before - mem_available()) / max(1, len(live))
        log(
            f"  {len(live)} live ({got['total']:.1f} s for the last {want}); {per_notebook / 2**20:.1f} MiB each so far"
        )
        if got["failed"]:
            out.setdefault("live_errors", []).extend(got["errors"])
    out["live"] = len(live)
    out["memory_per_notebook_mib"] = per_notebook / 2**20
    time.sleep(2)

    # A reconcile pass over them, in this process (the same code a worker runs), with Redis commands.
    from worker.reconciler import Reconciler
    from worker.services import ServiceEngine
    from worker.spawner import Spawner

    engine = ServiceEngine(docker.DockerClient(base_url=cluster.manager.socket_url, timeout=120), ours.settings)
    spawner = Spawner(ours.store, engine, ours.settings)
    reconciler = Reconciler(ours.store, engine, spawner, ours.settings)
    passes = []
    for _ in range(3):
        c0, t0 = redis_commands(ours.store), time.perf_counter()
        report = reconciler.run(lock=False)
        passes.append({"seconds": time.perf_counter() - t0, "redis_commands": redis_commands(ours.store) - c0})
        if report.failed:
            out.setdefault("reconcile_failed", report.failed[:5])
    out["reconcile"] = passes
    log(
        f"  reconcile pass over {len(live)}: {ms(stats(p['seconds'] for p in passes)['median'])}, "
        f"{passes[-1]['redis_commands']} Redis commands"
    )
    whole, size = timed_get(f"{api.url}/containers", 10)
    page, _ = timed_get(f"{api.url}/containers?limit=100", 20)
    out["list_whole"] = {**stats(whole), "bytes": size}
    out["list_page_100"] = stats(page)
    out["redis_used_memory"] = int(ours.store.redis.info("memory")["used_memory"])
    cpu1, t1 = ours.worker_cpu(), time.perf_counter()
    time.sleep(args.hold)
    out["worker_cpu_idle_share"] = (ours.worker_cpu() - cpu1) / (time.perf_counter() - t1)
    log(
        f"  GET /containers: whole {ms(stats(whole)['median'])} ({size / 1e6:.2f} MB), "
        f"page {ms(stats(page)['median'])}; "
        f"Redis {out['redis_used_memory'] / 2**20:.1f} MiB; worker CPU while held {out['worker_cpu_idle_share']:.1%}"
    )
    killed = ours.kill_many(live, 900)
    out["kill_all"] = killed
    log(f"  kill of all {len(live)}: {killed['total']:.1f} s ({killed['done']} REMOVED)")
    wait_services_gone(raw.client, ours.settings.instance, 600)
    wait_nodes_empty(cluster)
    return out


def bench_workers(ours: Ours, cluster: Cluster, counts: list[int], n: int) -> dict[str, Any]:
    out: dict[str, Any] = {"n": n, "runs": {}}
    for count in counts:
        ours.scale(count)
        got = ours.spawn_many(n, f"scale{count}-", 900)
        per_minute = n / got["total"] * 60 if got["total"] else math.nan
        out["runs"][str(count)] = {
            "total": got["total"],
            "spawns_per_minute": per_minute,
            "until_starting_median": got["until_starting"].get("median"),
            "starting_to_active_median": got["starting_to_active"].get("median"),
            "failed": got["failed"],
        }
        log(
            f"  {count} worker process(es): {n} in {got['total']:.1f} s = {per_minute:.0f}/min; until STARTING "
            f"{ms(got['until_starting'].get('median', math.nan))}, "
            f"STARTING->ACTIVE {ms(got['starting_to_active'].get('median', math.nan))}"
        )
        ours.kill_many(got["hostnames"], 600)
        wait_services_gone(cluster.manager.client, ours.settings.instance)
        wait_nodes_empty(cluster)
    ours.scale(1)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    sections = set(args.sections.split(","))
    host = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=120)
    image = build_images(host)["httpd"]
    host.close()
    results: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="smbswarm-") as tmp, swarm_cluster(args.nodes, [image], log) as cluster:
        workdir = Path(tmp)
        redis = RedisServer(workdir / "redis")
        redis.start()
        ours: Ours | None = None
        raw: RawServices | None = None
        api: Gunicorn | None = None
        try:
            env = base_env(
                redis.url,
                unique_instance("bswarm"),
                ENGINE_BACKEND="services",
                DOCKER_HOST=cluster.manager.socket_url,
                START_TIMEOUT=300,
                KILL_GRACE=0,
                DEFAULT_MEM_LIMIT="64m",
                DEFAULT_CPU_LIMIT="0.5",
                PIDS_LIMIT=64,
                RECONCILE_INTERVAL=3600,
                BENCH_IMAGE=image,
            )
            ours = Ours(env, workdir)
            ours.scale(1)
            raw = RawServices(cluster, image, f"{ours.settings.instance}-raw")
            for i in range(3):  # warm-up: the worker's client, the manager's caches
                ours_single(ours, f"warm{i}")
            if "single" in sections:
                log(f"services mode, single spawn-to-ACTIVE, {args.n} of each, interleaved")
                results["single"] = bench_single(ours, raw, args.n, 2)
            if "burst" in sections:
                log(f"services mode, burst of {args.burst}, {args.rounds} rounds")
                results["burst"] = bench_burst(ours, raw, args.burst, args.rounds)
            if "big" in sections:
                api = Gunicorn(env, workdir / "gunicorn.log")
                api.start()
                log(f"{args.nodes}-node Swarm: burst of {args.big_burst}, then up to {args.live} live")
                results["big"] = bench_big(ours, raw, cluster, api, args)
            if "workers" in sections:
                log(f"workers scale: {args.scale_spawns} spawns at once")
                counts = [int(x) for x in args.workers.split(",")]
                results["workers"] = bench_workers(ours, cluster, counts, args.scale_spawns)
        finally:
            if api is not None:
                api.stop()
            if ours is not None:
                ours.close()
                # Engine errors the workers met and retried (a spawn that retried is slower, not failed).
                logs = "".join(p.read_text(errors="replace") for p in workdir.glob("worker-*.log"))
                results["worker_engine_retries"] = logs.count("engine_unavailable") + logs.count("Retry in")
                results["worker_pool_closed"] = logs.count("Pool is closed")
                delete_keys(ours.store.redis, ours.settings.key_prefix)
            if raw is not None:
                raw.close()
            redis.stop()
    return results


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(what, ours, raw, ratio) for the README table."""
    out = []
    s = results.get("single")
    if s:
        out.append(
            (
                "services: single spawn-to-ACTIVE (median)",
                ms(s["ours"]["median"]),
                ms(s["raw"]["median"]),
                f"{s['ratio_median']:.2f}x",
            )
        )
    b = results.get("burst")
    if b:
        out.append(
            (
                f"services: burst of {b['n']} until all ACTIVE",
                f"{b['ours_total']:.2f} s",
                f"{b['raw_total']:.2f} s",
                f"{b['ratio']:.2f}x",
            )
        )
    g = results.get("big")
    if g:
        out.append(
            (
                f"{g['nodes']} nodes: burst of {results['args']['big_burst']} until all ACTIVE",
                f"{g['burst_ours']['total']:.1f} s",
                f"{g['burst_raw']['total']:.1f} s",
                f"{g['burst_ratio']:.2f}x",
            )
        )
        out.append(
            (
                f"{g['nodes']} nodes: kill of {g['kill_ours']['n']} until all REMOVED",
                f"{g['kill_ours']['total']:.2f} s",
                f"{g['kill_raw']['total']:.2f} s",
                f"{g['kill_ratio']:.2f}x",
            )
        )
        med = stats(p["seconds"] for p in g["reconcile"])["median"]
        out.append(
            (
                f"{g['live']} live: a reconcile pass (Redis commands)",
                f"{ms(med)} ({g['reconcile'][-1]['redis_commands']})",
                "",
                "",
            )
        )
        out.append(
            (
                f"{g['live']} live: GET /containers whole; a page of 100",
                f"{ms(g['list_whole']['median'])}; {ms(g['list_page_100']['median'])}",
                "",
                "",
            )
        )
        out.append(
            (
                f"{g['live']} live: Redis memory; worker CPU while held",
                f"{g['redis_used_memory'] / 2**20:.1f} MiB; {g['worker_cpu_idle_share']:.1%}",
                "",
                "",
            )
        )
        out.append((f"{g['live']} live: kill of all until REMOVED", f"{g['kill_all']['total']:.1f} s", "", ""))
    w = results.get("workers")
    if w:
        for count, r in w["runs"].items():
            out.append(
                (
                    f"{w['n']} spawns at once, {count} worker process(es)",
                    f"{r['spawns_per_minute']:.0f}/min",
                    "",
                    f"until STARTING {ms(r['until_starting_median'])}, then {ms(r['starting_to_active_median'])}",
                )
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="single,burst,big,workers")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--n", type=int, default=10, help="single spawns of each kind")
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--big-burst", type=int, default=200)
    parser.add_argument("--live", type=int, default=1000, help="notebooks held (capped by memory)")
    parser.add_argument("--batch", type=int, default=200, help="notebooks spawned at once on the way to --live")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds the live notebooks are held idle")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--scale-spawns", type=int, default=100)
    parser.add_argument("--out", default=str(RESULTS / "swarm-latest.json"))
    args = parser.parse_args(argv)
    started = time.monotonic()
    results = run(args)
    results["seconds"] = round(time.monotonic() - started, 1)
    results["summary"] = rows(results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=float) + "\n")
    log("")
    for what, ours, raw, ratio in results["summary"]:
        log(f"| {what} | {ours} | {raw} | {ratio} |")
    log(f"\n{args.out} written in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
