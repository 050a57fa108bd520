"""Images from a real registry (Debian's docker-registry on loopback, testkit/registry.py): a real worker
pulls them as PULL_POLICY says, with progress events, one pull per image however many spawns ask,
private-registry credentials that never show anywhere, and the registry's refusals in seconds.

Test images are built locally, pushed under new names, and the local tag removed, so the only copy
is the registry's; every image a test pulls is removed again.
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from shared.status import Status
from shared.store import Event
from testkit.registry import Registry
from testkit.support import ApiServer, wait_for
from tests.test_events import Stream

FINAL = {Status.ACTIVE, Status.FAILED}
LAYERS = 4
LAYER_BYTES = 6 * 1024 * 1024  # random, so the registry's gzip cannot shrink it: a pull takes a while


@pytest.fixture
def layered(docker_client: docker.DockerClient, images: dict[str, str]) -> Iterator[Callable[[Registry, str], str]]:
    """``layered(registry, repository)``: a new image (the httpd test image and LAYERS layers of random
    bytes) in the registry only. Its layers are nowhere on the engine: removing a tag alone would
    leave the content, and a pull would then have nothing to fetch. Removed after the test."""
    made: list[str] = []

    def make(registry: Registry, repository: str) -> str:
        local = f"swarm-manager-test/layered:{secrets.token_hex(4)}"
        lines = [f"FROM {images['httpd']}"] + [f"COPY blob{i} /blob{i}" for i in range(LAYERS)]
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            files = {"Dockerfile": ("\n".join(lines) + "\n").encode()}
            files.update({f"blob{i}": os.urandom(LAYER_BYTES) for i in range(LAYERS)})
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        docker_client.images.build(fileobj=io.BytesIO(buf.getvalue()), custom_context=True, tag=local, rm=True)
        made.append(local)
        ref = registry.push(local, repository, secrets.token_hex(3))
        made.append(ref)
        remove_images(docker_client, [ref, local])
        return ref

    yield make
    remove_images(docker_client, made)


def remove_images(client: docker.DockerClient, refs: list[str]) -> None:
    """Remove each reference, and the digest references a pull of its repository left (``repo@sha256``,
    shown as ``<none>`` when the content stays under another name, such as a test image's own)."""
    for ref in refs:
        repository = ref.rsplit(":", 1)[0] if ref.rfind(":") > ref.rfind("/") else ref
        names = [ref]
        for image in client.images.list(name=repository):
            names += [d for d in image.attrs.get("RepoDigests") or [] if d.startswith(repository + "@")]
        for name in names:
            try:
                client.images.remove(name, force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:  # in use by a container a cleanup has not removed yet
                print(f"could not remove {name}: {exc}")


@pytest.fixture
def only_in(docker_client: docker.DockerClient) -> Iterator[Callable[[Registry, str, str], str]]:
    """``only_in(registry, local_image, repository)``: push it under a new name, drop the local tag;
    every such image is removed from the engine after the test (the pulls put it back)."""
    made: list[str] = []

    def push(registry: Registry, local: str, repository: str) -> str:
        ref = registry.push(local, repository, secrets.token_hex(3))
        registry.docker("rmi", ref)
        made.append(ref)
        return ref

    yield push
    remove_images(docker_client, made)


def collect(stack: Any) -> tuple[list[Event], Callable[[], None]]:
    """Every event on the stack's channel from now on, until the returned stop is called."""
    subscription = stack.store.subscribe()
    seen: list[Event] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            event = subscription.get(0.2)
            if event is not None:
                seen.append(event)
        subscription.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def finish() -> None:
        stop.set()
        thread.join(10)

    return seen, finish


# -- pulls and progress --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def puller_stack(stack_factory: Any) -> Any:
    return stack_factory("pulls")


@pytest.fixture(scope="module")
def api(puller_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    server = ApiServer(puller_stack.worker.env, tmp_path_factory.mktemp("pulls-api") / "gunicorn.log")
    server.start()
    yield server
    server.stop()


def test_an_image_only_in_the_registry_is_pulled_with_progress_then_runs(
    puller_stack: Any, api: ApiServer, registry: Registry, layered: Any
) -> None:
    ref = layered(registry, "pulls/layered")
    response = puller_stack.http.post("/spawn", data={"image": ref, "user": "puller"})
    assert response.status_code == 202, response.get_json()
    hostname = response.get_json()["hostname"]
    puller_stack.created.append(hostname)
    with Stream(f"{api.url}/container/{hostname}/events") as stream:
        seen = stream.rest(timeout=180)
    stages = [m.event for m in seen]
    assert stages[-1] == "ready", (stages, puller_stack.record(hostname).error)
    assert "pulling" in stages and "pulled" in stages, stages
    assert stages.index("pulled") < stages.index("starting"), stages
    pulls = [m.data for m in seen if m.event in ("pulling", "pulled") and m.data]
    numbers = [d["progress"] for d in pulls]
    done = [n["bytes_done"] for n in numbers]
    assert done == sorted(done) and done[-1] > done[0], numbers  # the bytes only grow
    last = numbers[-1]
    assert last["image"] == ref and last["bytes_done"] == last["bytes_total"] >= LAYERS * LAYER_BYTES
    assert last["layers_done"] == last["layers_total"] >= LAYERS + 1, last
    assert all(d["status"] is None and d["record"] is None for d in pulls)
    assert registry.pulls(ref.split("/", 1)[1].rsplit(":", 1)[0], ref.rsplit(":", 1)[1]) == 1


def test_unreachable_and_unknown_images_fail_with_the_registry_words(puller_stack: Any, registry: Registry) -> None:
    closed = socket_port_nobody_listens_on()
    unreachable = puller_stack.spawn(f"127.0.0.1:{closed}/pulls/nowhere:1", user="puller")
    unknown = puller_stack.spawn(registry.ref("pulls/never-pushed", "1"), user="puller")
    for hostname, words in ((unreachable, "registry unreachable"), (unknown, "unknown image")):
        record = puller_stack.wait(hostname, FINAL, timeout=60)
        assert record.status == Status.FAILED
        assert "could not be pulled: " + words in record.error, record.error
        # The registry's own answer, not a timeout: the spawn never got as far as waiting.
        assert "gave up after" not in record.error and "did not answer HTTP" not in record.error
    assert "connection refused" in puller_stack.record(unreachable).error
    assert "manifest unknown" in puller_stack.record(unknown).error


def socket_port_nobody_listens_on() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: connections to it are refused


def test_ten_spawns_of_one_missing_image_make_one_pull(puller_stack: Any, registry: Registry, layered: Any) -> None:
    ref = layered(registry, "pulls/burst")
    hostnames = [puller_stack.spawn(ref, user=f"burst{i}") for i in range(10)]
    records = [puller_stack.wait(h, FINAL, timeout=240) for h in hostnames]
    assert [r.status for r in records] == [Status.ACTIVE] * 10, [r.error for r in records]
    repository, tag = ref.split("/", 1)[1].rsplit(":", 1)
    assert registry.pulls(repository, tag) == 1, registry.requests(None, repository)


# -- policies ----------------------------------------------------------------------------------
def test_never_fails_at_once_and_asks_no_registry(
    stack_factory: Any, registry: Registry, images: dict[str, str], only_in: Any
) -> None:
    stack = stack_factory("pullnever", PULL_POLICY="never")
    ref = only_in(registry, images["httpd"], "pulls/never")
    record = stack.wait(stack.spawn(ref, user="never"), FINAL, timeout=60)
    assert record.status == Status.FAILED
    assert record.error == f"image {ref!r} is not present on the engine (PULL_POLICY never: no pull)"
    repository = ref.split("/", 1)[1].rsplit(":", 1)[0]
    assert registry.pulls(repository) == 0  # no manifest read: nothing asked the registry for it


def test_always_pulls_a_tag_that_moved_and_if_not_present_keeps_what_it_has(
    stack_factory: Any,
    registry: Registry,
    images: dict[str, str],
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    # One worker: the default policy, and a profile saying "always" for the one repository.
    repository = f"pulls/moving-{secrets.token_hex(3)}"
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(
        "profiles:\n"
        f"  - name: fresh\n    images: ['{registry.address}/{repository}-fresh:*']\n    pull_policy: always\n"
    )
    stack = stack_factory("pullalways", PROFILES_FILE=str(profiles))
    first, second = images["httpd"], images["intruder"]  # two images with different IDs
    ids = {name: docker_client.images.get(images[name]).id for name in ("httpd", "intruder")}
    refs = [registry.push(first, f"{repository}{suffix}", "1") for suffix in ("", "-fresh")]
    try:
        for ref in refs:
            registry.docker("rmi", ref)
        ran = [stack.wait(stack.spawn(ref, user="mover"), FINAL, timeout=90) for ref in refs]
        assert [r.status for r in ran] == [Status.ACTIVE] * 2, [r.error for r in ran]
        for ref in refs:  # the tag moves to other content in the registry; the engine keeps the old
            registry.push(second, ref.split("/", 1)[1].rsplit(":", 1)[0], "1")
            registry.docker("tag", first, ref)
        again = [stack.wait(stack.spawn(ref, user="mover"), FINAL, timeout=90) for ref in refs]
        assert [r.status for r in again] == [Status.ACTIVE] * 2, [r.error for r in again]
        image_of = [docker_client.containers.get(r.container_id).attrs["Image"] for r in again]
        assert image_of == [ids["httpd"], ids["intruder"]]  # kept what it had / pulled the moved tag
        assert registry.pulls(f"{repository}-fresh", "1") == 2 and registry.pulls(repository, "1") == 1
    finally:
        remove_images(docker_client, refs)


# -- credentials -------------------------------------------------------------------------------
def docker_config(path: Path, registry: Registry, password: str) -> Path:
    token = base64.b64encode(f"{registry.username}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {registry.address: {"auth": token}}}))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def private(registry_factory: Callable[..., Registry]) -> Registry:
    return registry_factory(auth=True)


def test_private_registry_right_credentials_run_wrong_ones_fail_and_no_secret_shows(
    stack_factory: Any,
    private: Registry,
    images: dict[str, str],
    only_in: Any,
    tmp_path: Path,
) -> None:
    assert private.password
    wrong_password = "Wr0ng-" + secrets.token_urlsafe(12)
    right = stack_factory(
        "privright", REGISTRY_AUTH_FILE=docker_config(tmp_path / "right.json", private, private.password)
    )
    wrong = stack_factory(
        "privwrong", REGISTRY_AUTH_FILE=docker_config(tmp_path / "wrong.json", private, wrong_password)
    )
    none = stack_factory("privnone")
    ref = only_in(private, images["httpd"], "pulls/private")
    events: dict[str, list[Event]] = {}
    stops = []
    for name, stack in (("right", right), ("wrong", wrong), ("none", none)):
        events[name], stop = collect(stack)
        stops.append(stop)
    try:
        failed = wrong.wait(wrong.spawn(ref, user="secretive"), FINAL, timeout=60)
        anonymous = none.wait(none.spawn(ref, user="secretive"), FINAL, timeout=60)
        ran = right.wait(right.spawn(ref, user="secretive"), FINAL, timeout=90)
    finally:
        for stop in stops:
            stop()
    assert ran.status == Status.ACTIVE, ran.error
    assert failed.status == Status.FAILED and "unauthorized" in failed.error, failed.error
    assert f"{private.address} refused REGISTRY_AUTH's credentials" in failed.error
    assert anonymous.status == Status.FAILED and "REGISTRY_AUTH has none for it" in anonymous.error

    secrets_ = {
        private.password,
        wrong_password,
        base64.b64encode(f"{private.username}:{private.password}".encode()).decode(),
        base64.b64encode(f"{private.username}:{wrong_password}".encode()).decode(),
    }
    texts: dict[str, str] = {}
    for name, stack in (("right", right), ("wrong", wrong), ("none", none)):
        texts[f"{name} worker log"] = stack.worker.log_tail(100_000)
        texts[f"{name} events"] = "\n".join(repr(e) for e in events[name])
        texts[f"{name} metrics"] = stack.http.get("/metrics").get_data(as_text=True)
        texts[f"{name} records"] = json.dumps(stack.http.get("/containers").get_json())
    # Everything in Redis: records with their internal fields, task messages and results (what
    # Flower shows of a task comes from these), counters.
    dump = []
    for key in right.store.redis.scan_iter(count=1000):
        kind = right.store.redis.type(key)
        if kind == "hash":
            dump.append(repr(right.store.redis.hgetall(key)))
        elif kind == "string":
            dump.append(repr(right.store.redis.get(key)))
        elif kind == "list":
            dump.append(repr(right.store.redis.lrange(key, 0, -1)))
    texts["redis"] = "\n".join(dump)
    texts["registry log"] = private.log_text()
    for where, text in texts.items():
        for secret in secrets_:
            assert secret not in text, f"a credential shows in the {where}"


# -- pre-pull --------------------------------------------------------------------------------
def test_prepull_images_are_pulled_at_worker_start_and_again_when_the_engine_loses_them(
    stack_factory: Any,
    registry: Registry,
    layered: Any,
    docker_client: docker.DockerClient,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from shared.nodes import NodeBook
    from tests.test_cli import run_cli
    from worker.containers import ContainerEngine
    from worker.prepull import Prepuller

    ref = layered(registry, "prepull/nb")
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(f"profiles:\n  - name: warm\n    images: ['{ref}']\n    prepull: true\n")
    stack = stack_factory("prepull", PROFILES_FILE=str(profiles))  # its worker pulls as it starts

    def present() -> bool:
        try:
            docker_client.images.get(ref)
        except docker.errors.ImageNotFound:
            return False
        return True

    def state() -> str:
        (node,) = stack.http.get("/nodes").get_json()["nodes"]
        return str(node["images"][ref]["state"])

    wait_for(lambda: present() and state() == "present", 180, f"{ref} pre-pulled at worker start")
    repository, tag = ref.split("/", 1)[1].rsplit(":", 1)
    assert registry.pulls(repository, tag) == 1

    # The image goes; the next pass sees it missing and pulls it again, in the background.
    docker_client.images.remove(ref, force=True)
    prepuller = Prepuller(
        ContainerEngine(docker_client, stack.settings),
        NodeBook(stack.store.redis, stack.settings.key_prefix),
        [ref],
        stack.settings,
    )
    (entry,) = prepuller.run().values()
    assert entry["images"][ref]["state"] == "pulling"
    wait_for(lambda: present() and state() == "present", 180, f"{ref} pulled again")
    assert registry.pulls(repository, tag) == 2

    server = ApiServer(stack.env, tmp_path_factory.mktemp("prepull-api") / "gunicorn.log")
    server.start()
    try:
        shown = run_cli("nodes", api=server.url)
        as_json = run_cli("nodes", "--json", api=server.url)
    finally:
        server.stop()
    assert shown.returncode == 0, shown.stderr
    assert ref in shown.stdout and "present" in shown.stdout and "engine" in shown.stdout, shown.stdout
    assert json.loads(as_json.stdout)["images"] == [ref]
