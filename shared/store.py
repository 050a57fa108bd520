"""The one store of notebook records, in Redis.

Layout (every key starts with the instance prefix, e.g. ``swarm-manager:``):

- ``nb:<hostname>``        hash: the record (public fields but ``url`` and empty extras, see
                           shared/record.py, plus ``_``-prefixed internal ones)
- ``idx:all``              sorted set of hostnames scored by creation time (newest-first listing)
- ``idx:user:<user>``      the same, per user
- ``idx:status:<STATUS>``  the same, per status
- ``idx:ended``            hostnames of FAILED/REMOVED records scored by when they ended (retention)
- channel ``events``       every change, published as the record's JSON (a *record event*: the
                           public record, exactly as ``GET /container/<hostname>`` shows it), and
                           progress within a stage from the workers (a *progress event*:
                           ``{"event": "progress", "hostname", "stage", "message", "at"}``, and
                           ``progress`` with the numbers of a pull).
                           A record event never has an ``event`` field; :func:`parse_event` tells them apart.
- ``live:all``, ``live:user:<user>``  sets of hostnames taking a quota slot (PENDING, STARTING,
                           ACTIVE): added by create, removed by the transition that leaves those statuses
- ``rate:<user>``          sorted set: the user's spawns in the last minute (SPAWN_RATE), by time
- ``metrics``              hash: counters for /metrics (``shared/metrics.py``); a spawn's outcome is
                           counted when its record first enters ACTIVE, FAILED or DELETING

Every write is one Lua script (``shared/lua/<name>.lua``, each naming its KEYS and ARGV at the
top), so a record, its indexes and its event change together or not at all, and a status move
checks the current status against the status machine (generated into the script from
shared/status.py) in the same atomic step (no read-modify-write races between the API and any
number of workers). Internal fields are :class:`shared.record.Internal`'s.

Reads: :meth:`Store.get` (one record), :meth:`Store.records` (Notebooks, newest first, filtered)
and :meth:`Store.iter_public` (the same as rows, in chunks: the listing's fast path).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ParamSpec, TypeAlias, TypeVar, cast

import orjson
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from shared import lua
from shared.errors import InvalidTransition, NotFound, StoreUnavailable, Superseded
from shared.failover import KEEPALIVE, sentinel_client
from shared.limits import Quota, quota_error
from shared.metrics import OUTCOME_OF, Metrics
from shared.record import PUBLIC_DEFAULTS, UNSTORED, Internal, Notebook, derived_url, now_rfc3339
from shared.settings import RedisTarget
from shared.status import Status
from shared.validation import HOSTNAME_ALPHABET, HOSTNAME_LENGTH

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

#: The public record's fields in the first API's order (``Notebook.to_json``'s keys).
PUBLIC_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Notebook))
#: What listings read of each hash: the public fields that are stored (``url`` is derived).
_STORED_PUBLIC: tuple[str, ...] = tuple(f for f in PUBLIC_FIELDS if f not in UNSTORED)
assert _STORED_PUBLIC[0] == "hostname", "public_values.lua tells a vanished record by its first field"
# Where ``url`` goes back into a row, and where what it is made of is read from (derived_url).
_URL_AT = PUBLIC_FIELDS.index("url")
_HOSTNAME_AT, _DOMAIN_AT = _STORED_PUBLIC.index("hostname"), _STORED_PUBLIC.index("domainname")

#: Records as plain dicts, as ``Notebook.to_json`` gives them.
Rows: TypeAlias = list[dict[str, str]]

#: The ``event`` field of a progress event on the events channel (record events have none).
PROGRESS_EVENT = "progress"

#: Records per public_values.lua call: Redis runs nothing else meanwhile, so keep each call short (~1 ms).
HMGET_CHUNK = 250


def _key(name: Internal) -> str:
    """An internal field's name in the hash. (``str``: a name :class:`Internal` does not define, as
    tests use, works the same.)"""
    return f"_{name}"


def _as_store_error(exc: redis.RedisError) -> StoreUnavailable | None:
    """The StoreUnavailable that ``exc`` means (the API answers 503), or None for any other error."""
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | redis.BusyLoadingError):
        return StoreUnavailable(f"Redis is unavailable: {exc}")
    # e.g. MISCONF (disk full under persistence), READONLY (a replica) or NOREPLICAS (a master
    # short of its min-replicas-to-write): a store fault, not a bug in the caller.
    if isinstance(exc, redis.ResponseError) and str(exc).startswith(
        ("MISCONF", "READONLY", "LOADING", "MASTERDOWN", "NOREPLICAS")
    ):
        return StoreUnavailable(f"Redis refused the write: {exc}")
    return None


def _store_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn "Redis is away" into StoreUnavailable, which the API maps to 503."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            mapped = _as_store_error(exc)
            if mapped is None:
                raise
            raise mapped from exc

    return wrapper


def _store_errors_iter(fn: Callable[P, Iterator[R]]) -> Callable[P, Iterator[R]]:
    """:func:`_store_errors` for a generator, whose errors come while it is iterated."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Iterator[R]:
        try:
            yield from fn(*args, **kwargs)
        except redis.RedisError as exc:
            mapped = _as_store_error(exc)
            if mapped is None:
                raise
            raise mapped from exc

    return wrapper


#: Redis connections one process keeps at most, and seconds a command waits for one of them.
POOL_SIZE = 100
POOL_WAIT = 5.0


def connect(target: str | RedisTarget, patience: float = 0.0) -> redis.Redis:
    """A Redis client with bounded timeouts and retries, of a server URL or of ``Settings.redis_target``
    (the master the sentinels name, with REDIS_SENTINELS: shared/failover.py).

    ``patience`` is roughly how many seconds a command keeps retrying while Redis is away
    (restarting, failing over): workers wait it out, the API (patience 0) answers 503 at once.
    Every write here is safe to retry: a move to the status a record already has is a no-op.
    Behind sentinels every retry asks them where the master is, so a command that fails on the
    old master goes to the new one once a sentinel has promoted it.
    """
    target = RedisTarget(target) if isinstance(target, str) else target
    retries = max(1, int(patience / 0.5)) if patience > 0 else 1
    # A blocking pool: when every connection is busy (hundreds of the API's greenlets at once), a
    # command waits its turn for up to POOL_WAIT seconds instead of failing "Too many connections".
    options: dict[str, Any] = {
        "max_connections": POOL_SIZE,
        "timeout": POOL_WAIT,
        "decode_responses": True,
        "socket_connect_timeout": 2,
        "socket_timeout": 10,
        "health_check_interval": 15,
        **KEEPALIVE,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), retries),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError],
    }
    if target.sentinels:
        return sentinel_client(target, **options)
    if target.password:
        options["password"] = target.password
    pool = redis.BlockingConnectionPool.from_url(target.url, **options)
    client = redis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True
    return client


def new_hostname() -> str:
    """12 characters of [0-9a-z] from the OS's cryptographic random source."""
    return "".join(secrets.choice(HOSTNAME_ALPHABET) for _ in range(HOSTNAME_LENGTH))


@dataclass(frozen=True)
class Event:
    """One message from the events channel: a record event (``record`` set) or a progress event."""

    hostname: str
    record: Notebook | None = None  # the record as written, for a record event
    stage: str = ""  # for a progress event: what the worker is doing now, e.g. "creating"
    message: str = ""  # for a progress event: the same in words, for people
    user: str = ""  # whose notebook it is: the record's user, or the progress event's ("" unknown)
    detail: dict[str, Any] | None = None  # for a progress event: its numbers (a pull's bytes and layers)


def parse_event(raw: str) -> Event | None:
    """The event a channel message carries; None for anything else (never raises on bad input)."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("hostname"), str):
        return None
    if "event" in data:
        if data["event"] != PROGRESS_EVENT:
            return None
        return Event(
            data["hostname"],
            stage=str(data.get("stage", "")),
            message=str(data.get("message", "")),
            user=str(data.get("user", "")),
            detail=data["progress"] if isinstance(data.get("progress"), dict) else None,
        )
    try:
        record = Notebook.from_hash({k: str(v) for k, v in data.items()})
        return Event(data["hostname"], record=record, user=record.user)
    except (TypeError, ValueError):
        return None  # not a record this version understands


class Subscription:
    """A subscription to the store's events channel, already confirmed by Redis.

    Every event published after :meth:`Store.subscribe` returned is delivered, in publishing
    order. Holds one Redis connection until :meth:`close` (safe to call more than once).
    """

    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub
        self.closed = False

    @_store_errors
    def get(self, timeout: float) -> Event | None:
        """The next event, waiting at most ``timeout`` seconds; None if none came."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            remaining = deadline - time.monotonic()
            # None also for messages that are not data (a health-check reply): wait on then.
            message = self._pubsub.get_message(timeout=max(0.0, remaining))
            if message is not None and message.get("type") == "message":
                event = parse_event(message["data"])
                if event is not None:
                    return event
            elif remaining <= 0:
                return None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(redis.RedisError):  # the connection is dropped either way
            self._pubsub.close()


class Store:
    """Notebook records in Redis. Takes its client; builds every key from one prefix."""

    def __init__(self, client: redis.Redis, prefix: str = "swarm-manager:") -> None:
        self.redis = client
        self.prefix = prefix
        self._create = lua.register(client, "create")
        self._transition = lua.register(client, "transition")
        self._claim_spawn = lua.register(client, "claim_spawn")
        self._end_attempt = lua.register(client, "end_attempt")
        self._keep_attempt = lua.register(client, "keep_attempt")
        self._purge = lua.register(client, "purge")
        self._sync_live = lua.register(client, "sync_live")
        self._public_values = lua.register(client, "public_values")
        self._zrevrange_joined = lua.register(client, "zrevrange_joined")
        self.metrics = Metrics(client, prefix)
        #: idx:status:<s> for every status, in Status's order: how the scripts that move a record
        #: between them get those keys (shared/lua/transition.lua).
        self._status_indexes = [self._idx("status", s.value) for s in Status]

    # -- keys ---------------------------------------------------------------
    def key_for(self, hostname: str) -> str:
        return f"{self.prefix}nb:{hostname}"

    @property
    def events_channel(self) -> str:
        return f"{self.prefix}events"

    def _idx(self, kind: str = "all", value: str = "") -> str:
        return f"{self.prefix}idx:{kind}" + (f":{value}" if value else "")

    def quota_keys(self, user: str) -> list[str]:
        """live:all, live:user:<user>, rate:<user>: the sets and log the quota check reads (shared/limits.py)."""
        return [f"{self.prefix}live:all", f"{self.prefix}live:user:{user}", f"{self.prefix}rate:{user}"]

    # -- events -------------------------------------------------------------
    def progress(
        self, hostname: str, stage: str, message: str, user: str = "", detail: Mapping[str, Any] | None = None
    ) -> bool:
        """Publish a progress event for ``hostname`` (owned by ``user``) on the events channel;
        nothing is stored. The owner lets a listener route it without reading the record.
        ``detail``: numbers a client can draw (a pull's bytes and layers), as the event's ``progress``.

        Best effort: progress is for people watching, so a Redis failure is logged and
        reported as False, never raised into the step that reports it.
        """
        payload = json.dumps(
            {
                "event": PROGRESS_EVENT,
                "hostname": hostname,
                "user": user,
                "stage": stage,
                "message": message,
                "at": now_rfc3339(),
                **({"progress": dict(detail)} if detail else {}),
            }
        )
        try:
            self.redis.publish(self.events_channel, payload)
        except redis.RedisError as exc:
            log.warning("%s: could not publish progress %r: %s", hostname, stage, exc)
            return False
        return True

    @_store_errors
    def subscribe(self, confirm_within: float = 5.0) -> Subscription:
        """Subscribe to the events channel and wait until Redis confirms it.

        Read a record only after this returns, and no change made after that read is missed.
        Raises StoreUnavailable when Redis is away or does not confirm in time.
        """
        pubsub = self.redis.pubsub()  # type: ignore[no-untyped-call]
        try:
            pubsub.subscribe(self.events_channel)
            deadline = time.monotonic() + confirm_within
            while (remaining := deadline - time.monotonic()) > 0:
                message = pubsub.get_message(timeout=remaining)
                if message is not None and message.get("type") == "subscribe":
                    return Subscription(pubsub)
        except BaseException:
            pubsub.close()
            raise
        pubsub.close()
        raise StoreUnavailable(f"Redis did not confirm the subscription within {confirm_within:g}s")

    # -- reads --------------------------------------------------------------
    @_store_errors
    def ping(self) -> bool:
        return bool(self.redis.ping())

    @_store_errors
    def get(self, hostname: str) -> Notebook | None:
        data = cast(dict[str, str], self.redis.hgetall(self.key_for(hostname)))
        return Notebook.from_hash(data) if data else None

    @_store_errors
    def get_with_internal(self, hostname: str) -> tuple[Notebook, dict[str, str]] | None:
        """The record and its internal fields (names without the ``_``: look them up by
        :class:`Internal`), from one HGETALL.

        For a spawn, which needs both: the internal fields come with the record instead of
        one more round trip each (``internal``).
        """
        data = cast(dict[str, str], self.redis.hgetall(self.key_for(hostname)))
        if not data:
            return None
        return Notebook.from_hash(data), {k[1:]: v for k, v in data.items() if k.startswith("_")}

    def require(self, hostname: str) -> Notebook:
        record = self.get(hostname)
        if record is None:
            raise NotFound(f"no notebook with hostname {hostname!r}")
        return record

    @_store_errors
    def status_and_attempt(self, hostname: str) -> tuple[Status | None, str]:
        """The record's status (None: gone) and its current spawn attempt ("" when none), in one read."""
        status, attempt = self.redis.hmget(self.key_for(hostname), ["status", Internal.ATTEMPT.key])
        return (Status(status) if status else None), str(attempt or "")

    @_store_errors
    def internal(self, hostname: str, name: Internal) -> str | None:
        """An internal (``_``-prefixed) field the public record does not show."""
        value = self.redis.hget(self.key_for(hostname), _key(name))
        return None if value is None else str(value)

    @_store_errors
    def drop_internal(self, hostname: str, *names: Internal) -> None:
        """Delete internal fields no longer needed, e.g. a spawn's deadlines once it is ACTIVE.

        A record lives for days after its spawn; two unused fields were ~128 of its ~710 bytes
        (the hash then fits the allocator's next smaller size class).
        """
        self.redis.hdel(self.key_for(hostname), *(_key(name) for name in names))

    @_store_errors
    def internals(self, hostnames: Iterable[str], name: Internal) -> dict[str, str]:
        """One internal field of many records, read like a listing; records without it (or with it
        empty) are left out."""
        found = self._chunks_of(list(hostnames), ("hostname", _key(name)))
        return {h: v for chunk in found for h, v in chunk if v}

    @_store_errors
    def live_count(self, user: str | None = None) -> int:
        """Notebooks taking a quota slot (PENDING, STARTING, ACTIVE), in total or of ``user``."""
        key = self.quota_keys(user)[1] if user is not None else self.quota_keys("")[0]
        return int(self.redis.scard(key))

    @_store_errors_iter
    def records(
        self,
        *,
        user: str | None = None,
        status: Status | None = None,
        offset: int = 0,
        limit: int | None = None,
    ) -> Iterator[Notebook]:
        """Records newest first, optionally filtered, one by one as :meth:`iter_public` reads them."""
        for chunk in self.iter_public(user=user, status=status, offset=offset, limit=limit):
            for row in chunk:
                yield Notebook.from_hash(row)

    @_store_errors_iter
    def iter_public(
        self,
        *,
        user: str | None = None,
        status: Status | None = None,
        offset: int = 0,
        limit: int | None = None,
        internal: Sequence[Internal] = (),
    ) -> Iterator[Rows]:
        """The public records newest first, optionally filtered, as rows (``Notebook.to_json``'s
        dicts, without building a Notebook per record), in chunks, each as soon as Redis has it
        (:meth:`_chunks_of`).

        Where the per-record cost is all there is: the public fields only, read by a script in
        chunks (shared/lua/public_values.lua), as plain dicts in the first API's field order. ``internal``
        names internal fields to read in the same pass; each row then also has them under
        ``_<name>`` ("" when missing), for the caller to pop. A caller with work to do per row
        (``GET /containers`` shapes and encodes them) does it while Redis reads the next chunk.
        """
        if limit is not None and limit <= 0:
            return
        extra = tuple(_key(name) for name in internal)
        if user:
            index, post_filter = self._idx("user", user), status
        elif status:
            index, post_filter = self._idx("status", status.value), None
        else:
            index, post_filter = self._idx(), None
        if post_filter is None:
            stop = -1 if limit is None else offset + limit - 1
            names = self._index_range(index, offset, stop)
            for chunk in self._chunks_of(names, _STORED_PUBLIC + extra):
                yield self._rows(extra, chunk)
            return
        # With both filters the per-user index is read and the status checked here: a user's
        # set is small, and this keeps one index per dimension.
        records = [r for r in self._fetch(self._index_range(index, 0, -1), extra) if r["status"] == post_filter.value]
        yield records[offset:] if limit is None else records[offset : offset + limit]

    def _index_range(self, index: str, start: int, stop: int) -> list[str]:
        """ZREVRANGE as one JSON string: thousands of names decode in C, not one by one in Python."""
        joined = str(self._zrevrange_joined(keys=[index], args=[start, stop]))
        return joined.split(",") if joined else []

    def _chunks_of(self, names: Sequence[str], wanted: Sequence[str]) -> Iterator[list[list[str]]]:
        """``wanted`` of each record in ``names`` (shared/lua/public_values.lua) in chunks of
        :data:`HMGET_CHUNK` records, each as soon as Redis has it.

        Every chunk's script call is sent at once on one connection and the replies are read
        one by one, so the caller decodes chunk i while Redis still runs chunk i+1: for a
        listing of 10,000 records Redis's own work (~55 ms) is most of the time, and the
        caller's (~40 ms) is hidden behind it instead of added after it (a pipeline returns
        only once every reply is in).
        """
        if not names:
            return
        script = self._public_values
        head: list[Any] = [self.key_for(""), len(wanted), *wanted]
        if len(names) <= HMGET_CHUNK:  # one call, one round trip
            yield orjson.loads(script(args=[*head, ",".join(names)])) or []  # cjson writes [] as {}
            return
        calls = [
            ("EVALSHA", script.sha, 0, *head, ",".join(names[i : i + HMGET_CHUNK]))
            for i in range(0, len(names), HMGET_CHUNK)
        ]
        pool = self.redis.connection_pool
        for attempt in (1, 2):
            conn: Any = pool.get_connection()  # (redis-py's Connection methods are untyped)
            yielded = False
            try:
                conn.send_packed_command(conn.pack_commands(calls))
                for _ in calls:
                    reply = conn.read_response()
                    yielded = True
                    yield orjson.loads(reply) or []
                return
            except redis.exceptions.NoScriptError:
                conn.disconnect()  # the other replies are still unread: never reuse it as is
                if yielded or attempt == 2:
                    raise
                # Redis restarted (or flushed its scripts) since the script was last loaded.
                sha = self.redis.script_load(script.script)
                calls = [(name, sha, *rest) for name, _, *rest in calls]
            except BaseException:
                conn.disconnect()
                raise
            finally:
                pool.release(conn)

    @_store_errors
    def row(self, hostname: str, internal: Sequence[Internal] = ()) -> dict[str, str] | None:
        """One record as a row of :meth:`iter_public` (one HMGET of just those fields); None if missing.

        For ``GET /container/<h>``: a fifth of the request's own time less than HGETALL (twice the
        values to parse, internal ones included), ``Notebook.from_hash`` and ``to_json``.
        """
        extra = tuple(_key(name) for name in internal)
        wanted = _STORED_PUBLIC + extra
        values = cast(list[str | None], self.redis.hmget(self.key_for(hostname), wanted))
        if values[_HOSTNAME_AT] is None:
            return None
        filled = [PUBLIC_DEFAULTS.get(k, "") if v is None else v for k, v in zip(wanted, values, strict=True)]
        return self._rows(extra, [filled])[0]

    def _fetch(self, names: Sequence[str], extra: tuple[str, ...]) -> Rows:
        out: Rows = []
        for chunk in self._chunks_of(names, _STORED_PUBLIC + extra):
            out.extend(self._rows(extra, chunk))
        return out

    def _rows(self, extra: tuple[str, ...], found: Iterable[list[Any]]) -> Rows:
        """Public rows from the values of :data:`_STORED_PUBLIC` + ``extra``, in that order, with
        every field there (shared/lua/public_values.lua): ``url`` goes back where the public record has it."""
        names = PUBLIC_FIELDS + extra
        out: Rows = []
        for values in found:
            values.insert(_URL_AT, derived_url(values[_HOSTNAME_AT], values[_DOMAIN_AT]))
            out.append(dict(zip(names, values, strict=True)))
        return out

    @_store_errors
    def count(self) -> int:
        return int(self.redis.zcard(self._idx()))

    # -- writes -------------------------------------------------------------
    @_store_errors
    def sync_live(self, hostnames: Iterable[str]) -> tuple[int, int]:
        """Make the quota sets agree with the records (the reconciler, once a pass); (removed, added).

        Adds ``hostnames`` whose record takes a slot (records written before the sets existed)
        and drops members whose record does not (or is gone); every check is in one script.
        """
        removed, added = self._sync_live(
            keys=[self.quota_keys("")[0]], args=[self.key_for(""), self.quota_keys("")[1], *hostnames]
        )
        return int(removed), int(added)

    @_store_errors
    def purge_ended(self, older_than: float, batch: int = 1000) -> list[str]:
        """Delete records that ended (FAILED/REMOVED) before ``older_than`` (epoch), with their index entries."""
        names = cast(list[str], self.redis.zrangebyscore(self._idx("ended"), "-inf", older_than, start=0, num=batch))
        if not names:
            return []
        pipe = self.redis.pipeline(transaction=False)  # one round trip for the batch, not one each
        for hostname in names:
            keys = [self.key_for(hostname), self._idx(), self._idx("ended"), *self._status_indexes]
            self._purge(keys=keys, args=[self._idx("user") + ":", hostname], client=pipe)
        return [h for h, deleted in zip(names, pipe.execute(), strict=True) if deleted]

    @_store_errors
    def create(
        self,
        *,
        image: str,
        user: str,
        domain: str,
        expires_at: str = "",
        profile: str = "",
        internal: Mapping[Internal, str] | None = None,
        quota: Quota | None = None,
    ) -> Notebook:
        """Write a new PENDING record under a fresh random hostname (unique, checked atomically).

        With ``quota``, the limits are checked in the same atomic step: raises QuotaExceeded
        (and writes nothing) when the spawn would go over one. The record takes a slot in the
        live counts either way, so limits set later see it.
        """
        quota = quota or Quota()
        for _ in range(10):
            hostname = new_hostname()
            now = now_rfc3339()
            record = Notebook(
                hostname=hostname,
                domainname=domain,
                image=image,
                url=derived_url(hostname, domain),
                status=Status.PENDING,
                start_time=now,
                user=user,
                updated_at=now,
                expires_at=expires_at,
                profile=profile,
            )
            mapping = record.to_hash()
            mapping.update({_key(k): v for k, v in (internal or {}).items()})
            epoch = time.time()
            argv: list[Any] = [epoch, hostname, self.events_channel, *quota.args(), repr(epoch)]
            for k, v in mapping.items():
                argv.extend((k, v))
            keys = [
                self.key_for(hostname),
                self._idx(),
                self._idx("user", user),
                self._idx("status", Status.PENDING.value),
                *self.quota_keys(user),
            ]
            result = self._create(keys=keys, args=argv)
            if isinstance(result, list):
                raise quota_error(result, user, quota, epoch)
            if result:
                return record
        # 36^12 names: ten collisions in a row means something is wrong with the random source.
        raise RuntimeError("could not find a free hostname")

    @_store_errors
    def claim_spawn(self, hostname: str) -> tuple[Notebook, dict[str, str]] | Status | None:
        """Become the record's current spawn attempt (shared/lua/claim_spawn.lua): the record and its internal
        fields (``attempt`` among them: pass it to every later move), in one round trip; the status
        when the record is past spawning; None when it does not exist."""
        result = self._claim_spawn(keys=[self.key_for(hostname)])
        if result[0] == 0:
            return None
        if result[0] == -1:
            return Status(result[1])
        data = dict(zip(result[1][::2], result[1][1::2], strict=True))
        return Notebook.from_hash(data), {k[1:]: v for k, v in data.items() if k.startswith("_")}

    @_store_errors
    def end_attempt(self, hostname: str, attempt: int, *names: Internal) -> bool:
        """Delete internal fields ``names`` while ``attempt`` is still the record's; False if not."""
        return bool(self._end_attempt(keys=[self.key_for(hostname)], args=[attempt, *(_key(n) for n in names)]))

    @_store_errors
    def keep_attempt(self, hostname: str, attempt: int, internal: Mapping[Internal, str]) -> bool:
        """Set ``internal`` fields while ``attempt`` is still the record's; False if not (nothing set)."""
        args: list[str | int] = [attempt]
        for name, value in internal.items():
            args += [_key(name), value]
        return bool(self._keep_attempt(keys=[self.key_for(hostname)], args=args))

    @_store_errors
    def transition(
        self,
        hostname: str,
        new: Status | None,
        *,
        allowed: Iterable[Status] | None = None,
        internal: Mapping[Internal, str] | None = None,
        attempt: int | None = None,
        fence: bool = False,
        **fields: str,
    ) -> Notebook:
        """Atomically move ``hostname`` to ``new`` and set ``fields``, only from an allowed status.

        ``allowed`` defaults to every status the machine allows ``new`` to be entered from, and
        is narrowed to those. ``new=None`` keeps the status and only writes the fields, still
        guarded by ``allowed`` (e.g. "record the container id only while STARTING").
        Moving a record to the status it already has writes nothing and returns it, so a
        write retried after a lost reply, or a repeated task, is harmless.
        Raises NotFound if the record is missing and InvalidTransition if its current status
        is not allowed; in both cases nothing is written.

        ``attempt``: the move is a spawn attempt's (:meth:`claim_spawn`), made only while that
        attempt is still the record's; else Superseded (an InvalidTransition), nothing written.
        ``fence``: the move also ends every attempt in flight (the reconciler's moves: a spawn
        paused somewhere can then never undo them, nor remove the notebook's container).
        """
        # The script checks the move against the status machine (TRANSITIONS, generated into it);
        # ``allowed`` only narrows it. No new status and no ``allowed``: allowed from nowhere.
        narrowed = [s.value for s in (allowed or ())] if allowed is not None or new is None else None
        argv: list[Any] = [
            self.quota_keys("")[1],  # live:user: (the script adds the record's user)
            new.value if new is not None else "",
            now_rfc3339(),
            self.events_channel,
            repr(time.time()),
            "" if attempt is None else str(attempt),
            "1" if fence else "",
            -1 if narrowed is None else len(narrowed),
            *(narrowed or ()),
        ]
        for k, v in fields.items():
            argv.extend((k, v))
        for k, v in (internal or {}).items():
            argv.extend((_key(k), v))
        keys = [self.key_for(hostname), self._idx(), self._idx("ended"), self.quota_keys("")[0], *self._status_indexes]
        result = self._transition(keys=keys, args=argv)
        if result[0] == 0:
            raise NotFound(f"no notebook with hostname {hostname!r}")
        if result[0] == -1:
            raise InvalidTransition(hostname, result[1], new.value if new is not None else "(update)")
        if result[0] == -3:
            raise Superseded(hostname, attempt, result[1])
        flat = result[1]
        record = Notebook.from_hash(dict(zip(flat[::2], flat[1::2], strict=True)))
        if new in OUTCOME_OF:
            # Also on a repeated move: the first count may have been lost; it counts once anyway.
            self.metrics.spawn_settled(record)
        return record
