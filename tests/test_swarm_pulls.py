"""Images from registries on a real two-node Swarm (ENGINE_BACKEND=services): pre-pull jobs on each
node, a private registry's credentials handed to the node that runs the notebook, and the
registry's refusals within seconds.

The cluster is tests/swarm_cluster.py's: the main engine as manager, ``node1`` in a network
namespace as a worker. The registries (testkit/registry.py) serve TLS on the manager's veth address,
which both engines trust and reach. Test images are the httpd test image pushed under new names,
the local tag removed: the registry holds the only reference, so a node that has the image under
that name pulled it (its layers may already be there under the test image's own name: the pull
then reads the manifest and fetches nothing, which keeps the module quick; the registry's log
says which node's address read it). Every reference a test pulls onto either engine is removed
again, and every service (notebooks and pre-pull jobs) by its label.

What the credentials look like on the Swarm: docker-py sends them in the X-Registry-Auth header
of the service's creation; the manager keeps them in the Swarm's store and hands them to the node
that runs the task. The service as the API shows it (labels, container spec, environment) holds
none of them, nor do node1's dockerd log, the worker logs, the events, the records or Redis.

The pre-pull test runs first and starts with the manager alone: node1 joins during it (the
``swarm_worker`` fixture, asked for then), as a node that joins a running cluster later does.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import secrets
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.auth
import docker.errors
import pytest

from shared.status import Status
from shared.store import Event
from testkit.registry import Registry, running_registry
from testkit.support import ApiServer, BeatProcess, free_port, wait_for
from tests.swarm_cluster import SwarmCluster, SwarmWorker, swarm, swarm_worker  # noqa: F401
from tests.test_cli import run_cli
from tests.test_registry_pulls import collect, docker_config, remove_images
from tests.test_swarm_services import remove_services, services_of
from worker.prepull import LABEL_PREPULL

FINAL = {Status.ACTIVE, Status.FAILED}
#: Waits for things a Swarm does in a second or two, bounded for a loaded machine.
SWARM_WAIT = 90


def digest_of(client: docker.DockerClient, ref: str, registry: Registry) -> str:
    """The digest ``ref``'s tag names in ``registry`` (the main engine asks it)."""
    found = client.api.inspect_distribution(ref, auth_config=registry.auth_config())
    return str(found["Descriptor"]["digest"])


def has_image(client: docker.DockerClient, reference: str) -> bool:
    try:
        client.images.get(reference)
    except docker.errors.ImageNotFound:
        return False
    return True


def by_digest(ref: str, digest: str) -> str:
    """``host:port/repo:tag`` -> ``host:port/repo@sha256:...`` (what a pull of a pinned reference leaves)."""
    return f"{ref.rsplit(':', 1)[0]}@{digest}"


def repository_of(ref: str) -> str:
    """``host:port/repo:tag`` -> ``repo`` (as the registry's paths name it)."""
    return ref.split("/", 1)[1].rsplit(":", 1)[0]


def manifest_reads_from(registry: Registry, repository: str, address: str) -> list[str]:
    """Manifest reads of ``repository`` the registry answered 200 to a client at ``address``."""
    lines = registry.requests(None, rf"^/v2/{re.escape(repository)}/manifests/")
    return [line for line in lines if line.startswith(f"{address} ") and '" 200 ' in line]


def prepull_jobs(client: docker.DockerClient, instance: str) -> list[dict[str, Any]]:
    return [s for s in services_of(client, instance) if LABEL_PREPULL in (s["Spec"].get("Labels") or {})]


def node_states(stack: Any, image: str) -> dict[str, str]:
    """``GET /nodes`` (admin): hostname -> the state of ``image`` on that node."""
    nodes = stack.http.get("/nodes").get_json()["nodes"]
    return {n["hostname"]: n["images"][image]["state"] for n in nodes}


def wait_nodes(stack: Any, image: str, expected: Callable[[dict[str, str]], bool], what: str) -> None:
    """Wait until the NodeBook's states of ``image`` satisfy ``expected``; fail with what it last held."""
    try:
        wait_for(lambda: expected(node_states(stack, image)), SWARM_WAIT, what, 0.5)
    except AssertionError as exc:
        shown = stack.http.get("/nodes").get_json()["nodes"]
        raise AssertionError(
            f"{exc}\nGET /nodes: {json.dumps(shown)}\nworker log:\n{stack.worker.log_tail()}"
        ) from None


@pytest.fixture
def only_in_registry(
    docker_client: docker.DockerClient, images: dict[str, str]
) -> Iterator[Callable[[Registry, str], str]]:
    """``push(registry, repository)``: the httpd test image under a new name in ``registry`` only;
    removed after the test from the manager and, if it joined, node1 (tags and digest references)."""
    made: list[str] = []

    def push(registry: Registry, repository: str) -> str:
        ref = registry.push(images["httpd"], repository, secrets.token_hex(3))
        registry.docker("rmi", ref)
        made.append(ref)
        return ref

    yield push
    remove_images(docker_client, made)


def remove_from_node(worker: SwarmWorker | None, refs: list[str]) -> None:
    if worker is not None and worker.engine_running():
        remove_images(worker.client, refs)


# -- pre-pull --------------------------------------------------------------------------------
def test_prepull_reaches_every_node_including_one_that_joins_later(
    request: pytest.FixtureRequest,
    stack_factory: Any,
    swarm: SwarmCluster,  # noqa: F811
    swarm_registry: Registry,
    only_in_registry: Any,
    tmp_path: Path,
) -> None:
    assert swarm.worker is None, "node1 must join during this test: run it first in the module"
    ref = only_in_registry(swarm_registry, "swarmpulls/prepull")
    digest = digest_of(swarm.client, ref, swarm_registry)
    pinned_ref = by_digest(ref, digest)
    assert not has_image(swarm.client, pinned_ref) and not has_image(swarm.client, ref)
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(f"profiles:\n  - name: warm\n    images: ['{ref}']\n    prepull: true\n")
    stack = stack_factory(
        "swpre", ENGINE_BACKEND="services", PUBLISH_IP="0.0.0.0", RECONCILE_INTERVAL=1, PROFILES_FILE=str(profiles)
    )
    beat = BeatProcess(stack.worker.env, tmp_path / "beat.log", name="beat-swpre")
    worker: SwarmWorker | None = None
    try:
        # The worker's own pass at start-up makes the manager's job; a reconcile pass records its outcome.
        beat.start()
        manager_only = {swarm.manager_hostname: "present"}
        wait_nodes(stack, ref, lambda states: states == manager_only, f"{ref} pre-pulled onto the manager")
        assert has_image(swarm.client, pinned_ref)
        assert manifest_reads_from(swarm_registry, repository_of(ref), swarm.manager_ip)

        # node1 joins the running cluster: a later pass gives it its job.
        worker = request.getfixturevalue("swarm_worker")
        assert not has_image(worker.client, pinned_ref)
        both = {swarm.manager_hostname: "present", worker.hostname: "present"}
        wait_nodes(stack, ref, lambda states: states == both, f"{ref} pre-pulled onto node1 after it joined")
        assert has_image(worker.client, pinned_ref) and has_image(swarm.client, pinned_ref)
        # node1 fetched it from the registry itself (its address is the namespace end of the veth).
        assert manifest_reads_from(swarm_registry, repository_of(ref), worker.address)
        wait_for(
            lambda: not prepull_jobs(swarm.client, stack.settings.instance),
            SWARM_WAIT,
            "the pre-pull jobs to be removed",
            0.5,
        )

        shown = stack.http.get("/nodes").get_json()
        assert shown["images"] == [ref]
        roles = {n["hostname"]: n["role"] for n in shown["nodes"]}
        assert roles == {swarm.manager_hostname: "manager", worker.hostname: "worker"}, shown

        server = ApiServer(stack.env, tmp_path / "gunicorn.log")
        server.start()
        try:
            table = run_cli("nodes", api=server.url, env=stack.env)
            as_json = run_cli("nodes", "--json", api=server.url, env=stack.env)
        finally:
            server.stop()
        assert table.returncode == 0, table.stderr
        rows = [line.split() for line in table.stdout.splitlines() if ref in line]
        assert sorted((row[0], row[-1]) for row in rows) == sorted(
            [(swarm.manager_hostname, "present"), (worker.hostname, "present")]
        ), table.stdout
        assert as_json.returncode == 0, as_json.stderr
        assert {n["hostname"]: n["images"][ref]["state"] for n in json.loads(as_json.stdout)["nodes"]} == both
    finally:
        beat.stop()
        stack.worker.stop()  # no pass starts a job while the services are removed
        remove_services(swarm.client, stack.settings.instance)
        remove_from_node(worker, [ref])


# -- private registry ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def private(swarm: SwarmCluster) -> Iterator[Registry]:  # noqa: F811
    """An htpasswd registry on the manager's veth address, reached by both nodes."""
    with running_registry(swarm.manager_ip, tls=True, auth=True) as reg:
        yield reg


NODE1_PROFILE = """
profiles:
  - name: on-node1
    images: ["{address}/swarmpulls/*"]
    constraints: ["node.hostname==node1"]
"""


def test_private_registry_on_node1_right_credentials_run_wrong_ones_fail_and_no_secret_shows(
    stack_factory: Any,
    swarm: SwarmCluster,  # noqa: F811
    swarm_worker: SwarmWorker,  # noqa: F811
    private: Registry,
    only_in_registry: Any,
    images: dict[str, str],
    tmp_path: Path,
) -> None:
    assert private.username and private.password
    wrong_password = "Wr0ng-" + secrets.token_urlsafe(12)
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(textwrap.dedent(NODE1_PROFILE.format(address=private.address)))
    common = {"ENGINE_BACKEND": "services", "PUBLISH_IP": "0.0.0.0", "START_TIMEOUT": 60, "PROFILES_FILE": profiles}
    right = stack_factory(
        "swprivok", REGISTRY_AUTH_FILE=docker_config(tmp_path / "right.json", private, private.password), **common
    )
    wrong = stack_factory(
        "swprivno", REGISTRY_AUTH_FILE=docker_config(tmp_path / "wrong.json", private, wrong_password), **common
    )
    ref = only_in_registry(private, "swarmpulls/private")
    digest = digest_of(swarm.client, ref, private)
    # The manager holds this one by its tag, so pull() pins nothing (if-not-present): node1 pulls the tag.
    held = only_in_registry(private, "swarmpulls/held")
    swarm.client.images.get(images["httpd"]).tag(held)
    stacks = {"right": right, "wrong": wrong}
    events: dict[str, list[Event]] = {}
    stops = []
    for name, stack in stacks.items():
        events[name], stop = collect(stack)
        stops.append(stop)
    try:
        failed = wrong.wait(wrong.spawn(ref, user="secretive"), FINAL, timeout=30)
        failed_on_node = wrong.wait(wrong.spawn(held, user="secretive"), FINAL, timeout=60)
        ran = right.wait(right.spawn(ref, user="secretive"), FINAL, timeout=120)
        ran_held = right.wait(right.spawn(held, user="secretive"), FINAL, timeout=120)
        services = {name: services_of(swarm.client, s.settings.instance) for name, s in stacks.items()}
        node_log = swarm_worker.log_tail(100_000)
    finally:
        for stop in stops:
            stop()
        for stack in stacks.values():
            remove_services(swarm.client, stack.settings.instance)
        remove_from_node(swarm_worker, [ref, held])

    # Wrong credentials: the manager's question to the registry is refused; no service is made.
    refused = f"unauthorized: {private.address} refused REGISTRY_AUTH's credentials"
    assert failed.status == Status.FAILED, failed.error
    assert refused in failed.error, failed.error
    # Unpinned, node1's own pull is refused: its task says only "No such image", the manager adds why.
    assert failed_on_node.status == Status.FAILED, failed_on_node.error
    assert failed_on_node.error.startswith(f"the swarm rejected the notebook's task: No such image: {held}")
    assert refused in failed_on_node.error, failed_on_node.error
    assert services["wrong"] == []  # a failed spawn's service is removed

    # Right ones: pinned to the digest, placed on node1, which pulled it with the service's credentials.
    assert ran.status == Status.ACTIVE, ran.error
    assert ran_held.status == Status.ACTIVE, ran_held.error
    assert ran.node == ran_held.node == swarm_worker.hostname
    image_of = {
        s["Spec"]["Labels"]["swarm-manager.hostname"]: s["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
        for s in services["right"]
    }
    assert image_of == {ran.hostname: f"{ref}@{digest}", ran_held.hostname: held}
    assert manifest_reads_from(private, repository_of(held), swarm_worker.address)
    # The registry answers nothing without credentials: node1's 200s (the registry's "authorized
    # request") are the service's credentials at work.
    assert manifest_reads_from(private, repository_of(ref), swarm_worker.address)
    authorized = [
        line
        for line in private.log_text().splitlines()
        if 'msg="authorized request"' in line and f'remoteaddr="{swarm_worker.address}:' in line
    ]
    assert authorized, private.log_text()[-3000:]

    # The credentials show nowhere: the header docker-py sends travels to the manager, which keeps it
    # in the Swarm's store for the nodes; the service as the API shows it (labels, env, spec) has none.
    secrets_ = {private.password, wrong_password}
    for password in (private.password, wrong_password):
        pair = f"{private.username}:{password}"
        secrets_.add(base64.b64encode(pair.encode()).decode())
        header = {"username": private.username, "password": password, "serveraddress": private.address}
        secrets_.add(docker.auth.encode_header(header).decode())
    texts: dict[str, str] = {"service spec": json.dumps(services["right"]), "node1's dockerd log": node_log}
    for name, stack in stacks.items():
        texts[f"{name} worker log"] = stack.worker.log_tail(100_000)
        texts[f"{name} events"] = "\n".join(repr(e) for e in events[name])
        texts[f"{name} records"] = json.dumps(stack.http.get("/containers").get_json())
    # Everything in Redis (one server for every stack): records with their internal fields, the
    # task messages and results, the NodeBook, counters.
    r = right.store.redis
    dump = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        if kind == "hash":
            dump.append(repr(r.hgetall(key)))
        elif kind == "string":
            dump.append(repr(r.get(key)))
        elif kind == "list":
            dump.append(repr(r.lrange(key, 0, -1)))
    texts["redis"] = "\n".join(dump)
    for where, text in texts.items():
        for secret in secrets_:
            assert secret not in text, f"a credential shows in the {where}"


# -- unreachable registry --------------------------------------------------------------------
def test_an_unreachable_registry_fails_the_spawn_in_seconds(
    stack_factory: Any,
    swarm: SwarmCluster,  # noqa: F811
    swarm_worker: SwarmWorker,  # noqa: F811
) -> None:
    stack = stack_factory("swunreach", ENGINE_BACKEND="services", PUBLISH_IP="0.0.0.0", START_TIMEOUT=60)
    try:
        # Nothing listens on this port of the manager's address: the registry's host refuses.
        image = f"{swarm.manager_ip}:{free_port()}/swarmpulls/nowhere:1"
        record = stack.wait(stack.spawn(image, user="lost"), FINAL, timeout=30)
        assert record.status == Status.FAILED
        assert "registry unreachable" in record.error and "connection refused" in record.error, record.error
        assert "gave up after" not in record.error and "did not start" not in record.error, record.error
        assert services_of(swarm.client, stack.settings.instance) == []
    finally:
        with contextlib.suppress(docker.errors.APIError):
            remove_services(swarm.client, stack.settings.instance)


def test_prepull_from_the_private_registry_uses_registry_auth_and_says_why_it_cannot(
    stack_factory: Any,
    swarm: SwarmCluster,  # noqa: F811
    swarm_worker: SwarmWorker,  # noqa: F811
    private: Registry,
    only_in_registry: Any,
    tmp_path: Path,
) -> None:
    """The pre-pull jobs carry REGISTRY_AUTH to the nodes as notebooks' services do; with wrong
    credentials each node's entry is ``failed`` with the registry's refusal."""
    assert private.password
    ref = only_in_registry(private, "swarmpulls/warm")
    digest = digest_of(swarm.client, ref, private)
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(f"profiles:\n  - name: warm\n    images: ['{ref}']\n    prepull: true\n")
    common = {"ENGINE_BACKEND": "services", "RECONCILE_INTERVAL": 1, "PROFILES_FILE": profiles}
    made = []
    beats = []
    try:
        for tag, password in (("swwarmok", private.password), ("swwarmno", "Wr0ng-" + secrets.token_urlsafe(12))):
            stack = stack_factory(
                tag, REGISTRY_AUTH_FILE=docker_config(tmp_path / f"{tag}.json", private, password), **common
            )
            made.append(stack)
            beat = BeatProcess(stack.worker.env, tmp_path / f"beat-{tag}.log", name=f"beat-{tag}")
            beats.append(beat)
            beat.start()
        right, wrong = made
        nodes = {swarm.manager_hostname, swarm_worker.hostname}
        wait_nodes(right, ref, lambda states: states == dict.fromkeys(nodes, "present"), f"{ref} on both nodes")
        wait_nodes(wrong, ref, lambda states: states == dict.fromkeys(nodes, "failed"), f"{ref} failed on both")
        pinned_ref = by_digest(ref, digest)
        assert has_image(swarm.client, pinned_ref) and has_image(swarm_worker.client, pinned_ref)
        authorized = [
            line
            for line in private.log_text().splitlines()
            if 'msg="authorized request"' in line and f'remoteaddr="{swarm_worker.address}:' in line
        ]
        assert authorized
        entries = wrong.http.get("/nodes").get_json()["nodes"]
        refused = f"unauthorized: {private.address} refused REGISTRY_AUTH's credentials"
        for entry in entries:
            reason = entry["images"][ref]["reason"]
            assert refused in reason, reason
            assert private.password not in reason
    finally:
        for beat in beats:
            beat.stop()
        for stack in made:
            stack.worker.stop()
            remove_services(swarm.client, stack.settings.instance)
        remove_from_node(swarm_worker, [ref])
