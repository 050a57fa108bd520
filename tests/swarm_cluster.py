"""A real Swarm for tests: the main engine as manager, plus a worker engine in a network namespace.

What the fixtures build (module scope, so a test module builds the cluster once), and always
tear down, in reverse, even when a test fails:

``swarm``
    a network namespace ``smsw<hex>`` joined to the host by a veth pair in a random
    ``10.79.<n>.0/24`` (host side ``.1``, namespace side ``.2``); the main engine at
    /var/run/docker.sock initialised as a single-node Swarm that advertises and listens on the
    host side of the veth, so an engine inside the namespace can join it. On teardown the
    engine leaves the Swarm (only if this fixture initialised it) and the ``docker_gwbridge``
    network the Swarm made is removed again if it did not exist before.
``swarm_worker``
    a second dockerd inside that namespace (``nsenter --net``, not ``ip netns exec``, which
    remounts /sys and breaks dockerd), with its own hostname ``node1`` (``unshare --uts``),
    data-root, exec-root, pidfile and socket under ``/tmp/smsw-<hex>/n1/``; the httpd test image
    copied into it (``docker save | docker load``: no registry here); joined as a Swarm worker
    and labelled ``gpu=true``. Teardown: leave on the worker, stop its dockerd by pidfile (and
    anything else still using its folder), ``docker node rm --force`` it on the manager.

Leftovers of runs that died without their teardown (same ``smsw`` prefix, owner process gone)
are removed first, and an engine left in a Swarm by such a run (advertising a 10.79.x address)
leaves it. A Swarm this code did not make is never touched: the fixture fails and says so.
Other runs that are alive are left alone: each writes an ``owner`` file with its pid and
process start time before it creates anything.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from tests.support import wait_for

PREFIX = "smsw"
TMP = Path("/tmp")
SUBNETS = "10.79"  # 10.78.x is the TLS engine's (tests/tls_engine.py)
WORKER_HOSTNAME = "node1"
MAIN_ENGINE = "unix:///var/run/docker.sock"
GWBRIDGE = "docker_gwbridge"
REQUIRED_TOOLS = ("ip", "nsenter", "unshare", "dockerd", "docker", "umount", "sh")


@dataclass
class SwarmWorker:
    """The worker engine in the namespace, joined to the Swarm."""

    hostname: str
    node_id: str
    address: str  # the namespace end of the veth: the node's Swarm address
    base: Path  # data-root, exec-root, socket, pidfile, log
    client: docker.DockerClient  # on the node's own unix socket
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_url(self) -> str:
        return f"unix://{self.base}/docker.sock"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join((self.base / "dockerd.log").read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def engine_running(self) -> bool:
        return bool(_pids_using(self.base))

    def stop_engine(self) -> None:
        """Stop the node's dockerd and everything it started, as if the machine went away."""
        _stop_dockerd(self.base, self.proc.pid if self.proc else None)


@dataclass
class SwarmCluster:
    """The main engine as a Swarm manager, and where a worker node can join it from."""

    client: docker.DockerClient  # the main engine, the manager
    tag: str
    netns: str
    base: Path
    manager_ip: str
    worker_ip: str
    manager_id: str
    manager_hostname: str
    worker: SwarmWorker | None = field(default=None)

    def worker_token(self) -> str:
        self.client.swarm.reload()
        return str(self.client.swarm.attrs["JoinTokens"]["Worker"])

    def node(self, node_id: str) -> dict[str, Any]:
        return dict(self.client.api.inspect_node(node_id))


# -- small helpers ---------------------------------------------------------------------------
def _run(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _require_tools() -> None:
    missing = [tool for tool in REQUIRED_TOOLS if not shutil.which(tool)]
    if missing:
        pytest.fail(
            f"the Swarm tests need {', '.join(missing)} on PATH (Debian: iproute2, util-linux, docker.io; "
            "`make test` installs them)",
            pytrace=False,
        )
    if os.geteuid() != 0:
        pytest.fail("the Swarm tests create a network namespace and a dockerd: run them as root", pytrace=False)


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), to tell it from a later one with the same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _owner_alive(base: Path) -> bool:
    try:
        pid_text, started = (base / "owner").read_text().split()
        return _start_time(int(pid_text)) == started
    except (OSError, ValueError):
        return False


def _claim(base: Path) -> None:
    base.mkdir(mode=0o700)
    (base / "owner").write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")


def _pids_using(base: Path) -> list[int]:
    """Processes whose command line names ``base`` or a path under it: a dockerd, its containerd, shims."""
    needle = str(base).encode()
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if any(arg == needle or arg.startswith(needle + b"/") for arg in cmdline.split(b"\0")):
            out.append(int(entry.name))
    return [pid for pid in out if _running(pid)]


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in alive if _running(pid)]
    return alive


def _stop_dockerd(base: Path, pid: int | None = None) -> None:
    """SIGTERM the dockerd of ``base`` (its pidfile first), wait, SIGKILL; then whatever else uses ``base``."""
    ours = _pids_using(base)
    pids = set()
    with contextlib.suppress(OSError, ValueError):
        pids.add(int((base / "pid").read_text().strip()))
    if pid:
        pids.add(pid)
    targets = [p for p in pids if p in ours]  # only a process that really is our dockerd
    _signal(targets, signal.SIGTERM)
    _signal(_wait_gone(targets, 20), signal.SIGKILL)
    _wait_gone(targets, 10)
    # A dockerd that was killed leaves its containerd and shims behind.
    rest = _pids_using(base)
    _signal(rest, signal.SIGTERM)
    left = _wait_gone(rest, 10)
    _signal(left, signal.SIGKILL)
    _wait_gone(left, 10)


def _unmount_under(base: Path) -> None:
    prefix = str(base) + "/"
    points = []
    with open("/proc/self/mounts") as f:
        for line in f:
            point = line.split()[1].replace("\\040", " ")
            if point.startswith(prefix):
                points.append(point)
    for point in sorted(set(points), key=len, reverse=True):
        _run("umount", "-l", point, check=False)


def _links() -> list[str]:
    out = _run("ip", "-o", "link", "show").stdout
    return [m.group(1) for m in re.finditer(r"^\d+:\s+([^:@\s]+)", out, re.M)]


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _run("ip", "netns", "list").stdout.splitlines() if line.strip()]


def _destroy(tag: str, base: Path) -> None:
    """Everything one run made on the host, in reverse: engines and children, mounts, namespace, veth, files."""
    if base.exists():
        for node_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            _stop_dockerd(node_dir)
        _stop_dockerd(base)
        _unmount_under(base)
    name = f"{PREFIX}{tag}"
    if name in _namespaces():
        _run("ip", "netns", "del", name, check=False)
    for link in _links():
        if link in (f"{name}h", f"{name}n"):
            _run("ip", "link", "del", link, check=False)
    if base.exists():
        _unmount_under(base)
        shutil.rmtree(base, ignore_errors=True)


def _live_runs(exclude: Path | None = None) -> list[Path]:
    return [p for p in TMP.glob(f"{PREFIX}-*") if p != exclude and _owner_alive(p)]


def cleanup_leftovers() -> list[str]:
    """Remove what earlier runs that died left behind; never touch a run whose owner still lives."""
    tags: set[str] = set()
    for ns in _namespaces():
        if ns.startswith(PREFIX):
            tags.add(ns[len(PREFIX) :])
    for link in _links():
        if link.startswith(PREFIX) and link[-1:] in ("h", "n"):
            tags.add(link[len(PREFIX) : -1])
    for path in TMP.glob(f"{PREFIX}-*"):
        tags.add(path.name[len(PREFIX) + 1 :])
    removed = []
    for tag in sorted(tags):
        if not re.fullmatch(r"[0-9a-f]{6}", tag):
            continue
        base = TMP / f"{PREFIX}-{tag}"
        if _owner_alive(base):
            continue
        if base.exists() and not (base / "owner").exists() and time.time() - base.stat().st_mtime < 60:
            continue  # another run that is just starting (it writes its owner file right away)
        _destroy(tag, base)
        removed.append(tag)
    return removed


def _free_subnet() -> ipaddress.IPv4Network:
    """A random 10.79.<n>.0/24 that no address or route on the host overlaps."""
    taken = []
    for line in _run("ip", "-4", "-o", "addr", "show").stdout.splitlines():
        m = re.search(r"inet (\S+)", line)
        if m:
            taken.append(ipaddress.ip_interface(m.group(1)).network)
    for line in _run("ip", "-4", "route", "show", "table", "all").stdout.splitlines():
        words = line.split()
        word = words[0] if words else ""
        if word in ("local", "broadcast", "unreachable", "blackhole", "prohibit", "throw") and len(words) > 1:
            word = words[1]
        if word == "default":
            continue
        with contextlib.suppress(ValueError):
            taken.append(ipaddress.ip_network(word, strict=False))
    choices = list(range(0, 255))
    secrets.SystemRandom().shuffle(choices)
    for n in choices:
        net = ipaddress.IPv4Network(f"{SUBNETS}.{n}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return net
    raise RuntimeError(f"no free /24 in {SUBNETS}.0.0/16 for the Swarm test namespace")


def _make_namespace(name: str, net: ipaddress.IPv4Network) -> tuple[str, str]:
    host_ip, ns_ip = str(net[1]), str(net[2])
    host_if, ns_if = f"{name}h", f"{name}n"
    _run("ip", "netns", "add", name)
    _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
    _run("ip", "link", "set", ns_if, "netns", name)
    _run("ip", "addr", "add", f"{host_ip}/{net.prefixlen}", "dev", host_if)
    _run("ip", "link", "set", host_if, "up")
    _run("ip", "-n", name, "addr", "add", f"{ns_ip}/{net.prefixlen}", "dev", ns_if)
    _run("ip", "-n", name, "link", "set", ns_if, "up")
    _run("ip", "-n", name, "link", "set", "lo", "up")
    return host_ip, ns_ip


def _engine_env() -> dict[str, str]:
    """Our environment minus settings that would point docker/dockerd elsewhere."""
    drop = {"DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT", "DOCKER_CONFIG"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _pings(path: Path) -> bool:
    """GET /_ping over the unix socket by hand (docker-py leaks the socket of a failed connect)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        sock.connect(str(path))
        sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        return sock.recv(64).split(b"\r\n", 1)[0].split()[1:2] == [b"200"]


def _load_image(socket_url: str, ref: str, config_dir: Path) -> None:
    """``docker save ref | docker -H socket_url load``: images are per engine and nothing can be pulled."""
    env = {**_engine_env(), "DOCKER_CONFIG": str(config_dir)}
    save = subprocess.Popen(
        ["docker", "-H", MAIN_ENGINE, "save", ref], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        load = subprocess.run(
            ["docker", "-H", socket_url, "load"],
            stdin=save.stdout,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
    finally:
        assert save.stdout is not None and save.stderr is not None
        save.stdout.close()
        save_err = save.stderr.read().decode(errors="replace")
        save.stderr.close()
        save.wait(60)
    if save.returncode != 0 or load.returncode != 0:
        raise RuntimeError(f"copying {ref} to {socket_url} failed: {save_err.strip()} {load.stderr.strip()}")


# -- the manager -----------------------------------------------------------------------------
def _swarm_info(client: docker.DockerClient) -> dict[str, Any]:
    return dict(client.info().get("Swarm") or {})


def _network_exists(client: docker.DockerClient, name: str) -> bool:
    return bool(client.networks.list(names=[name]))


def _remove_gwbridge(client: docker.DockerClient) -> None:
    """The bridge a Swarm makes for host-mode ports; removed when nothing uses it any more."""
    for net in client.networks.list(names=[GWBRIDGE]):
        with contextlib.suppress(docker.errors.APIError):
            net.reload()
            if net.name == GWBRIDGE and not net.attrs.get("Containers"):
                net.remove()


def _leave_stale_swarm(client: docker.DockerClient) -> None:
    """Make sure the main engine is in no Swarm: leave one a dead run of ours left, refuse any other."""
    info = _swarm_info(client)
    state = info.get("LocalNodeState") or "inactive"
    if state == "inactive":
        return
    address = str(info.get("NodeAddr") or "")
    live = _live_runs()
    if address.startswith(f"{SUBNETS}.") and not live:
        client.swarm.leave(force=True)
        wait_for(
            lambda: _swarm_info(client).get("LocalNodeState") == "inactive",
            30,
            "the engine to leave the Swarm a dead test run left behind",
        )
        _remove_gwbridge(client)  # made by that Swarm; removed only if no container uses it
        return
    who = f"a live test run ({', '.join(str(p) for p in live)})" if live else f"someone else (advertises {address!r})"
    pytest.fail(
        f"the engine at {MAIN_ENGINE} is already in a Swarm (state {state}) made by {who}; the Swarm tests "
        "need it outside any Swarm and never leave a Swarm they did not create. "
        "`docker swarm leave --force` if that Swarm is not needed.",
        pytrace=False,
    )


def _leave_swarm(client: docker.DockerClient, remove_gwbridge: bool) -> None:
    try:
        client.swarm.leave(force=True)
    except docker.errors.APIError as exc:
        if "not part of a swarm" not in str(exc):
            raise
    if remove_gwbridge:
        _remove_gwbridge(client)


@pytest.fixture(scope="module")
def swarm(docker_client: docker.DockerClient) -> Iterator[SwarmCluster]:
    """The main engine as a single-node Swarm manager on a veth a namespace engine can reach."""
    _require_tools()
    cleanup_leftovers()
    _leave_stale_swarm(docker_client)
    tag = secrets.token_hex(3)
    name = f"{PREFIX}{tag}"
    base = TMP / f"{PREFIX}-{tag}"  # short: unix socket paths are limited to ~108 bytes
    _claim(base)  # before anything else exists, so a concurrent run's leftover sweep leaves ours alone
    initialised = False
    had_gwbridge = _network_exists(docker_client, GWBRIDGE)
    try:
        net = _free_subnet()
        manager_ip, worker_ip = _make_namespace(name, net)
        docker_client.swarm.init(advertise_addr=manager_ip, listen_addr=f"{manager_ip}:2377")
        initialised = True
        info = _swarm_info(docker_client)
        manager_id = str(info["NodeID"])
        node = docker_client.api.inspect_node(manager_id)
        yield SwarmCluster(
            client=docker_client,
            tag=tag,
            netns=name,
            base=base,
            manager_ip=manager_ip,
            worker_ip=worker_ip,
            manager_id=manager_id,
            manager_hostname=str(node["Description"]["Hostname"]),
        )
    finally:
        try:
            if initialised:
                _leave_swarm(docker_client, remove_gwbridge=not had_gwbridge)
        finally:
            _destroy(tag, base)


# -- the worker node -------------------------------------------------------------------------
def _start_worker_dockerd(netns: str, base: Path, hostname: str) -> subprocess.Popen[bytes]:
    base.mkdir(mode=0o700)
    (base / "daemon.json").write_text("{}\n")  # not /etc/docker/daemon.json: nothing of the main engine's
    log = (base / "dockerd.log").open("ab")
    try:
        return subprocess.Popen(
            [
                *["nsenter", f"--net=/var/run/netns/{netns}", "unshare", "--uts"],
                *["sh", "-c", 'hostname "$0" && exec "$@"', hostname],
                *["dockerd", "--config-file", str(base / "daemon.json"), "--data-root", str(base / "data")],
                *["--exec-root", str(base / "exec"), "--pidfile", str(base / "pid")],
                *["-H", f"unix://{base}/docker.sock"],
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_engine_env(),
            start_new_session=True,  # a Ctrl-C of pytest reaches the teardown, not dockerd directly
        )
    finally:
        log.close()


@pytest.fixture(scope="module")
def swarm_worker(swarm: SwarmCluster, images: dict[str, str]) -> Iterator[SwarmWorker]:
    """A second engine, in the namespace, joined to ``swarm`` as worker ``node1`` with label gpu=true."""
    base = swarm.base / "n1"
    proc: subprocess.Popen[bytes] | None = None
    client: docker.DockerClient | None = None
    node_id = ""
    try:
        proc = _start_worker_dockerd(swarm.netns, base, WORKER_HOSTNAME)

        def answers() -> bool:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"dockerd exited with {proc.returncode}")
            return _pings(base / "docker.sock")

        try:
            wait_for(answers, 60, f"the namespace dockerd on unix://{base}/docker.sock", 0.2)
        except AssertionError as exc:
            log = (base / "dockerd.log").read_text(errors="replace").splitlines()[-30:]
            pytest.fail(f"{exc}\n--- dockerd log ---\n" + "\n".join(log), pytrace=False)
        client = docker.DockerClient(base_url=f"unix://{base}/docker.sock", timeout=60)
        _load_image(f"unix://{base}/docker.sock", images["httpd"], base / "cli")
        client.swarm.join(
            remote_addrs=[f"{swarm.manager_ip}:2377"],
            join_token=swarm.worker_token(),
            listen_addr=f"{swarm.worker_ip}:2377",
            advertise_addr=swarm.worker_ip,
        )
        node_id = str(_swarm_info(client)["NodeID"])

        def ready() -> bool:
            node = swarm.node(node_id)
            return node["Status"]["State"] == "ready" and node["Description"]["Hostname"] == WORKER_HOSTNAME

        wait_for(ready, 30, f"node {WORKER_HOSTNAME} to be Ready on the manager", 0.2)
        node = swarm.node(node_id)
        spec = dict(node["Spec"])
        spec["Labels"] = {**(spec.get("Labels") or {}), "gpu": "true"}
        swarm.client.api.update_node(node_id, node["Version"]["Index"], spec)
        worker = SwarmWorker(
            hostname=WORKER_HOSTNAME, node_id=node_id, address=swarm.worker_ip, base=base, client=client, proc=proc
        )
        swarm.worker = worker
        yield worker
    finally:
        try:
            if client is not None:
                if _pids_using(base):
                    with contextlib.suppress(docker.errors.DockerException, OSError):
                        client.swarm.leave(force=True)
                client.close()
        finally:
            _stop_dockerd(base, proc.pid if proc else None)
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
            if node_id:
                with contextlib.suppress(docker.errors.NotFound):
                    swarm.client.api.remove_node(node_id, force=True)
            swarm.worker = None
            _unmount_under(base)
