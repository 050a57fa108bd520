"""The warm pool: notebooks started ahead of demand, handed out to a spawn at once.

An operator sets ``POOL`` (``image=count,...``). For each image, that many notebooks are kept
running under the pseudo-user :data:`POOL_USER` (never a valid user name, so it cannot be
claimed by spawning as it). They are ordinary records and containers: spawned, reconciled,
aged out and killed like any notebook. Keys, beside the store's:

- ``pool:<image>:ready``    list of ACTIVE members ready to hand out (oldest first)
- ``pool:<image>:members``  set of every live member (starting or ready), for refilling

A spawn for a pooled image *claims* a ready member in one Lua step: the record gets the
user, a fresh start time and expiry, moves to the user's index and is published as a change.
The client gets an ACTIVE notebook with no engine call on its path; a refill is queued.
"""

from __future__ import annotations

from typing import Any

from shared import lua
from shared.limits import Quota, quota_error
from shared.record import Notebook
from shared.status import Status
from shared.store import Store, _store_errors

# Pseudo-users: both fail shared.validation.USER_RE, so no client can spawn, filter or get a token
# as them by accident.
POOL_USER = "_pool"  # the warm pool's notebooks, until a spawn claims one
ANONYMOUS_USER = "_anonymous"  # every anonymous launch's notebook (api/anonymous.py)


class Pool:
    """Warm-pool bookkeeping on the store's Redis and key prefix."""

    def __init__(self, store: Store, sizes: dict[str, int]) -> None:
        self.store = store
        self.redis = store.redis
        self.sizes = sizes
        self._claim = lua.register(self.redis, "pool_claim")
        self._offer = lua.register(self.redis, "pool_offer")

    def _key(self, image: str, kind: str) -> str:
        return f"{self.store.prefix}pool:{image}:{kind}"

    def pooled(self, image: str) -> bool:
        return image in self.sizes

    @_store_errors
    def claim(
        self, image: str, user: str, now: str, score: float, expires_at: str, quota: Quota | None = None
    ) -> Notebook | None:
        """Hand a ready member of ``image``'s pool to ``user``; None if none is ready.

        Raises QuotaExceeded when ``quota`` refuses the user another notebook (per user, rate).
        """
        quota = quota or Quota()
        if image not in self.sizes:
            return None
        keys = [
            self._key(image, "ready"),
            self._key(image, "members"),
            f"{self.store.prefix}idx:all",
            f"{self.store.prefix}idx:user:{POOL_USER}",
            f"{self.store.prefix}idx:status:{Status.ACTIVE.value}",
            self.store.quota_keys(POOL_USER)[1],
            *self.store.quota_keys(user)[1:],
            f"{self.store.prefix}idx:user:{user}",
        ]
        flat: Any = self._claim(
            keys=keys,
            args=[
                self.store.key_for(""),
                user,
                now,
                repr(score),
                expires_at,
                self.store.events_channel,
                quota.max_per_user,
                quota.rate,
                quota.window,
                POOL_USER,
            ],
        )
        if not flat:
            return None
        if isinstance(flat[0], int):
            raise quota_error(flat, user, quota, score)
        return Notebook.from_hash(dict(zip(flat[::2], flat[1::2], strict=True)))

    @_store_errors
    def add_member(self, image: str, hostname: str) -> None:
        self.redis.sadd(self._key(image, "members"), hostname)

    @_store_errors
    def offer(self, image: str, hostname: str) -> None:
        """A member became ACTIVE: it may now be claimed. Offering it again changes nothing (its
        spawn and a reconcile pass that adopts it can both see it become ACTIVE)."""
        self._offer(keys=[self._key(image, "ready")], args=[hostname])

    @_store_errors
    def members(self, image: str) -> set[str]:
        return {str(h) for h in self.redis.smembers(self._key(image, "members"))}

    @_store_errors
    def ready_count(self, image: str) -> int:
        return int(self.redis.llen(self._key(image, "ready")))

    @_store_errors
    def forget(self, image: str, hostnames: set[str]) -> None:
        """Drop members that are no longer live (failed, culled, killed) from the members set."""
        if hostnames:
            self.redis.srem(self._key(image, "members"), *hostnames)
