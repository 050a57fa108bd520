"""What following a Redis failover takes, beside the task queue's transport (shared/queue.py).

- :func:`sentinel_client`: what ``connect()`` (shared/store.py) returns with REDIS_SENTINELS set: a
  client whose connections go to the master the sentinels name. redis-py's Sentinel pool asks them
  when it opens a connection, closes idle ones to a master that changed, and turns a ``READONLY``
  answer (a master demoted to a replica) into a connection error; ``connect()``'s retries then open
  a new connection, to the new master once a sentinel has promoted one. The pool is the blocking
  one ``connect()`` always uses.
- :class:`Replication`: the API's accepted writes (a spawn, a kill: a 202) are on the replicas
  before it answers, so a failover cannot lose them (Redis replicates asynchronously).
- :class:`GapAwarePubSub`: redis-py connects a subscription again by itself when its connection
  drops (to the new master after a failover) and subscribes it again, silently: whatever was
  published in between is missed. This subscription counts those reconnections, so its reader
  can tell (api/hub.py then ends its streams, whose clients read the current state again).
"""

from __future__ import annotations

import socket
from collections.abc import Collection
from typing import Any

import redis
import redis.client
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from shared import lua
from shared.errors import StoreUnavailable
from shared.settings import RedisTarget

#: Seconds to connect to a sentinel, and to wait for its answer. A sentinel that does not answer is
#: skipped for the next one at once (no retries: asking every sentinel is the retry).
#: TCP options for every connection to Redis (records, events, the task queue), so that a Redis that
#: vanished without closing them (a lost host, a container killed with its network: no reset ever
#: comes) is noticed in seconds rather than after the kernel's retransmissions (~15 min): an idle
#: connection is probed after 5 s of silence (keepalive), and one whose sent data (a command, the
#: events subscription's health-check PING) goes unacknowledged for 10 s is dropped
#: (TCP_USER_TIMEOUT). Each client then reconnects, behind sentinels to the master they name now.
KEEPALIVE: dict[str, Any] = {
    "socket_keepalive": True,
    "socket_keepalive_options": {
        socket.TCP_KEEPIDLE: 5,
        socket.TCP_KEEPINTVL: 2,
        socket.TCP_KEEPCNT: 3,
        socket.TCP_USER_TIMEOUT: 10_000,
    },
}
SENTINEL_CONNECT_TIMEOUT = 1.0
SENTINEL_TIMEOUT = 2.0


class BlockingSentinelConnectionPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """redis-py's Sentinel pool with the blocking pool's queue: when every connection is busy, a
    command waits its turn (up to the pool's ``timeout``) instead of failing "Too many connections".

    ``SentinelConnectionPool`` only decides where a connection goes (the master the sentinels
    name) and which connections to drop (those to a master that is no longer one); how many there
    are and who waits for them is ``BlockingConnectionPool``'s, next in line.
    """


def sentinel_client(target: RedisTarget, **options: Any) -> redis.Redis:
    """A client of the master the sentinels of ``target`` name, with ``options`` for the pool and
    its connections (as ``connect()`` gives them to a plain one)."""
    parsed = parse_url(target.url)  # type: ignore[no-untyped-call]
    credentials = {k: parsed[k] for k in ("username", "password") if parsed.get(k)}
    if target.password:
        credentials["password"] = target.password
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_options(target))  # type: ignore[no-untyped-call]
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        target.master,
        connection_pool_class=BlockingSentinelConnectionPool,
        db=parsed.get("db", 0),
        **credentials,
        **options,
    )
    return client


def sentinel_options(target: RedisTarget) -> dict[str, Any]:
    """How to talk to the sentinels themselves (redis-py and kombu alike)."""
    options: dict[str, Any] = {
        "socket_connect_timeout": SENTINEL_CONNECT_TIMEOUT,
        "socket_timeout": SENTINEL_TIMEOUT,
        # redis-py's default retries each sentinel ten times with backoff; a sentinel that is down
        # would hold up every discovery of the master by seconds.
        "retry": Retry(NoBackoff(), 0),
    }
    if target.sentinel_password:
        options["password"] = target.sentinel_password
    return options


class Replication:
    """Confirms that what the API wrote is on ``replicas`` replicas (at most as many as are connected)
    before it answers for it.

    Redis's ``WAIT`` counts the replicas that have every write its own connection made. One
    connection, with no retries: it checks that the record is there as written and writes a mark
    (both in one script, on the master it has now), asks the master for its connected replicas
    (``ROLE``), then ``WAIT``s for the mark. Replication is one ordered stream, so a replica that
    has the mark has everything the master had before it, the record included. A master that
    changed since the record was written (a failover in between) no longer has the record, or has
    it because its replicas got it from the old one: either way the check is on the master that
    counts now. Without retries no command of the three can quietly go to another master.

    ``replicas=0`` confirms nothing and costs nothing (one Redis, no replicas: the default).
    """

    def __init__(self, client: redis.Redis, prefix: str, replicas: int, timeout: float) -> None:
        self.redis = client
        self.mark = f"{prefix}replicated"
        self.replicas = replicas
        self.timeout = timeout

    def confirm(self, key: str, field: str = "status", allowed: Collection[str] = ()) -> int:
        """Return once the hash at ``key`` (with ``field`` one of ``allowed``, when given) is on the
        replicas; how many have it. Raises StoreUnavailable when it is not there on the master, or
        not on enough replicas within ``timeout`` seconds, or Redis is away."""
        if not self.replicas:
            return 0
        pool = self.redis.connection_pool
        try:
            conn: Any = pool.get_connection()  # (redis-py's Connection methods are untyped)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis is unavailable: {exc}") from exc
        try:
            mark = ("EVAL", lua.source("mark_replicated"), 2, key, self.mark, field, key, *allowed)
            conn.send_packed_command(conn.pack_commands([mark, ("ROLE",)]))
            marked, role = conn.read_response(), conn.read_response()
            if role[0] != "master":
                raise StoreUnavailable("Redis is not the master any more (a failover is under way)")
            if not marked:
                raise StoreUnavailable(f"{key} is not on the Redis master as written (lost in a failover?)")
            wanted = min(self.replicas, len(role[2]))
            if not wanted:
                return 0  # no replica connected: nothing to wait for, nothing a failover could promote
            conn.send_command("WAIT", wanted, max(1, int(self.timeout * 1000)))
            acked = int(conn.read_response(timeout=self.timeout + SENTINEL_TIMEOUT))
        except redis.RedisError as exc:
            conn.disconnect()  # replies may be left unread: never reuse it as it is
            raise StoreUnavailable(f"Redis is unavailable: {exc}") from exc
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
        if acked < wanted:
            raise StoreUnavailable(
                f"{acked} of {wanted} Redis replicas confirmed the write within {self.timeout:g}s (REDIS_WAIT_TIMEOUT)"
            )
        return acked


class GapAwarePubSub(redis.client.PubSub):
    """A PubSub that counts the times redis-py connected it again (and re-subscribed it) by itself.

    ``on_connect`` is redis-py's hook for exactly that, called on every connection but the first
    (the first is made before the hook is registered).
    """

    reconnections = 0

    def on_connect(self, connection: Any) -> None:
        self.reconnections += 1
        super().on_connect(connection)
