"""stack.yml for real: `docker stack deploy` on a two-node Swarm, from images in a real registry.

The Swarm is tests/swarm_cluster.py's: the main engine as manager on a veth address (10.79.x.1) and
``node1``, a dockerd in a network namespace (10.79.x.2), as worker. On the manager run:

- a registry (testkit/registry.py, Debian's docker-registry) on the manager's veth address with TLS,
  trusted by both engines through /etc/docker/certs.d; the images of tests/deploy_images.py are
  pushed there and the stack names them there, so node1 gets them only by pulling;
- the manager's mutual-TLS endpoint the workers use as DOCKER_HOST (a Swarm manager exposes one; the
  test engine has none, so socat terminates mutual TLS on 10.79.x.1 and forwards to its socket).

Networking: the stack's services talk on its attachable overlay network by service name with
endpoint_mode dnsrr, and publish their ports in host mode (this kernel has no IPVS: no ingress mesh,
no VIPs). The API answers on both nodes (one replica each), the proxy and Flower on the manager.
Notebooks are Swarm services with a host-mode port on whichever node runs them; the workers probe
and the proxy routes ``<node address>:<port>``. The test talks to 127.0.0.1 and 10.79.x.2 only.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
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

from testkit import netns
from testkit.registry import Registry, ensure_packages
from testkit.support import ROOT, free_port, wait_for
from testkit.tls_engine import make_certificates
from tests.deploy_images import DeployImages
from tests.deployed import Deployed, make_secrets
from tests.swarm_cluster import SwarmCluster, SwarmWorker, swarm, swarm_worker  # noqa: F401

pytestmark = pytest.mark.timeout(1500)  # the first run on a machine builds the images too

PREFIX = "smstack"
STACK_LABEL = "com.docker.stack.namespace"
REPLICAS = {"redis": 1, "api": 2, "worker": 2, "beat": 1, "flower": 1, "proxy": 1}
REDIS_LABEL = "swarm-manager.redis"
NOTEBOOK_IMAGE = "swarm-manager-test/httpd:2"  # on both nodes (tests/swarm_cluster.py loads it into node1)
CONVERGE_TIMEOUT = 240


@dataclass
class StackDeployment:
    name: str
    base: Path
    env: dict[str, str]
    instance: str
    secrets: dict[str, str]
    deployed: Deployed
    swarm: SwarmCluster
    node1: SwarmWorker
    registry: Registry
    images: dict[str, str]  # API_IMAGE ... -> the registry reference
    timings: dict[str, float] = field(default_factory=dict)

    def docker(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _docker(self.env, *args, timeout=timeout, check=check)

    def services(self) -> list[Any]:
        return list(self.swarm.client.services.list(filters={"label": f"{STACK_LABEL}={self.name}"}))

    def running(self, service: str) -> list[dict[str, Any]]:
        """The service's tasks that run (with a healthcheck: that are healthy)."""
        tasks = self.swarm.client.api.tasks(filters={"service": f"{self.name}_{service}", "desired-state": "running"})
        return [t for t in tasks if t["Status"]["State"] == "running"]

    def nodes_of(self, service: str) -> set[str]:
        return {self.node_name(t["NodeID"]) for t in self.running(service)}

    def node_name(self, node_id: str) -> str:
        return str(self.swarm.node(node_id)["Description"]["Hostname"])

    def notebooks(self) -> list[Any]:
        return list(self.swarm.client.services.list(filters={"label": f"swarm-manager.instance={self.instance}"}))

    def logs(self) -> str:
        out = []
        for service in REPLICAS:
            proc = self.docker("service", "logs", "--no-task-ids", "--tail", "25", f"{self.name}_{service}",
                               timeout=60, check=False)  # fmt: skip
            out.append(f"-- {service} --\n{proc.stdout[-3000:]}{proc.stderr[-1000:]}")
            ps = self.docker("service", "ps", "--no-trunc", f"{self.name}_{service}", timeout=60, check=False)
            out.append(ps.stdout[-2000:])
        return "\n".join(out)


def _docker(
    env: dict[str, str], *args: str, timeout: float = 300, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """The docker CLI on the manager with exactly ``env`` (a stack is interpolated from it)."""
    proc = subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}{proc.stdout[-2000:]}"
        )
    return proc


def _destroy(tag: str, base: Path) -> None:
    """A run's socat (and anything else using its folder), its stack's volumes, its folder."""
    netns.terminate(netns.pids_using(base), term_timeout=10)
    with contextlib.suppress(docker.errors.DockerException):
        client = docker.DockerClient(base_url=netns.MAIN_ENGINE)
        try:
            for volume in client.volumes.list():
                if str(volume.name).startswith(f"{PREFIX}{tag}_"):
                    with contextlib.suppress(docker.errors.APIError):
                        volume.remove(force=True)
        finally:
            client.close()
    shutil.rmtree(base, ignore_errors=True)


@dataclass
class Endpoint:
    host: str  # tcp://10.79.x.1:<port>
    certs: Path  # ca.pem, cert.pem, key.pem of a client it trusts


@contextlib.contextmanager
def manager_tls_endpoint(base: Path, address: str) -> Iterator[Endpoint]:
    """``tcp://address:<port>`` with mutual TLS, forwarding to the manager's unix socket (socat)."""
    ensure_packages({"socat": "socat"}, "the stack tests")
    certs = make_certificates(base / "tls", address)
    port = free_port_on(address)
    log = (base / "socat.log").open("ab")
    listen = (
        f"OPENSSL-LISTEN:{port},bind={address},reuseaddr,fork,cert={certs['server_cert']},"
        f"key={certs['server_key']},cafile={certs['ca']},verify=1"
    )
    proc = subprocess.Popen(
        ["socat", listen, "UNIX-CONNECT:/var/run/docker.sock"],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    try:

        def listening() -> bool:
            assert proc.poll() is None, f"socat exited with {proc.returncode}"
            with socket.create_connection((address, port), timeout=1):
                return True

        wait_for(listening, 15, f"socat's TLS listener on {address}:{port}", 0.1)
        yield Endpoint(host=f"tcp://{address}:{port}", certs=certs["good"])
    finally:
        netns.terminate([proc.pid], term_timeout=5)
        netns.reap(proc)


def free_port_on(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def _converged(deployment: StackDeployment) -> bool:
    return all(len(deployment.running(service)) == count for service, count in REPLICAS.items())


@pytest.fixture(scope="module")
def stack(
    swarm: SwarmCluster,  # noqa: F811
    swarm_worker: SwarmWorker,  # noqa: F811
    swarm_registry: Registry,
    deploy_images: DeployImages,
) -> Iterator[StackDeployment]:
    netns.cleanup_leftovers(PREFIX, _destroy)
    tag = secrets.token_hex(3)
    name = f"{PREFIX}{tag}"
    base = netns.TMP / f"{PREFIX}-{tag}"
    netns.claim(base)
    client = swarm.client
    deployment: StackDeployment | None = None
    labelled = False
    try:
        began = time.monotonic()
        images = {
            var: swarm_registry.push(local, f"swarm-manager-test/{var.split('_')[0].lower()}", deploy_images.tag)
            for var, local in (
                ("API_IMAGE", deploy_images.api),
                ("WORKER_IMAGE", deploy_images.worker),
                ("PROXY_IMAGE", deploy_images.proxy),
                ("REDIS_IMAGE", deploy_images.redis),
            )
        }
        push_seconds = time.monotonic() - began
        _label_manager(client, swarm.manager_id, add=True)
        labelled = True
        values = make_secrets(base / "secrets")
        api_port, proxy_port, flower_port = free_port(), free_port(), free_port()
        instance = f"smtest-stack-{tag}"
        with manager_tls_endpoint(base, swarm.manager_ip) as endpoint:
            env = {
                # Nothing from the developer's shell but the basics: the stack is interpolated from this.
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "LANG": "C.UTF-8",
                "HOME": str(base),
                **images,
                "ENGINE_HOST": endpoint.host,
                "ENGINE_CERT_DIR": str(endpoint.certs),
                "SECRETS_DIR": str(base / "secrets"),
                "API_PORT": str(api_port),
                "PROXY_PORT": str(proxy_port),
                "FLOWER_PORT": str(flower_port),
                "DOMAIN": "nb.test",
                "PUBLIC_URL": f"http://{{hostname}}.{{domain}}:{proxy_port}/",
                "INSTANCE": instance,
                "START_TIMEOUT": "30",
                "RECONCILE_INTERVAL": "5",
                "KILL_GRACE": "1",
            }
            deployment = StackDeployment(
                name=name,
                base=base,
                env=env,
                instance=instance,
                secrets=values,
                deployed=Deployed(
                    f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{proxy_port}", values["admin_token"]
                ),
                swarm=swarm,
                node1=swarm_worker,
                registry=swarm_registry,
                images=images,
            )
            deployment.timings["push"] = push_seconds
            began = time.monotonic()
            deployment.docker("stack", "deploy", "-c", str(ROOT / "stack.yml"), name)
            try:
                wait_for(lambda: _converged(deployment), CONVERGE_TIMEOUT, "every service's tasks running", 1)
                wait_for(lambda: deployment.deployed.api("GET", "/healthz").status_code == 200, 60, "the API")
            except AssertionError:
                print(f"--- the stack's services ---\n{deployment.logs()}")
                raise
            deployment.timings["deploy"] = time.monotonic() - began
            print(f"pushed in {push_seconds:.0f} s, stack running in {deployment.timings['deploy']:.0f} s")
            yield deployment
    finally:
        try:
            if deployment is not None:
                _remove_stack(deployment)
        finally:
            if labelled:
                with contextlib.suppress(docker.errors.APIError):
                    _label_manager(client, swarm.manager_id, add=False)
            _destroy(tag, base)


def _label_manager(client: docker.DockerClient, node_id: str, add: bool) -> None:
    """Redis's node: the one labelled swarm-manager.redis=true (its volume stays there)."""
    node = client.api.inspect_node(node_id)
    spec = dict(node["Spec"])
    labels = dict(spec.get("Labels") or {})
    if add:
        labels[REDIS_LABEL] = "true"
    else:
        labels.pop(REDIS_LABEL, None)
    spec["Labels"] = labels
    client.api.update_node(node_id, node["Version"]["Index"], spec)


def _remove_stack(deployment: StackDeployment) -> None:
    """`docker stack rm`, then whatever the stack leaves: notebooks its workers started, its volume."""
    deployment.docker("stack", "rm", deployment.name, check=False, timeout=120)
    for service in deployment.notebooks():
        with contextlib.suppress(docker.errors.APIError):
            service.remove()
    client = deployment.swarm.client
    label = {"label": f"{STACK_LABEL}={deployment.name}"}

    def gone() -> bool:
        containers = client.containers.list(all=True, filters=label)
        return not (deployment.services() or client.networks.list(filters=label) or containers)

    with contextlib.suppress(AssertionError):
        wait_for(gone, 90, f"stack {deployment.name} to be gone", 0.5)
    for engine in (client, deployment.node1.client):
        with contextlib.suppress(docker.errors.DockerException):
            for volume in engine.volumes.list(filters=label):
                with contextlib.suppress(docker.errors.APIError):
                    volume.remove(force=True)


# -- the tests, in order: the last one removes the stack --------------------------------------------
def test_stack_runs_spread_over_both_nodes_from_the_registry(stack: StackDeployment) -> None:
    node1 = stack.node1.hostname
    manager = stack.swarm.manager_hostname
    # Two API replicas, one per node, each answering on its node's published port.
    assert stack.nodes_of("api") == {manager, node1}
    for address in ("127.0.0.1", stack.node1.address):
        health = stack.deployed.http.get(f"http://{address}:{stack.env['API_PORT']}/healthz", timeout=10)
        assert health.status_code == 200, (address, health.status_code)
    # Workers spread over the nodes; beat exactly once; Redis on its labelled node; proxy and Flower on the manager.
    assert stack.nodes_of("worker") == {manager, node1}
    assert len(stack.running("beat")) == 1
    assert stack.nodes_of("redis") == stack.nodes_of("proxy") == stack.nodes_of("flower") == {manager}
    # node1 has the images only because it pulled them from the registry.
    pulled = {
        digest.split("@")[0]
        for image in stack.node1.client.images.list()
        for digest in image.attrs["RepoDigests"] or []
    }
    for var in ("API_IMAGE", "WORKER_IMAGE"):
        assert stack.images[var].rsplit(":", 1)[0] in pulled, (var, pulled)
    from_node1 = [line for line in stack.registry.requests("GET") if line.startswith(f"{stack.node1.address} ")]
    assert from_node1, "node1 fetched nothing from the registry"
    # Secrets are Docker secrets, not environment.
    names = {s.name for s in stack.swarm.client.secrets.list(filters={"label": f"{STACK_LABEL}={stack.name}"})}
    assert {
        f"{stack.name}_{n}" for n in ("admin_token", "secret_key", "proxy_auth_token", "flower_basic_auth")
    } <= names
    assert {f"{stack.name}_{n}" for n in ("engine_ca", "engine_cert", "engine_key")} <= names
    for service in stack.services():
        env = service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"].get("Env") or []
        assert not [item for item in env if item.split("=", 1)[-1] in set(stack.secrets.values())], service.name
        # Unset settings stay unset (shared/settings.py's defaults), not empty.
        assert not [item for item in env if item.startswith(("MAX_AGE=", "POOL="))], (service.name, env)


def test_spawn_runs_as_a_service_and_is_routed(stack: StackDeployment) -> None:
    nb = stack.deployed
    hostname = nb.spawn(NOTEBOOK_IMAGE)
    record = nb.wait(hostname, {"ACTIVE"}, 90)
    [service] = [s for s in stack.notebooks() if s.attrs["Spec"]["Labels"].get("swarm-manager.hostname") == hostname]
    [task] = [t for t in service.tasks() if t["Status"]["State"] == "running"]
    assert stack.node_name(task["NodeID"]) == record["node"], (record["node"], task["NodeID"])
    answer = nb.open_notebook(record["notebook_url"])
    assert answer.status_code == 200 and "test notebook" in answer.text, (answer.status_code, answer.text[:300])
    nb.kill(hostname)
    nb.wait(hostname, {"REMOVED"}, 60)
    wait_for(lambda: not stack.notebooks(), 30, "the notebook's service to be gone")


def test_workers_scale_and_spawns_still_settle(stack: StackDeployment) -> None:
    stack.docker("service", "scale", "--detach", f"{stack.name}_worker=4")
    wait_for(lambda: len(stack.running("worker")) == 4, 120, "4 running workers", 1)
    assert stack.nodes_of("worker") == {stack.swarm.manager_hostname, stack.node1.hostname}
    nb = stack.deployed
    hostnames = [nb.spawn(NOTEBOOK_IMAGE, user=f"scale{i}") for i in range(4)]
    records = [nb.wait(hostname, {"ACTIVE"}, 120) for hostname in hostnames]
    for record in records:
        answer = nb.open_notebook(record["notebook_url"])
        assert answer.status_code == 200, (record["hostname"], record["node"], answer.status_code)
    for hostname in hostnames:
        nb.kill(hostname)
    for hostname in hostnames:
        nb.wait(hostname, {"REMOVED"}, 60)
    wait_for(lambda: not stack.notebooks(), 30, "the notebooks' services to be gone")


def test_removing_the_stack_leaves_nothing(stack: StackDeployment) -> None:
    client = stack.swarm.client
    label = {"label": f"{STACK_LABEL}={stack.name}"}
    stack.docker("stack", "rm", stack.name)

    def gone() -> list[str]:
        left = [f"service {s.name}" for s in stack.services()]
        left += [f"network {n.name}" for n in client.networks.list(filters=label)]
        left += [f"secret {s.name}" for s in client.secrets.list(filters=label)]
        for engine in (client, stack.node1.client):
            left += [f"container {c.name}" for c in engine.containers.list(all=True, filters=label)]
        return left

    wait_for(lambda: not gone(), 90, "the stack's services, networks, secrets and containers to go")
    assert not stack.notebooks()
    # The one thing `docker stack rm` keeps on purpose is Redis's data; removed here by the test.
    assert [v.name for v in client.volumes.list(filters=label)] == [f"{stack.name}_redis-data"]
