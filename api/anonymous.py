"""Limits on anonymous launches: per client address, live notebooks and launches per minute.

Clients without a token (a thebe page in a reader's browser) may launch the images named by
``ANONYMOUS_IMAGES`` through the Binder and tmpnb routes (``api/binder.py``); who may do so is
decided in ``api/auth.py``, how much here. Every anonymous notebook belongs to the pseudo-user
:data:`ANONYMOUS_USER` (not a valid user name: no token can be made for it, no listing filtered
by it), so the store's own quota script (``shared/limits.py``) counts them all in one place:
``ANONYMOUS_MAX_NOTEBOOKS`` is that user's per-user limit, checked atomically with the record's
creation or the warm-pool claim, and freed by the status move that ends a notebook.

Per client address (:func:`client_key`: the address TRUSTED_PROXY_HOPS believes, an IPv6 client's
/64), one script checks and takes a slot before the launch:

- ``anon:live:<key>``  sorted set: the address's notebooks (score 0) and reservations of launches
                      under way (``?<nonce>``, scored by when they lapse). The check drops members
                      whose record no longer takes a quota slot (ended, failed, gone) and lapsed
                      reservations, so it needs no bookkeeping from the workers, then counts.
- ``anon:rate:<key>`` sorted set: the address's launches in the last minute (ANONYMOUS_SPAWN_RATE).

:meth:`AnonymousLimits.reserve` takes a slot (or raises QuotaExceeded), :meth:`Reservation.commit`
names the notebook it became, :meth:`Reservation.release` gives back a launch that did not happen
(the store or the pool refused it) together with its rate entry. Both keys expire by themselves.
"""

from __future__ import annotations

import ipaddress
import secrets
import time
from dataclasses import dataclass

import redis

from shared import lua
from shared.errors import QuotaExceeded, StoreUnavailable
from shared.limits import RATE_WINDOW

#: Seconds a reservation holds its slot while its launch is written (a launch takes milliseconds).
RESERVATION_LIFETIME = 30


def client_key(address: str | None) -> str:
    """What anonymous limits and address-counted stream caps count by: the client's address (as
    TRUSTED_PROXY_HOPS lets the API believe it), an IPv6 client's /64 (one host has a whole /64 to
    pick addresses from), an IPv4-mapped IPv6 address as IPv4."""
    raw = (address or "").strip()
    try:
        ip = ipaddress.ip_address(raw.split("%", 1)[0])
    except ValueError:
        return raw[:64] or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass
class Reservation:
    """A slot taken for one anonymous launch: commit it with the notebook, or release it."""

    limits: AnonymousLimits
    key: str
    nonce: str
    settled: bool = False

    def commit(self, hostname: str) -> None:
        self._settle(hostname)

    def release(self) -> None:
        if not self.settled:
            self._settle("")

    def _settle(self, hostname: str) -> None:
        self.settled = True
        try:
            self.limits._settle(keys=self.limits.keys(self.key), args=[self.nonce, hostname])
        except redis.RedisError:
            pass  # the reservation lapses by itself (RESERVATION_LIFETIME)


class AnonymousLimits:
    """ANONYMOUS_PER_ADDRESS and ANONYMOUS_SPAWN_RATE on the store's Redis, under its key prefix."""

    def __init__(self, client: redis.Redis, prefix: str, per_address: int, rate: int, keys_live: float) -> None:
        self.redis = client
        self.prefix = prefix
        self.per_address = per_address
        self.rate = rate
        self.keys_live = max(60, int(keys_live))  # the longest an anonymous notebook can be counted
        self._reserve = lua.register(client, "anonymous_reserve")
        self._settle = lua.register(client, "anonymous_settle")

    def keys(self, key: str) -> list[str]:
        return [f"{self.prefix}anon:live:{key}", f"{self.prefix}anon:rate:{key}"]

    def reserve(self, key: str) -> Reservation:
        """Take a slot for one launch from client ``key``; raises QuotaExceeded (429) over a limit."""
        now = time.time()
        nonce = secrets.token_hex(8)
        args: list[str | int] = [
            f"{self.prefix}nb:",
            repr(now),
            self.per_address,
            self.rate,
            RATE_WINDOW,
            nonce,
            repr(now + RESERVATION_LIFETIME),
            self.keys_live,
        ]
        try:
            result = self._reserve(keys=self.keys(key), args=args)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(f"Redis is unavailable: {exc}") from exc
        if int(result[0]) == 1:
            return Reservation(self, key, nonce)
        kind, limit = str(result[1]), int(result[2])
        if kind == "live":
            raise QuotaExceeded(
                f"this address already has {limit} live anonymous notebook(s), the most allowed "
                "(ANONYMOUS_PER_ADDRESS); close one (or let it expire) to start another",
                30,
                "anonymous_address",
            )
        try:
            oldest = float(result[3])
        except (TypeError, ValueError):
            oldest = now
        wait = oldest + RATE_WINDOW - now
        raise QuotaExceeded(
            f"this address started {limit} anonymous notebook(s) in the last {RATE_WINDOW}s, the most allowed "
            "(ANONYMOUS_SPAWN_RATE)",
            int(wait) + (1 if wait > int(wait) else 0),
            "anonymous_rate",
        )
