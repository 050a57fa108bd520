"""API tokens: the admin's (a setting) and per-user ones (created and revoked by the admin), in Redis.

A user token is 32 random bytes (``secrets.token_urlsafe(32)``), shown once when it is created.
Redis holds only its SHA-256, so a copy of the database gives nobody a usable token. Layout
(under the instance's key prefix, beside the notebook records):

- ``token:<id>``           hash: ``id``, ``user``, ``created`` (RFC 3339), ``sha256`` of the secret
- ``tokenhash:<sha256>``   the id of the token with that digest (the lookup by secret)
- ``idx:tokens``           sorted set of ids scored by creation time (newest-first listing)
- ``session-secret``       the generated key that signs /manage's session cookies when no
                           SECRET_KEY is set (shared by every API process)

A revoked token is deleted with its lookup key in one transaction: the next request with it
fails. The admin token is compared in constant time (digests of both sides, so not even the
length leaks); a user token is found by its digest, which an attacker cannot steer.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import redis

from shared.errors import NotFound
from shared.record import now_rfc3339
from shared.store import _store_errors

ADMIN = "admin"
USER = "user"

#: Longest bearer token looked up at all (user tokens are 43 characters).
MAX_TOKEN_LENGTH = 512


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def is_admin_token(presented: str, admin_token: str) -> bool:
    """Constant time: compares SHA-256 digests, so neither the content nor the length leaks."""
    if not admin_token:
        return False
    return hmac.compare_digest(digest(presented), digest(admin_token))


@dataclass(frozen=True)
class Token:
    """A user token as listed: never its secret."""

    id: str
    user: str
    created: str

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "user": self.user, "created": self.created}

    @classmethod
    def from_hash(cls, data: dict[Any, Any]) -> Token:
        return cls(id=str(data["id"]), user=str(data["user"]), created=str(data["created"]))


class Tokens:
    """Per-user API tokens in Redis. Takes the store's client and key prefix."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.prefix = prefix

    def _key(self, token_id: str) -> str:
        return f"{self.prefix}token:{token_id}"

    def _hash_key(self, sha: str) -> str:
        return f"{self.prefix}tokenhash:{sha}"

    @property
    def _index(self) -> str:
        return f"{self.prefix}idx:tokens"

    @_store_errors
    def create(self, user: str) -> tuple[Token, str]:
        """A new token for ``user`` (already validated): (the token, its secret, shown only now)."""
        secret = secrets.token_urlsafe(32)
        token = Token(id=secrets.token_hex(8), user=user, created=now_rfc3339())
        sha = digest(secret)
        pipe = self.redis.pipeline(transaction=True)
        mapping: dict[Any, Any] = {**token.to_json(), "sha256": sha}
        pipe.hset(self._key(token.id), mapping=mapping)
        pipe.set(self._hash_key(sha), token.id)
        pipe.zadd(self._index, {token.id: time.time()})
        pipe.execute()
        return token, secret

    @_store_errors
    def get(self, token_id: str) -> Token | None:
        data = self.redis.hgetall(self._key(token_id))
        return Token.from_hash(data) if data else None

    @_store_errors
    def find(self, secret: str) -> Token | None:
        """The live token whose secret this is; None for an unknown or revoked one."""
        if not secret or len(secret) > MAX_TOKEN_LENGTH:
            return None
        token_id = self.redis.get(self._hash_key(digest(secret)))
        return self.get(str(token_id)) if token_id else None

    @_store_errors
    def list(self, user: str | None = None) -> list[Token]:
        """Live tokens, newest first, optionally only ``user``'s."""
        ids = self.redis.zrevrange(self._index, 0, -1)
        pipe = self.redis.pipeline(transaction=False)
        for token_id in ids:
            pipe.hgetall(self._key(str(token_id)))
        tokens = [Token.from_hash(d) for d in pipe.execute() if d]
        return [t for t in tokens if user is None or t.user == user]

    @_store_errors
    def revoke(self, token_id: str) -> Token:
        """Delete the token and its lookup key together; raises NotFound for an unknown id."""
        key = self._key(token_id)
        data = self.redis.hgetall(key)
        if not data:
            raise NotFound(f"no token with id {token_id!r}")
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(key)
        pipe.delete(self._hash_key(str(data.get("sha256", ""))))
        pipe.zrem(self._index, token_id)
        pipe.execute()
        return Token.from_hash(data)

    @_store_errors
    def session_secret(self) -> str:
        """The generated key for session cookies: made once (SET NX), then the same for every process."""
        key = f"{self.prefix}session-secret"
        self.redis.set(key, secrets.token_urlsafe(48), nx=True)
        value = self.redis.get(key)
        if not value:  # deleted between the two calls: make it again
            return self.session_secret()
        return str(value)
