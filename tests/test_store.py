"""shared/store.py on fakeredis (real Lua scripts): records, indexes, guarded moves, events."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest

import shared.store
from shared.errors import InvalidTransition, NotFound, StoreUnavailable
from shared.record import Notebook
from shared.status import SETTLED, TRANSITIONS, Status
from shared.store import Store, connect
from testkit.support import free_port

PREFIX = "unit:"
DOMAIN = "nb.test"
SEED_FIELDS = ["hostname", "domainname", "image", "url", "container_id", "status", "start_time", "user"]
RFC3339_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")
HOSTNAME = re.compile(r"^[0-9a-z]{12}$")


@pytest.fixture
def client() -> Iterator[fakeredis.FakeRedis]:
    r = fakeredis.FakeRedis(decode_responses=True)
    yield r
    r.flushall()
    r.close()


@pytest.fixture
def store(client: fakeredis.FakeRedis) -> Store:
    return Store(client, prefix=PREFIX)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Creation scores 1, 2, 3, ... so "newest first" does not depend on the clock's resolution."""
    counter = itertools.count(1)
    monkeypatch.setattr(shared.store, "time", SimpleNamespace(time=lambda: float(next(counter))))


@pytest.fixture
def events(client: fakeredis.FakeRedis, store: Store) -> Iterator[Any]:
    """A subscriber on the store's channel; ``events()`` returns every message published so far."""
    pubsub = client.pubsub()
    pubsub.subscribe(store.events_channel)
    first = pubsub.get_message(timeout=2)
    assert first is not None and first["type"] == "subscribe"

    def drain() -> list[dict[str, Any]]:
        out = []
        while (msg := pubsub.get_message(timeout=0.05)) is not None:
            assert msg["type"] == "message" and msg["channel"] == store.events_channel
            out.append(json.loads(msg["data"]))
        return out

    yield drain
    pubsub.close()


def snapshot(client: fakeredis.FakeRedis) -> dict[str, Any]:
    """Every key with its full content, to prove a refused write changed nothing."""
    out: dict[str, Any] = {}
    for key in sorted(client.scan_iter(match="*")):
        kind = client.type(key)
        if kind == "hash":
            out[key] = ("hash", client.hgetall(key))
        elif kind == "zset":
            out[key] = ("zset", client.zrange(key, 0, -1, withscores=True))
        elif kind == "string":
            out[key] = ("string", client.get(key))
        else:
            out[key] = (kind, None)
    return out


def make(store: Store, image: str = "busybox", user: str = "alice", **kw: Any) -> Notebook:
    return store.create(image=image, user=user, domain=DOMAIN, **kw)


def move(store: Store, hostname: str, *path: Status) -> Notebook:
    record = store.require(hostname)
    for status in path:
        record = store.transition(hostname, status)
    return record


def zmembers(client: fakeredis.FakeRedis, key: str) -> list[str]:
    return list(client.zrange(key, 0, -1))


# -- create ----------------------------------------------------------------------------
def test_create_returns_a_pending_record_with_the_seed_fields(store: Store) -> None:
    before = datetime.now(UTC)
    record = make(store, image="zischwartz/notebook", user="odewahn")
    after = datetime.now(UTC)

    assert HOSTNAME.match(record.hostname)
    assert record.domainname == DOMAIN
    assert record.image == "zischwartz/notebook"
    assert record.url == f"{record.hostname}.{DOMAIN}"
    assert record.container_id == ""
    assert record.status is Status.PENDING
    assert record.user == "odewahn"
    assert record.error == "" and record.address == "" and record.node == ""
    assert RFC3339_Z.match(record.start_time), record.start_time
    started = datetime.strptime(record.start_time, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before.replace(microsecond=0) <= started <= after
    assert record.updated_at == record.start_time


def test_create_writes_the_hash_and_every_index(store: Store, client: fakeredis.FakeRedis) -> None:
    record = make(store, user="bob")
    data = client.hgetall(f"{PREFIX}nb:{record.hostname}")
    assert data == {k: str(v) for k, v in record.to_hash().items()}
    assert data["status"] == "PENDING"
    assert zmembers(client, f"{PREFIX}idx:all") == [record.hostname]
    assert zmembers(client, f"{PREFIX}idx:user:bob") == [record.hostname]
    assert zmembers(client, f"{PREFIX}idx:status:PENDING") == [record.hostname]
    score = client.zscore(f"{PREFIX}idx:all", record.hostname)
    assert score is not None and abs(score - time.time()) < 60
    assert client.zscore(f"{PREFIX}idx:user:bob", record.hostname) == score
    assert client.zscore(f"{PREFIX}idx:status:PENDING", record.hostname) == score
    # Every key the store wrote carries its prefix.
    assert all(key.startswith(PREFIX) for key in client.scan_iter(match="*"))
    assert store.get(record.hostname) == record
    assert store.count() == 1


def test_create_hostnames_are_random_and_distinct(store: Store) -> None:
    names = {make(store).hostname for _ in range(50)}
    assert len(names) == 50
    assert all(HOSTNAME.match(n) for n in names)


def test_new_hostname_shape() -> None:
    for _ in range(200):
        assert HOSTNAME.match(shared.store.new_hostname())


def test_create_keeps_internal_fields_out_of_the_public_record(store: Store, client: fakeredis.FakeRedis) -> None:
    record = make(store, internal={"queue_deadline": "1234.5"})
    data = client.hgetall(store.key_for(record.hostname))
    assert data["_queue_deadline"] == "1234.5"
    assert store.internal(record.hostname, "queue_deadline") == "1234.5"
    assert store.internal(record.hostname, "nothing") is None
    assert store.internal("000000000000", "queue_deadline") is None
    loaded = store.require(record.hostname)
    assert not any(k.startswith("_") for k in loaded.to_json())
    assert list(loaded.to_json())[:8] == SEED_FIELDS


def test_create_retries_on_a_hostname_collision(
    store: Store, client: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch, events: Any
) -> None:
    existing = make(store, image="jupyter/minimal-notebook", user="alice", internal={"secret": "keep"})
    events()  # drop the first record's event
    before = snapshot(client)
    fresh = "fresh0000001"
    names = iter([existing.hostname, fresh])
    monkeypatch.setattr(shared.store, "new_hostname", lambda: next(names))

    record = make(store, image="busybox", user="mallory", internal={"secret": "other"})

    assert record.hostname == fresh
    assert record.url == f"{fresh}.{DOMAIN}"
    # The existing record and its index entries are untouched.
    after = snapshot(client)
    shared_indexes = {f"{PREFIX}idx:all", f"{PREFIX}idx:status:PENDING"}  # both records are in these
    for key, value in before.items():
        if key not in shared_indexes:
            assert after[key] == value, key
    for key in shared_indexes:
        assert client.zscore(key, existing.hostname) == dict(before[key][1])[existing.hostname]
    assert store.require(existing.hostname) == existing
    assert store.internal(existing.hostname, "secret") == "keep"
    assert zmembers(client, f"{PREFIX}idx:user:mallory") == [fresh]
    assert existing.hostname not in zmembers(client, f"{PREFIX}idx:user:mallory")
    assert sorted(zmembers(client, f"{PREFIX}idx:all")) == sorted([existing.hostname, fresh])
    assert sorted(zmembers(client, f"{PREFIX}idx:status:PENDING")) == sorted([existing.hostname, fresh])
    # One event, for the new record only.
    published = events()
    assert [e["hostname"] for e in published] == [fresh]


def test_create_gives_up_after_ten_collisions_and_writes_nothing(
    store: Store, client: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch, events: Any
) -> None:
    existing = make(store)
    events()
    before = snapshot(client)
    calls = []

    def always_taken() -> str:
        calls.append(1)
        return existing.hostname

    monkeypatch.setattr(shared.store, "new_hostname", always_taken)
    with pytest.raises(RuntimeError, match="free hostname"):
        make(store, user="bob")
    assert len(calls) == 10
    assert snapshot(client) == before
    assert events() == []


# -- transition ------------------------------------------------------------------------
def test_transition_allowed_moves_status_and_sets_fields(store: Store, client: fakeredis.FakeRedis) -> None:
    record = make(store)
    moved = store.transition(record.hostname, Status.STARTING, container_id="abc123", node="n1")
    assert moved.status is Status.STARTING
    assert moved.container_id == "abc123" and moved.node == "n1"
    assert moved.hostname == record.hostname and moved.start_time == record.start_time
    assert RFC3339_Z.match(moved.updated_at) and moved.updated_at >= record.updated_at
    assert store.require(record.hostname) == moved
    assert client.hget(store.key_for(record.hostname), "status") == "STARTING"


def test_transition_moves_the_status_index(store: Store, client: fakeredis.FakeRedis) -> None:
    record = make(store)
    other = make(store)
    score = client.zscore(f"{PREFIX}idx:all", record.hostname)

    store.transition(record.hostname, Status.STARTING)
    assert zmembers(client, f"{PREFIX}idx:status:PENDING") == [other.hostname]
    assert zmembers(client, f"{PREFIX}idx:status:STARTING") == [record.hostname]
    assert client.zscore(f"{PREFIX}idx:status:STARTING", record.hostname) == score

    store.transition(record.hostname, Status.ACTIVE)
    assert client.zcard(f"{PREFIX}idx:status:STARTING") == 0
    assert zmembers(client, f"{PREFIX}idx:status:ACTIVE") == [record.hostname]
    assert client.zscore(f"{PREFIX}idx:status:ACTIVE", record.hostname) == score
    # The creation-time indexes do not move.
    assert client.zscore(f"{PREFIX}idx:all", record.hostname) == score
    assert client.zscore(f"{PREFIX}idx:user:alice", record.hostname) == score


@pytest.mark.parametrize(
    "path",
    [
        [Status.STARTING, Status.ACTIVE, Status.DELETING, Status.REMOVED],
        [Status.STARTING, Status.FAILED],
        [Status.STARTING, Status.ACTIVE, Status.FAILED],
        [Status.FAILED],
        [Status.DELETING, Status.REMOVED],
        [Status.STARTING, Status.DELETING, Status.REMOVED],
    ],
    ids=lambda p: "-".join(s.value for s in p),
)
def test_transition_along_every_path(store: Store, client: fakeredis.FakeRedis, path: list[Status]) -> None:
    record = make(store)
    final = move(store, record.hostname, *path)
    assert final.status is path[-1]
    for status in Status:
        members = zmembers(client, f"{PREFIX}idx:status:{status.value}")
        assert members == ([record.hostname] if status is path[-1] else []), status


def _reach(store: Store, hostname: str, target: Status) -> None:
    paths = {
        Status.PENDING: [],
        Status.STARTING: [Status.STARTING],
        Status.ACTIVE: [Status.STARTING, Status.ACTIVE],
        Status.FAILED: [Status.FAILED],
        Status.DELETING: [Status.DELETING],
        Status.REMOVED: [Status.DELETING, Status.REMOVED],
    }
    move(store, hostname, *paths[target])


#: Refused moves; a move to the status the record already has is not one (it is a no-op, below).
REFUSED = [(cur, new) for cur in Status for new in Status if new not in TRANSITIONS[cur] and new is not cur]


@pytest.mark.parametrize(("current", "new"), REFUSED, ids=lambda s: s.value)
def test_transition_refused_raises_and_writes_nothing(
    store: Store, client: fakeredis.FakeRedis, events: Any, current: Status, new: Status
) -> None:
    record = make(store)
    _reach(store, record.hostname, current)
    events()
    before = snapshot(client)
    with pytest.raises(InvalidTransition) as info:
        store.transition(record.hostname, new, error="should not be written", container_id="nope")
    assert info.value.hostname == record.hostname
    assert info.value.current == current.value
    assert info.value.new == new.value
    assert snapshot(client) == before
    assert events() == []


@pytest.mark.parametrize("current", list(Status), ids=lambda s: s.value)
def test_repeated_move_is_a_no_op(store: Store, client: fakeredis.FakeRedis, events: Any, current: Status) -> None:
    # A retried write (lost reply) or a task delivered twice must be harmless: nothing written.
    record = make(store)
    _reach(store, record.hostname, current)
    events()
    stored = store.require(record.hostname)
    before = snapshot(client)
    again = store.transition(record.hostname, current, error="late", container_id="late")
    assert again == stored
    assert snapshot(client) == before
    assert events() == []


def test_terminal_moves_enter_the_ended_index(store: Store, client: fakeredis.FakeRedis) -> None:
    failed, removed, active = make(store), make(store), make(store)
    started = time.time()
    move(store, failed.hostname, Status.STARTING, Status.FAILED)
    move(store, removed.hostname, Status.DELETING)
    assert client.zscore(f"{PREFIX}idx:ended", removed.hostname) is None  # DELETING has not ended
    move(store, removed.hostname, Status.REMOVED)
    move(store, active.hostname, Status.STARTING, Status.ACTIVE)
    ended = dict(client.zrange(f"{PREFIX}idx:ended", 0, -1, withscores=True))
    assert set(ended) == {failed.hostname, removed.hostname}
    for score in ended.values():
        assert started - 1 <= score <= time.time() + 1  # scored by when it ended, not when it was created


def test_purge_ended_deletes_old_ended_records_and_their_index_entries(
    store: Store, client: fakeredis.FakeRedis, clock: None
) -> None:
    old = make(store, user="alice")
    move(store, old.hostname, Status.FAILED)
    cutoff = float(client.zscore(f"{PREFIX}idx:ended", old.hostname) or 0)
    recent = make(store, user="alice")
    move(store, recent.hostname, Status.DELETING, Status.REMOVED)
    live = make(store, user="alice")

    assert store.purge_ended(cutoff) == [old.hostname]
    assert store.get(old.hostname) is None
    for key in client.scan_iter(match=f"{PREFIX}idx:*"):
        assert client.zscore(key, old.hostname) is None, key
    assert names(list(store.records())) == [live.hostname, recent.hostname]
    assert store.purge_ended(cutoff) == []  # nothing left that old
    assert store.require(recent.hostname).status is Status.REMOVED


def test_transition_of_a_missing_record_raises_not_found_and_writes_nothing(
    store: Store, client: fakeredis.FakeRedis, events: Any
) -> None:
    make(store)
    events()
    before = snapshot(client)
    with pytest.raises(NotFound):
        store.transition("000000000000", Status.STARTING, container_id="x")
    with pytest.raises(NotFound):
        store.transition("000000000000", None, allowed={Status.PENDING}, container_id="x")
    assert snapshot(client) == before
    assert not client.exists(store.key_for("000000000000"))
    assert events() == []


def test_transition_allowed_narrows_the_sources(store: Store, client: fakeredis.FakeRedis) -> None:
    record = make(store)
    before = snapshot(client)
    # PENDING -> DELETING is a legal move, but the caller only allows it from STARTING.
    with pytest.raises(InvalidTransition):
        store.transition(record.hostname, Status.DELETING, allowed={Status.STARTING})
    assert snapshot(client) == before
    # ``allowed`` cannot widen the machine: ACTIVE is not a source of STARTING.
    move(store, record.hostname, Status.STARTING, Status.ACTIVE)
    before = snapshot(client)
    with pytest.raises(InvalidTransition):
        store.transition(record.hostname, Status.STARTING, allowed={Status.ACTIVE})
    assert snapshot(client) == before
    # Inside both: it moves.
    assert store.transition(record.hostname, Status.DELETING, allowed={Status.ACTIVE}).status is Status.DELETING


def test_guarded_field_update_keeps_the_status(store: Store, client: fakeredis.FakeRedis, events: Any) -> None:
    record = make(store)
    move(store, record.hostname, Status.STARTING)
    events()
    updated = store.transition(
        record.hostname, None, allowed={Status.STARTING}, container_id="cid-1", internal={"attempt": "2"}
    )
    assert updated.status is Status.STARTING
    assert updated.container_id == "cid-1"
    assert store.internal(record.hostname, "attempt") == "2"
    assert zmembers(client, f"{PREFIX}idx:status:STARTING") == [record.hostname]
    published = events()
    assert len(published) == 1
    assert published[0]["status"] == "STARTING" and published[0]["container_id"] == "cid-1"
    assert not any(k.startswith("_") for k in published[0])


def test_guarded_field_update_refused_outside_allowed(store: Store, client: fakeredis.FakeRedis, events: Any) -> None:
    record = make(store)
    move(store, record.hostname, Status.DELETING)  # a kill won the race
    events()
    before = snapshot(client)
    with pytest.raises(InvalidTransition) as info:
        store.transition(record.hostname, None, allowed={Status.STARTING}, container_id="late")
    assert info.value.current == "DELETING"
    with pytest.raises(InvalidTransition):
        store.transition(record.hostname, None, container_id="late")  # no ``allowed``: nothing is allowed
    assert snapshot(client) == before
    assert store.require(record.hostname).container_id == ""
    assert events() == []


def test_transition_internal_fields_stay_internal(store: Store) -> None:
    record = make(store)
    moved = store.transition(record.hostname, Status.FAILED, error="boom", internal={"cause": "oom"})
    assert moved.error == "boom"
    assert "cause" not in moved.to_json() and "_cause" not in moved.to_json()
    assert store.internal(record.hostname, "cause") == "oom"
    assert moved.settled and moved.status in SETTLED


# -- list ------------------------------------------------------------------------------
@pytest.fixture
def population(store: Store, clock: None) -> list[Notebook]:
    """Six records, oldest first: alternating users, two moved on to STARTING and ACTIVE."""
    records = [make(store, user=("alice" if i % 2 == 0 else "bob"), image=f"img{i}") for i in range(6)]
    move(store, records[1].hostname, Status.STARTING)
    move(store, records[2].hostname, Status.STARTING)
    move(store, records[4].hostname, Status.STARTING, Status.ACTIVE)
    return [store.require(r.hostname) for r in records]


def names(records: list[Notebook]) -> list[str]:
    return [r.hostname for r in records]


def test_list_newest_first(store: Store, population: list[Notebook]) -> None:
    assert names(list(store.records())) == names(population[::-1])
    assert list(store.records()) == population[::-1]
    assert store.count() == 6


def test_list_by_user(store: Store, population: list[Notebook]) -> None:
    assert names(list(store.records(user="alice"))) == names([population[4], population[2], population[0]])
    assert names(list(store.records(user="bob"))) == names([population[5], population[3], population[1]])
    assert list(store.records(user="nobody")) == []


def test_list_by_status(store: Store, population: list[Notebook]) -> None:
    assert names(list(store.records(status=Status.STARTING))) == names([population[2], population[1]])
    assert names(list(store.records(status=Status.ACTIVE))) == names([population[4]])
    assert names(list(store.records(status=Status.PENDING))) == names([population[5], population[3], population[0]])
    assert list(store.records(status=Status.REMOVED)) == []


def test_list_by_user_and_status(store: Store, population: list[Notebook]) -> None:
    assert names(list(store.records(user="alice", status=Status.STARTING))) == names([population[2]])
    assert names(list(store.records(user="bob", status=Status.STARTING))) == names([population[1]])
    assert names(list(store.records(user="bob", status=Status.PENDING))) == names([population[5], population[3]])
    assert list(store.records(user="bob", status=Status.ACTIVE)) == []


def test_list_offset_and_limit(store: Store, population: list[Notebook]) -> None:
    newest_first = names(population[::-1])
    assert names(list(store.records(limit=2))) == newest_first[:2]
    assert names(list(store.records(offset=2, limit=2))) == newest_first[2:4]
    assert names(list(store.records(offset=4))) == newest_first[4:]
    assert names(list(store.records(offset=5, limit=10))) == newest_first[5:]
    assert list(store.records(offset=6)) == []
    assert list(store.records(offset=100, limit=1)) == []
    # The same with one filter (read from the index) and with both (filtered after the read).
    assert names(list(store.records(user="alice", offset=1, limit=1))) == names([population[2]])
    assert names(list(store.records(status=Status.PENDING, offset=1, limit=5))) == names([population[3], population[0]])
    assert names(list(store.records(user="bob", status=Status.PENDING, offset=1))) == names([population[3]])
    assert names(list(store.records(user="bob", status=Status.PENDING, limit=1))) == names([population[5]])


def test_list_limit_zero_returns_nothing(store: Store, population: list[Notebook]) -> None:
    # limit=0 must mean "no records" on every path, as it does when both filters are given.
    assert list(store.records(user="bob", status=Status.PENDING, limit=0)) == []
    assert list(store.records(limit=0)) == []
    assert list(store.records(user="alice", limit=0)) == []


def test_list_skips_a_record_whose_hash_vanished(store: Store, client: fakeredis.FakeRedis) -> None:
    a, b = make(store), make(store)
    client.delete(store.key_for(a.hostname))  # e.g. expired by retention between the two reads
    assert names(list(store.records())) == [b.hostname]


def test_get_and_require_missing(store: Store) -> None:
    assert store.get("000000000000") is None
    with pytest.raises(NotFound):
        store.require("000000000000")


def test_keys_are_built_from_the_prefix(client: fakeredis.FakeRedis) -> None:
    one, two = Store(client, prefix="one:"), Store(client, prefix="two:")
    record = one.create(image="busybox", user="alice", domain=DOMAIN)
    assert one.key_for(record.hostname) == f"one:nb:{record.hostname}"
    assert one.events_channel == "one:events"
    assert two.get(record.hostname) is None
    assert list(two.records()) == [] and two.count() == 0
    with pytest.raises(NotFound):
        two.transition(record.hostname, Status.DELETING)
    assert one.require(record.hostname).status is Status.PENDING


# -- events ----------------------------------------------------------------------------
def test_events_carry_every_change_without_internal_fields(store: Store, events: Any) -> None:
    record = make(store, user="alice", internal={"queue_deadline": "99"})
    store.transition(record.hostname, Status.STARTING, container_id="c1", internal={"attempt": "1"})
    store.transition(record.hostname, Status.ACTIVE, address="http://127.0.0.1:1234")
    store.transition(record.hostname, Status.DELETING)
    store.transition(record.hostname, Status.REMOVED)

    published = events()
    assert [e["status"] for e in published] == ["PENDING", "STARTING", "ACTIVE", "DELETING", "REMOVED"]
    for event in published:
        assert event["hostname"] == record.hostname
        assert event["user"] == "alice"
        assert not any(k.startswith("_") for k in event), event
        assert set(SEED_FIELDS) <= set(event)
    assert published[0] == record.to_json()
    assert published[1]["container_id"] == "c1"
    assert published[2]["address"] == "http://127.0.0.1:1234"
    assert published[-1] == store.require(record.hostname).to_json()


def test_internal_fields_never_reach_to_json(store: Store) -> None:
    record = make(store, internal={"queue_deadline": "1", "token": "s3cret"})
    store.transition(record.hostname, Status.STARTING, internal={"attempt": "3"})
    public = store.require(record.hostname).to_json()
    assert "s3cret" not in json.dumps(public)
    assert set(public) == {f.name for f in Notebook.__dataclass_fields__.values()}
    assert list(public)[:8] == SEED_FIELDS
    assert all(isinstance(v, str) for v in public.values())


# -- Redis away ------------------------------------------------------------------------
def test_store_on_a_closed_port_raises_store_unavailable() -> None:
    client = connect(f"redis://127.0.0.1:{free_port()}/0")
    store = Store(client, prefix=PREFIX)
    started = time.monotonic()
    calls = [
        store.ping,
        store.count,
        lambda: store.get("000000000000"),
        lambda: store.require("000000000000"),
        lambda: store.internal("000000000000", "x"),
        lambda: list(store.records()),
        lambda: list(store.records(user="alice", status=Status.PENDING)),
        lambda: make(store),
        lambda: store.transition("000000000000", Status.DELETING),
    ]
    try:
        for call in calls:
            with pytest.raises(StoreUnavailable, match="Redis is unavailable"):
                call()
    finally:
        client.close()
    assert time.monotonic() - started < 60
