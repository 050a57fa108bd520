"""Extra Docker engines for tests, each in its own network namespace: the pieces they share.

Used by testkit/tls_engine.py (a mutual-TLS dockerd, prefix ``smtls``, subnets 10.78.x) and
tests/swarm_cluster.py (a Swarm worker dockerd, prefix ``smsw``, subnets 10.79.x).

A run owns ``/tmp/<prefix>-<tag>`` (``tag``: six hex digits) and writes an ``owner`` file there
(its pid and process start time) before it creates anything else: a namespace
``<prefix><tag>``, joined to the host by the veth pair ``<prefix><tag>h`` (host side, ``.1``)
and ``<prefix><tag>n`` (namespace side, ``.2``), and one or more dockerds with their data-root,
exec-root, pidfile, log and unix socket under that folder. ``cleanup_leftovers`` removes what a
run that died without its teardown left behind, and never touches a run whose owner still lives.

Each dockerd is started with ``nsenter --net`` (``ip netns exec`` remounts /sys and dockerd then
fails; a second dockerd in the host's namespace would fight the first over ``docker0``),
optionally with its own hostname (``unshare --uts``).
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
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import docker
import pytest

from testkit.support import wait_for

TMP = Path("/tmp")
MAIN_ENGINE = "unix:///var/run/docker.sock"


# -- commands --------------------------------------------------------------------------------
def run(
    *args: str, check: bool = True, timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def require_tools(tools: Iterable[str], who: str, packages: str) -> None:
    """Fail (not error) the test when a tool is missing or we are not root; ``who``: "the Swarm tests"."""
    missing = [tool for tool in tools if not shutil.which(tool)]
    if missing:
        pytest.fail(
            f"{who} need {', '.join(missing)} on PATH (Debian: {packages}; `make test` installs them)",
            pytrace=False,
        )
    if os.geteuid() != 0:
        pytest.fail(f"{who} create a network namespace and a dockerd: run them as root", pytrace=False)


def engine_env() -> dict[str, str]:
    """Our environment minus settings that would point docker/dockerd elsewhere."""
    drop = {"DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT", "DOCKER_CONFIG"}
    return {k: v for k, v in os.environ.items() if k not in drop}


# -- who owns a run --------------------------------------------------------------------------
def start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), to tell it from a later one with the same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner_alive(base: Path) -> bool:
    try:
        pid_text, started = (base / "owner").read_text().split()
        return start_time(int(pid_text)) == started
    except (OSError, ValueError):
        return False


def claim(base: Path) -> None:
    """Make the run's folder and say whose it is, before anything else of the run exists."""
    base.mkdir(mode=0o700)
    (base / "owner").write_text(f"{os.getpid()} {start_time(os.getpid())}\n")


def live_runs(prefix: str, exclude: Path | None = None) -> list[Path]:
    return [p for p in TMP.glob(f"{prefix}-*") if p != exclude and owner_alive(p)]


# -- processes -------------------------------------------------------------------------------
def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def pids_using(base: Path, netns: str | None = None) -> list[int]:
    """Live processes whose command line names ``base`` or a path under it (a dockerd, its containerd
    and shims), and with ``netns`` also every process inside that network namespace (docker-proxy)."""
    needle = str(base).encode()
    ns_inode = None
    if netns:
        with contextlib.suppress(OSError):
            ns_inode = os.stat(f"/var/run/netns/{netns}").st_ino
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            in_ns = ns_inode is not None and os.stat(entry / "ns" / "net").st_ino == ns_inode
        except OSError:
            continue
        if in_ns or any(arg == needle or arg.startswith(needle + b"/") for arg in cmdline.split(b"\0")):
            out.append(int(entry.name))
    return [pid for pid in out if running(pid)]


def send_signal(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` runs any more (zombies count as gone); returns those still running."""
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in alive if running(pid)]
    return alive


def terminate(pids: list[int], term_timeout: float = 10, kill_timeout: float = 10) -> None:
    """SIGTERM, wait up to ``term_timeout``, SIGKILL whatever still runs, wait up to ``kill_timeout``."""
    send_signal(pids, signal.SIGTERM)
    left = wait_gone(pids, term_timeout)
    send_signal(left, signal.SIGKILL)
    wait_gone(left, kill_timeout)


def reap(proc: subprocess.Popen[bytes] | None) -> None:
    """Collect the exit status of a dockerd we started (after it was stopped), so no zombie stays."""
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


# -- what a stopped dockerd leaves behind ----------------------------------------------------
def _container_ids(base: Path) -> set[str]:
    try:
        return {d.name for d in (base / "data" / "containers").iterdir() if re.fullmatch(r"[0-9a-f]{64}", d.name)}
    except OSError:
        return set()


def _container_pids(ids: set[str]) -> list[int]:
    """Processes of our engine's containers, by their container id in /proc/<pid>/cgroup."""
    if not ids:
        return []
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cgroups = (entry / "cgroup").read_text()
        except OSError:
            continue
        if any(f"/{cid}" in cgroups for cid in ids):
            out.append(int(entry.name))
    return out


def _remove_container_cgroups(ids: set[str]) -> None:
    """A dockerd that was killed leaves its containers' (empty) cgroups behind."""
    for cid in ids:
        for path in Path("/sys/fs/cgroup").glob(f"*/docker/{cid}"):
            with contextlib.suppress(OSError):
                path.rmdir()


def stop_dockerd(base: Path, pid: int | None = None, netns: str | None = None, term_timeout: float = 30) -> None:
    """Stop the dockerd whose folder is ``base`` and everything it left behind.

    SIGTERM the dockerd (its pidfile's pid, and ``pid``, when either really is a process using
    ``base``), wait ``term_timeout``, SIGKILL. A dockerd that was killed leaves its containers,
    containerd, shims and proxies behind: kill the containers' processes (found by the container
    ids in its data-root), remove their cgroups, then stop whatever else still uses ``base`` (or,
    with ``netns``, runs in that namespace).
    """
    ours = pids_using(base)
    pids = set()
    with contextlib.suppress(OSError, ValueError):
        pids.add(int((base / "pid").read_text().strip()))
    if pid:
        pids.add(pid)
    terminate([p for p in pids if p in ours], term_timeout)  # only a process that really is our dockerd
    ids = _container_ids(base)
    procs = _container_pids(ids)
    send_signal(procs, signal.SIGKILL)
    wait_gone(procs, 10)
    _remove_container_cgroups(ids)
    terminate(pids_using(base, netns))


def unmount_under(base: Path) -> None:
    prefix = str(base) + "/"
    points = []
    with open("/proc/self/mounts") as f:
        for line in f:
            point = line.split()[1].replace("\\040", " ")
            if point.startswith(prefix):
                points.append(point)
    for point in sorted(set(points), key=len, reverse=True):
        run("umount", "-l", point, check=False)


# -- namespaces and links --------------------------------------------------------------------
def links() -> list[str]:
    out = run("ip", "-o", "link", "show").stdout
    return [m.group(1) for m in re.finditer(r"^\d+:\s+([^:@\s]+)", out, re.M)]


def namespaces() -> list[str]:
    return [line.split()[0] for line in run("ip", "netns", "list").stdout.splitlines() if line.strip()]


def free_subnet(first: str) -> ipaddress.IPv4Network:
    """A random ``<first>.<n>.0/24`` (``first``: "10.78") that no address or route on the host overlaps."""
    taken = []
    for line in run("ip", "-4", "-o", "addr", "show").stdout.splitlines():
        m = re.search(r"inet (\S+)", line)
        if m:
            taken.append(ipaddress.ip_interface(m.group(1)).network)
    for line in run("ip", "-4", "route", "show", "table", "all").stdout.splitlines():
        words = line.split()
        word = words[0] if words else ""
        if word in ("local", "broadcast", "unreachable", "blackhole", "prohibit", "throw") and len(words) > 1:
            word = words[1]
        if word == "default":
            continue
        with contextlib.suppress(ValueError):
            taken.append(ipaddress.ip_network(word, strict=False))
    choices = list(range(1, 255))
    secrets.SystemRandom().shuffle(choices)
    for n in choices:
        net = ipaddress.IPv4Network(f"{first}.{n}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return net
    raise RuntimeError(f"no free /24 in {first}.0.0/16 for the test namespace")


def make_namespace(name: str, net: ipaddress.IPv4Network) -> tuple[str, str]:
    """Namespace ``name`` and the veth pair ``<name>h`` (host, ``.1``) / ``<name>n`` (inside, ``.2``)."""
    host_ip, ns_ip = str(net[1]), str(net[2])
    host_if, ns_if = f"{name}h", f"{name}n"
    run("ip", "netns", "add", name)
    run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
    run("ip", "link", "set", ns_if, "netns", name)
    run("ip", "addr", "add", f"{host_ip}/{net.prefixlen}", "dev", host_if)
    run("ip", "link", "set", host_if, "up")
    run("ip", "-n", name, "addr", "add", f"{ns_ip}/{net.prefixlen}", "dev", ns_if)
    run("ip", "-n", name, "link", "set", ns_if, "up")
    run("ip", "-n", name, "link", "set", "lo", "up")
    return host_ip, ns_ip


def remove_namespace(name: str, base: Path) -> None:
    """The end of a run's teardown, once its engines are stopped: namespace, veth pair, folder."""
    if name in namespaces():
        run("ip", "netns", "del", name, check=False)
    for link in links():
        if link in (f"{name}h", f"{name}n"):
            run("ip", "link", "del", link, check=False)
    if base.exists():
        unmount_under(base)
        shutil.rmtree(base, ignore_errors=True)


def cleanup_leftovers(prefix: str, destroy: Callable[[str, Path], None]) -> list[str]:
    """Remove what earlier runs that died left behind; never touch a run whose owner still lives.

    ``destroy(tag, base)`` removes one run's namespace ``<prefix><tag>``, links and folder ``base``.
    """
    tags: set[str] = set()
    for ns in namespaces():
        if ns.startswith(prefix):
            tags.add(ns[len(prefix) :])
    for link in links():
        if link.startswith(prefix) and link[-1:] in ("h", "n"):
            tags.add(link[len(prefix) : -1])
    for path in TMP.glob(f"{prefix}-*"):
        tags.add(path.name[len(prefix) + 1 :])
    removed = []
    for tag in sorted(tags):
        if not re.fullmatch(r"[0-9a-f]{6}", tag):
            continue
        base = TMP / f"{prefix}-{tag}"
        if owner_alive(base):
            continue
        if base.exists() and not (base / "owner").exists() and time.time() - base.stat().st_mtime < 60:
            continue  # another run that is just starting (it writes its owner file right away)
        destroy(tag, base)
        removed.append(tag)
    return removed


# -- a dockerd in a namespace ----------------------------------------------------------------
def start_dockerd(
    netns: str, base: Path, args: Sequence[str] = (), hostname: str | None = None
) -> subprocess.Popen[bytes]:
    """``dockerd`` in namespace ``netns`` with everything of its own under ``base`` (socket
    ``base/docker.sock``, log ``base/dockerd.log``) plus ``args``; with ``hostname``, in its own
    UTS namespace with that hostname. The returned process is the dockerd itself (all exec)."""
    (base / "daemon.json").write_text("{}\n")  # not /etc/docker/daemon.json: nothing of the main engine's
    wrapper = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname] if hostname else []
    log = (base / "dockerd.log").open("ab")
    try:
        return subprocess.Popen(
            [
                *["nsenter", f"--net=/var/run/netns/{netns}", *wrapper],
                *["dockerd", "--config-file", str(base / "daemon.json"), "--data-root", str(base / "data")],
                *["--exec-root", str(base / "exec"), "--pidfile", str(base / "pid")],
                *["-H", f"unix://{base}/docker.sock", *args],
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=engine_env(),
            start_new_session=True,  # a Ctrl-C of pytest reaches the teardown, not dockerd directly
        )
    finally:
        log.close()


def pings(path: Path) -> bool:
    """GET /_ping over the unix socket by hand (docker-py leaks the socket of a failed connect)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        sock.connect(str(path))
        sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        return sock.recv(64).split(b"\r\n", 1)[0].split()[1:2] == [b"200"]


def wait_dockerd(proc: subprocess.Popen[bytes], base: Path, tcp: tuple[str, int] | None = None) -> docker.DockerClient:
    """Wait until the dockerd answers on its unix socket (and, with ``tcp``, listens on that
    address); a client on the socket. AssertionError when it exits or does not answer in time."""
    path = base / "docker.sock"

    def answers() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"dockerd exited with {proc.returncode}")
        return pings(path)

    wait_for(answers, 60, f"the namespace dockerd on unix://{path}", 0.2)
    if tcp is not None:

        def port_open() -> bool:
            with socket.create_connection(tcp, timeout=1):
                return True

        wait_for(port_open, 30, f"the namespace dockerd's TCP port {tcp[0]}:{tcp[1]}", 0.2)
    return docker.DockerClient(base_url=f"unix://{path}", timeout=60)


def log_tail(base: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of the dockerd log in ``base`` ("" before there is one)."""
    try:
        return "\n".join((base / "dockerd.log").read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def load_image(socket_url: str, ref: str, config_dir: Path) -> None:
    """``docker save ref | docker -H socket_url load``: images are per engine and nothing can be pulled."""
    env = {**engine_env(), "DOCKER_CONFIG": str(config_dir)}
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
