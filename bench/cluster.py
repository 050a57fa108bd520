"""A Swarm of engines in network namespaces for the benchmarks: a manager and worker nodes.

Every engine is a dockerd of its own (``nsenter --net``, its own hostname, data-root and unix
socket under ``/tmp/smbs-<tag>/n<i>``), in a namespace ``smbs<tag>-<i>`` joined by a veth to one
bridge on the host, ``smbs<tag>b``, in a random ``10.80.<n>.0/24`` (the host ``.1``, node i
``.2+i``). The host's own engine is never touched, so runs of the test suite that need it
outside any Swarm are not blocked. Traffic stays on that bridge: the host reaches each node's
published ports, the nodes reach each other (the Swarm's own ports). Bridged frames pass the
host's iptables FORWARD chain (the engine's policy there is DROP), so one ACCEPT rule for the
bridge is added for the run and removed with it.

The engines run without the userland port proxy (a host-mode published port is a DNAT rule in
the node's namespace, not a process per port), which is what lets a thousand notebooks fit.

Like testkit/netns.py's runs, a run writes an ``owner`` file before it creates anything, and
:func:`cleanup_leftovers` removes what a run that died without its teardown left behind.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors

from testkit import netns
from testkit.support import wait_for

PREFIX = "smbs"
SUBNETS = "10.80"


@dataclass
class Node:
    index: int
    hostname: str
    address: str
    base: Path
    client: docker.DockerClient
    proc: subprocess.Popen[bytes]
    node_id: str = ""

    @property
    def socket_url(self) -> str:
        return f"unix://{self.base}/docker.sock"


@dataclass
class Cluster:
    tag: str
    base: Path
    bridge: str
    nodes: list[Node] = field(default_factory=list)

    @property
    def manager(self) -> Node:
        return self.nodes[0]


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """``values`` in this process's environment meanwhile (what netns.start_dockerd hands dockerd)."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _namespace(tag: str, i: int) -> str:
    return f"{PREFIX}{tag}-{i}"


def _forward_rule(bridge: str) -> list[str]:
    return ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]


def destroy(tag: str, base: Path) -> None:
    """Everything a run made, in reverse: engines and what they left, mounts, namespaces, links, rule."""
    bridge = f"{PREFIX}{tag}b"
    if base.exists():
        for node_dir in sorted((p for p in base.iterdir() if p.is_dir()), reverse=True):
            m = re.fullmatch(r"n(\d+)", node_dir.name)
            netns.stop_dockerd(node_dir, None, _namespace(tag, int(m.group(1))) if m else None, term_timeout=60)
        netns.unmount_under(base)
    for ns in netns.namespaces():
        if ns.startswith(f"{PREFIX}{tag}-"):
            netns.run("ip", "netns", "del", ns, check=False)
    for link in netns.links():
        if link.startswith(f"{PREFIX}{tag}"):
            netns.run("ip", "link", "del", link, check=False)
    while netns.run("iptables", "-D", *_forward_rule(bridge), check=False).returncode == 0:
        pass
    if base.exists():
        shutil.rmtree(base, ignore_errors=True)


def cleanup_leftovers() -> list[str]:
    """Remove what runs that died left behind (their owner process is gone); live runs are left alone."""
    removed = []
    tags = {p.name[len(PREFIX) + 1 :] for p in netns.TMP.glob(f"{PREFIX}-*")}
    tags |= {ns[len(PREFIX) : len(PREFIX) + 6] for ns in netns.namespaces() if ns.startswith(PREFIX)}
    for tag in sorted(tags):
        base = netns.TMP / f"{PREFIX}-{tag}"
        if re.fullmatch(r"[0-9a-f]{6}", tag) and not netns.owner_alive(base):
            destroy(tag, base)
            removed.append(tag)
    return removed


@contextlib.contextmanager
def swarm_cluster(nodes: int, images: list[str], log: object = print) -> Iterator[Cluster]:
    """``nodes`` engines (node0 the manager, the others workers) with ``images`` copied into each;
    everything removed on exit, also when building it fails half-way."""
    netns.require_tools(("ip", "nsenter", "unshare", "dockerd", "docker", "iptables"), "the Swarm benchmark", "")
    cleanup_leftovers()
    tag = secrets.token_hex(3)
    base = netns.TMP / f"{PREFIX}-{tag}"
    netns.claim(base)
    cluster = Cluster(tag=tag, base=base, bridge=f"{PREFIX}{tag}b")
    try:
        net: ipaddress.IPv4Network = netns.free_subnet(SUBNETS)
        netns.run("ip", "link", "add", cluster.bridge, "type", "bridge")
        netns.run("ip", "addr", "add", f"{net[1]}/{net.prefixlen}", "dev", cluster.bridge)
        netns.run("ip", "link", "set", cluster.bridge, "up")
        netns.run("iptables", "-I", *_forward_rule(cluster.bridge))
        for i in range(nodes):
            ns, host_if, ns_if = _namespace(tag, i), f"{PREFIX}{tag}h{i}", f"{PREFIX}{tag}n{i}"
            address = str(net[2 + i])
            netns.run("ip", "netns", "add", ns)
            netns.run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
            netns.run("ip", "link", "set", ns_if, "netns", ns)
            netns.run("ip", "link", "set", host_if, "master", cluster.bridge)
            netns.run("ip", "link", "set", host_if, "up")
            netns.run("ip", "-n", ns, "addr", "add", f"{address}/{net.prefixlen}", "dev", ns_if)
            netns.run("ip", "-n", ns, "link", "set", ns_if, "up")
            netns.run("ip", "-n", ns, "link", "set", "lo", "up")
            netns.run("ip", "-n", ns, "route", "add", "default", "via", str(net[1]))
            node_base = base / f"n{i}"
            node_base.mkdir(mode=0o700)
            # Nothing can be pulled here: without this each node's agent first tries to pull a task's
            # image (its "preparing" state) and takes the local one only after the registry times out.
            with _environment(DOCKER_SERVICE_PREFER_OFFLINE_IMAGE="1"):
                proc = netns.start_dockerd(ns, node_base, ["--userland-proxy=false"], hostname=f"node{i}")
            client = netns.wait_dockerd(proc, node_base)
            cluster.nodes.append(Node(i, f"node{i}", address, node_base, client, proc))
        for node in cluster.nodes:
            for image in images:
                netns.load_image(node.socket_url, image, node.base / "cli")
        manager = cluster.manager
        manager.client.swarm.init(advertise_addr=manager.address, listen_addr=f"{manager.address}:2377")
        manager.client.swarm.reload()
        token = str(manager.client.swarm.attrs["JoinTokens"]["Worker"])
        for node in cluster.nodes[1:]:
            node.client.swarm.join(
                remote_addrs=[f"{manager.address}:2377"],
                join_token=token,
                listen_addr=f"{node.address}:2377",
                advertise_addr=node.address,
            )
        for node in cluster.nodes:
            node.node_id = str((node.client.info().get("Swarm") or {}).get("NodeID", ""))

        def all_ready() -> bool:
            listed = manager.client.api.nodes()
            return len(listed) == nodes and all((n.get("Status") or {}).get("State") == "ready" for n in listed)

        wait_for(all_ready, 60, f"{nodes} Swarm nodes to be ready", 0.2)
        log(f"  Swarm of {nodes} engines in namespaces ready: {', '.join(n.address for n in cluster.nodes)}")
        yield cluster
    finally:
        for node in cluster.nodes:  # no Swarm to leave: the engines and their data go with the run
            node.client.close()
        destroy(tag, base)
        for node in cluster.nodes:
            netns.reap(node.proc)
