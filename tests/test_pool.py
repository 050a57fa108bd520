"""The warm pool on the real stack: notebooks ready ahead of demand, handed out at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from shared.pool import POOL_USER, Pool
from shared.status import Status
from testkit.support import BeatProcess, make_reconciler, wait_for


def test_spawn_takes_a_ready_notebook_and_the_pool_refills(
    stack_factory: Any, images: dict[str, str], tmp_path: Path
) -> None:
    image = images["httpd"]
    st = stack_factory("pool", POOL=f"{image}=2", RECONCILE_INTERVAL=1)
    pool = Pool(st.store, {image: 2})
    beat = BeatProcess(st.worker.env, tmp_path / "beat.log", name="beat")
    beat.start()  # the reconciler fills the pool at start-up
    try:
        wait_for(lambda: pool.ready_count(image) == 2, 60, "the pool to fill")
        members = pool.members(image)
        assert len(members) == 2

        response = st.http.post("/spawn", data={"image": image, "user": "alice", "ttl": "600"})
        assert response.status_code == 202
        body = response.get_json()
        assert body["status"] == "ACTIVE" and body["user"] == "alice"  # at once: no engine call
        assert body["hostname"] in members and body["expires_at"]
        assert response.headers["Location"].endswith(body["hostname"])
        assert requests.get(body["address"], timeout=5).ok  # and it really answers
        assert [r.hostname for r in st.store.records(user="alice")] == [body["hostname"]]

        # A replacement is started; the claimed one is no longer a member.
        wait_for(
            lambda: pool.ready_count(image) == 2 and body["hostname"] not in pool.members(image),
            60,
            "the pool to refill",
        )
        assert len({r.hostname for r in st.store.records(user=POOL_USER, status=Status.ACTIVE)}) == 2

        # Another image is not pooled: a cold start as usual.
        other = st.http.post("/spawn", data={"image": images["slow3"], "user": "bob"}).get_json()
        assert other["status"] == "PENDING"

        # Pool members are idle by design: idle culling leaves them alone (age limits still apply).
        report = make_reconciler(st, idle_timeout=1).run(lock=False)
        assert not set(report.culled) & pool.members(image)

        st.kill(body["hostname"])
        assert st.wait(body["hostname"], {Status.REMOVED}, timeout=30).status == Status.REMOVED
        assert body["hostname"] not in {c.labels["swarm-manager.hostname"] for c in st.containers()}
    finally:
        beat.stop()


def test_an_empty_pool_falls_back_to_a_cold_start(stack_factory: Any, images: dict[str, str]) -> None:
    image = images["httpd"]
    st = stack_factory("pooldry", POOL=f"{image}=1")  # nothing fills it yet: no beat
    response = st.http.post("/spawn", data={"image": image, "user": "carol"}).get_json()
    assert response["status"] == "PENDING"
    assert st.wait(response["hostname"], {Status.ACTIVE, Status.FAILED}).status == Status.ACTIVE
    # The claim attempt queued a refill: one member gets started and offered.
    pool = Pool(st.store, {image: 1})
    wait_for(lambda: pool.ready_count(image) == 1, 60, "the refill")
