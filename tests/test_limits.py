"""Limits on what can be started: the image allowlist (403) and the quotas (429 with Retry-After).

Against the real parts: the API (in-process, and gunicorn on a real socket for concurrency), a
real Redis (the quota checks are Lua scripts there), and for the end-to-end cases a real Celery
worker and the real engine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.errors import QuotaExceeded
from shared.limits import Allowlist, Quota, normalize, parse_allowed_images, parse_pattern
from shared.pool import POOL_USER, Pool
from shared.settings import Settings
from shared.status import Status
from shared.store import Store, connect
from testkit.stack import Stack, base_env
from testkit.support import ApiServer, RedisServer, unique_instance

DIGEST = "sha256:" + "ab" * 32
OTHER_DIGEST = "sha256:" + "cd" * 32
ALLOWED = ",".join(
    [
        "jupyter/*",
        "python:3.*",
        "registry.example:5000/lab/*",
        "quay.io/org/nb@sha256:*",
        "swarm-manager-test/*",
    ]
)

# image -> the status a spawn of it gets with ALLOWED (202 allowed, 403 refused, 400 invalid).
TABLE = [
    ("jupyter/base-notebook", 202),
    ("jupyter/base-notebook:2024-01", 202),
    ("docker.io/jupyter/base-notebook:2024-01", 202),  # the same image, spelled with its registry
    ("index.docker.io/jupyter/base-notebook", 202),  # Docker Hub's old name
    (f"jupyter/base-notebook@{DIGEST}", 202),  # a repository pattern allows any tag or digest
    ("jupyter.evil.example/base-notebook", 403),  # looks like jupyter/, is another registry
    ("jupyter.evil.example:443/jupyter/base", 403),
    ("evil.example/jupyter/base-notebook", 403),  # the namespace on another registry
    ("jupyter:latest", 403),  # docker.io/library/jupyter, not docker.io/jupyter/...
    ("python:3.11", 202),
    ("library/python:3.12", 202),
    ("docker.io/library/python:3.11-slim", 202),
    ("docker.io/python:3.11", 202),  # a one-component Docker Hub name is library/
    ("python", 403),  # python:latest is not python:3.*
    ("python:2.7", 403),
    (f"python:3.11@{DIGEST}", 403),  # the digest runs, whatever the tag says: a tag pattern refuses it
    (f"python@{DIGEST}", 403),
    ("registry.example:5000/lab/notebook:1", 202),
    ("registry.example:5000/lab/team/notebook", 202),
    ("registry.example:5001/lab/notebook:1", 403),  # another port is another registry
    ("registry.example/lab/notebook:1", 403),  # no port: another registry
    ("registry.example:5000/other/notebook", 403),
    ("localhost:5000/lab/notebook", 403),
    (f"quay.io/org/nb@{DIGEST}", 202),
    (f"quay.io/org/nb:v1@{OTHER_DIGEST}", 202),  # the digest decides, and digests are allowed
    ("quay.io/org/nb:v1", 403),  # only digests are allowed there
    ("quay.io/org/nb", 403),
    ("swarm-manager-test/httpd:2", 202),
    # Invalid references never reach the allowlist: 400 as bad input.
    ("Jupyter/base-notebook", 400),  # upper case
    ("REGISTRY.EXAMPLE:5000/lab/notebook", 400),
    ("jupyter/BASE", 400),
    ("../jupyter/base-notebook", 400),  # path traversal
    ("jupyter/../../etc/passwd", 400),
    ("jupyter/base/..", 400),
    ("jupyter//base", 400),
    ("jupyter/base:../../x", 400),
    ("jupyter/base@sha256:../x", 400),
    (" jupyter/base ; rm -rf /", 400),
]


# -- the allowlist itself ----------------------------------------------------------------------
def test_normalisation_makes_one_name_per_image() -> None:
    spellings = [
        "jupyter/base",
        "docker.io/jupyter/base",
        "index.docker.io/jupyter/base",
        "jupyter/base:latest",
        "docker.io/jupyter/base:latest",
    ]
    assert {str(normalize(s)) for s in spellings} == {"docker.io/jupyter/base:latest"}
    assert str(normalize("python")) == "docker.io/library/python:latest"
    assert str(normalize("registry.example:5000/x")) == "registry.example:5000/x:latest"
    assert str(normalize(f"x@{DIGEST}")) == f"docker.io/library/x@{DIGEST}"  # no :latest beside a digest
    assert str(parse_pattern("jupyter/*")) == "docker.io/jupyter/*"
    assert str(parse_pattern("REGISTRY.example:5000/x:*")) == "registry.example:5000/x:*"


@pytest.mark.parametrize("raw", ["", " , ", "jupyter/*:", "jupyter/*@", "../x", "a b", "x@y@z", "jupyter/$x"])
def test_bad_patterns_are_refused_at_start_up(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_allowed_images(raw)
    with pytest.raises(Exception, match="ALLOWED_IMAGES"):
        Settings.from_env({"ALLOWED_IMAGES": raw})


def test_star_allows_everything_valid() -> None:
    every = Allowlist()
    assert every.allows_everything
    assert every.allows("anything.example:1234/deep/path/x:tag")
    assert not every.allows("../x")  # invalid is never allowed
    assert not Allowlist(("jupyter/*",)).allows_everything


def test_pool_images_must_be_allowed() -> None:
    with pytest.raises(Exception, match=r"POOL: image 'python:3\.11' is not allowed"):
        Settings.from_env({"ALLOWED_IMAGES": "jupyter/*", "POOL": "python:3.11=1"})
    Settings.from_env({"ALLOWED_IMAGES": "jupyter/*,python:3.*", "POOL": "python:3.11=1"})


@pytest.fixture(scope="module")
def allowlisted(stack_factory: Any) -> Stack:
    return stack_factory("allow", worker=False, ALLOWED_IMAGES=ALLOWED)  # type: ignore[no-any-return]


@pytest.mark.parametrize(("image", "expected"), TABLE, ids=[i for i, _ in TABLE])
def test_allowlist_table(allowlisted: Stack, image: str, expected: int) -> None:
    before = allowlisted.store.count()
    response = allowlisted.http.post("/spawn", json={"image": image, "user": "tricky"})
    body = response.get_json()
    assert response.status_code == expected, body
    if expected == 202:
        assert body["status"] == "PENDING"
        allowlisted.store.transition(body["hostname"], Status.FAILED, error="not started by this test")
        return
    assert allowlisted.store.count() == before  # nothing written
    if expected == 403:
        assert body["code"] == "image_not_allowed"
        assert "ALLOWED_IMAGES" in body["error"] and str(normalize(image)) in body["error"], body
    else:
        assert body["code"] == "invalid_input"


def test_manage_form_shows_the_refusal(allowlisted: Stack) -> None:
    response = allowlisted.http.post("/manage/spawn", data={"image": "evil.example/x", "user": "ann"})
    assert response.status_code == 303
    assert "not+allowed" in response.headers["Location"] or "not%20allowed" in response.headers["Location"]


# -- quotas on the store (real Redis) ---------------------------------------------------------------
@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[Store]:
    s = Store(connect(redis_server.url), prefix=unique_instance("quota") + ":")
    yield s
    for key in s.redis.scan_iter(match=f"{s.prefix}*", count=1000):
        s.redis.delete(key)


def test_store_quota_counts_and_frees(store: Store) -> None:
    quota = Quota(max_total=3, max_per_user=2)
    a1 = store.create(image="i", user="ann", domain="d", quota=quota)
    store.create(image="i", user="ann", domain="d", quota=quota)
    with pytest.raises(QuotaExceeded) as caught:
        store.create(image="i", user="ann", domain="d", quota=quota)
    assert caught.value.limit == "user" and caught.value.retry_after >= 1
    store.create(image="i", user="bob", domain="d", quota=quota)
    with pytest.raises(QuotaExceeded) as total:
        store.create(image="i", user="cat", domain="d", quota=quota)
    assert total.value.limit == "total"
    assert store.count() == 3  # the refused ones wrote nothing
    assert (store.live_count(), store.live_count("ann"), store.live_count("bob")) == (3, 2, 1)

    store.transition(a1.hostname, Status.DELETING)  # a kill frees the slot at once
    assert (store.live_count(), store.live_count("ann")) == (2, 1)
    store.transition(a1.hostname, Status.REMOVED)
    store.transition(a1.hostname, Status.REMOVED)  # repeated: still counted once
    assert (store.live_count(), store.live_count("ann")) == (2, 1)
    store.create(image="i", user="ann", domain="d", quota=quota)
    assert store.live_count("ann") == 2


def test_reconciler_heals_the_quota_counts(store: Store) -> None:
    old = store.create(image="i", user="ann", domain="d")
    gone = store.create(image="i", user="ann", domain="d")
    # As if written before the counts existed, and as if a count outlived its record.
    store.redis.srem(store.quota_keys("ann")[0], old.hostname)
    store.redis.srem(store.quota_keys("ann")[1], old.hostname)
    store.redis.hset(store.key_for(gone.hostname), "status", Status.REMOVED.value)
    assert store.sync_live([old.hostname]) == (1, 1)
    assert store.redis.smembers(store.quota_keys("ann")[1]) == {old.hostname}
    assert store.sync_live([old.hostname]) == (0, 0)


def test_store_rate_is_a_sliding_minute(store: Store) -> None:
    quota = Quota(rate=2, window=2)
    for _ in range(2):
        record = store.create(image="i", user="ann", domain="d", quota=quota)
        store.transition(record.hostname, Status.FAILED, error="x")  # not live: only the rate counts
    began = time.time()
    with pytest.raises(QuotaExceeded) as caught:
        store.create(image="i", user="ann", domain="d", quota=quota)
    assert caught.value.limit == "rate"
    assert 1 <= caught.value.retry_after <= 2
    store.create(image="i", user="bob", domain="d", quota=quota)  # per user
    time.sleep(max(0.0, began + caught.value.retry_after - time.time()) + 0.1)
    store.create(image="i", user="ann", domain="d", quota=quota)


def test_warm_pool_members_count_against_the_total_and_move_to_the_claimer(store: Store) -> None:
    pool = Pool(store, {"img:1": 2})
    member = store.create(image="img:1", user=POOL_USER, domain="d", quota=Quota(max_total=2))
    store.transition(member.hostname, Status.STARTING)
    store.transition(member.hostname, Status.ACTIVE)
    pool.offer("img:1", member.hostname)
    store.create(image="other", user="ann", domain="d", quota=Quota(max_total=2))
    with pytest.raises(QuotaExceeded, match="MAX_NOTEBOOKS"):  # the pool member takes a slot
        store.create(image="other", user="bob", domain="d", quota=Quota(max_total=2))

    # ann is at her limit of 1: the claim is refused and the member stays in the pool.
    with pytest.raises(QuotaExceeded, match="MAX_NOTEBOOKS_PER_USER"):
        pool.claim("img:1", "ann", "2026-01-01T00:00:00.000000Z", time.time(), "", quota=Quota(max_per_user=1))
    assert pool.ready_count("img:1") == 1
    claimed = pool.claim(
        "img:1", "bob", "2026-01-01T00:00:00.000000Z", time.time(), "", quota=Quota(max_per_user=1, rate=5)
    )
    assert claimed is not None and claimed.user == "bob"
    assert (store.live_count(), store.live_count(POOL_USER), store.live_count("bob")) == (2, 0, 1)
    with pytest.raises(QuotaExceeded):  # bob's slot is taken by the claimed member
        store.create(image="other", user="bob", domain="d", quota=Quota(max_per_user=1))


def test_a_member_offered_twice_is_ready_once(store: Store) -> None:
    # Its spawn and a reconcile pass that adopts it can both see it become ACTIVE and offer it.
    pool = Pool(store, {"img:1": 2})
    member = store.create(image="img:1", user=POOL_USER, domain="d")
    store.transition(member.hostname, Status.STARTING)
    store.transition(member.hostname, Status.ACTIVE)
    pool.offer("img:1", member.hostname)
    pool.offer("img:1", member.hostname)
    assert pool.ready_count("img:1") == 1
    claimed = pool.claim("img:1", "ann", "2026-01-01T00:00:00.000000Z", time.time(), "")
    assert claimed is not None and claimed.hostname == member.hostname
    assert pool.ready_count("img:1") == 0
    assert pool.claim("img:1", "bob", "2026-01-01T00:00:00.000000Z", time.time(), "") is None


# -- quotas through the API --------------------------------------------------------------------------
def spawn(stack: Stack, user: str, image: str) -> Any:
    return stack.http.post("/spawn", json={"image": image, "user": user})


def assert_429(response: Any, limit_name: str) -> int:
    body = response.get_json()
    assert response.status_code == 429, body
    assert body["code"] == "quota_exceeded" and limit_name in body["error"], body
    retry_after = int(response.headers["Retry-After"])
    assert retry_after >= 1
    return retry_after


def test_total_limit_through_the_api(stack_factory: Any, images: dict[str, str]) -> None:
    stack = stack_factory("quotatotal", worker=False, MAX_NOTEBOOKS=2)
    first = spawn(stack, "ann", images["httpd"])
    assert first.status_code == 202
    assert spawn(stack, "bob", images["httpd"]).status_code == 202
    assert assert_429(spawn(stack, "cat", images["httpd"]), "MAX_NOTEBOOKS") == 30
    assert stack.kill(first.get_json()["hostname"])["status"] == "DELETING"  # frees a slot
    assert spawn(stack, "cat", images["httpd"]).status_code == 202


def test_spawn_rate_through_the_api(stack_factory: Any, images: dict[str, str]) -> None:
    stack = stack_factory("quotarate", worker=False, SPAWN_RATE=3)
    began = time.time()
    for _ in range(3):
        response = spawn(stack, "ann", images["httpd"])
        assert response.status_code == 202, response.get_json()
        stack.kill(response.get_json()["hostname"])  # killing does not give the rate back
    retry_after = assert_429(spawn(stack, "ann", images["httpd"]), "SPAWN_RATE")
    assert 60 - (time.time() - began) - 1 <= retry_after <= 60  # when the first of the three leaves the minute
    assert spawn(stack, "bob", images["httpd"]).status_code == 202  # per user


def test_concurrent_spawns_against_a_limit_of_one(
    redis_server: RedisServer, images: dict[str, str], tmp_path: Path
) -> None:
    """Real gunicorn threads racing: the check and the write are one Lua step, so exactly one wins."""
    instance = unique_instance("race")
    env = base_env(redis_server.url, instance, MAX_NOTEBOOKS_PER_USER=1)
    server = ApiServer(env, tmp_path / "api.log")
    server.start()
    results: list[requests.Response] = []
    lock = threading.Lock()
    barrier = threading.Barrier(12)

    def one() -> None:
        with requests.Session() as http:
            http.trust_env = False
            barrier.wait(10)
            response = http.post(server.url + "/spawn", json={"image": images["httpd"], "user": "racer"}, timeout=30)
        with lock:
            results.append(response)

    try:
        threads = [threading.Thread(target=one) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        codes = sorted(r.status_code for r in results)
        assert codes == [202] + [429] * 11, [(r.status_code, r.text[:120]) for r in results]
        for r in results:
            if r.status_code == 429:
                assert int(r.headers["Retry-After"]) >= 1
                assert r.json()["code"] == "quota_exceeded"
        s = Store(connect(redis_server.url), prefix=f"{instance}:")
        assert s.count() == 1 and s.live_count("racer") == 1
    finally:
        server.stop()
        store = Store(connect(redis_server.url), prefix=f"{instance}:")
        for key in store.redis.scan_iter(match=f"{instance}:*", count=1000):
            store.redis.delete(key)


def test_a_killed_or_failed_notebook_frees_its_slot(stack_factory: Any, images: dict[str, str]) -> None:
    """End to end on the engine: a user at MAX_NOTEBOOKS_PER_USER=1 kills (or loses) hers and starts another."""
    stack = stack_factory("quotakill", MAX_NOTEBOOKS_PER_USER=1)
    h1 = stack.spawn(images["httpd"], user="ann")
    assert stack.wait(h1, {Status.ACTIVE, Status.FAILED}, timeout=60).status == Status.ACTIVE
    assert_429(spawn(stack, "ann", images["httpd"]), "MAX_NOTEBOOKS_PER_USER")
    assert spawn(stack, "bob", images["httpd"]).status_code == 202  # per user
    stack.kill(h1)
    h2 = stack.spawn(images["crash"], user="ann")  # the kill freed the slot at once
    assert stack.wait(h2, {Status.ACTIVE, Status.FAILED}, timeout=60).status == Status.FAILED
    h3 = stack.spawn(images["httpd"], user="ann")  # and so did the failure
    assert stack.wait(h3, {Status.ACTIVE, Status.FAILED}, timeout=60).status == Status.ACTIVE
    assert stack.wait(h1, {Status.REMOVED}, timeout=30).status == Status.REMOVED
    assert stack.store.live_count("ann") == 1
