"""Open event streams, counted per caller across every API process (STREAMS_PER_USER, STREAMS_PER_ADDRESS).

Each open stream holds a slot: a member (the stream's random id) of the sorted set
``<prefix>streams:<who>``, scored by when its lease ends. Taking a slot drops expired leases and
counts the rest in one script, so concurrent streams of one caller can never pass the cap between
them. The process that serves a stream renews its leases (``renew``, one round trip for all of
its streams) well before they end, and gives a slot back the moment its stream closes
(``release``); the slots of a process that died end with their leases, ``LEASE`` seconds later.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import redis

#: Seconds a slot lives unless renewed; a process renews its streams' slots every LEASE / 4.
LEASE = 60.0

# KEYS: streams:<who>; ARGV: stream id, now (epoch), lease end (epoch), cap
# Returns 1 when the slot is taken, 0 when the caller already holds ``cap`` live ones.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(ARGV[3])))
return 1
"""


class StreamSlots:
    """The slots of one deployment's streams (keys under ``prefix``), in its Redis ``client``."""

    def __init__(self, client: redis.Redis, prefix: str, lease: float = LEASE) -> None:
        self.redis = client
        self.prefix = prefix
        self.lease = lease
        self._acquire = client.register_script(_ACQUIRE)

    def key(self, who: str) -> str:
        return f"{self.prefix}streams:{who}"

    def acquire(self, who: str, stream_id: str, cap: int) -> bool:
        """Take a slot for ``stream_id`` unless ``who`` holds ``cap`` already (0: no cap)."""
        now = time.time()
        cap = cap or 1_000_000_000
        return bool(self._acquire(keys=[self.key(who)], args=[stream_id, repr(now), repr(now + self.lease), cap]))

    def renew(self, held: Iterable[tuple[str, str]]) -> None:
        """Extend the leases of ``(who, stream_id)`` slots still held (one round trip for all)."""
        end = time.time() + self.lease
        pipe = self.redis.pipeline(transaction=False)
        keys = set()
        for who, stream_id in held:
            pipe.zadd(self.key(who), {stream_id: end}, xx=True)
            keys.add(self.key(who))
        for key in keys:
            pipe.expireat(key, int(end) + 1)
        if keys:
            pipe.execute()

    def release(self, who: str, stream_id: str) -> None:
        self.redis.zrem(self.key(who), stream_id)

    def count(self, who: str) -> int:
        """Live slots of ``who`` (for tests and operators)."""
        return int(self.redis.zcount(self.key(who), time.time(), "+inf"))
