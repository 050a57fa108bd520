"""Routing through a real configurable-http-proxy (CHP) process: workers add a notebook's route
when it becomes ACTIVE and remove it when it ends; the reconciler repairs what they could not do.

CHP is the one ``scripts/bring-up.sh`` installs into ``.state/chp`` (``make test`` does that),
started here with ``--host-routing`` on free loopback ports with its own API token.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from shared.settings import Settings
from shared.status import Status
from testkit.chp import CHP_BIN, Chp, running_chp
from testkit.support import free_port, wait_for
from worker.containers import ContainerEngine
from worker.proxy import DATA_HOSTNAME, DATA_INSTANCE, Proxy
from worker.reconciler import Reconciler
from worker.spawner import Spawner

FINAL = {Status.ACTIVE, Status.FAILED}


@pytest.fixture(scope="module")
def chp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chp]:
    if not os.access(CHP_BIN, os.X_OK):
        pytest.fail(
            f"configurable-http-proxy is not installed at {CHP_BIN}; `make test` (scripts/bring-up.sh test) "
            "installs it from the npm registry",
            pytrace=False,
        )
    with running_chp(tmp_path_factory.mktemp("chp")) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def rstack(stack_factory: Any, chp: Chp) -> Any:
    return stack_factory("routing", **chp.env())


def routed(stack: Any, chp: Chp, hostname: str) -> dict[str, Any] | None:
    return chp.routes().get(f"/{hostname}.{stack.settings.domain}")


def test_an_active_notebook_is_routed_by_host_and_unrouted_when_killed(
    rstack: Any, chp: Chp, images: dict[str, str]
) -> None:
    h = rstack.spawn(images["httpd"], user="router")
    record = rstack.wait(h, FINAL, timeout=60)
    assert record.status == Status.ACTIVE, record.error
    host = f"{h}.nb.test"
    assert record.url == host

    # The route exists as soon as the record is ACTIVE, tagged as this deployment's.
    route = routed(rstack, chp, h)
    assert route is not None, chp.routes()
    assert route["target"] == record.address
    assert route[DATA_INSTANCE] == rstack.settings.instance and route[DATA_HOSTNAME] == h

    page = chp.get(host)
    assert page.status_code == 200 and "test notebook" in page.text, (page.status_code, page.text[:200])
    assert chp.get(f"{host}:80").status_code == 200  # a Host with a port routes too
    assert "test notebook" in chp.get(host, "/index.html").text  # paths pass through unchanged
    assert chp.get(host, "/no/such/file").status_code == 404  # the notebook's own 404, not the proxy's
    other = chp.get(f"zzzzzzzzzzzz.{rstack.settings.domain}")
    assert other.status_code in (404, 503) and "test notebook" not in other.text

    # The labels Traefik would route by, beside Interlock's.
    labels = rstack.docker.containers.get(record.container_id).labels
    router = f"{rstack.settings.instance}-{h}"
    assert labels["traefik.enable"] == "true"
    assert labels[f"traefik.http.routers.{router}.rule"] == f"Host(`{host}`)"
    assert labels[f"traefik.http.routers.{router}.service"] == router
    assert labels[f"traefik.http.services.{router}.loadbalancer.server.port"] == "8888"

    rstack.kill(h)
    assert rstack.wait(h, {Status.REMOVED}, timeout=30).status == Status.REMOVED
    assert routed(rstack, chp, h) is None
    gone = chp.get(host)
    assert gone.status_code in (404, 503) and "test notebook" not in gone.text


def test_each_notebook_gets_its_own_route(rstack: Any, chp: Chp, images: dict[str, str]) -> None:
    hostnames = [rstack.spawn(images["httpd"], user=f"pair{i}") for i in range(2)]
    records = [rstack.wait(h, FINAL, timeout=60) for h in hostnames]
    assert all(r.status == Status.ACTIVE for r in records), [r.error for r in records]
    targets = [routed(rstack, chp, h)["target"] for h in hostnames]  # type: ignore[index]
    assert targets == [r.address for r in records] and targets[0] != targets[1]
    assert all(chp.get(r.url).status_code == 200 for r in records)
    for h in hostnames:
        rstack.kill(h)
    for h in hostnames:
        rstack.wait(h, {Status.REMOVED}, timeout=30)
    assert [routed(rstack, chp, h) for h in hostnames] == [None, None]


def test_a_failed_spawn_leaves_no_route(rstack: Any, chp: Chp, images: dict[str, str]) -> None:
    h = rstack.spawn(images["crash"], user="crashy")
    record = rstack.wait(h, FINAL, timeout=30)
    assert record.status == Status.FAILED and "exited with code 3" in record.error
    assert routed(rstack, chp, h) is None


def test_the_reconciler_restores_lost_routes_and_sweeps_stale_ones(
    rstack: Any, chp: Chp, images: dict[str, str]
) -> None:
    h = rstack.spawn(images["httpd"], user="repair")
    record = rstack.wait(h, FINAL, timeout=60)
    assert record.status == Status.ACTIVE, record.error
    settings: Settings = rstack.settings
    proxy = Proxy(chp.api_url, chp.token, instance=settings.instance, public_url=chp.public_url)
    engine = ContainerEngine(rstack.docker, settings)
    reconciler = Reconciler(rstack.store, engine, Spawner(rstack.store, engine, settings, proxy=proxy), settings)

    # The proxy lost the route (restarted, or the add failed): the next pass adds it again.
    chp.delete(f"/{record.url}")
    assert chp.get(record.url).status_code == 404
    report = reconciler.run(lock=False)
    assert report.routed == [h]
    assert routed(rstack, chp, h)["target"] == record.address  # type: ignore[index]
    assert chp.get(record.url).status_code == 200

    # A route of ours whose notebook is gone is removed; another deployment's route is left alone.
    stale, foreign = "stale0000001", "foreign00001"
    chp.add(
        f"/{stale}.nb.test", {"target": "http://127.0.0.1:9", DATA_INSTANCE: settings.instance, DATA_HOSTNAME: stale}
    )
    chp.add(
        f"/{foreign}.nb.test", {"target": "http://127.0.0.1:9", DATA_INSTANCE: "someone-else", DATA_HOSTNAME: foreign}
    )
    try:
        report = reconciler.run(lock=False)
        assert report.unrouted == [stale] and report.routed == []
        assert f"/{stale}.nb.test" not in chp.routes()
        assert f"/{foreign}.nb.test" in chp.routes()
        assert routed(rstack, chp, h) is not None  # the live notebook keeps its route
    finally:
        chp.delete(f"/{foreign}.nb.test")
    rstack.kill(h)
    rstack.wait(h, {Status.REMOVED}, timeout=30)


def test_ready_through_the_proxy_reaches_active(stack_factory: Any, chp: Chp, images: dict[str, str]) -> None:
    stack = stack_factory("routing-ready", READY_THROUGH_PROXY="1", **chp.env())
    h = stack.spawn(images["slow3"], user="patient")
    record = stack.wait(h, FINAL, timeout=60)
    assert record.status == Status.ACTIVE, record.error
    assert chp.get(record.url).status_code == 200  # ACTIVE means the public URL answers
    stack.kill(h)
    assert stack.wait(h, {Status.REMOVED}, timeout=30).status == Status.REMOVED
    assert routed(stack, chp, h) is None


def test_ready_through_a_proxy_that_cannot_be_reached_fails_and_says_so(
    stack_factory: Any, chp: Chp, images: dict[str, str]
) -> None:
    # The API is right but the public side is not where the workers look: the notebook answers
    # directly, yet never through the proxy, so it must not become ACTIVE.
    env = {**chp.env(), "PROXY_PUBLIC_URL": f"http://127.0.0.1:{free_port()}"}
    stack = stack_factory("routing-unready", READY_THROUGH_PROXY="1", START_TIMEOUT="4", **env)
    h = stack.spawn(images["httpd"], user="unlucky")
    record = stack.wait(h, FINAL, timeout=30)
    assert record.status == Status.FAILED
    assert f"did not answer HTTP on port 8888 through the proxy (Host: {h}.nb.test)" in record.error, record.error
    # Failing removes the route it had added (right after FAILED is recorded).
    wait_for(lambda: routed(stack, chp, h) is None, 10, "the failed notebook's route to be removed")


def test_a_proxy_that_is_down_does_not_fail_spawns(stack_factory: Any, images: dict[str, str]) -> None:
    stack = stack_factory("routing-down", PROXY_API_URL=f"http://127.0.0.1:{free_port()}", PROXY_AUTH_TOKEN="x")
    h = stack.spawn(images["httpd"], user="unrouted")
    record = stack.wait(h, FINAL, timeout=60)
    assert record.status == Status.ACTIVE, record.error
    assert stack.worker is not None
    wait_for(lambda: "could not add the proxy route" in stack.worker.log_tail(200), 10, "the route error in the log")
    stack.kill(h)
    assert stack.wait(h, {Status.REMOVED}, timeout=30).status == Status.REMOVED
