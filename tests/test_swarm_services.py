"""Notebooks as Swarm services on a real Swarm: the main engine as manager, a namespace engine as worker.

The tests that need only the manager come first; the worker node joins when the first test
that asks for ``swarm_worker`` runs, and the test that stops the worker's engine is last.
Placement constraints and limits reach the engine through ``NotebookSpec``: these tests drive
a Spawner in-process whose ``spec_for`` adds them; the per-image profiles that set them through
the API and a worker process are tested end to end in tests/test_swarm_profiles.py.
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

import docker
import docker.errors
import pytest
import requests

from shared.errors import EngineError, EngineUnavailable
from shared.locks import Lease
from shared.pool import POOL_USER, Pool
from shared.record import Notebook
from shared.settings import Settings
from shared.status import Status
from testkit.support import BeatProcess, wait_for
from tests.swarm_cluster import SwarmCluster, SwarmWorker, swarm, swarm_worker  # noqa: F401
from worker.backends import AutoEngine, make_engine
from worker.containers import ContainerEngine
from worker.engine import LABEL_INSTANCE, NotebookSpec, make_client
from worker.reconciler import Reconciler
from worker.services import ServiceEngine
from worker.spawner import Spawner
from worker.watcher import Watcher

FINAL = {Status.ACTIVE, Status.FAILED}
GPU = "node.labels.gpu==true"
MIB = 1024 * 1024


def services_of(client: docker.DockerClient, instance: str, hostname: str | None = None) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = client.api.services(filters={"label": f"{LABEL_INSTANCE}={instance}"})
    return [s for s in found if hostname is None or s["Spec"]["Labels"].get("swarm-manager.hostname") == hostname]


def remove_services(client: docker.DockerClient, instance: str) -> None:
    for service in services_of(client, instance):
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_service(service["ID"])


def answers_200(address: str) -> bool:
    try:
        response = requests.get(address + "/", timeout=2)
    except requests.RequestException:
        return False
    return response.status_code == 200 and "test notebook" in response.text


@pytest.fixture(scope="module")
def sstack(stack_factory: Any, swarm: SwarmCluster) -> Iterator[Any]:  # noqa: F811
    """API + a worker process with ENGINE_BACKEND=services against the Swarm manager."""
    stack = stack_factory("swarm", ENGINE_BACKEND="services", PUBLISH_IP="0.0.0.0", START_TIMEOUT=60)
    try:
        yield stack
    finally:
        remove_services(swarm.client, stack.settings.instance)


class ProfileSpawner(Spawner):
    """A Spawner whose specs carry what a per-image profile would add (constraints, limits)."""

    def __init__(self, *args: Any, extra: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.extra = extra

    def spec_for(self, record: Notebook, internal: Mapping[str, str] | None = None) -> NotebookSpec:
        return replace(super().spec_for(record, internal), **self.extra)


def spawner_with(stack: Any, engine: Any, **extra: Any) -> ProfileSpawner:
    return ProfileSpawner(stack.store, engine, stack.settings, extra=extra)


def spawn_in_process(stack: Any, spawner: Spawner, image: str, user: str) -> Notebook:
    """A record as the API writes it, then the spawn task's work, here in the test process."""
    record = stack.store.create(
        image=image,
        user=user,
        domain=stack.settings.domain,
        internal={"queue_deadline": str(time.time() + stack.settings.start_timeout)},
    )
    stack.created.append(record.hostname)
    spawner.spawn(record.hostname)
    return stack.record(record.hostname)


def spec(stack: Any, image: str, hostname: str, **extra: Any) -> NotebookSpec:
    return NotebookSpec(
        hostname=hostname,
        image=image,
        user="tester",
        domain=stack.settings.domain,
        port=stack.settings.notebook_port,
        instance=stack.settings.instance,
        **extra,
    )


# -- backend selection without a Swarm ---------------------------------------------------------
def test_auto_with_the_engine_down_raises_a_retryable_error_and_asks_again(tmp_path: Any) -> None:
    settings = Settings.from_env({"ENGINE_BACKEND": "auto", "DOCKER_HOST": f"unix://{tmp_path}/absent.sock"})
    engine = make_engine(settings, make_client(settings))  # talks to nothing yet
    assert isinstance(engine, AutoEngine)
    with pytest.raises(EngineUnavailable, match="unreachable"):
        engine.inventory()
    with pytest.raises(EngineUnavailable):  # asked again, not cached as a failure
        engine.start(NotebookSpec("absent000001", "img", "u", "d", 8888, "smtest-absent"))


# -- one node ----------------------------------------------------------------------------------
def test_spawn_runs_a_labelled_service_and_kill_removes_it(
    sstack: Any,
    swarm: SwarmCluster,  # noqa: F811
    images: dict[str, str],
) -> None:
    h = sstack.spawn(images["httpd"], user="odewahn")
    record = sstack.wait(h, FINAL, timeout=60)
    assert record.status == Status.ACTIVE, record.error

    [service] = services_of(swarm.client, sstack.settings.instance, h)
    assert service["Spec"]["Name"] == f"{sstack.settings.instance}-{h}"
    assert record.container_id == service["ID"]
    labels = service["Spec"]["Labels"]
    assert labels["swarm-manager.hostname"] == h
    assert labels["swarm-manager.user"] == "odewahn"
    assert labels["swarm-manager.instance"] == sstack.settings.instance
    assert labels["interlock.hostname"] == h and labels["interlock.domain"] == "nb.test"
    template = service["Spec"]["TaskTemplate"]
    assert template["ContainerSpec"]["Labels"] == labels
    assert template["ContainerSpec"]["Hostname"] == h
    assert template["RestartPolicy"]["Condition"] == "none"
    assert service["Spec"]["Mode"] == {"Replicated": {"Replicas": 1}}
    [port] = service["Spec"]["EndpointSpec"]["Ports"]
    assert port["PublishMode"] == "host" and port["TargetPort"] == 8888 and not port.get("PublishedPort")

    assert record.node == swarm.manager_hostname
    assert record.address.startswith(f"http://{swarm.manager_ip}:")
    assert answers_200(record.address)

    sstack.kill(h)
    assert sstack.wait(h, {Status.REMOVED}, timeout=30).status == Status.REMOVED
    assert services_of(swarm.client, sstack.settings.instance, h) == []


def test_the_watcher_fails_a_service_whose_task_died(
    sstack: Any,
    swarm: SwarmCluster,  # noqa: F811
    images: dict[str, str],
) -> None:
    """The Swarm has no event for a task's state: the watcher reads the tasks (worker/watcher.py)."""
    h = sstack.spawn(images["httpd"], user="watched")
    assert sstack.wait(h, FINAL, timeout=60).status == Status.ACTIVE
    engine = ServiceEngine(swarm.client, sstack.settings)
    spawner = Spawner(sstack.store, engine, sstack.settings)
    lease = Lease(sstack.store.redis, sstack.settings.key_prefix, "watch-test")
    watcher = Watcher(engine, Reconciler(sstack.store, engine, spawner, sstack.settings), lease)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: engine._last_seen is not None and h in engine._last_seen, 30, "the watcher's first reading")
        [task] = swarm.client.containers.list(filters={"label": f"swarm-manager.hostname={h}"})
        task.kill()
        record = sstack.wait(h, {Status.FAILED}, timeout=30)
        assert record.error.startswith("the notebook's container exited with code 137"), record.error
        assert services_of(swarm.client, sstack.settings.instance, h) == []
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive()
    assert sstack.store.redis.get(lease.key) is None


def test_the_warm_pool_hands_out_ready_services(
    stack_factory: Any,
    swarm: SwarmCluster,  # noqa: F811
    images: dict[str, str],
    tmp_path: Any,
) -> None:
    image = images["httpd"]
    st = stack_factory(
        "swarmpool",
        ENGINE_BACKEND="services",
        PUBLISH_IP="0.0.0.0",
        START_TIMEOUT=60,
        POOL=f"{image}=1",
        RECONCILE_INTERVAL=1,
    )
    pool = Pool(st.store, {image: 1})
    beat = BeatProcess(st.worker.env, tmp_path / "beat.log", name="beat-swarmpool")
    beat.start()  # the reconciler fills the pool at start-up
    try:
        wait_for(lambda: pool.ready_count(image) == 1, 120, "the pool to fill with a service")
        [member] = pool.members(image)
        [service] = services_of(swarm.client, st.settings.instance, member)
        assert service["Spec"]["Labels"]["swarm-manager.user"] == POOL_USER

        response = st.http.post("/spawn", data={"image": image, "user": "sam"})
        body = response.get_json()
        assert response.status_code == 202 and body["status"] == "ACTIVE", body  # at once, no engine call
        assert body["hostname"] == member and body["user"] == "sam" and body["node"] == swarm.manager_hostname
        assert answers_200(body["address"])
        assert [r.hostname for r in st.store.records(user="sam")] == [member]

        wait_for(lambda: pool.ready_count(image) == 1 and member not in pool.members(image), 120, "the pool to refill")
        st.kill(member)
        assert st.wait(member, {Status.REMOVED}, timeout=60).status == Status.REMOVED
        assert services_of(swarm.client, st.settings.instance, member) == []
    finally:
        beat.stop()
        remove_services(swarm.client, st.settings.instance)


def test_auto_detection_picks_services_on_a_manager(
    stack_factory: Any,
    swarm: SwarmCluster,  # noqa: F811
    images: dict[str, str],
) -> None:
    auto = stack_factory("swarm-auto", ENGINE_BACKEND="auto", PUBLISH_IP="0.0.0.0")
    try:
        h = auto.spawn(images["httpd"], user="auto")
        record = auto.wait(h, FINAL, timeout=60)
        assert record.status == Status.ACTIVE, record.error
        assert [s["ID"] for s in services_of(swarm.client, auto.settings.instance, h)] == [record.container_id]
        assert auto.containers() and all(c.labels["swarm-manager.hostname"] == h for c in auto.containers())

        engine = make_engine(auto.settings, swarm.client)
        assert isinstance(engine, AutoEngine) and engine.backend == "services"
        forced = make_engine(replace(auto.settings, engine_backend="containers"), swarm.client)
        assert isinstance(forced, ContainerEngine)  # the setting overrides what the engine is
    finally:
        remove_services(swarm.client, auto.settings.instance)


def test_notebook_that_exits_fails_with_exit_code_and_output(
    sstack: Any,
    swarm: SwarmCluster,  # noqa: F811
    images: dict[str, str],
) -> None:
    h = sstack.spawn(images["crash"], user="crashy")
    record = sstack.wait(h, FINAL, timeout=30)
    assert record.status == Status.FAILED
    assert "exited with code 3" in record.error
    assert "boom" in record.error  # the notebook's own last words, from the service's logs
    assert services_of(swarm.client, sstack.settings.instance, h) == []


def test_constraint_no_node_satisfies_fails_within_seconds(
    sstack: Any,
    swarm: SwarmCluster,  # noqa: F811
    images: dict[str, str],
) -> None:
    engine = ServiceEngine(swarm.client, sstack.settings)
    nowhere = spec(sstack, images["httpd"], "nowhere00001", constraints=["node.labels.smsw-none==true"])
    started = time.monotonic()
    try:
        with pytest.raises(EngineError, match="no suitable node"):
            engine.start(nowhere)
        assert time.monotonic() - started < 10, "waited far longer than the no-node grace"
    finally:
        engine.remove(nowhere)
    assert services_of(swarm.client, sstack.settings.instance, "nowhere00001") == []


def test_service_removed_while_starting_stops_the_wait(
    sstack: Any,
    swarm: SwarmCluster,  # noqa: F811
    images: dict[str, str],
) -> None:
    # A kill removes the service while start still waits for its task (here: one that can
    # never be placed, so it would wait for the no-node grace otherwise).
    engine = ServiceEngine(swarm.client, sstack.settings)
    waiting = spec(sstack, images["httpd"], "removed00001", constraints=["node.labels.smsw-none==true"])
    timer = threading.Timer(0.5, lambda: swarm.client.api.remove_service(waiting.name))
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(EngineError, match="removed while it was starting"):
            engine.start(waiting)
        assert time.monotonic() - started < 2.5
    finally:
        timer.join(5)
        engine.remove(waiting)


def test_memory_and_cpu_limits_reach_the_service_and_its_container(
    sstack: Any,
    swarm: SwarmCluster,  # noqa: F811
    images: dict[str, str],
) -> None:
    engine = ServiceEngine(swarm.client, sstack.settings)
    limited = spec(sstack, images["httpd"], "limited00001", mem_limit=96 * MIB, cpu_limit=0.5)
    try:
        placement = engine.start(limited)
        assert engine.start(limited) == placement  # a redelivered spawn finds the same service
        service = swarm.client.api.inspect_service(limited.name)
        assert service["Spec"]["TaskTemplate"]["Resources"]["Limits"] == {
            "MemoryBytes": 96 * MIB,
            "NanoCPUs": 500_000_000,
            "Pids": sstack.settings.pids_limit,  # PIDS_LIMIT (worker/hardening.py)
        }
        [task] = swarm.client.api.tasks(filters={"service": placement.object_id})
        container = swarm.client.containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
        assert container.attrs["HostConfig"]["Memory"] == 96 * MIB
        assert container.attrs["HostConfig"]["NanoCpus"] == 500_000_000
        assert wait_for(lambda: answers_200(placement.address), 20, "the limited notebook to answer")

        # The inventory lists it (one call per kind), running, under its hostname.
        inventory = engine.inventory()
        assert inventory["limited00001"].running
        assert abs(inventory["limited00001"].created - time.time()) < 120
    finally:
        engine.remove(limited)
    assert engine.state(limited) is None

    # The plain-containers backend applies the same limits to its container.
    cengine = ContainerEngine(swarm.client, replace(sstack.settings, publish_ip="127.0.0.1"))
    try:
        cengine.start(limited)
        attrs = swarm.client.containers.get(limited.name).attrs
        assert attrs["HostConfig"]["Memory"] == 96 * MIB and attrs["HostConfig"]["NanoCpus"] == 500_000_000
    finally:
        cengine.remove(limited)


def test_unpublished_notebook_is_addressed_on_its_overlay_network(
    sstack: Any,
    swarm: SwarmCluster,  # noqa: F811
    images: dict[str, str],
) -> None:
    # PUBLISH_IP empty: no port on the node; the address is the task's own on NOTEBOOK_NETWORK.
    network = swarm.client.networks.create(f"{sstack.settings.instance}-net", driver="overlay", attachable=True)
    settings = replace(sstack.settings, publish_ip="", notebook_network=network.name)
    engine = ServiceEngine(swarm.client, settings)
    overlay = spec(sstack, images["httpd"], "overlay00001")
    try:
        placement = engine.start(overlay)
        service = swarm.client.api.inspect_service(overlay.name)
        assert not (service["Spec"].get("EndpointSpec") or {}).get("Ports")
        network.reload()
        subnet = ipaddress.ip_network(network.attrs["IPAM"]["Config"][0]["Subnet"])
        host = placement.address.removeprefix("http://").rsplit(":", 1)
        assert ipaddress.ip_address(host[0]) in subnet and host[1] == "8888", placement.address
    finally:
        engine.remove(overlay)
        wait_for(lambda: _removed(network), 30, "the overlay network to be removed")


def _removed(network: Any) -> bool:
    try:
        network.remove()
    except docker.errors.NotFound:
        return True
    except docker.errors.APIError:
        return False  # still in use by the task that is stopping
    return True


# -- two nodes ---------------------------------------------------------------------------------
def test_a_swarm_worker_node_is_not_a_services_endpoint(
    sstack: Any,
    swarm_worker: SwarmWorker,  # noqa: F811
) -> None:
    # A worker node cannot create services: auto picks plain containers there.
    engine = make_engine(replace(sstack.settings, engine_backend="auto"), swarm_worker.client)
    assert isinstance(engine, AutoEngine) and engine.backend == "containers"
    # Forcing services there is a setting to fix, not an engine outage to retry.
    forced = ServiceEngine(swarm_worker.client, sstack.settings)
    with pytest.raises(EngineError, match="needs a Swarm manager"):
        forced.start(spec(sstack, "swarm-manager-test/httpd:2", "notmanager01"))


def test_constraint_lands_the_notebook_on_the_labelled_worker(
    sstack: Any,
    swarm: SwarmCluster,  # noqa: F811
    swarm_worker: SwarmWorker,  # noqa: F811
    images: dict[str, str],
) -> None:
    engine = ServiceEngine(swarm.client, sstack.settings)
    record = spawn_in_process(sstack, spawner_with(sstack, engine, constraints=[GPU]), images["httpd"], "gpu-user")
    assert record.status == Status.ACTIVE, record.error
    assert record.node == swarm_worker.hostname == "node1"
    assert record.address.startswith(f"http://{swarm_worker.address}:")
    assert answers_200(record.address)
    # It really runs on the worker engine, not the manager.
    assert [c.labels["swarm-manager.hostname"] for c in swarm_worker.client.containers.list()] == [record.hostname]
    sstack.kill(record.hostname)  # through the API and the worker process
    assert sstack.wait(record.hostname, {Status.REMOVED}, timeout=30).status == Status.REMOVED
    wait_for(lambda: not swarm_worker.client.containers.list(all=True), 30, "the worker's task container to go")


def test_image_missing_on_every_node_fails_fast_with_the_swarms_reason(
    sstack: Any,
    swarm: SwarmCluster,  # noqa: F811
    swarm_worker: SwarmWorker,  # noqa: F811
) -> None:
    assert sstack.settings.start_timeout == 60
    started = time.monotonic()
    h = sstack.spawn("swarm-manager-test/not-built-anywhere:1", user="typo")
    record = sstack.wait(h, FINAL, timeout=20)
    assert time.monotonic() - started < 20
    assert record.status == Status.FAILED
    # The manager asks the image's registry for the tag's digest before it makes the service
    # (worker/services.py pull): here no registry is reachable, and that is the reason given.
    assert record.error.startswith("image 'docker.io/swarm-manager-test/not-built-anywhere:1': registry unreachable")
    assert services_of(swarm.client, sstack.settings.instance, h) == []


def test_losing_a_node_takes_its_notebook_out_of_active(
    sstack: Any,
    swarm: SwarmCluster,  # noqa: F811
    swarm_worker: SwarmWorker,  # noqa: F811
    images: dict[str, str],
) -> None:
    """Last in the module: it stops the worker node's engine."""
    engine = ServiceEngine(swarm.client, sstack.settings)
    spawner = spawner_with(sstack, engine, constraints=[GPU])
    record = spawn_in_process(sstack, spawner, images["httpd"], "unlucky")
    assert record.status == Status.ACTIVE and record.node == "node1", record.error
    reconciler = Reconciler(sstack.store, engine, spawner, sstack.settings)
    assert record.hostname not in reconciler.run(lock=False).failed  # healthy: left alone

    swarm_worker.stop_engine()
    started = time.monotonic()

    def out_of_active() -> Notebook | None:
        reconciler.run(lock=False)
        after = sstack.record(record.hostname)
        return after if after.status != Status.ACTIVE else None

    # The Swarm marks a node down after missing heartbeats (about 10 s with the default 5 s period).
    after = wait_for(out_of_active, 60, f"{record.hostname} to leave ACTIVE after its node stopped", interval=1.0)
    assert after is not None and after.status == Status.FAILED
    assert "node1 is down" in after.error, after.error
    assert time.monotonic() - started < 60
    assert services_of(swarm.client, sstack.settings.instance, record.hostname) == []
