"""A real Redis Sentinel deployment on loopback for tests: a master, a replica, three sentinels.

Every process is Debian's own (``redis-server``, ``redis-sentinel``) on a free 127.0.0.1 port, with
its files in one folder, started by :meth:`SentinelCluster.start` (each waited for, with a deadline)
and stopped by :meth:`SentinelCluster.stop`, which is safe after any failure and after a process was
killed. The sentinels are tuned for a quick failover: a master that does not answer for
``down_after`` milliseconds is down, and a failover that stalls is retried after ``failover_timeout``.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import redis
import requests

from shared.record import Notebook
from shared.settings import Settings
from shared.status import Status
from shared.store import Store, connect
from testkit.faults import FINAL, Outcome, check_outcome
from testkit.support import (
    ApiServer,
    BeatProcess,
    WorkerProcess,
    cleanup_engine,
    free_port,
    our_containers,
    unique_instance,
    wait_for,
)

MASTER_NAME = "smtest"
SPAWNED_ENDS = frozenset({Status.ACTIVE, Status.FAILED})
KILLED_ENDS = frozenset({Status.REMOVED, Status.FAILED})


class Process:
    """One redis-server or redis-sentinel process on a free loopback port."""

    def __init__(self, binary: str, workdir: Path, name: str) -> None:
        self.binary = binary
        self.workdir = workdir
        self.name = name
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def client(self, **options: Any) -> redis.Redis:
        options = {"socket_connect_timeout": 0.5, "socket_timeout": 5, "decode_responses": True, **options}
        return redis.Redis(port=self.port, **options)

    def start(self, config: str) -> None:
        path = shutil.which(self.binary)
        if not path:
            raise RuntimeError(f"{self.binary} is not installed (make test installs it: Debian's redis-sentinel)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / f"{self.name}.conf"  # a sentinel rewrites its own file: one each
        conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {self.workdir}\n{config}")
        self._log = (self.workdir / f"{self.name}.log").open("ab")
        try:
            self.proc = subprocess.Popen([path, str(conf)], stdout=self._log, stderr=subprocess.STDOUT)
            client = self.client()
            wait_for(lambda: client.ping(), 15, f"{self.name} on port {self.port}")
        except BaseException:
            self.stop()
            raise

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the process dies at once, as in a crash (no shutdown, no last save)."""
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.workdir / f"{self.name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class SentinelCluster:
    """A master, ``replicas`` replicas and ``sentinels`` sentinels (quorum: a majority of them)."""

    def __init__(
        self,
        workdir: Path,
        *,
        replicas: int = 1,
        sentinels: int = 3,
        down_after: int = 1000,
        failover_timeout: int = 3000,
        data_config: str = "",
    ) -> None:
        self.workdir = workdir
        self.down_after = down_after
        self.failover_timeout = failover_timeout
        self.data_config = data_config  # extra redis.conf lines for every data node
        self.master = Process("redis-server", workdir, "master")
        self.replicas = [Process("redis-server", workdir, f"replica{i}") for i in range(replicas)]
        self.sentinels = [Process("redis-sentinel", workdir, f"sentinel{i}") for i in range(sentinels)]

    @property
    def addresses(self) -> str:
        """REDIS_SENTINELS for this cluster."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def env(self) -> dict[str, str]:
        """The settings that point swarm-manager at this cluster."""
        return {"REDIS_URL": "redis://127.0.0.1:6379/0", "REDIS_SENTINELS": self.addresses, "REDIS_MASTER": MASTER_NAME}

    @property
    def data_nodes(self) -> list[Process]:
        return [self.master, *self.replicas]

    def start(self) -> None:
        try:
            # Append-only as make run's Redis; no RDB snapshots (a replica syncs without one: diskless).
            data = (
                "save ''\nappendonly yes\nappendfsync everysec\nrepl-diskless-sync yes\n"
                "repl-diskless-sync-delay 0\n" + self.data_config
            )
            self.master.start(data)
            for replica in self.replicas:
                replica.start(data + f"replicaof 127.0.0.1 {self.master.port}\n")
            quorum = len(self.sentinels) // 2 + 1
            for sentinel in self.sentinels:
                sentinel.start(
                    f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} {quorum}\n"
                    f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after}\n"
                    f"sentinel failover-timeout {MASTER_NAME} {self.failover_timeout}\n"
                    f"sentinel parallel-syncs {MASTER_NAME} 1\n"
                )
            master = self.master.client()
            wait_for(
                lambda: (
                    master.info("replication")["connected_slaves"] == len(self.replicas)
                    and all(r.client().info("replication")["master_link_status"] == "up" for r in self.replicas)
                ),
                20,
                "the replicas to be in sync",
            )
            # Every sentinel knows the replicas and the other sentinels (they find each other through
            # the master's hello channel): otherwise a failover could not be agreed on or promote anyone.
            wait_for(
                lambda: all(self._sentinel_ready(s) for s in self.sentinels), 20, "the sentinels to know each other"
            )
        except BaseException:
            self.stop()
            raise

    def _sentinel_ready(self, sentinel: Process) -> bool:
        state = sentinel.client().sentinel_master(MASTER_NAME)
        return bool(
            int(state["num-other-sentinels"]) == len(self.sentinels) - 1
            and int(state["num-slaves"]) == len(self.replicas)
        )

    def master_address(self) -> tuple[str, int]:
        """Where a majority of the sentinels say the master is now."""
        answers: dict[tuple[str, int], int] = {}
        for sentinel in self.sentinels:
            if sentinel.alive:
                host, port = sentinel.client().sentinel_get_master_addr_by_name(MASTER_NAME)
                answers[(host, int(port))] = answers.get((host, int(port)), 0) + 1
        return max(answers, key=lambda a: answers[a])

    def kill_master(self) -> Process:
        """SIGKILL the current master; the process that was killed."""
        port = self.master_address()[1]
        victim = next(p for p in self.data_nodes if p.port == port)
        victim.kill()
        return victim

    def wait_promoted(self, old_port: int, timeout: float = 30) -> tuple[str, int]:
        """Block until every live sentinel names a new master that answers as one; its address."""

        def promoted() -> tuple[str, int] | None:
            address = self.master_address()
            if address[1] == old_port:
                return None
            role = redis.Redis(port=address[1], socket_connect_timeout=0.5, decode_responses=True).role()
            return address if role[0] == "master" else None

        return wait_for(promoted, timeout, "a sentinel to promote a replica")

    def stop(self) -> None:
        for process in (*self.sentinels, *self.data_nodes):
            process.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log_tail()}" for p in (*self.data_nodes, *self.sentinels))

    def __enter__(self) -> SentinelCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_seconds(fn: Any, timeout: float, what: str) -> float:
    """Seconds until ``fn()`` is truthy (bounded by ``timeout``, as wait_for)."""
    started = time.monotonic()
    wait_for(fn, timeout, what, interval=0.02)
    return time.monotonic() - started


# -- swarm-manager on the cluster: the fault of losing the master mid-burst ---------------------------
@dataclass
class FailoverRun:
    """What a burst through a failover did: what the client was told, and how each record ended."""

    accepted: list[str] = field(default_factory=list)  # spawns answered 202
    killed: list[str] = field(default_factory=list)  # of those, kills answered 200/202
    refused: int = 0  # answers 503 (or no answer) the client retried
    records: list[Notebook | None] = field(default_factory=list)  # every record of the instance at the end
    unasked: list[Notebook] = field(default_factory=list)  # records of spawns the client was told 503
    outcome: Outcome = field(default_factory=Outcome)
    failover_seconds: float = 0.0  # SIGKILL to every sentinel naming the promoted replica
    # SIGKILL to the first 202 of a spawn asked after it (None: none was): how long spawns are refused.
    first_accept_seconds: float | None = None
    # Each 202's (request sent, answer received), time.monotonic().
    accepted_at: list[tuple[float, float]] = field(default_factory=list)

    def unexpected(self) -> list[Notebook]:
        """Accepted spawns that ended where they should not: a killed one not REMOVED (or FAILED),
        another one not ACTIVE (or FAILED), a FAILED one without its reason."""
        killed = set(self.killed)
        out = []
        for record in self.records[: len(self.accepted)]:
            if record is None:
                continue  # counted as lost
            ends = KILLED_ENDS if record.hostname in killed else SPAWNED_ENDS
            if record.status not in ends or (record.status == Status.FAILED and not record.error):
                out.append(record)
        return out


class FailoverStack:
    """swarm-manager on a :class:`SentinelCluster`: the API (gunicorn, as ``swarm-manager serve``),
    a Celery worker and beat, all real processes on loopback, with the settings ``env`` adds."""

    def __init__(
        self, cluster: SentinelCluster, client: docker.DockerClient, workdir: Path, tag: str, **env: Any
    ) -> None:
        from testkit.stack import base_env

        self.cluster = cluster
        self.docker = client
        # Reconcile passes every second; a container left by a refused spawn (docs/operations.md: Redis failover)
        # goes with the orphans after 2 s.
        defaults = {"RECONCILE_INTERVAL": 1, "ORPHAN_GRACE": 2, **env}
        self.env = base_env("redis://127.0.0.1:6379/0", unique_instance(tag), **defaults)
        self.env.update(cluster.env())
        self.settings = Settings.from_env(self.env)
        self.store = Store(connect(self.settings.redis_target, patience=30), self.settings.key_prefix)
        self.api = ApiServer(self.env, workdir / f"{tag}-api.log")
        self.worker = WorkerProcess(self.env, workdir / f"{tag}-worker.log", name=tag)
        self.beat = BeatProcess(self.env, workdir / f"{tag}-beat.log", name=f"{tag}-beat")

    def __enter__(self) -> FailoverStack:
        try:
            self.worker.start()
            self.beat.start()
            self.api.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for process in (self.api, self.beat, self.worker):
            process.stop()
        cleanup_engine(self.docker, self.settings.instance)
        try:
            for key in self.store.redis.scan_iter(match=f"{self.settings.key_prefix}*", count=1000):
                self.store.redis.delete(key)
        except redis.RedisError:
            pass  # the cluster is gone already: nothing left to clean there

    def containers(self) -> list[Any]:
        return our_containers(self.docker, self.settings.instance)

    def logs(self) -> str:
        parts = [f"--- {p.logfile.name} ---\n{p.log_tail()}" for p in (self.api, self.worker, self.beat)]
        return "\n".join([*parts, self.cluster.logs()])

    def _call(self, method: str, path: str, deadline: float, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        """One request as a client makes it: a 503 or no answer (the window of a failover) is tried
        again after a short pause until ``deadline``; the count of those is the second value's."""
        refused = 0
        while True:
            tried_at = time.monotonic()
            try:
                response = requests.request(method, self.api.url + path, timeout=15, **kwargs)
                if response.status_code != 503:
                    return response.status_code, {"body": response.json(), "refused": refused, "tried_at": tried_at}
            except requests.RequestException:
                pass
            refused += 1
            if time.monotonic() > deadline:
                raise AssertionError(f"{method} {path} still refused after {refused} tries")
            time.sleep(0.2)

    def burst(self, image: str, n: int, kill_after: int, concurrency: int = 8) -> FailoverRun:
        """``n`` spawns from ``concurrency`` clients at once, every other one killed as soon as it is
        accepted; the master is SIGKILLed once ``kill_after`` spawns were accepted. Waits (bounded)
        until every record has settled and returns what happened."""
        run = FailoverRun()
        lock = threading.Lock()
        mid_burst = threading.Event()
        deadline = time.monotonic() + 120

        def one(i: int) -> None:
            status, got = self._call("POST", "/spawn", deadline, data={"image": image, "user": f"fo{i}"})
            assert status == 202, got
            hostname = str(got["body"]["hostname"])
            with lock:
                run.accepted.append(hostname)
                run.accepted_at.append((got["tried_at"], time.monotonic()))
                run.refused += got["refused"]
                if len(run.accepted) >= kill_after:
                    mid_burst.set()
            if i % 2:
                status, got = self._call("DELETE", f"/container/{hostname}", deadline)
                assert status in (200, 202), got
                with lock:
                    run.killed.append(hostname)
                    run.refused += got["refused"]

        with ThreadPoolExecutor(concurrency) as pool:
            futures = [pool.submit(one, i) for i in range(n)]
            assert mid_burst.wait(60), "the burst did not get far enough to fail over in the middle of it"
            killed_at = time.monotonic()
            old = self.cluster.kill_master()
            self.cluster.wait_promoted(old.port)
            run.failover_seconds = time.monotonic() - killed_at
            for future in futures:
                future.result()
        after = [done - killed_at for tried, done in run.accepted_at if tried > killed_at]
        run.first_accept_seconds = min(after) if after else None
        # Every record the instance has, the 202 ones and any left by a spawn the client was told 503.
        wait_for(lambda: self._settled(), 180, "every record to settle (ACTIVE, FAILED or REMOVED)")
        records = list(self.store.records())
        known = set(run.accepted)
        run.unasked = [r for r in records if r.hostname not in known]
        run.records = [self.store.get(h) for h in run.accepted] + list(run.unasked)
        run.outcome = check_outcome(self, run.records)
        return run

    def _settled(self) -> bool:
        return all(r.status in FINAL for r in self.store.records())
