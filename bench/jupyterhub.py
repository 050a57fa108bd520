"""swarm-manager beside JupyterHub + DockerSpawner and raw Docker, from outside, in one interleaved run.

    .venv/bin/python -m bench.jupyterhub [--n 10] [--burst 20] [--tag latest] [--icc-engine]

The peer most operators would otherwise run: JupyterHub 6.1.1 with DockerSpawner 14.0.0
(requirements-jupyterhub.txt, installed into its own virtualenv, .state/jupyterhub-venv, on first
use), its own configurable-http-proxy (the one `make test` installs), on the same engine with the
same test images. Both products are driven over HTTP on loopback as a client would drive them:

- ours: gunicorn as `make run` serves it, one real Celery worker, CHP routing notebooks
  (PROXY_API_URL), default settings (NOTEBOOK_ISOLATION on), KILL_GRACE=0. A spawn is
  ``POST /spawn`` then the notebook's event stream until ``ready``; a kill is
  ``POST /container/<h>/kill`` then the stream until ``removed``. The single-spawn rows also run
  a second stack with NOTEBOOK_ISOLATION=off: its notebooks share the engine's default bridge, as
  DockerSpawner's (by default) and raw's do, so it does the same work as they do.
- JupyterHub: an API token with admin scopes for a service, users made beforehand (not timed).
  A spawn is ``POST /hub/api/users/<u>/server``, which answers once the server is up and routed
  (201; a 202 is followed by polling the user every 20 ms until its server is ready); a kill is
  ``DELETE`` of it, which answers once DockerSpawner stopped and removed the container
  (``remove = True``; containers made with ``StopTimeout`` 0, as our ``KILL_GRACE=0``).
- raw: the SDK's create + start + an HTTP probe every 20 ms (bench/common.py ``raw_spawn``), and
  ``docker rm -f`` for the kill.

With ``--icc-engine`` all three run on a second dockerd, started with ``--icc=false`` in a network
namespace of its own (testkit/tls_engine.py's; the host's engine is not touched), reached on its
unix socket, its ports on the namespace's address: the engine an operator configures for isolated
notebooks (docs/deployment.md). Results then go to ``jupyterhub-icc-<tag>.json``.

Rows: a single spawn of an image that answers at once (httpd) and of one that answers after 3 s
(slow3), a kill until the container is gone, a burst of ``--burst`` concurrent slow3 spawns until
all answer, and reading one notebook's state (p50 of 200 sequential GETs). Each as a ratio to raw
in the same run. Single spawns and kills take one of each per round, in an order that rotates from
round to round. Figures go to stdout and ``bench/results/jupyterhub-<tag>.json``; every container
(by name prefix), key and process is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import redis as redis_lib
import requests

from bench.common import RESULTS, Gunicorn, against_raw, delete_keys, ms, raw_spawn, remove_everything, stats
from testkit import netns
from testkit.chp import CHP_BIN, running_chp
from testkit.stack import base_env
from testkit.support import ROOT, RedisServer, WorkerProcess, build_images, free_port, unique_instance, wait_for
from testkit.tls_engine import running_tls_engine

LOCK = ROOT / "requirements-jupyterhub.txt"
VENV = ROOT / ".state" / "jupyterhub-venv"
RAW_PROBE_INTERVAL = 0.02
POLL = 0.02


def log(text: str) -> None:
    print(text, flush=True)


def session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # straight to loopback, whatever proxy variables the shell has
    return s


@dataclass
class Engine:
    """The engine all three use: the host's, or with --icc-engine one started with --icc=false."""

    client: docker.DockerClient
    url: str = ""  # DOCKER_HOST for ours and DockerSpawner; "" for the host's engine
    host: str = "127.0.0.1"  # where its published ports are reached


@contextmanager
def icc_engine(images: dict[str, str], workdir: Path) -> Iterator[Engine]:
    """A dockerd in a network namespace of its own (testkit/tls_engine.py's) restarted with
    --icc=false, the test images loaded: ours isolates notebooks on its default bridge."""
    with running_tls_engine(images, workdir / "certs") as engine:
        engine.stop_engine()
        engine.start_engine("--icc=false")
        for ref in images.values():
            if ref != engine.image:
                netns.load_image(engine.socket_url, ref, engine.base / "cli")
        yield Engine(engine.client, engine.socket_url, engine.engine_ip)


# -- JupyterHub ----------------------------------------------------------------------------------
def jupyterhub_venv() -> Path:
    """The peer's virtualenv from its lock, made (or remade when the lock changed) on first use."""
    stamp = VENV / "lock.sha256"
    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text() != digest:
        log(f"installing JupyterHub and DockerSpawner into {VENV} (from {LOCK.name})")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
        pip = [str(VENV / "bin" / "pip"), "install", "--quiet", "--require-hashes", "-r", str(LOCK)]
        done = subprocess.run(pip, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"installing {LOCK.name} failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
        stamp.write_text(digest)
    return VENV / "bin" / "jupyterhub"


CONFIG = """\
c = get_config()  # noqa
c.JupyterHub.bind_url = "http://127.0.0.1:{public_port}"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.JupyterHub.db_url = "sqlite:///{workdir}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{workdir}/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = "{workdir}/jupyterhub.pid"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.services = [{{"name": "bench", "api_token": {token!r}}}]
c.JupyterHub.load_roles = [
    {{"name": "bench", "scopes": ["admin:users", "admin:servers"], "services": ["bench"]}}
]
c.JupyterHub.cleanup_servers = True
c.JupyterHub.concurrent_spawn_limit = 0
c.JupyterHub.active_server_limit = 0
c.JupyterHub.spawner_class = "dockerspawner.DockerSpawner"
c.DockerSpawner.allowed_images = {images!r}
c.DockerSpawner.prefix = {prefix!r}
c.DockerSpawner.port = 8888
c.DockerSpawner.host_ip = {host!r}
c.DockerSpawner.client_kwargs = {client_kwargs!r}
c.DockerSpawner.use_internal_ip = False
c.DockerSpawner.remove = True
c.DockerSpawner.pull_policy = "never"
c.DockerSpawner.extra_create_kwargs = {{"stop_timeout": 0}}
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 60
"""


class JupyterHub:
    """A running JupyterHub (its own CHP, DockerSpawner) on free loopback ports."""

    def __init__(self, workdir: Path, images: dict[str, str], prefix: str, engine: Engine) -> None:
        self.workdir = workdir
        self.token = secrets.token_hex(24)
        self.public_port = free_port()
        self.prefix = prefix
        config = CONFIG.format(
            public_port=self.public_port,
            hub_port=free_port(),
            proxy_api_port=free_port(),
            chp=str(CHP_BIN),
            workdir=workdir,
            token=self.token,
            images=images,
            prefix=prefix,
            host=engine.host,
            client_kwargs={"base_url": engine.url} if engine.url else {},
        )
        (workdir / "jupyterhub_config.py").write_text(config)
        self.logfile = workdir / "jupyterhub.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = session()
        self.http.headers["Authorization"] = f"token {self.token}"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.public_port}/hub/api"

    def start(self, binary: Path) -> None:
        with self.logfile.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(binary), "-f", str(self.workdir / "jupyterhub_config.py")],
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "PATH": f"{binary.parent}:{os.environ.get('PATH', '')}"},
            )

        def answers() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"jupyterhub exited early:\n{self.log_tail()}")
            try:
                return self.http.get(f"{self.api}/users", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_for(answers, 60, "JupyterHub to answer")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the hub and the CHP it started
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])

    def add_users(self, names: list[str]) -> None:
        response = self.http.post(f"{self.api}/users", json={"usernames": names}, timeout=30)
        if response.status_code not in (201, 409):
            raise RuntimeError(f"JupyterHub refused the users: {response.status_code} {response.text[:300]}")

    def spawn(self, user: str, image: str, timeout: float = 120) -> float:
        """Seconds from the request until the user's server is up and routed."""
        started = time.perf_counter()
        url = f"{self.api}/users/{user}/server"
        response = self.http.post(url, json={"image": image}, timeout=timeout)
        if response.status_code == 202:  # still starting after slow_spawn_timeout: follow it
            self.follow(lambda: bool(self.servers(user).get("", {}).get("ready")), started + timeout, f"{user} ready")
        elif response.status_code != 201:
            raise RuntimeError(f"JupyterHub spawn of {user}: {response.status_code} {response.text[:300]}")
        return time.perf_counter() - started

    def servers(self, user: str) -> dict[str, Any]:
        return dict(self.http.get(f"{self.api}/users/{user}", timeout=10).json().get("servers") or {})

    def follow(self, done: Callable[[], bool], deadline: float, what: str) -> None:
        """Poll every POLL until ``done``; fail at ``deadline`` (perf_counter)."""
        while not done():
            if time.perf_counter() > deadline:
                raise RuntimeError(f"JupyterHub: timed out waiting for {what}")
            time.sleep(POLL)

    def kill(self, user: str, timeout: float = 60) -> float:
        """Seconds from the request until the server is stopped and its container removed."""
        started = time.perf_counter()
        url = f"{self.api}/users/{user}/server"
        response = self.http.delete(url, timeout=timeout)
        if response.status_code == 202:
            self.follow(lambda: not self.servers(user), started + timeout, f"{user} stopped")
        elif response.status_code != 204:
            raise RuntimeError(f"JupyterHub stop of {user}: {response.status_code} {response.text[:300]}")
        return time.perf_counter() - started

    def read(self, user: str) -> None:
        self.http.get(f"{self.api}/users/{user}", timeout=10).raise_for_status()


# -- ours ----------------------------------------------------------------------------------------
class Ours:
    """swarm-manager as `make run` serves it, driven over HTTP."""

    def __init__(self, url: str, instance: str) -> None:
        self.url = url
        self.instance = instance
        self.http = session()

    def spawn(self, user: str, image: str, timeout: float = 120) -> tuple[float, str]:
        started = time.perf_counter()
        response = self.http.post(f"{self.url}/spawn", data={"image": image, "user": user}, timeout=30)
        if response.status_code != 202:
            raise RuntimeError(f"POST /spawn answered {response.status_code}: {response.text[:300]}")
        hostname = response.json()["hostname"]
        self.follow(hostname, "ready", timeout)
        return time.perf_counter() - started, hostname

    def kill(self, hostname: str, timeout: float = 60) -> float:
        started = time.perf_counter()
        response = self.http.post(f"{self.url}/container/{hostname}/kill", timeout=30)
        if response.status_code != 202:
            raise RuntimeError(f"kill answered {response.status_code}: {response.text[:300]}")
        self.follow(hostname, "removed", timeout)
        return time.perf_counter() - started

    def follow(self, hostname: str, until: str, timeout: float) -> None:
        """The notebook's event stream until the event ``until`` (any other final one is an error)."""
        url = f"{self.url}/container/{hostname}/events"
        with self.http.get(url, stream=True, timeout=timeout) as stream:
            stream.raise_for_status()
            for line in stream.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    event = line[len("event: ") :]
                    if event == until:
                        return
                    if event in ("failed", "removed"):
                        raise RuntimeError(f"{hostname}: {event} while waiting for {until}")
        raise RuntimeError(f"{hostname}: the stream ended before {until}")

    def read(self, hostname: str) -> None:
        self.http.get(f"{self.url}/container/{hostname}", timeout=10).raise_for_status()


# -- the rows ------------------------------------------------------------------------------------
class Run:
    def __init__(self, args: argparse.Namespace, engine: Engine, images: dict[str, str]) -> None:
        self.args = args
        self.engine = engine
        self.docker = engine.client
        self.images = images
        self.raw_instance = unique_instance("jhraw")
        self.count = 0

    def user(self) -> str:
        self.count += 1
        return f"u{self.count}"

    def raw(self, image: str) -> tuple[float, str]:
        name = f"{self.raw_instance}-{secrets.token_hex(6)}"
        took = raw_spawn(
            self.docker, self.images[image], name, self.raw_instance, RAW_PROBE_INTERVAL, host=self.engine.host
        )
        return took, name

    def remove_raw(self) -> None:
        remove_everything(self.docker, self.raw_instance)

    def single(self, ours: Ours, open_ours: Ours, hub: JupyterHub, image: str, n: int) -> dict[str, Any]:
        """``open_ours``: ours with NOTEBOOK_ISOLATION=off, on the engine's default bridge as
        DockerSpawner's and raw's containers are (a network of one's own costs each start)."""
        samples: dict[str, list[float]] = {"ours": [], "ours_isolation_off": [], "jupyterhub": [], "raw": []}
        users = [self.user() for _ in range(self.args.warmup + n)]
        hub.add_users(users)
        ends: list[Callable[[], Any]] = []

        def spawn(kind: str, user: str) -> float:
            if kind == "jupyterhub":
                ends.append(lambda: hub.kill(user))
                return hub.spawn(user, image)
            if kind == "raw":
                ends.append(self.remove_raw)
                return self.raw(image)[0]
            system = ours if kind == "ours" else open_ours
            took, hostname = system.spawn(user, self.images[image])
            ends.append(lambda: system.kill(hostname))
            return took

        kinds = list(samples)
        for i, user in enumerate(users):
            # One of each in turn, in an order that rotates each round: drift on the shared
            # machine, and whatever the engine still does after the last round's removals,
            # hit all alike.
            took: dict[str, float] = {}
            for kind in kinds[i % len(kinds) :] + kinds[: i % len(kinds)]:
                took[kind] = spawn(kind, user)
                time.sleep(self.args.pause)
            while ends:
                ends.pop()()
            time.sleep(self.args.pause)
            if i >= self.args.warmup:
                for kind, value in took.items():
                    samples[kind].append(value)
                figures = "  ".join(f"{k} {ms(took[k]):>9}" for k in kinds)
                log(f"  {image} #{i - self.args.warmup + 1:>2}: {figures}")
        return against_raw(samples)

    def kill(self, ours: Ours, hub: JupyterHub, n: int) -> dict[str, Any]:
        samples: dict[str, list[float]] = {"ours": [], "jupyterhub": [], "raw": []}
        users = [self.user() for _ in range(self.args.warmup + n)]
        hub.add_users(users)
        kinds = list(samples)
        for i, user in enumerate(users):
            _, hostname = ours.spawn(user, self.images["httpd"])
            hub.spawn(user, "httpd")
            _, name = self.raw("httpd")
            time.sleep(self.args.pause)

            def raw_kill(name: str = name) -> float:
                started = time.perf_counter()
                self.docker.api.remove_container(name, force=True)
                return time.perf_counter() - started

            kills: dict[str, Callable[[], float]] = {
                "ours": lambda hostname=hostname: ours.kill(hostname),
                "jupyterhub": lambda user=user: hub.kill(user),
                "raw": raw_kill,
            }
            took: dict[str, float] = {}
            for kind in kinds[i % len(kinds) :] + kinds[: i % len(kinds)]:  # the order rotates
                took[kind] = kills[kind]()
                time.sleep(self.args.pause)
            if i >= self.args.warmup:
                for kind, value in took.items():
                    samples[kind].append(value)
                figures = "  ".join(f"{k} {ms(took[k]):>9}" for k in kinds)
                log(f"  kill #{i - self.args.warmup + 1:>2}: {figures}")
        return against_raw(samples)

    def burst(self, ours: Ours, hub: JupyterHub, size: int, rounds: int) -> dict[str, Any]:
        """``size`` concurrent slow3 spawns until all answer: each system in turn, ``rounds`` times."""
        samples: dict[str, list[float]] = {"ours": [], "jupyterhub": [], "raw": []}
        for r in range(rounds):
            users = [self.user() for _ in range(size)]
            hub.add_users(users)
            hostnames: list[str] = []
            runs: list[tuple[str, Callable[[str], Any]]] = [
                ("ours", lambda u, into=hostnames: into.append(ours.spawn(u, self.images["slow3"], timeout=300)[1])),
                ("jupyterhub", lambda u: hub.spawn(u, "slow3", timeout=300)),
                ("raw", lambda u: self.raw("slow3")),
            ]
            figures = {}
            for kind, one in runs:
                figures[kind] = all_at_once(one, users)
                samples[kind].append(figures[kind])
                time.sleep(1)
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(ours.kill, hostnames))
                list(pool.map(hub.kill, users))
            self.remove_raw()
            log(
                f"  burst of {size} slow3, round {r + 1}: ours {ms(figures['ours'])}  "
                f"JupyterHub {ms(figures['jupyterhub'])}  raw {ms(figures['raw'])}"
            )
        return against_raw(samples)

    def reads(self, ours: Ours, hub: JupyterHub, samples_n: int = 200) -> dict[str, Any]:
        user = self.user()
        hub.add_users([user])
        _, hostname = ours.spawn(user, self.images["httpd"])
        hub.spawn(user, "httpd")
        out: dict[str, list[float]] = {"ours": [], "jupyterhub": []}
        for _ in range(samples_n):
            started = time.perf_counter()
            ours.read(hostname)
            out["ours"].append(time.perf_counter() - started)
            started = time.perf_counter()
            hub.read(user)
            out["jupyterhub"].append(time.perf_counter() - started)
        ours.kill(hostname)
        hub.kill(user)
        return {kind: stats(values) for kind, values in out.items()} | {
            "ratio_median": stats(out["ours"])["median"] / stats(out["jupyterhub"])["median"]
        }


def all_at_once(one: Callable[[str], Any], users: list[str]) -> float:
    go = threading.Event()
    errors: list[BaseException] = []

    def run(user: str) -> None:
        go.wait()
        try:
            one(user)
        except BaseException as exc:  # reported after all have finished
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(u,), daemon=True) for u in users]
    for t in threads:
        t.start()
    started = time.perf_counter()
    go.set()
    for t in threads:
        t.join(600)
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(users)} failed; first: {errors[0]!r}")
    return time.perf_counter() - started


@contextmanager
def our_stack(
    redis: RedisServer, workdir: Path, chp: Any, engine: Engine, tag: str, **overrides: Any
) -> Iterator[Ours]:
    instance = unique_instance(tag)
    where = {"DOCKER_HOST": engine.url, "PUBLISH_IP": engine.host} if engine.url else {}
    env = base_env(redis.url, instance, START_TIMEOUT=60, KILL_GRACE=0, **chp.env(), **where, **overrides)
    worker = WorkerProcess(env, workdir / f"worker-{tag}.log", name=tag)
    api = Gunicorn(env, workdir / f"gunicorn-{tag}.log")
    try:
        worker.start()
        api.start()
        yield Ours(api.url, instance)
    finally:
        api.stop()
        worker.stop()
        delete_keys(redis_lib.Redis.from_url(redis.url), instance)
        remove_everything(engine.client, instance)


def rows(result: dict[str, Any]) -> list[list[str]]:
    def cell(r: dict[str, Any], kind: str) -> str:
        return f"{ms(r[kind]['median'])} ({r[kind + '_ratio']:.2f}x)" if kind in r else ""

    out = []
    for key, what in (
        ("httpd", "single spawn, answers at once (httpd)"),
        ("slow3", "single spawn, answers after 3 s (slow3)"),
        ("kill", "kill until the container is gone"),
        ("burst", f"burst of {result['args']['burst']} slow3 until all answer"),
    ):
        if key in result:
            r = result[key]
            kinds = ("ours", "ours_isolation_off", "jupyterhub")
            out.append([what, *(cell(r, kind) for kind in kinds), ms(r["raw"]["median"])])
    if "reads" in result:
        r = result["reads"]
        out.append(["read one notebook's state, p50", ms(r["ours"]["median"]), "", ms(r["jupyterhub"]["median"]), ""])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10, help="interleaved triples per single-spawn and kill row")
    parser.add_argument("--slow-n", type=int, default=5, help="triples for the slow3 row")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--pause", type=float, default=0.2)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tag", default="latest")
    parser.add_argument(
        "--icc-engine",
        action="store_true",
        help="on a dockerd started with --icc=false in a namespace (results: jupyterhub-icc-<tag>.json)",
    )
    args = parser.parse_args(argv)

    binary = jupyterhub_venv()
    client = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=120)
    built = build_images(client)
    images = {name: built[name] for name in ("httpd", "slow3")}
    result: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "docker": client.version().get("Version", ""),
        "jupyterhub": subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout.strip(),
        "args": vars(args),
    }
    prefix = unique_instance("jh")
    with tempfile.TemporaryDirectory(prefix="smbench-jh-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        engine = stack.enter_context(icc_engine(images, workdir)) if args.icc_engine else Engine(client)
        result["engine"] = {"url": engine.url or "the host's", "icc": not args.icc_engine}
        run = Run(args, engine, images)
        redis = RedisServer(workdir / "redis")
        redis.start()
        hub = JupyterHub(workdir, images, prefix, engine)
        try:
            hub.start(binary)
            with running_chp(workdir) as chp, our_stack(redis, workdir, chp, engine, "jhours") as ours:
                with our_stack(redis, workdir, chp, engine, "jhopen", NOTEBOOK_ISOLATION="off") as open_ours:
                    log(f"single spawns, httpd, {args.n} of each, interleaved")
                    result["httpd"] = run.single(ours, open_ours, hub, "httpd", args.n)
                    log(f"single spawns, slow3, {args.slow_n} of each, interleaved")
                    result["slow3"] = run.single(ours, open_ours, hub, "slow3", args.slow_n)
                log(f"kill until gone, {args.n} of each, interleaved")
                result["kill"] = run.kill(ours, hub, args.n)
                log(f"bursts of {args.burst} slow3, {args.rounds} rounds")
                result["burst"] = run.burst(ours, hub, args.burst, args.rounds)
                log("reads")
                result["reads"] = run.reads(ours, hub)
        except BaseException:
            log(f"--- jupyterhub log ---\n{hub.log_tail()}")
            raise
        finally:
            hub.stop()
            redis.stop()
            remove_everything(engine.client, run.raw_instance)
            for c in engine.client.containers.list(all=True, filters={"name": prefix}):
                c.remove(force=True)
    log(
        "\n| row | ours (x raw) | ours, NOTEBOOK_ISOLATION=off | JupyterHub + DockerSpawner | raw |"
        "\n|---|---|---|---|---|"
    )
    for row in rows(result):
        log("| " + " | ".join(row) + " |")
    out = RESULTS / f"jupyterhub-{'icc-' if args.icc_engine else ''}{args.tag}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
