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

The namespace, dockerd, ownership and cleanup helpers are testkit/netns.py's, shared with the
mutual-TLS engine of testkit/tls_engine.py.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from testkit import netns
from testkit.support import wait_for

PREFIX = "smsw"
SUBNETS = "10.79"  # 10.78.x is the TLS engine's (testkit/tls_engine.py)
WORKER_HOSTNAME = "node1"
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
        return netns.log_tail(self.base, lines)

    def engine_running(self) -> bool:
        return bool(netns.pids_using(self.base))

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
def _require_tools() -> None:
    netns.require_tools(REQUIRED_TOOLS, "the Swarm tests", "iproute2, util-linux, docker.io")


def _stop_dockerd(base: Path, pid: int | None = None) -> None:
    netns.stop_dockerd(base, pid, term_timeout=20)


def _destroy(tag: str, base: Path) -> None:
    """Everything one run made on the host, in reverse: engines and children, mounts, namespace, veth, files."""
    if base.exists():
        for node_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            _stop_dockerd(node_dir)
        _stop_dockerd(base)
        netns.unmount_under(base)
    netns.remove_namespace(f"{PREFIX}{tag}", base)


def _live_runs(exclude: Path | None = None) -> list[Path]:
    return netns.live_runs(PREFIX, exclude)


def cleanup_leftovers() -> list[str]:
    """Remove what earlier runs that died left behind; never touch a run whose owner still lives."""
    return netns.cleanup_leftovers(PREFIX, _destroy)


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
        f"the engine at {netns.MAIN_ENGINE} is already in a Swarm (state {state}) made by {who}; the Swarm tests "
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
    base = netns.TMP / f"{PREFIX}-{tag}"  # short: unix socket paths are limited to ~108 bytes
    netns.claim(base)  # before anything else exists, so a concurrent run's leftover sweep leaves ours alone
    initialised = False
    had_gwbridge = _network_exists(docker_client, GWBRIDGE)
    try:
        net = netns.free_subnet(SUBNETS)
        manager_ip, worker_ip = netns.make_namespace(name, net)
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
def _start_worker_dockerd(namespace: str, base: Path, hostname: str) -> subprocess.Popen[bytes]:
    base.mkdir(mode=0o700)
    return netns.start_dockerd(namespace, base, hostname=hostname)


@pytest.fixture(scope="module")
def swarm_worker(swarm: SwarmCluster, images: dict[str, str]) -> Iterator[SwarmWorker]:
    """A second engine, in the namespace, joined to ``swarm`` as worker ``node1`` with label gpu=true."""
    base = swarm.base / "n1"
    proc: subprocess.Popen[bytes] | None = None
    client: docker.DockerClient | None = None
    node_id = ""
    try:
        proc = _start_worker_dockerd(swarm.netns, base, WORKER_HOSTNAME)
        try:
            client = netns.wait_dockerd(proc, base)
        except AssertionError as exc:
            pytest.fail(f"{exc}\n--- dockerd log ---\n{netns.log_tail(base, 30)}", pytrace=False)
        netns.load_image(f"unix://{base}/docker.sock", images["httpd"], base / "cli")
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
                if netns.pids_using(base):
                    with contextlib.suppress(docker.errors.DockerException, OSError):
                        client.swarm.leave(force=True)
                client.close()
        finally:
            _stop_dockerd(base, proc.pid if proc else None)
            netns.reap(proc)
            if node_id:
                with contextlib.suppress(docker.errors.NotFound):
                    swarm.client.api.remove_node(node_id, force=True)
            swarm.worker = None
            netns.unmount_under(base)
