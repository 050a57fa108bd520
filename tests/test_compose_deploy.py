"""docker-compose.yml for real: built, started with two workers, used, crashed and taken down.

The compose project runs on the main engine (/var/run/docker.sock) from a fresh clone of this tree,
built by ``docker-compose build`` itself (on the base images tests/deploy_images.py resolves, with
the host's CA bundle as build-ca.pem in the clone: what an operator behind a TLS-intercepting proxy
does) and started with ``up -d --scale worker=2``. Its workers start notebooks on the tests'
mutual-TLS engine (testkit/tls_engine.py: a dockerd in a network namespace, ``tcp://10.78.x.2:2376``)
with the client certificates mounted read-only. Networking: a worker container reaches that address
through the host's route to the namespace (Docker's NAT), the notebooks publish their port on the
namespace address (PUBLISH_IP), and the proxy container (configurable-http-proxy) routes
``<hostname>.nb.test`` there. The test talks only to the ports compose publishes on 127.0.0.1.

A missing docker-compose, root or namespace tool is a failure, never a skip.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests

from testkit import netns
from testkit.support import cleanup_engine, free_port, fresh_clone, wait_for
from testkit.tls_engine import TlsEngine
from tests.deploy_images import DeployImages, build_ca_file
from tests.deployed import APP_UID, Deployed, docker_compose, engine_certs, make_secrets

pytestmark = pytest.mark.timeout(1500)  # the first run on a machine builds the base images too

PREFIX = "smcompose"
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
SERVICES = {"redis": 1, "api": 1, "worker": 2, "beat": 1, "flower": 1, "proxy": 1}
NOTEBOOK_IMAGE = "swarm-manager-test/httpd:2"  # testkit/support.py's busybox httpd, loaded into the TLS engine
HEALTHY_TIMEOUT = 180


@dataclass
class ComposeDeployment:
    project: str
    base: Path  # /tmp/smcompose-<tag>: the clone, certificates, secrets
    clone: Path
    env: dict[str, str]
    instance: str
    secrets: dict[str, str]
    deployed: Deployed
    flower_url: str
    engine: TlsEngine
    client: docker.DockerClient
    timings: dict[str, float]

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return _compose(self.clone, self.project, self.env, *args, timeout=timeout)

    def containers(self, service: str | None = None) -> list[Any]:
        labels = [f"{PROJECT_LABEL}={self.project}"] + ([f"{SERVICE_LABEL}={service}"] if service else [])
        return list(self.client.containers.list(all=True, filters={"label": labels}))

    def notebooks(self) -> list[Any]:
        return self.engine.containers(self.instance)

    def logs(self) -> str:
        proc = _compose(self.clone, self.project, self.env, "logs", "--no-color", "--tail", "40", check=False)
        return proc.stdout[-12000:]


def _compose(
    clone: Path, project: str, env: dict[str, str], *args: str, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """docker-compose on the main engine with exactly ``env`` (nothing from the developer's shell)."""
    empty = clone / ".empty.env"
    empty.touch()
    cmd = [docker_compose(), "--env-file", str(empty), "-p", project, "-f", str(clone / "docker-compose.yml"), *args]
    proc = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd[1:])} failed ({proc.returncode}):\n{proc.stderr[-4000:]}{proc.stdout[-2000:]}"
        )
    return proc


def _remove_project(client: docker.DockerClient, project: str) -> None:
    """What `docker-compose down -v` removes, by the project's labels (for a run that could not)."""
    label = {"label": f"{PROJECT_LABEL}={project}"}
    for container in client.containers.list(all=True, filters=label):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
    for network in client.networks.list(filters=label):
        with contextlib.suppress(docker.errors.NotFound):
            network.remove()
    for volume in client.volumes.list(filters=label):
        with contextlib.suppress(docker.errors.NotFound):
            volume.remove(force=True)


def _cleanup_leftovers(client: docker.DockerClient) -> None:
    """Projects of runs that died: removed unless their owner still lives."""
    projects = {
        str((c.labels or {}).get(PROJECT_LABEL, ""))
        for c in client.containers.list(all=True, filters={"label": PROJECT_LABEL})
    } | {str((v.attrs.get("Labels") or {}).get(PROJECT_LABEL, "")) for v in client.volumes.list()}
    for project in sorted(p for p in projects if p.startswith(PREFIX)):
        base = netns.TMP / f"{PREFIX}-{project[len(PREFIX) :]}"
        if not netns.owner_alive(base):
            _remove_project(client, project)
            shutil.rmtree(base, ignore_errors=True)


def _healthy(deployment: ComposeDeployment) -> bool:
    counts: dict[str, int] = {}
    for container in deployment.containers():
        container.reload()
        service = container.labels.get(SERVICE_LABEL, "")
        health = (container.attrs["State"].get("Health") or {}).get("Status")
        if container.status != "running" or health != "healthy":
            return False
        counts[service] = counts.get(service, 0) + 1
    return counts == SERVICES


@pytest.fixture(scope="module")
def compose(
    deploy_images: DeployImages, tls_engine: TlsEngine, docker_client: docker.DockerClient
) -> Iterator[ComposeDeployment]:
    netns.require_tools(
        ("docker", "docker-compose", "git"), "the compose deployment tests", "docker.io, docker-compose, git"
    )
    _cleanup_leftovers(docker_client)
    tag = secrets.token_hex(3)
    project = f"{PREFIX}{tag}"
    base = netns.TMP / f"{PREFIX}-{tag}"
    netns.claim(base)
    instance = f"smtest-compose-{tag}"
    deployment: ComposeDeployment | None = None
    try:
        clone = fresh_clone(base / "src")
        ca = build_ca_file()
        if ca:  # what Dockerfile.api/.worker/.proxy's builder stages trust besides their own CAs
            shutil.copy(ca, clone / "build-ca.pem")
        values = make_secrets(base / "secrets")
        certs = engine_certs(tls_engine.good_certs, base / "certs")
        (base / "profiles").mkdir()
        api_port, proxy_port, flower_port = free_port(), free_port(), free_port()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(base),
            "LANG": "C.UTF-8",
            **deploy_images.env(),
            "BUILD_NETWORK": "host",  # pip and npm reach their indexes over the host's network
            "ENGINE_HOST": tls_engine.tls_host,
            "ENGINE_CERT_DIR": str(certs),
            "PUBLISH_IP": tls_engine.engine_ip,
            "SECRETS_DIR": str(base / "secrets"),
            "PROFILES_DIR": str(base / "profiles"),
            "API_BIND": "127.0.0.1",
            "API_PORT": str(api_port),
            "PROXY_BIND": "127.0.0.1",
            "PROXY_PORT": str(proxy_port),
            "FLOWER_PORT": str(flower_port),
            # Settings passed through (the rest keep shared/settings.py's defaults).
            "DOMAIN": "nb.test",
            "PUBLIC_URL": f"http://{{hostname}}.{{domain}}:{proxy_port}/",
            "INSTANCE": instance,
            "START_TIMEOUT": "20",
            "RECONCILE_INTERVAL": "5",
            "KILL_GRACE": "1",
        }
        deployment = ComposeDeployment(
            project=project,
            base=base,
            clone=clone,
            env=env,
            instance=instance,
            secrets=values,
            deployed=Deployed(f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{proxy_port}", values["admin_token"]),
            flower_url=f"http://127.0.0.1:{flower_port}",
            engine=tls_engine,
            client=docker_client,
            timings={},
        )
        began = time.monotonic()
        deployment.compose("build", timeout=1200)
        deployment.timings["build"] = time.monotonic() - began
        began = time.monotonic()
        deployment.compose("up", "-d", "--no-build", "--scale", "worker=2")
        try:
            wait_for(lambda: _healthy(deployment), HEALTHY_TIMEOUT, "every service running and healthy", 1)
        except AssertionError:
            print(f"--- docker-compose logs ---\n{deployment.logs()}")
            raise
        deployment.timings["up"] = time.monotonic() - began
        print(f"compose build {deployment.timings['build']:.0f} s, up to healthy {deployment.timings['up']:.0f} s")
        yield deployment
    finally:
        try:
            if deployment is not None:
                with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                    deployment.compose("down", "-v", "-t", "10", timeout=300)
            _remove_project(docker_client, project)
            cleanup_engine(tls_engine.client, instance)
        finally:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def on_failure_logs(compose: ComposeDeployment, request: pytest.FixtureRequest) -> Iterator[None]:
    """The services' last log lines after a test that failed (pytest shows them with the failure)."""
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:
        print(f"--- docker-compose logs ---\n{compose.logs()}")


# -- the tests, in order: the last one takes the project down -------------------------------------
def test_every_service_runs_healthy_as_configured(compose: ComposeDeployment) -> None:
    by_service: dict[str, list[Any]] = {}
    for container in compose.containers():
        by_service.setdefault(container.labels[SERVICE_LABEL], []).append(container)
    assert {name: len(found) for name, found in by_service.items()} == SERVICES
    secret_values = set(compose.secrets.values())
    for name, containers in by_service.items():
        for container in containers:
            attrs = container.attrs
            assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped", name
            assert attrs["Config"].get("Healthcheck"), f"{name} has no healthcheck"
            env = attrs["Config"].get("Env") or []
            leaked = [item.split("=", 1)[0] for item in env if item.split("=", 1)[-1] in secret_values]
            assert not leaked, f"{name} has secrets in its environment: {leaked}"
            # Settings compose does not set keep shared/settings.py's defaults: not in the environment at all.
            assert not [item for item in env if item.startswith(("MAX_AGE=", "POOL=", "AUTH="))], (name, env)
            mounts = {m["Destination"]: m for m in attrs["Mounts"]}
            if name == "worker":
                assert mounts["/certs"]["RW"] is False, "the engine certificates must be read-only"
            else:
                assert "/certs" not in mounts, f"{name} must not see the engine certificates"
            if name != "redis":
                assert attrs["Config"]["User"].split(":")[0] == str(APP_UID), (
                    f"{name} runs as {attrs['Config']['User']!r}"
                )
    # Published where configured, on loopback only in this test.
    for name, port in (("api", 3000), ("flower", 5555), ("proxy", 8000)):
        bindings = by_service[name][0].attrs["NetworkSettings"]["Ports"][f"{port}/tcp"]
        assert {b["HostIp"] for b in bindings} == {"127.0.0.1"}, (name, bindings)
    assert compose.deployed.api("GET", "/healthz").status_code == 200


def test_spawn_is_routed_at_its_public_url_and_killed(compose: ComposeDeployment, on_failure_logs: None) -> None:
    nb = compose.deployed
    hostname = nb.spawn(NOTEBOOK_IMAGE)
    record = nb.wait(hostname, {"ACTIVE"}, 60)
    assert record["address"].startswith(f"http://{compose.engine.engine_ip}:"), record["address"]
    [container] = [c for c in compose.notebooks() if c.labels.get("swarm-manager.hostname") == hostname]
    assert container.status == "running"
    # The public URL through the compose proxy reaches the notebook (busybox httpd's page).
    assert record["notebook_url"].startswith(f"http://{hostname}.nb.test:"), record["notebook_url"]
    answer = nb.open_notebook(record["notebook_url"])
    assert answer.status_code == 200 and "test notebook" in answer.text, (answer.status_code, answer.text[:300])

    nb.kill(hostname)
    nb.wait(hostname, {"REMOVED"}, 60)
    wait_for(
        lambda: not [c for c in compose.notebooks() if c.labels.get("swarm-manager.hostname") == hostname],
        30,
        f"{hostname}'s container to be gone from the engine",
    )
    # The route went with it: the proxy answers for the name no more.
    gone = wait_for(lambda: nb.open_notebook(record["notebook_url"]).status_code == 404, 30, "the route to go")
    assert gone


def test_sigkilled_workers_are_restarted_and_queued_spawns_settle(
    compose: ComposeDeployment, on_failure_logs: None
) -> None:
    nb = compose.deployed
    workers = compose.containers("worker")
    before = {}
    for container in workers:
        container.reload()
        before[container.id] = (container.attrs["RestartCount"], container.attrs["State"]["Pid"])
    # A crash, as the engine sees one (an OOM kill, a segfault): the main process dies of SIGKILL.
    # (`docker kill` would count as stopping it by hand, which restart policies respect.)
    for _count, pid in before.values():
        os.kill(pid, signal.SIGKILL)
    hostnames = [nb.spawn(NOTEBOOK_IMAGE, user=f"crash{i}") for i in range(3)]

    def restarted() -> bool:
        for container in workers:
            container.reload()
            count, pid = before[container.id]
            state = container.attrs["State"]
            if container.attrs["RestartCount"] <= count or not state["Running"] or state["Pid"] == pid:
                return False
        return True

    wait_for(restarted, 60, "both workers to be restarted by their restart policy", 0.2)
    # Spawns the dead workers held are sent again by the reconciler (START_TIMEOUT 20 s, a pass every 5 s).
    records = [nb.wait(hostname, {"ACTIVE"}, 120) for hostname in hostnames]
    for record in records:
        answer = nb.open_notebook(record["notebook_url"])
        assert answer.status_code == 200, (record["hostname"], answer.status_code, answer.text[:200])
    for hostname in hostnames:
        nb.kill(hostname)
    for hostname in hostnames:
        nb.wait(hostname, {"REMOVED"}, 60)
    assert not compose.notebooks() or all(c.status != "running" for c in compose.notebooks())
    wait_for(lambda: not compose.notebooks(), 30, "the notebooks' containers to be gone")
    wait_for(lambda: _healthy(compose), HEALTHY_TIMEOUT, "the restarted workers to be healthy", 1)


def test_flower_asks_for_its_password(compose: ComposeDeployment) -> None:
    import requests

    with requests.Session() as http:
        http.trust_env = False
        assert http.get(compose.flower_url + "/", timeout=10).status_code == 401
        user, password = compose.secrets["flower_basic_auth"].split(":", 1)
        assert http.get(compose.flower_url + "/", auth=(user, password), timeout=10).status_code == 200


SENTINEL_SERVICES = ("redis-replica", "sentinel1", "sentinel2", "sentinel3")


def test_the_sentinel_profile_rides_out_the_death_of_the_master(
    compose: ComposeDeployment, on_failure_logs: None
) -> None:
    """`--profile sentinel` with REDIS_SENTINELS set: the same deployment, now following the master
    the sentinels name; the master killed for good, and the API and workers go on with the
    promoted replica. The killed container takes its network with it, so no connection to it is
    ever reset: the workers' queue connections must notice the silence (shared/queue.py LOST_PEER)."""
    compose.env.update(
        REDIS_SENTINELS="sentinel1,sentinel2,sentinel3", REDIS_MASTER="mymaster", SENTINEL_DOWN_AFTER_MS="2000"
    )
    compose.compose("--profile", "sentinel", "up", "-d", "--no-build", "--scale", "worker=2")

    def all_healthy() -> bool:
        containers = compose.containers()
        for container in containers:
            container.reload()
            health = (container.attrs["State"].get("Health") or {}).get("Status")
            if container.status != "running" or health != "healthy":
                return False
        return {c.labels[SERVICE_LABEL] for c in containers} >= {*SERVICES, *SENTINEL_SERVICES}

    try:
        wait_for(all_healthy, HEALTHY_TIMEOUT, "the deployment with sentinels healthy", 1)
    except AssertionError:
        states = {
            c.name: (c.status, (c.attrs["State"].get("Health") or {}).get("Status")) for c in compose.containers()
        }
        sentinels = compose.compose("--profile", "sentinel", "logs", "--no-color", "--tail", "15", *SENTINEL_SERVICES)
        print(f"--- containers ---\n{states}\n--- sentinel logs ---\n{sentinels.stdout[-6000:]}")
        raise
    [api] = compose.containers("api")
    assert "REDIS_SENTINELS=sentinel1,sentinel2,sentinel3" in api.attrs["Config"]["Env"]
    [sentinel] = compose.containers("sentinel1")

    def master() -> str:
        answer = sentinel.exec_run(["redis-cli", "-p", "26379", "sentinel", "get-master-addr-by-name", "mymaster"])
        return answer.output.decode().split("\n")[0].strip()

    wait_for(lambda: master() == "redis" and "slaves=1" in _sentinel_info(sentinel), 60, "the sentinels to agree")
    nb = compose.deployed
    before = nb.spawn(NOTEBOOK_IMAGE, user="before")
    nb.wait(before, {"ACTIVE"}, 60)

    # An event stream open across the failover ends (the API's events hub lost the master), so its
    # client reads the current state again, instead of waiting on a subscription that is dead.
    stream: dict[str, Any] = {}
    connected = threading.Event()

    def follow() -> None:
        try:
            with nb.http.get(nb.api_url + "/events", stream=True, timeout=(5, 300)) as response:
                for _ in response.iter_lines():
                    connected.set()
            stream["ended"] = time.monotonic()
        except requests.RequestException as exc:
            stream["error"] = exc

    threading.Thread(target=follow, name="events", daemon=True).start()
    assert connected.wait(30), "the events stream sent nothing"

    [redis] = compose.containers("redis")
    # The master is gone for good, as with a lost host: `docker kill` counts as stopped by hand, so
    # the restart policy leaves it down (a crash would be restarted within a second or two, before
    # the sentinels call it down, and it would come back as the master it was).
    redis.kill()
    wait_for(lambda: master() == "redis-replica", 60, "a sentinel to promote the replica", 0.5)

    def spawned() -> str | None:
        response = nb.api("POST", "/spawn", data={"image": NOTEBOOK_IMAGE, "user": "after"})
        assert response.status_code in (202, 503), (response.status_code, response.text)  # 503: retry, as a client
        return str(response.json()["hostname"]) if response.status_code == 202 else None

    after = wait_for(spawned, 60, "a spawn accepted by the new master", 0.5)
    assert nb.wait(after, {"ACTIVE"}, 90)["status"] == "ACTIVE"
    assert nb.record(before)["status"] == "ACTIVE"  # the record made before the failover is there
    wait_for(lambda: stream, 60, "the events stream open across the failover to end")
    assert "ended" in stream, stream
    for hostname in (before, after):
        nb.kill(hostname)
    for hostname in (before, after):
        nb.wait(hostname, {"REMOVED"}, 60)
    wait_for(lambda: not compose.notebooks(), 30, "the notebooks' containers to be gone")


def _sentinel_info(sentinel: Any) -> str:
    return str(sentinel.exec_run(["redis-cli", "-p", "26379", "info", "sentinel"]).output.decode())


def test_down_leaves_nothing(compose: ComposeDeployment) -> None:
    compose.compose("--profile", "sentinel", "down", "-v", "-t", "10", timeout=300)
    label = {"label": f"{PROJECT_LABEL}={compose.project}"}
    assert not compose.client.containers.list(all=True, filters=label)
    assert not compose.client.networks.list(filters=label)
    assert not compose.client.volumes.list(filters=label)
    assert not compose.notebooks(), "every notebook was killed before"
