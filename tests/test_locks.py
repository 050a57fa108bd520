"""No pass and no refill is ever dropped: a held lock means "run again when it is released".

shared/locks.py's RerunLock against a real Redis: one holder at a time; a run asked for while one
is running makes that one run again (never skipped, never twice in parallel); a crashed holder's
lock expires and the work resumes; a long run keeps its lock. Then the reconciler on it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis as redislib

from shared.locks import RerunLock
from shared.pool import Pool
from shared.record import parse_rfc3339
from shared.status import Status
from testkit.support import BeatProcess, RedisServer, make_reconciler, unique_instance, wait_for


@pytest.fixture
def client(redis_server: RedisServer) -> Any:
    made = redislib.Redis.from_url(redis_server.url, decode_responses=True)
    yield made
    made.close()


def test_one_holder_and_a_request_meanwhile_makes_it_run_again(client: Any) -> None:
    prefix = unique_instance("locks") + ":"
    lock = RerunLock(client, prefix, "work", ttl=5)
    entered, release = threading.Event(), threading.Event()
    running, overlaps, runs = [0], [0], []

    def work() -> int:
        running[0] += 1
        overlaps[0] = max(overlaps[0], running[0])
        runs.append(time.monotonic())
        if len(runs) == 1:
            entered.set()
            release.wait(10)
        running[0] -= 1
        return len(runs)

    holder_results: list[list[int]] = []
    holder = threading.Thread(target=lambda: holder_results.append(lock.run(work)))
    holder.start()
    assert entered.wait(10)
    # Three more requests while it runs: each returns at once, and the holder runs once more.
    assert [RerunLock(client, prefix, "work", ttl=5).run(work) for _ in range(3)] == [[], [], []]
    release.set()
    holder.join(10)
    assert holder_results == [[1, 2]]  # its own run, then one more for everything asked meanwhile
    assert overlaps[0] == 1, "never two runs at once"
    assert client.keys(f"{prefix}*") == [], "the lock and its request are gone once done"
    assert lock.run(work) == [3]  # free again


def test_a_crashed_holders_lock_expires_and_the_work_resumes(client: Any) -> None:
    prefix = unique_instance("locks") + ":"
    # A holder that took the lock and died: nobody renews it.
    client.set(f"{prefix}lock:work", "dead-holder", px=1500)
    lock = RerunLock(client, prefix, "work", ttl=1.5)
    assert lock.run(lambda: "ran") == []  # held: the request is kept...
    assert client.exists(f"{prefix}lock:work:again")
    assert wait_for(lambda: lock.run(lambda: "ran"), 10, "the dead holder's lock to expire") == ["ran"]
    assert client.keys(f"{prefix}*") == []


def test_a_long_run_keeps_its_lock(client: Any) -> None:
    prefix = unique_instance("locks") + ":"
    lock = RerunLock(client, prefix, "work", ttl=0.6)

    runs: list[str] = []

    def long_work() -> str:
        runs.append("run")
        if len(runs) == 1:
            time.sleep(2)  # over three times the lock's TTL: renewed meanwhile, so still ours
            assert RerunLock(client, prefix, "work", ttl=0.6).run(lambda: "intruder") == []
        return "done"

    assert lock.run(long_work) == ["done", "done"]  # the intruder's request ran after it, here


def test_an_error_releases_the_lock(client: Any) -> None:
    prefix = unique_instance("locks") + ":"
    lock = RerunLock(client, prefix, "work", ttl=5)

    def broken() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        lock.run(broken)
    assert lock.run(lambda: 1) == [1]


def test_a_reconcile_asked_for_during_a_pass_runs_right_after_it(stack: Any) -> None:
    first = make_reconciler(stack)
    entered, release = threading.Event(), threading.Event()
    passes: list[float] = []
    own_pass = first._pass

    def slow_pass() -> Any:
        passes.append(time.monotonic())
        if len(passes) == 1:
            entered.set()
            release.wait(10)
        return own_pass()

    first._pass = slow_pass  # type: ignore[method-assign]
    reports: list[Any] = []
    holder = threading.Thread(target=lambda: reports.append(first.run()))
    holder.start()
    assert entered.wait(10)
    assert make_reconciler(stack).run().skipped is True  # left to the holder, not dropped
    release.set()
    holder.join(30)
    assert len(passes) == 2 and reports and reports[0].skipped is False


# -- on the real stack: beat, a worker, the engine ---------------------------------------------------
def test_culling_is_late_by_at_most_one_pass_over_twenty_passes(
    stack_factory: Any, images: dict[str, str], tmp_path: Any
) -> None:
    interval = 1.0
    st = stack_factory("cullclock", RECONCILE_INTERVAL=interval, NOTEBOOK_TOKEN="off")
    deleting: dict[str, float] = {}
    sub = st.store.subscribe()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            event = sub.get(0.2)
            if event is not None and event.record is not None and event.record.status == Status.DELETING:
                deleting.setdefault(event.hostname, time.time())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    beat = BeatProcess(st.worker.env, tmp_path / "beat.log", name="beat")
    try:
        # Eight notebooks whose lifetimes end one after another over the next twenty passes.
        ends: dict[str, float] = {}
        for i, ttl in enumerate(range(4, 20, 2)):
            body = st.http.post("/spawn", json={"image": images["httpd"], "user": f"brief{i}", "ttl": ttl}).get_json()
            st.created.append(body["hostname"])
            ends[body["hostname"]] = parse_rfc3339(body["expires_at"])
        beat.start()
        wait_for(lambda: set(deleting) >= set(ends), 60, "every notebook to be culled", interval=0.5)
        late = {h: deleting[h] - ends[h] for h in ends}
        # Within one interval of its end, plus the pass's own few seconds on a busy machine.
        assert all(-0.5 < lateness <= interval + 3 for lateness in late.values()), late
    finally:
        stop.set()
        watcher.join(5)
        sub.close()
        beat.stop()


def test_a_burst_of_claims_leaves_the_pool_full_without_waiting_for_a_pass(
    stack_factory: Any, images: dict[str, str]
) -> None:
    image = images["httpd"]
    # Passes far apart: only the refills the claims queue can fill the pool again in time.
    st = stack_factory("poolburst", POOL=f"{image}=3", RECONCILE_INTERVAL=3600, NOTEBOOK_TOKEN="off")
    pool = Pool(st.store, {image: 3})
    st.app.extensions["queue"].refill(image)  # fills it once, as beat's first pass would
    wait_for(lambda: pool.ready_count(image) == 3, 60, "the pool to fill")
    claimed = []
    for i in range(3):  # a burst: each claim queues a refill while the previous one runs
        body = st.http.post("/spawn", data={"image": image, "user": f"reader{i}"}).get_json()
        assert body["status"] == "ACTIVE", body
        claimed.append(body["hostname"])
    st.created.extend(claimed)
    # Back to full within one refill's time (a start and a readiness wait), with no pass at all.
    wait_for(lambda: pool.ready_count(image) == 3, st.settings.start_timeout, "the pool to be full again")
    assert not set(claimed) & pool.members(image)
