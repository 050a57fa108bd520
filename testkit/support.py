"""Helpers for tests on real parts: a Redis server, Celery worker processes, test images."""

from __future__ import annotations

import io
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
T = TypeVar("T")

LABEL_INSTANCE = "swarm-manager.instance"


def wait_for(fn: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``fn`` until it returns something truthy; fail after ``timeout`` with the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = fn()
        except Exception as exc:  # a poll that raises is "not yet", reported if it never passes
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last saw: {last!r}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique_instance(tag: str) -> str:
    return f"smtest-{tag}-{secrets.token_hex(3)}"


# -- Redis -------------------------------------------------------------------------------
class RedisServer:
    """A real redis-server process on a free loopback port, with append-only persistence."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if not binary:
            raise RuntimeError("redis-server is not installed (make test installs it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        import redis

        self._log = (self.workdir / "redis.log").open("ab")
        try:
            self.proc = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "everysec",
                    "--dir",
                    str(self.workdir),
                ],
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
            client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
            wait_for(lambda: _ping(client), 15, f"redis-server on port {self.port}")
        except BaseException:
            self.stop()  # never leave a half-started server (or its log handle) behind
            raise

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
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

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()


def _ping(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


# -- Celery worker ---------------------------------------------------------------------------
class WorkerProcess:
    """A real ``celery worker`` process with its own environment; its log is kept for failures."""

    def __init__(self, env: Mapping[str, str], logfile: Path, name: str = "w1", extra_args: list[str] | None = None):
        self.env = dict(env)
        self.logfile = logfile
        self.name = name
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def command(self) -> list[str]:
        return [
            str(VENV_BIN / "celery"),
            "-A",
            "worker.celery_app",
            "worker",
            "--loglevel",
            "INFO",
            "--hostname",
            f"{self.name}-{secrets.token_hex(3)}@%h",
            "--without-mingle",
            "--without-gossip",
            *self.extra_args,
        ]

    def start(self, wait: bool = True) -> None:
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        self._log = self.logfile.open("ab")
        try:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=ROOT,
                env=env,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            if wait:
                wait_for(self._ready, 60, f"celery worker {self.name} to be ready (log: {self.logfile})", 0.2)
        except BaseException:
            self.stop()  # never leave a half-started process (or its log handle) behind
            raise

    ready_text = " ready."

    def _ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited early:\n{self.log_tail()}")
        return self.ready_text in self.logfile.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            # SIGQUIT: cold shutdown, do not wait for running spawns (tests clean up by label).
            os.killpg(self.proc.pid, signal.SIGQUIT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


class WatchProcess(WorkerProcess):
    """``swarm-manager watch`` (worker/watcher.py) as the supervisor, compose and the stack run it."""

    ready_text = "following the engine's events"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "cli", "watch"]


class BeatProcess(WorkerProcess):
    """A real ``celery beat`` process (sends the periodic reconcile task)."""

    ready_text = "beat: Starting"

    def command(self) -> list[str]:
        return [
            str(VENV_BIN / "celery"),
            "-A",
            "worker.celery_app",
            "beat",
            "--loglevel",
            "INFO",
            "--schedule",
            str(self.logfile.with_suffix(".schedule")),
        ]


# -- The API on a real socket ------------------------------------------------------------------
class ApiServer:
    """The API as `make run` serves it (``swarm-manager serve``'s gunicorn options: gevent
    workers), on a free loopback port."""

    def __init__(
        self,
        env: Mapping[str, str],
        logfile: Path,
        workers: int = 1,
        access_log: bool = False,
        options: list[str] | None = None,
    ) -> None:
        self.env = dict(env)
        self.logfile = logfile
        self.workers = workers
        self.access_log = access_log
        self.options = options  # gunicorn's options other than --bind; default: swarm-manager serve's
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        import requests

        from cli.servers import serve_options

        if self.options is not None:
            options = ["--bind", f"127.0.0.1:{self.port}", *self.options]
        else:
            options = serve_options(f"127.0.0.1:{self.port}", self.workers, 10_000)
            if not self.access_log:  # the options' last two: --access-logfile -
                options = options[:-2]
        command = [str(VENV_BIN / "gunicorn"), *options, "--graceful-timeout", "3", "api.wsgi:app"]

        def answers() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited early:\n{self.log_tail()}")
            return requests.get(self.url + "/healthz", timeout=1).ok

        self._log = self.logfile.open("ab")
        try:
            self.proc = subprocess.Popen(
                command, cwd=ROOT, env={**os.environ, **self.env}, stdout=self._log, stderr=subprocess.STDOUT
            )
            wait_for(answers, 30, f"gunicorn on port {self.port} to answer")
        except BaseException:
            self.stop()  # never leave a half-started server (or its log handle) behind
            raise

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


# -- Images ------------------------------------------------------------------------------
IMAGE_REPO = "swarm-manager-test"


def _rootfs_tar(files: Mapping[str, bytes]) -> bytes:
    """A FROM-scratch build context: busybox plus the given files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        busybox = Path("/bin/busybox")
        if not busybox.exists():
            raise RuntimeError("/bin/busybox is missing (Debian package busybox-static; make test installs it)")
        tar.add(str(busybox), arcname="rootfs/bin/busybox")
        for name in ("sh", "httpd", "sleep", "echo", "cat", "mkdir", "date"):
            info = tarfile.TarInfo(f"rootfs/bin/{name}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


#: name -> CMD of each test image. All serve HTTP on 8888 except where the name says otherwise.
#: None of them has Jupyter's /api/status but ``status``: the worker's token check
#: (worker/readiness.py) fails a notebook that answers it without its token, which busybox does.
IMAGES: dict[str, list[str]] = {
    "httpd": ["/bin/httpd", "-f", "-p", "8888", "-h", "/www"],
    # Answers only after 5 s (a notebook server that is slow to start).
    "slow5": ["/bin/sh", "-c", "sleep 5; exec /bin/httpd -f -p 8888 -h /www"],
    "slow3": ["/bin/sh", "-c", "sleep 3; exec /bin/httpd -f -p 8888 -h /www"],
    # Answers 50-200 ms after it starts, at random, as small real servers do (bench/spawn.py times
    # how soon readiness is noticed with it).
    "quick": ["/bin/sh", "-c", "/bin/busybox usleep $((50000 + RANDOM % 150000)); exec /bin/httpd -f -p 8888 -h /www"],
    # Runs but never answers on its port.
    "silent": ["/bin/sleep", "100000"],
    # Exits at once with code 3.
    "crash": ["/bin/sh", "-c", "echo 'boom: no kernel found' >&2; exit 3"],
    # Writes 30 MB to its standard output (3750 lines of 8000 bytes), then serves: what a notebook
    # whose user prints too much does to the engine's log of it (tests/test_hardening.py).
    "chatty": [
        "/bin/sh",
        "-c",
        'l=$(/bin/busybox head -c 8000 /dev/zero | /bin/busybox tr "\\0" x); /bin/busybox yes "$l" | '
        "/bin/busybox head -n 3750; echo 'chatty: wrote 30 MB'; exec /bin/httpd -f -p 8888 -h /www",
    ],
    # Reports activity like a Jupyter server (/api/status with last_activity), to anyone: for the
    # idle-culling tests, with notebook tokens off; with them on the token check fails it.
    "status": ["/bin/httpd", "-f", "-p", "8888", "-h", "/www"],
    # httpd again, with an ID of its own (its marker file): the image that spawning it by its ID
    # would run past an allowlist that does not name it (tests/test_image_ids.py).
    "intruder": ["/bin/httpd", "-f", "-p", "8888", "-h", "/www"],
}
#: Files each image serves beside /www/index.html.
EXTRA_FILES: dict[str, dict[str, bytes]] = {
    "status": {"rootfs/www/api/status": b'{"last_activity": "2026-01-01T00:00:00Z"}\n'},
    "intruder": {"rootfs/www/intruder.txt": b"not an allowed image\n"},
}


def image_ref(name: str) -> str:
    # :2 since the images lost /api/status (a machine keeps images built by an older tree).
    return f"{IMAGE_REPO}/{name}:2"


def build_images(client: docker.DockerClient) -> dict[str, str]:
    """Build every test image that is not on the engine yet; return name -> reference."""
    out = {}
    for name, cmd in IMAGES.items():
        ref = image_ref(name)
        out[name] = ref
        try:
            client.images.get(ref)
            continue
        except docker.errors.ImageNotFound:
            pass
        import json

        dockerfile = "FROM scratch\nCOPY rootfs /\nEXPOSE 8888\nCMD " + json.dumps(cmd) + "\n"
        files = {
            "Dockerfile": dockerfile.encode(),
            "rootfs/www/index.html": b"<h1>test notebook</h1>\n",
            **EXTRA_FILES.get(name, {}),
        }
        client.images.build(fileobj=io.BytesIO(_rootfs_tar(files)), custom_context=True, tag=ref, rm=True)
    return out


def cleanup_engine(client: docker.DockerClient, instance: str) -> list[str]:
    """Remove every container labelled with ``instance``, then its networks (the worker's own
    ``<instance>-notebooks``, worker/containers.py); return the names removed."""
    removed = []
    label = {"label": f"{LABEL_INSTANCE}={instance}"}
    for c in client.containers.list(all=True, filters=label):
        try:
            c.remove(force=True)
            removed.append(c.name)
        except docker.errors.NotFound:
            pass
    for net in client.networks.list(filters=label):
        try:
            net.remove()
            removed.append(str(net.name))
        except docker.errors.NotFound:
            pass
    return removed


def our_containers(client: docker.DockerClient, instance: str, all: bool = True) -> list[Any]:
    found = []
    for sparse in client.containers.list(all=all, sparse=True, filters={"label": f"{LABEL_INSTANCE}={instance}"}):
        try:
            found.append(client.containers.get(sparse.id))
        except docker.errors.NotFound:  # removed between the listing and its inspection
            pass
    return found


def make_reconciler(stack: Any, clock: Callable[[], float] = time.time, **overrides: Any) -> Any:
    """A Reconciler for ``stack`` on the real engine and store, with settings overridden."""
    from dataclasses import replace

    from worker.containers import ContainerEngine
    from worker.reconciler import Reconciler
    from worker.spawner import Spawner

    settings = replace(stack.settings, **overrides)
    engine = ContainerEngine(stack.docker, settings)
    spawner = Spawner(stack.store, engine, settings)
    return Reconciler(stack.store, engine, spawner, settings, clock=clock)


def unreachable_client() -> docker.DockerClient:
    """The product's client for an engine that is not there (nothing listens on port 1): where no
    engine call may happen, one that does raises EngineUnavailable ("engine unreachable")."""
    from shared.settings import Settings
    from worker.engine import make_client

    return make_client(Settings.from_env({"DOCKER_HOST": "tcp://127.0.0.1:1", "ENGINE_TIMEOUT": "2"}))


# -- A fresh clone, as a new user gets it -------------------------------------------------------------
def fresh_clone(dest: Path) -> Path:
    """``git clone`` of this repository into ``dest``, with the working tree's state laid over it.

    In CI (a clean checkout) that is exactly a clone of HEAD; while a change is being made, it is
    the change as it stands, new files included, without anything git ignores (.venv, .state).
    """
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(dest)], check=True, timeout=120)
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    present = set()
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the working tree
        present.add(name)
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=dest, capture_output=True, check=True, timeout=60
    ).stdout.decode()
    for name in filter(None, tracked.split("\0")):
        if name not in present:
            (dest / name).unlink(missing_ok=True)
    return dest
