"""Redis Sentinel: the settings, and every process following a failover on a real cluster.

The cluster (testkit/redis_sentinel.py) is Debian's redis-server and redis-sentinel on loopback: a
master, a replica and three sentinels. The fault test runs the API (gunicorn), a Celery worker and
beat as real processes against the real Docker engine, and SIGKILLs the master in the middle of a
burst of spawns and kills.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from api.hub import Closed, Hub, Listener
from shared.errors import ConfigError, StoreUnavailable
from shared.failover import Replication
from shared.queue import broker, celery_config
from shared.settings import RedisTarget, Settings
from shared.status import Status
from shared.store import Store, connect
from shared.streams import StreamSlots
from testkit.redis_sentinel import MASTER_NAME, FailoverStack, SentinelCluster
from testkit.support import unique_instance, wait_for

SENTINELS = {"REDIS_SENTINELS": "s1:26379,s2:26380,s3", "REDIS_MASTER": "mymaster"}


# -- settings (no services) -------------------------------------------------------------------------
def test_sentinels_are_parsed_with_the_default_port() -> None:
    settings = Settings.from_env({**SENTINELS, "REDIS_SENTINELS": " s1:26379, [::1]:26380 ,s3,s1:26379"})
    assert settings.redis_sentinels == (("s1", 26379), ("::1", 26380), ("s3", 26379))
    assert settings.redis_target == RedisTarget(
        "redis://127.0.0.1:6379/0", settings.redis_sentinels, "mymaster", "", ""
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"REDIS_SENTINELS": "s1:notaport"}, "REDIS_SENTINELS"),
        ({"REDIS_SENTINELS": "s1:70000", "REDIS_MASTER": "m"}, "REDIS_SENTINELS"),
        ({"REDIS_SENTINELS": "s1"}, "REDIS_MASTER"),  # a sentinel needs the name it monitors
        ({"REDIS_MASTER": "mymaster"}, "REDIS_SENTINELS"),  # and a name needs sentinels
        ({"REDIS_SENTINEL_PASSWORD": "x"}, "REDIS_SENTINELS"),
        ({**SENTINELS, "REDIS_MASTER": "my master"}, "REDIS_MASTER"),
        ({**SENTINELS, "REDIS_URL": "rediss://h:6379/0"}, "REDIS_URL"),  # TLS: not with sentinels
        ({**SENTINELS, "REDIS_URL": "redis://mymaster/db"}, "REDIS_URL"),
        ({"REDIS_WAIT_REPLICAS": "some"}, "REDIS_WAIT_REPLICAS"),
        ({"REDIS_WAIT_TIMEOUT": "0"}, "REDIS_WAIT_TIMEOUT"),
    ],
)
def test_bad_sentinel_settings_stop_start_up_naming_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


def test_accepted_writes_wait_for_one_replica_behind_sentinels_by_default() -> None:
    assert Settings.from_env({}).wait_replicas == 0  # one Redis: nothing to wait for
    assert Settings.from_env(SENTINELS).wait_replicas == 1
    assert Settings.from_env({**SENTINELS, "REDIS_WAIT_REPLICAS": "0"}).wait_replicas == 0
    assert Settings.from_env({"REDIS_WAIT_REPLICAS": "2"}).wait_replicas == 2


def test_passwords_come_from_files_and_replace_the_urls(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("data-secret\n")
    (tmp_path / "sentinel").write_text("sentinel-secret\n")
    settings = Settings.from_env(
        {
            **SENTINELS,
            "REDIS_URL": "redis://:old@mymaster/3",
            "REDIS_PASSWORD_FILE": str(tmp_path / "data"),
            "REDIS_SENTINEL_PASSWORD_FILE": str(tmp_path / "sentinel"),
        }
    )
    assert (settings.redis_target.password, settings.redis_target.sentinel_password) == (
        "data-secret",
        "sentinel-secret",
    )


def test_the_queue_uses_celerys_sentinel_form() -> None:
    target = RedisTarget(
        "redis://:p%40ss@mymaster/2", (("s1", 26379), ("::1", 26380)), "mymaster", sentinel_password="sp"
    )
    url, transport, options = broker(target)
    assert url == "sentinel://:p%40ss@s1:26379/2;sentinel://:p%40ss@[::1]:26380/2"
    assert transport == "shared.queue:SentinelTransport"
    assert options["master_name"] == "mymaster"
    assert options["sentinel_kwargs"]["password"] == "sp"
    # One server: its URL, with REDIS_PASSWORD put in.
    assert broker(RedisTarget("redis://h:6379/1", password="a b"))[:2] == (
        "redis://:a%20b@h:6379/1",
        "shared.queue:RedisTransport",
    )
    config = celery_config(Settings.from_env(SENTINELS))
    assert config["broker_transport"] == "shared.queue:SentinelTransport"
    assert config["broker_transport_options"]["master_name"] == "mymaster"


# -- a real cluster ----------------------------------------------------------------------------------
@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    with SentinelCluster(tmp_path / "cluster") as made:
        yield made


def sentinel_settings(cluster: SentinelCluster, **env: Any) -> Settings:
    return Settings.from_env({**cluster.env(), "INSTANCE": unique_instance("sentinel"), "AUTH": "off", **env})


def test_a_write_waits_for_the_replica_and_is_refused_without_it(cluster: SentinelCluster) -> None:
    settings = sentinel_settings(cluster, REDIS_WAIT_TIMEOUT="0.5")
    store = Store(connect(settings.redis_target), settings.key_prefix)
    replication = Replication(store.redis, settings.key_prefix, settings.wait_replicas, settings.redis_wait_timeout)
    key = store.key_for("abc")
    try:
        store.redis.hset(key, mapping={"status": "PENDING"})
        assert replication.confirm(key) == 1
        assert cluster.replicas[0].client().hgetall(key) == {"status": "PENDING"}
        with pytest.raises(StoreUnavailable, match="not on the Redis master"):
            replication.confirm(key, allowed=("DELETING",))  # the record is not as the caller wrote it
        replica = cluster.replicas[0].proc
        assert replica is not None
        replica.send_signal(signal.SIGSTOP)  # connected, but confirms nothing
        try:
            with pytest.raises(StoreUnavailable, match="0 of 1 Redis replicas"):
                replication.confirm(key)
        finally:
            replica.send_signal(signal.SIGCONT)
    finally:
        store.redis.delete(key, f"{settings.key_prefix}replicated")


def ended(listener: Listener) -> str:
    """Why ``listener`` was closed; "" while it is open (its events are drained meanwhile)."""
    try:
        listener.get(0.2)
    except Closed as exc:
        return str(exc) or "closed"
    return ""


@pytest.mark.parametrize("how", ["sigkill", "sentinel-failover"])
def test_the_events_hub_ends_its_streams_on_a_failover_and_follows_the_new_master(
    cluster: SentinelCluster, how: str
) -> None:
    """A stream that may have missed events ends (its client reads again); the next one, opened
    on the promoted replica, gets every event. SIGKILL: the hub's connection is refused until a
    sentinel promotes the replica. SENTINEL FAILOVER: the sentinels name the new master at once
    and redis-py reconnects the subscription by itself; the hub notices that gap too."""
    settings = sentinel_settings(cluster)
    store = Store(connect(settings.redis_target), settings.key_prefix)
    hub = Hub(store, StreamSlots(store.redis, store.prefix))
    try:
        before = hub.open(everything=True)
        if how == "sigkill":
            old_port = cluster.kill_master().port
        else:
            old_port = cluster.master_address()[1]
            cluster.sentinels[0].client().sentinel_failover(MASTER_NAME)
        reason = wait_for(lambda: ended(before), 30, "the stream to end")
        assert ("reconnected" if how == "sentinel-failover" else "unavailable") in reason
        cluster.wait_promoted(old_port)
        after = wait_for(lambda: hub.open(everything=True), 30, "a stream on the new master")
        publisher = Store(connect(settings.redis_target, patience=10), settings.key_prefix)
        publisher.progress("h0st", "creating", "creating the container")
        event = wait_for(lambda: after.get(0.5), 10, "the event on the new master")
        assert (event.hostname, event.stage) == ("h0st", "creating")
    finally:
        hub.close()


def test_a_burst_of_spawns_and_kills_survives_losing_the_master(
    cluster: SentinelCluster,
    docker_client: docker.DockerClient,
    images: dict[str, str],
    notebook_network: str,
    tmp_path: Path,
) -> None:
    """SIGKILL the master in the middle of 50 spawns (every other one killed once accepted): a
    sentinel promotes the replica, the API, worker and beat follow it without a restart, and every
    accepted spawn settles (ACTIVE, or REMOVED once killed, or FAILED with its reason); none is lost,
    stuck or duplicated, and no container is left without a live record."""
    with FailoverStack(
        cluster, docker_client, tmp_path, "failover", START_TIMEOUT=10, NOTEBOOK_NETWORK=notebook_network
    ) as stack:
        try:
            run = stack.burst(images["httpd"], n=50, kill_after=15)
            out = run.outcome
            assert (out.lost, out.stuck, out.orphans, out.duplicates, out.broken) == (0, 0, 0, 0, 0), out
            assert len(run.accepted) == 50 and len(set(run.accepted)) == 50
            assert run.unexpected() == []
            # A spawn the client was told 503 left at most a FAILED record (one that reached the
            # replica before the master died is marked there once it is promoted), and no container.
            assert all(r.status == Status.FAILED and r.error for r in run.unasked), run.unasked
        except BaseException:
            print(stack.logs())
            raise


def test_a_spawn_that_the_replica_cannot_confirm_is_refused_and_failed(
    cluster: SentinelCluster, tmp_path: Path
) -> None:
    """The API answers 503 rather than 202 for a spawn a failover could lose, and the spawn does
    not go on behind the caller's back."""
    from api import create_app

    settings = sentinel_settings(cluster, REDIS_WAIT_TIMEOUT="0.3")
    app = create_app(settings)
    store: Store = app.extensions["store"]
    replica = cluster.replicas[0].proc
    assert replica is not None
    replica.send_signal(signal.SIGSTOP)
    try:
        response = app.test_client().post("/spawn", data={"image": "busybox", "user": "alice"})
    finally:
        replica.send_signal(signal.SIGCONT)
    try:
        assert response.status_code == 503, response.get_json()
        assert "replicas" in response.get_json()["error"]
        (record,) = list(store.records())
        assert record.status == Status.FAILED and "replicas" in record.error
        ok = app.test_client().post("/spawn", data={"image": "busybox", "user": "alice"})
        assert ok.status_code == 202, ok.get_json()
    finally:
        for key in store.redis.scan_iter(match=f"{settings.key_prefix}*"):
            store.redis.delete(key)
        app.extensions["hub"].close()
