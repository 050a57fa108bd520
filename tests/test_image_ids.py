"""Image IDs cannot slip past ALLOWED_IMAGES, and the engine only ever gets canonical names.

A bare hex name (``044a0057ae76``) is a valid reference, ``docker.io/library/044a0057ae76:latest``,
which broad patterns (``library/*``, ``*/*``) allow; but the engine, when it has no image of that
name, reads the string as an image ID prefix, and ``sha256:<hex>`` as an ID, and runs whatever
image that is. Two defences, both tested here on the real engine with a real worker:

- the allowlist (API and worker alike) refuses a reference the engine could read as an ID unless
  a pattern names that exact reference;
- the worker hands the engine the canonical reference the allowlist checked, never the string
  as written, so even a record that got past the API cannot be read as an ID.
"""

from __future__ import annotations

import time
from typing import Any

import docker
import pytest

from shared.errors import ImageNotAllowed
from shared.limits import Allowlist, normalize
from shared.status import Status
from testkit.stack import Stack
from testkit.support import unreachable_client
from worker.containers import ContainerEngine
from worker.spawner import Spawner

FINAL = {Status.ACTIVE, Status.FAILED}


@pytest.fixture(scope="module")
def intruder(docker_client: docker.DockerClient, images: dict[str, str]) -> str:
    """The full ID (64 hex digits) of the test image that no allowlist below names."""
    image_id = str(docker_client.images.get(images["intruder"]).id)
    assert image_id.startswith("sha256:") and image_id != docker_client.images.get(images["httpd"]).id
    return image_id.removeprefix("sha256:")


def id_spellings(full: str) -> list[str]:
    """Every way of naming an image by its ID that the engine resolves (checked in the test below)."""
    return [full[:12], full[:8], full, f"sha256:{full[:12]}", f"sha256:{full[:4]}", f"sha256:{full}"]


def test_the_engine_does_read_these_as_ids(docker_client: docker.DockerClient, intruder: str) -> None:
    """Why the defences exist: the engine itself resolves each spelling to the intruder's image."""
    for spelling in id_spellings(intruder):
        assert docker_client.images.get(spelling).id == f"sha256:{intruder}", spelling


# -- the allowlist -------------------------------------------------------------------------------
BROAD = ["library/*", "docker.io/*", "*/library/*", "*/*", "*", "docker.io/library/*:*"]


@pytest.mark.parametrize("pattern", BROAD)
def test_broad_patterns_do_not_admit_an_id(pattern: str) -> None:
    full = "044a0057ae76" + "0" * 52
    allowlist = Allowlist((pattern,))
    for spelling in id_spellings(full):
        assert not allowlist.allows(spelling), (pattern, spelling)
        with pytest.raises(ImageNotAllowed, match="image IDs are not allowed unless a pattern"):
            allowlist.check(spelling)
    # With a tag it is a name the engine never reads as an ID (and the pattern allows it).
    for name in ("044a0057ae76:latest", "beef:1"):
        assert allowlist.allows(name), (pattern, name)


def test_an_id_is_allowed_only_by_a_pattern_naming_that_exact_reference() -> None:
    short, full = "044a0057ae76", "044a0057ae76" + "0" * 52
    named = Allowlist(("library/*", short, f"sha256:{full}"))
    assert named.allows(short) and named.allows(f"sha256:{full}")
    assert not named.allows(short[:8])  # another prefix is another reference
    assert not named.allows(f"sha256:{short}")
    assert not Allowlist(("sha256",)).allows(f"sha256:{full}")  # a repository pattern names no ID
    assert not Allowlist(("044a*",)).allows(short)  # a glob names no ID


def test_names_that_are_not_ids_are_unaffected() -> None:
    allowlist = Allowlist(("library/*",))
    for name in ("python", "python:3", "beef:latest", "library/beef", f"beef@sha256:{'ab' * 32}"):
        assert allowlist.allows(name), name
    assert not allowlist.allows("beef")  # all hex, no tag: the engine could read it as an ID
    assert not allowlist.allows("sha256:beef")


# -- through the API, with a real worker on the real engine ---------------------------------------
@pytest.fixture(scope="module")
def narrow(stack_factory: Any, images: dict[str, str]) -> Stack:
    """The review's set-up: official images and one repository of ours, and a worker running."""
    repository = images["httpd"].rsplit(":", 1)[0]
    return stack_factory("ids", ALLOWED_IMAGES=f"library/*,{repository}:*")  # type: ignore[no-any-return]


def test_spawning_an_image_by_its_id_is_403_and_creates_nothing(
    narrow: Stack, images: dict[str, str], intruder: str
) -> None:
    refused = narrow.http.post("/spawn", json={"image": images["intruder"], "user": "mallory"})
    assert refused.status_code == 403, refused.get_json()  # by its name: not allowed
    before = narrow.store.count()
    for spelling in id_spellings(intruder):
        response = narrow.http.post("/spawn", json={"image": spelling, "user": "mallory"})
        body = response.get_json()
        assert response.status_code == 403, (spelling, body)
        assert body["code"] == "image_not_allowed"
        assert "image ID" in body["error"] and "unless a pattern" in body["error"], body
    # Form posts (the seed's curl) and /manage go through the same check.
    form = narrow.http.post("/spawn", data={"image": intruder[:12], "user": "mallory"})
    assert form.status_code == 403, form.get_json()
    manage = narrow.http.post(
        "/manage/spawn", data={"image": intruder[:12], "user": "mallory"}, headers={"Accept": "application/json"}
    )
    assert manage.status_code == 403 and manage.get_json()["code"] == "image_not_allowed", manage.get_json()
    assert narrow.store.count() == before  # no record, so no task: nothing for the worker to start
    assert narrow.containers() == []


def test_an_allowed_image_reaches_the_engine_by_its_canonical_name(narrow: Stack, images: dict[str, str]) -> None:
    hostname = narrow.spawn(images["httpd"])
    record = narrow.wait(hostname, FINAL, timeout=60)
    assert record.status == Status.ACTIVE, record.error
    assert record.image == images["httpd"]  # the record keeps what the client asked for
    attrs = narrow.docker.containers.get(record.container_id).attrs
    assert attrs["Config"]["Image"] == f"docker.io/{images['httpd']}"
    narrow.kill(hostname)
    narrow.wait(hostname, {Status.REMOVED}, timeout=30)


def create_and_queue(stack: Stack, image: str) -> str:
    """A PENDING record written to the store directly (no API check) and its spawn task queued."""
    record = stack.store.create(
        image=image,
        user="bypass",
        domain=stack.settings.domain,
        internal={"queue_deadline": str(time.time() + stack.settings.start_timeout)},
    )
    stack.created.append(record.hostname)
    stack.app.extensions["queue"].spawn(record.hostname)
    return record.hostname


def test_the_worker_refuses_a_record_holding_an_id_its_allowlist_does_not_name(narrow: Stack, intruder: str) -> None:
    final = narrow.wait(create_and_queue(narrow, intruder[:12]), FINAL, timeout=60)
    assert final.status == Status.FAILED, f"ran {intruder[:12]!r} as {final.status}: the intruder"
    assert "is not allowed by this worker's ALLOWED_IMAGES" in final.error, final.error
    assert narrow.containers() == []


@pytest.fixture(scope="module")
def named(stack_factory: Any, images: dict[str, str], intruder: str) -> Stack:
    """An allowlist that names two ID spellings exactly, so records holding them reach the worker."""
    repository = images["httpd"].rsplit(":", 1)[0]
    patterns = f"{repository}:*,{intruder[:12]},sha256:{intruder}"
    return stack_factory("ids-named", ALLOWED_IMAGES=patterns)  # type: ignore[no-any-return]


@pytest.mark.parametrize("spelling", ["short", "sha256"])
def test_a_record_holding_an_id_makes_the_worker_ask_for_a_name(named: Stack, intruder: str, spelling: str) -> None:
    """Past both allowlist checks (the patterns name it): the engine is asked for the canonical
    name, has no image of that name, and the notebook FAILS; the intruder never runs."""
    image = intruder[:12] if spelling == "short" else f"sha256:{intruder}"
    final = named.wait(create_and_queue(named, image), FINAL, timeout=60)
    canonical = str(normalize(image))
    assert canonical in (f"docker.io/library/{intruder[:12]}:latest", f"docker.io/library/sha256:{intruder}")
    assert final.status == Status.FAILED, f"ran {image!r} as {final.status}: the engine read it as an image ID"
    # (Then it is pulled by that name, from Docker Hub: the name, never the ID, reaches the engine.)
    assert final.error.startswith(f"image {canonical!r} is not present on the engine"), final.error
    assert named.containers() == []


def test_a_named_id_spawned_through_the_api_runs_nothing_either(named: Stack, intruder: str) -> None:
    hostname = named.spawn(intruder[:12])  # the pattern names it: allowed, as a name
    final = named.wait(hostname, FINAL, timeout=60)
    assert final.status == Status.FAILED and "is not present on the engine" in final.error, final.error
    assert named.containers() == []


@pytest.mark.parametrize(
    ("image", "canonical"),
    [
        ("python", "docker.io/library/python:latest"),
        ("index.docker.io/jupyter/base:2", "docker.io/jupyter/base:2"),
        ("swarm-manager-test/httpd:2", "docker.io/swarm-manager-test/httpd:2"),
        ("registry.example:5000/x/y", "registry.example:5000/x/y:latest"),
        ("044a0057ae76", "docker.io/library/044a0057ae76:latest"),
        (f"nb:1@sha256:{'ab' * 32}", f"docker.io/library/nb:1@sha256:{'ab' * 32}"),
    ],
)
def test_both_backends_get_the_canonical_reference(named: Stack, image: str, canonical: str) -> None:
    """worker/containers.py and worker/services.py create from ``spec.image``: the spawner sets it."""
    engine = ContainerEngine(unreachable_client(), named.settings)  # spec_for must not call the engine
    spawner = Spawner(named.store, engine, named.settings)
    record = named.store.create(image=image, user="spec", domain=named.settings.domain)
    named.created.append(record.hostname)
    assert spawner.spec_for(record).image == canonical
    named.store.transition(record.hostname, Status.FAILED, error="not started by this test")
