"""The store's fast paths give what the slow ones gave: listing (Store.iter_public, GET /containers
paging), the spawn's one read (get_with_internal), deadlines dropped once a notebook is ACTIVE."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
from flask.testing import FlaskClient

from api import create_app
from shared.record import Notebook
from shared.settings import Settings
from shared.status import Status
from shared.store import Store
from testkit.support import wait_for

PREFIX = "listing:"


class NoQueue:
    """Accepts every task and sends none (the API under test never needs a worker)."""

    def spawn(self, hostname: str) -> None:
        pass

    def kill(self, hostname: str) -> None:
        pass

    def refill(self, image: str) -> None:
        pass


def public_rows(store: Store, **query: Any) -> list[dict[str, str]]:
    """:meth:`Store.iter_public`'s rows, its chunks joined."""
    return [row for chunk in store.iter_public(**query) for row in chunk]


@pytest.fixture
def client() -> Iterator[fakeredis.FakeRedis]:
    r = fakeredis.FakeRedis(decode_responses=True)
    yield r
    r.flushall()
    r.close()


@pytest.fixture
def store(client: fakeredis.FakeRedis) -> Store:
    made = []
    store = Store(client, prefix=PREFIX)
    for i in range(7):
        made.append(
            store.create(image=f"img{i}", user="alice" if i % 2 else "bob", domain="nb.test", internal={"x": "1"})
        )
    store.transition(made[1].hostname, Status.STARTING, container_id="c1", address="http://127.0.0.1:1", node="n")
    store.transition(made[1].hostname, Status.ACTIVE)
    store.transition(made[2].hostname, Status.FAILED, error='boom "quoted" ünïcode')
    return store


QUERIES: list[dict[str, Any]] = [
    {},
    {"user": "alice"},
    {"status": Status.PENDING},
    {"user": "bob", "status": Status.PENDING},
    {"offset": 2, "limit": 3},
    {"user": "alice", "offset": 1, "limit": 1},
    {"user": "bob", "status": Status.PENDING, "offset": 1},
    {"limit": 0},
    {"offset": 100},
]


@pytest.mark.parametrize("query", QUERIES)
def test_list_public_is_what_to_json_gives(store: Store, client: fakeredis.FakeRedis, query: dict[str, Any]) -> None:
    # The reference: every record read whole (HGETALL), as Notebook, serialised by to_json.
    names = client.zrevrange(f"{PREFIX}idx:all", 0, -1)
    whole = {h: Notebook.from_hash(client.hgetall(store.key_for(h))) for h in names}
    expected = [whole[r.hostname].to_json() for r in store.records(**query)]
    rows = public_rows(store, **query)
    assert rows == expected
    assert [list(row) for row in rows] == [list(e) for e in expected]  # the seed's field order too
    assert all(not k.startswith("_") for row in rows for k in row)


def test_list_public_fills_fields_a_hash_lacks_and_skips_vanished_ones(store: Store, client: Any) -> None:
    first, second, *_ = list(store.records())
    client.hdel(store.key_for(first.hostname), "profile", "error")  # written before those fields existed
    client.delete(store.key_for(second.hostname))  # expired between the index read and the fetch
    rows = public_rows(store)
    assert second.hostname not in [r["hostname"] for r in rows]
    assert rows[0] == {**first.to_json(), "profile": "", "error": ""}


def test_list_public_reads_asked_internal_fields_in_the_same_pass(store: Store, client: Any) -> None:
    first = next(store.records())
    client.hdel(store.key_for(first.hostname), "_x")
    rows = public_rows(store, internal=["x"])
    assert rows[0]["_x"] == "" and all(row["_x"] == "1" for row in rows[1:])
    assert [{k: v for k, v in row.items() if k != "_x"} for row in rows] == public_rows(store)


def test_row_is_the_listed_row(store: Store, client: Any) -> None:
    first = next(store.records())
    client.hdel(store.key_for(first.hostname), "profile")
    for row in public_rows(store, internal=["x"]):
        assert store.row(row["hostname"], internal=["x"]) == row
    assert store.row("000000000000") is None


def test_get_with_internal_reads_both_at_once(store: Store) -> None:
    record = next(store.records())
    got = store.get_with_internal(record.hostname)
    assert got is not None
    assert got[0] == store.get(record.hostname)
    assert got[1]["x"] == "1" and all(not k.startswith("_") for k in got[1])
    assert store.get_with_internal("000000000000") is None


@pytest.fixture
def http(store: Store) -> FlaskClient:
    return create_app(Settings.from_env({"AUTH": "off"}), store=store, queue=NoQueue()).test_client()  # type: ignore[arg-type]


def test_containers_pages_link_to_the_next_page(http: FlaskClient, store: Store) -> None:
    everything = http.get("/containers")
    assert everything.status_code == 200
    assert "Link" not in everything.headers  # the seed's unpaginated form: all records, no paging
    all_names = [r["hostname"] for r in everything.get_json()]
    assert len(all_names) == 7
    # Each listed record is exactly what GET /container/<h> shows (public_record, secrets and all).
    for row in everything.get_json():
        assert http.get(f"/container/{row['hostname']}").get_json() == row

    seen, url = [], "/containers?limit=3"
    for _ in range(5):
        page = http.get(url)
        assert page.status_code == 200
        seen += [r["hostname"] for r in page.get_json()]
        link = page.headers.get("Link")
        if not link:
            break
        assert link.endswith('>; rel="next"')
        url = link[1 : link.index(">")]
    assert seen == all_names
    assert url == "/containers?offset=6&limit=3"

    filtered = http.get("/api/containers?user=alice&limit=1")
    assert filtered.headers["Link"] == '</api/containers?user=alice&offset=1&limit=1>; rel="next"'


def test_drop_internal(store: Store) -> None:
    record = next(store.records())
    store.drop_internal(record.hostname, "x", "never-set")
    assert store.internal(record.hostname, "x") is None
    assert store.get(record.hostname) == record


def test_an_active_notebook_keeps_no_spawn_deadlines(stack: Any, images: dict[str, str]) -> None:
    hostname = stack.spawn(images["httpd"], user="lean")
    assert stack.wait(hostname).status == Status.ACTIVE

    def dropped() -> bool:
        found = stack.store.get_with_internal(hostname)
        return found is not None and not {"queue_deadline", "ready_deadline"} & found[1].keys()

    wait_for(dropped, 10, "the deadlines to be dropped")
    stack.kill(hostname)
    stack.wait(hostname, {Status.REMOVED})


# -- the stored form, and listings in chunks on a real Redis --------------------------------------
def test_the_hash_leaves_out_url_and_empty_extras_that_reading_puts_back(store: Store, client: Any) -> None:
    record = next(store.records(status=Status.PENDING))
    stored = client.hgetall(store.key_for(record.hostname))
    assert "url" not in stored and "error" not in stored and "container_id" not in stored
    assert stored["hostname"] == record.hostname and stored["status"] == "PENDING"
    assert record.url == f"{record.hostname}.nb.test"
    assert store.row(record.hostname) == record.to_json()
    active = next(store.records(status=Status.ACTIVE))
    assert client.hget(store.key_for(active.hostname), "container_id") == "c1"


def test_a_record_stored_whole_by_an_older_version_reads_the_same(store: Store, client: Any) -> None:
    record = next(store.records())
    key = store.key_for(record.hostname)
    client.hset(key, mapping={"url": record.url, "error": "", "profile": "", "node": "", "address": ""})
    assert store.get(record.hostname) == record
    assert store.row(record.hostname) == record.to_json()
    assert public_rows(store)[0] == record.to_json()


@pytest.fixture
def real_store(redis_server: Any) -> Iterator[Store]:
    from shared.store import connect

    store = Store(connect(redis_server.url), prefix="listing-real:")
    yield store
    for key in store.redis.scan_iter(match="listing-real:*", count=1000):
        store.redis.delete(key)


def test_a_listing_longer_than_a_chunk_is_streamed_in_order_and_survives_a_script_flush(real_store: Store) -> None:
    from shared.store import HMGET_CHUNK

    count = 2 * HMGET_CHUNK + 7  # three chunks, the last one short
    made = [real_store.create(image="img", user=f"u{i % 5}", domain="nb.test") for i in range(count)]
    real_store.transition(made[HMGET_CHUNK].hostname, Status.FAILED, error="on a chunk boundary")
    real_store.redis.delete(real_store.key_for(made[3].hostname))  # vanished: skipped, not an empty row

    expected = [r.to_json() for r in reversed(made) if r.hostname != made[3].hostname]
    expected[count - 1 - HMGET_CHUNK] = real_store.require(made[HMGET_CHUNK].hostname).to_json()
    chunks = list(real_store.iter_public())
    assert len(chunks) == 3 and [len(c) for c in chunks] == [HMGET_CHUNK, HMGET_CHUNK, 6]
    assert [row for chunk in chunks for row in chunk] == expected
    assert [list(row) for row in chunks[0][:1]] == [list(expected[0])]  # the seed's field order

    # Redis lost its scripts (a restart, SCRIPT FLUSH): the listing loads them again and answers.
    real_store.redis.script_flush()
    assert public_rows(real_store) == expected
    assert public_rows(real_store, offset=HMGET_CHUNK - 1, limit=3) == expected[HMGET_CHUNK - 1 : HMGET_CHUNK + 2]


def test_json_goes_through_orjson_with_the_same_meaning(http: FlaskClient, store: Store) -> None:
    failed = next(store.records(status=Status.FAILED))
    body = http.get(f"/container/{failed.hostname}")
    assert body.get_json()["error"] == 'boom "quoted" ünïcode'
    assert "ünïcode".encode() in body.data  # UTF-8, not \u escapes
    assert body.data.endswith(b"}\n")
    listing = http.get("/containers")
    assert listing.mimetype == "application/json" and listing.data.endswith(b"]\n")
    assert [r["hostname"] for r in listing.get_json()] == [r.hostname for r in store.records()]
    assert http.get("/containers?user=nobody").data == b"[]\n"
    bad = http.post("/spawn", data=b'{"image": NaN}', content_type="application/json")
    assert bad.status_code == 400 and bad.is_json


def test_a_listing_answer_has_its_length(http: FlaskClient) -> None:
    listing = http.get("/containers")
    assert int(listing.headers["Content-Length"]) == len(listing.data)
    assert len(listing.get_json()) == 7
