"""API tokens and /manage sessions, in Redis: the admin's token (a setting), per-user tokens
(created and revoked by the admin) and the sessions a sign-in on /manage starts.

A user token is 32 random bytes (:func:`new_secret`), shown once when it is created.
A session's cookie holds only another 32 random bytes, the session's secret. Redis holds only the
SHA-256 of each (a session's digest is its id), so a copy of the database gives nobody a usable
token or session. Layout (under the instance's key prefix, beside the notebook records):

- ``token:<id>``           hash: ``id``, ``user``, ``created`` (RFC 3339), ``sha256`` of the secret
- ``tokenhash:<sha256>``   the id of the token with that digest (the lookup by secret)
- ``idx:tokens``           sorted set of ids scored by creation time (newest-first listing)
- ``session:<id>``         hash: who signed in (``role``, ``user``, ``token_id``; ``admin_key`` for
                           the admin), the session's ``csrf`` token, ``created`` and ``expires``;
                           the key expires with the session (:data:`SESSION_LIFETIME`)
- ``token-sessions:<id>``  set: the ids of the sessions signed in with that user token
- ``session-secret``       the generated key that keys the sign-in form's CSRF token and the admin
                           sessions' ``admin_key`` when no SECRET_KEY is set (shared by every API process)
- channel ``control``      :func:`revoked_message` whenever credentials end, for whatever they
                           opened (the event streams, ``api/hub.py``)

A revoked token is deleted with its lookup key, its sessions and their index in one script, which
also publishes the control message: the next request with any of them fails. A session is made only
while its token is live (the same script checks), so none outlives a revocation that raced it.
The admin token is compared in constant time (digests of both sides, so not even the length
leaks); a user token or session is found by its digest, which an attacker cannot steer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from shared import lua
from shared.errors import NotFound
from shared.record import now_rfc3339, rfc3339
from shared.store import _store_errors

ADMIN = "admin"
USER = "user"

#: Longest bearer token or session cookie looked up at all (both are 43 characters).
MAX_TOKEN_LENGTH = 512
#: Seconds a /manage session lives from its sign-in (12 hours), however much it is used.
SESSION_LIFETIME = 12 * 3600
#: The ``event`` of the control message that ends what some credentials opened.
REVOKED = "revoked"


def new_secret() -> str:
    """A user token's secret: 32 random bytes, URL-safe base64, never starting with "-", which a
    command line would read as an option (``swarm-manager list --token -x...`` fails in argparse,
    and so do other tools' ``--token X``). Drawing again costs 1/64 of the values: ~0.02 bits."""
    while (secret := secrets.token_urlsafe(32)).startswith("-"):
        pass
    return secret


def token_key(prefix: str, token_id: str) -> str:
    """The hash of a user token (sessions check it is there when they start)."""
    return f"{prefix}token:{token_id}"


def control_channel(prefix: str) -> str:
    """The channel :func:`revoked_message` is published on (``<prefix>control``)."""
    return f"{prefix}control"


def revoked_message(token_id: str = "", session_id: str = "") -> str:
    """The control message for ended credentials: ``{"event": "revoked", "token_id", "session_id"}``.

    ``token_id``: a revoked user token ("" if none): whatever it opened ends, through a Bearer
    header or any session signed in with it. ``session_id``: one ended session (signed out, or
    the admin's after ADMIN_TOKEN changed; "" if none). They are the ids a request's caller
    carries (``api/auth.py`` ``Caller.token_id`` / ``Caller.session_id``).
    """
    return json.dumps({"event": REVOKED, "token_id": token_id, "session_id": session_id})


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
    """Per-user API tokens in Redis. Takes the store's client and key prefix; ``sessions`` are the
    /manage sessions under the same prefix (a revocation ends those signed in with the token)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.prefix = prefix
        self.sessions = Sessions(client, prefix)
        self._revoke = lua.register(client, "token_revoke")

    def _key(self, token_id: str) -> str:
        return token_key(self.prefix, token_id)

    def _hash_key(self, sha: str) -> str:
        return f"{self.prefix}tokenhash:{sha}"

    @property
    def _index(self) -> str:
        return f"{self.prefix}idx:tokens"

    @_store_errors
    def create(self, user: str) -> tuple[Token, str]:
        """A new token for ``user`` (already validated): (the token, its secret, shown only now)."""
        secret = new_secret()
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
        """Delete the token, its lookup key and every session signed in with it, and publish
        :func:`revoked_message` for it, in one step; raises NotFound for an unknown id."""
        key = self._key(token_id)
        data = self.redis.hgetall(key)
        if not data:
            raise NotFound(f"no token with id {token_id!r}")
        revoked = self._revoke(
            keys=[key, self._index, self.sessions.index_key(token_id)],
            args=[
                token_id,
                self._hash_key(""),
                self.sessions.key(""),
                control_channel(self.prefix),
                revoked_message(token_id=token_id),
            ],
        )
        if not revoked:  # revoked by someone else in between
            raise NotFound(f"no token with id {token_id!r}")
        return Token.from_hash(data)


@dataclass(frozen=True)
class Session:
    """A /manage session as Redis keeps it: never the cookie's secret, only its digest (``id``)."""

    id: str  # SHA-256 of the cookie's secret: names the session in Redis and in control messages
    role: str  # ADMIN or USER
    user: str  # "" for the admin
    token_id: str  # the user token signed in with; "" for the admin
    admin_key: str  # the admin's: which ADMIN_TOKEN signed in (a keyed digest, api/auth.py); "" else
    csrf: str  # the token every request through the session must carry
    created: str
    expires: str

    @classmethod
    def from_hash(cls, data: dict[Any, Any]) -> Session:
        return cls(**{name: str(data.get(name, "")) for name in cls.__dataclass_fields__})


class Sessions:
    """/manage sessions in Redis (keys under ``prefix``), each living ``lifetime`` seconds from its sign-in."""

    def __init__(self, client: redis.Redis, prefix: str, lifetime: int = SESSION_LIFETIME) -> None:
        self.redis = client
        self.prefix = prefix
        self.lifetime = lifetime
        self._create = lua.register(client, "session_create")

    def key(self, session_id: str) -> str:
        return f"{self.prefix}session:{session_id}"

    def index_key(self, token_id: str) -> str:
        return f"{self.prefix}token-sessions:{token_id}"

    @_store_errors
    def create(
        self, *, role: str, user: str = "", token_id: str = "", admin_key: str = ""
    ) -> tuple[Session, str] | None:
        """A new session: (the session, the secret for its cookie, given out only now), with a new
        CSRF token; None when ``token_id`` names a token that is gone (revoked meanwhile)."""
        secret = secrets.token_urlsafe(32)
        now = time.time()
        session = Session(
            id=digest(secret),
            role=role,
            user=user,
            token_id=token_id,
            admin_key=admin_key,
            csrf=secrets.token_urlsafe(32),
            created=rfc3339(now),
            expires=rfc3339(now + self.lifetime),
        )
        keys = [self.key(session.id)]
        if token_id:
            keys += [token_key(self.prefix, token_id), self.index_key(token_id)]
        fields = [item for pair in asdict(session).items() for item in pair]
        if not self._create(keys=keys, args=[self.lifetime, session.id, *fields]):
            return None
        return session, secret

    @_store_errors
    def get(self, secret: str) -> Session | None:
        """The live session whose cookie holds ``secret``; None for an unknown, ended or expired one."""
        if not secret or len(secret) > MAX_TOKEN_LENGTH:
            return None
        data = self.redis.hgetall(self.key(digest(secret)))
        return Session.from_hash(data) if data else None

    @_store_errors
    def end(self, session: Session) -> None:
        """Delete the session and publish :func:`revoked_message` for it, in one transaction; ending
        an ended session publishes again, harmlessly. The message names the session only: its token
        stays live, and so do its other sessions and its Bearer streams."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.key(session.id))
        if session.token_id:
            pipe.srem(self.index_key(session.token_id), session.id)
        pipe.publish(control_channel(self.prefix), revoked_message(session_id=session.id))
        pipe.execute()

    @_store_errors
    def generated_key(self) -> str:
        """The generated signing key: made once (SET NX), then the same for every process."""
        key = f"{self.prefix}session-secret"
        self.redis.set(key, secrets.token_urlsafe(48), nx=True)
        value = self.redis.get(key)
        if not value:  # deleted between the two calls: make it again
            return self.generated_key()
        return str(value)
