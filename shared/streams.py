"""Open event streams, counted per caller across every API process (STREAMS_PER_USER, STREAMS_PER_ADDRESS).

Each API process counts the streams it serves for each caller in the hash ``<prefix>streams:<who>``
(one field per process: its count), and keeps a heartbeat key ``<prefix>streams-process:<id>``
alive while it runs. Taking a slot sums the counts of the processes whose heartbeat is alive
(dropping a dead process's field on the way) and adds one to its own, in one script, so
concurrent streams of one caller can never pass the cap between them; giving it back takes one
off. A process renews only its own heartbeat (one command every ``LEASE / 4`` seconds, however
many streams it serves: renewing thousands of slots one by one stalled its event loop), and the
slots of a process that died stop counting when its heartbeat ends, ``LEASE`` seconds later.
"""

from __future__ import annotations

import os
import secrets
import socket

import redis

from shared import lua

#: Seconds a process's slots count without its heartbeat; it renews it every LEASE / 4.
LEASE = 60.0


class StreamSlots:
    """The stream slots of one deployment (keys under ``prefix``) held by this process."""

    def __init__(self, client: redis.Redis, prefix: str, lease: float = LEASE) -> None:
        self.redis = client
        self.prefix = prefix
        self.lease = lease
        self.process = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self._acquire = lua.register(client, "stream_acquire")
        self._release = lua.register(client, "stream_release")

    def key(self, who: str) -> str:
        return f"{self.prefix}streams:{who}"

    @property
    def _heartbeats(self) -> str:
        return f"{self.prefix}streams-process:"

    def acquire(self, who: str, cap: int) -> bool:
        """Take a slot for ``who`` unless it holds ``cap`` already (0: no cap)."""
        args: list[str | int] = [self.process, self._heartbeats, cap or 1_000_000_000, int(self.lease * 1000)]
        return bool(self._acquire(keys=[self.key(who)], args=args))

    def release(self, who: str) -> None:
        self._release(keys=[self.key(who)], args=[self.process])

    def renew(self) -> None:
        """Keep this process's slots counting for another ``lease`` seconds (one command)."""
        self.redis.set(self._heartbeats + self.process, "1", px=int(self.lease * 1000))

    def count(self, who: str) -> int:
        """Live slots of ``who``, across every process (for tests and operators)."""
        counts: dict[str, str] = self.redis.hgetall(self.key(who))  # type: ignore[assignment]
        alive = [process for process in counts if self.redis.exists(self._heartbeats + process)]
        return sum(int(counts[process]) for process in alive)
