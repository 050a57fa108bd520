"""shared/queue.py overrides private parts of kombu's Redis channel: hold them to what they rely on.

The overrides (no restore on close, no ack/reject on a channel whose connection is gone, one
redis-py client per channel) are checked against kombu's own channel here, by name and signature,
and run on a real Redis: a kombu upgrade that renames or reshapes them fails these tests, not a
worker in production. The pinned kombu is the one they were written against.
"""

from __future__ import annotations

import inspect
from typing import Any

import kombu
import pytest
from kombu.transport import redis as kombu_redis

from shared.queue import RedisChannel, SentinelChannel, make_celery
from shared.settings import Settings
from testkit.support import RedisServer, unique_instance
from tests.test_dependencies import pins

#: What the overrides call or replace on kombu's channel, with the parameters they pass.
RELIED_ON = {
    "basic_ack": ["self", "delivery_tag", "multiple"],
    "basic_reject": ["self", "delivery_tag", "requeue"],
    "_create_client": ["self", "asynchronous"],
}


def test_the_overrides_were_written_against_the_pinned_kombu() -> None:
    assert kombu.__version__ == pins("requirements.txt")["kombu"], (
        "kombu changed: review shared/queue.py's channel overrides against it, then update this pin check"
    )


@pytest.mark.parametrize("name", sorted(RELIED_ON))
def test_kombus_channel_still_has_what_the_overrides_replace(name: str) -> None:
    original = getattr(kombu_redis.Channel, name)
    assert list(inspect.signature(original).parameters) == RELIED_ON[name]
    assert getattr(RedisChannel, name) is not original  # ours is the one in use


def test_the_attributes_the_overrides_read_exist_on_a_live_channel(redis_server: RedisServer) -> None:
    channel = _channel(redis_server)
    try:
        assert kombu_redis.Channel.do_restore is True and RedisChannel.do_restore is False
        for attribute in ("closed", "connection", "pool"):
            assert hasattr(channel, attribute), attribute
        assert channel.connection.client is not None
        assert SentinelChannel.__mro__.index(RedisChannel) < SentinelChannel.__mro__.index(kombu_redis.Channel)
    finally:
        channel.close()


def test_one_client_per_channel_until_its_pool_changes(redis_server: RedisServer) -> None:
    channel = _channel(redis_server)
    try:
        first = channel._create_client()
        assert channel._create_client() is first
        assert first.ping()
        channel._pool = None  # what kombu does after a disconnect: a new pool on next use
        again = channel._create_client()
        assert again is not first and again.connection_pool is channel.pool and again.ping()
        assert channel._create_client(asynchronous=True) is not again  # the polling client is kombu's own
    finally:
        channel.close()


def test_acks_and_rejects_on_a_closed_channel_are_left_to_the_visibility_timeout(redis_server: RedisServer) -> None:
    channel = _channel(redis_server)
    channel.close()
    # kombu's own would fail here (its connection and client are gone); ours does nothing.
    channel.basic_ack("1.2.3")
    channel.basic_reject("1.2.4", requeue=True)


def _channel(redis_server: RedisServer) -> Any:
    settings = Settings.from_env({"REDIS_URL": redis_server.url, "INSTANCE": unique_instance("kombu")})
    connection = make_celery(settings).connection_for_write()
    channel = connection.default_channel
    assert isinstance(channel, RedisChannel)
    return channel
