"""Per-image profiles on a real two-node Swarm, end to end: API -> Redis -> a worker process with
ENGINE_BACKEND=services -> the Swarm manager -> the labelled worker node.

The cluster is tests/swarm_cluster.py's: the main engine as manager, ``node1`` in a network
namespace as a worker labelled ``gpu=true``. A profile for the ``gpu`` image pattern sets a
placement constraint on that label and memory/CPU limits; the notebook must land on ``node1``
and its service must carry the limits and the routing labels.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from shared.status import Status
from testkit.support import wait_for
from tests.swarm_cluster import SwarmCluster, SwarmWorker, swarm, swarm_worker  # noqa: F401
from tests.test_swarm_services import answers_200, remove_services, services_of

FINAL = {Status.ACTIVE, Status.FAILED}
MIB = 1024 * 1024

PROFILES = """
profiles:
  - name: gpu
    images: ["swarm-manager-test/httpd:*"]
    mem_limit: 96m
    cpu_limit: 0.5
    constraints: ["node.labels.gpu==true"]
    environment: {NOTEBOOK_KIND: gpu}
    user_limits: true
    max_mem_limit: 256m
    max_cpu_limit: 1
"""


@pytest.fixture(scope="module")
def gstack(
    stack_factory: Any,
    swarm: SwarmCluster,  # noqa: F811
    swarm_worker: SwarmWorker,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Any]:
    """API + a worker process on the Swarm manager, with the gpu profile."""
    path = tmp_path_factory.mktemp("swarm-profiles") / "profiles.yaml"
    path.write_text(textwrap.dedent(PROFILES))
    stack = stack_factory(
        "swarm-prof", ENGINE_BACKEND="services", PUBLISH_IP="0.0.0.0", START_TIMEOUT=60, PROFILES_FILE=str(path)
    )
    try:
        yield stack
    finally:
        remove_services(swarm.client, stack.settings.instance)


def spawn(stack: Any, **fields: Any) -> str:
    response = stack.http.post("/spawn", json={"user": "gpu-user", **fields})
    assert response.status_code == 202, response.get_json()
    hostname = str(response.get_json()["hostname"])
    stack.created.append(hostname)
    return hostname


def test_a_profiles_constraint_lands_the_notebook_on_the_labelled_node_with_its_limits(
    gstack: Any,
    swarm: SwarmCluster,  # noqa: F811
    swarm_worker: SwarmWorker,  # noqa: F811
    images: dict[str, str],
) -> None:
    h = spawn(gstack, image=images["httpd"])
    record = gstack.wait(h, FINAL, timeout=90)
    assert record.status == Status.ACTIVE, record.error
    assert record.profile == "gpu"
    assert record.node == swarm_worker.hostname == "node1"
    assert record.address.startswith(f"http://{swarm_worker.address}:")
    assert answers_200(record.address)

    [service] = services_of(swarm.client, gstack.settings.instance, h)
    template = service["Spec"]["TaskTemplate"]
    assert template["Placement"]["Constraints"] == ["node.labels.gpu==true"]
    assert template["Resources"]["Limits"] == {
        "MemoryBytes": 96 * MIB,
        "NanoCPUs": 500_000_000,
        "Pids": gstack.settings.pids_limit,  # PIDS_LIMIT (worker/hardening.py)
    }
    assert "NOTEBOOK_KIND=gpu" in template["ContainerSpec"]["Env"]
    # The routing labels are on the service, where Traefik's Swarm provider reads them.
    labels = service["Spec"]["Labels"]
    router = f"{gstack.settings.instance}-{h}"
    assert labels["traefik.enable"] == "true"
    assert labels[f"traefik.http.routers.{router}.rule"] == f"Host(`{h}.nb.test`)"
    assert labels[f"traefik.http.services.{router}.loadbalancer.server.port"] == "8888"
    assert labels["interlock.hostname"] == h and labels["interlock.port"] == "8888"

    # The container really runs on the worker node's engine, with the limits.
    [container] = [c for c in swarm_worker.client.containers.list() if c.labels.get("swarm-manager.hostname") == h]
    assert container.attrs["HostConfig"]["Memory"] == 96 * MIB
    assert container.attrs["HostConfig"]["NanoCpus"] == 500_000_000

    gstack.kill(h)
    assert gstack.wait(h, {Status.REMOVED}, timeout=30).status == Status.REMOVED
    assert services_of(swarm.client, gstack.settings.instance, h) == []
    wait_for(
        lambda: (
            not [
                c for c in swarm_worker.client.containers.list(all=True) if c.labels.get("swarm-manager.hostname") == h
            ]
        ),
        30,
        "the worker node's task container to go",
    )


def test_limits_a_user_asks_for_reach_the_service(
    gstack: Any,
    swarm: SwarmCluster,  # noqa: F811
    swarm_worker: SwarmWorker,  # noqa: F811
    images: dict[str, str],
) -> None:
    h = spawn(gstack, image=images["httpd"], mem_limit="200m", cpu_limit=1)
    record = gstack.wait(h, FINAL, timeout=90)
    assert record.status == Status.ACTIVE and record.node == "node1", record.error
    [service] = services_of(swarm.client, gstack.settings.instance, h)
    assert service["Spec"]["TaskTemplate"]["Resources"]["Limits"] == {
        "MemoryBytes": 200 * MIB,
        "NanoCPUs": 1_000_000_000,
        "Pids": gstack.settings.pids_limit,
    }
    gstack.kill(h)
    assert gstack.wait(h, {Status.REMOVED}, timeout=30).status == Status.REMOVED
