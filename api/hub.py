"""One subscription to the store's channels per API process, fanned out to that process's open streams.

An event stream (``api/events.py``) does not hold a Redis connection or a subscription of its
own: it opens a :class:`Listener` here, saying what it follows (one notebook, one user's
notebooks, or everything), and blocks on the listener's queue. The hub's one thread reads the
events channel and puts each event in the queues of the listeners that follow it (found by
hostname and by owner, not by asking every listener), reads the control channel (a revoked
token or ended session closes the streams it opened), and renews its process's heartbeat,
which keeps the stream slots it holds counting (``shared/streams.py``), every ``LEASE / 4`` s.

A listener is closed when its stream ends, when its client goes away (:func:`close_when_gone`
notices the socket's end at once instead of at the next write), when its credentials are
revoked, or when the hub loses Redis: then every listener of the process is closed (its client
reconnects and reads the current state again, so nothing is silently missed) and the hub
subscribes again with backoff. The same when redis-py reconnected the subscription by itself (to
the new master after a Redis Sentinel failover): whatever was published in between is missed.

Under gunicorn's gevent worker (``swarm-manager serve``) ``threading`` and ``queue`` are
monkey-patched, so the hub's thread, the streams and the watchers are greenlets; under the
Flask test client they are threads. Either way a stream blocks only on its own queue.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
from gevent import monkey

from shared.errors import StoreUnavailable
from shared.failover import GapAwarePubSub
from shared.store import Event, Store, parse_event
from shared.streams import LEASE, StreamSlots
from shared.tokenstore import REVOKED, control_channel

log = logging.getLogger(__name__)

_CLOSE = object()


class Closed(Exception):
    """The listener was closed; ``str()`` says why (for the stream's last comment)."""


class Listener:
    """What one open stream follows, its queue, and whose stream slot it holds (``who``; "" none)."""

    def __init__(
        self,
        hub: Hub,
        *,
        hostname: str = "",
        user: str = "",
        everything: bool = False,
        who: str = "",
        token_id: str = "",
        session_id: str = "",
    ) -> None:
        self.hub = hub
        self.hostname, self.user, self.everything = hostname, user, everything
        self.who = who
        self.token_id, self.session_id = token_id, session_id
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._on_close: list[Callable[[], None]] = []
        self.reason = ""
        self.closed = False

    def deliver(self, event: Event) -> None:
        self._queue.put(event)

    def get(self, timeout: float) -> Event | None:
        """The next event, waiting at most ``timeout`` seconds; None if none came. Raises Closed."""
        try:
            item = self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        if item is _CLOSE:
            self._queue.put(_CLOSE)  # every later get says so too
            raise Closed(self.reason)
        return item

    def close(self, reason: str = "closed") -> None:
        """Stop following and give the stream's slot back (safe to call more than once, from any thread)."""
        if self.closed:
            return
        self.closed = True
        self.reason = reason
        self.hub.forget(self)
        self._queue.put(_CLOSE)
        for callback in self._on_close:
            callback()

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the listener closes (at once if it is closed already)."""
        if self.closed:
            callback()
        else:
            self._on_close.append(callback)


class Hub:
    def __init__(
        self,
        store: Store,
        slots: StreamSlots,
        *,
        confirm_within: float = 5.0,
        renew_every: float = LEASE / 4,
    ) -> None:
        self.store = store
        self.slots = slots
        self.confirm_within = confirm_within
        self.renew_every = renew_every
        self.control_channel = control_channel(store.prefix)  # shared/tokenstore.py revoked_message
        self._lock = threading.Lock()
        self._by_host: dict[str, set[Listener]] = {}
        self._by_user: dict[str, set[Listener]] = {}
        self._everything: set[Listener] = set()
        self._listeners: set[Listener] = set()
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    # -- streams -------------------------------------------------------------------------
    def open(self, **interest: Any) -> Listener:
        """A listener for ``interest`` (``hostname``, ``user`` or ``everything``, and the slot and
        credentials it holds), registered once the hub's subscription is confirmed: every event
        published after this returns reaches it. Raises StoreUnavailable when Redis is away."""
        self._start()
        if not self._ready.wait(self.confirm_within):
            raise StoreUnavailable(f"the events channel could not be subscribed within {self.confirm_within:g}s")
        listener = Listener(self, **interest)
        with self._lock:
            self._listeners.add(listener)
            if listener.everything:
                self._everything.add(listener)
            elif listener.hostname:
                self._by_host.setdefault(listener.hostname, set()).add(listener)
            else:
                self._by_user.setdefault(listener.user, set()).add(listener)
        return listener

    def forget(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.discard(listener)
            self._everything.discard(listener)
            for index, key in ((self._by_host, listener.hostname), (self._by_user, listener.user)):
                followers = index.get(key)
                if followers is not None:
                    followers.discard(listener)
                    if not followers:
                        del index[key]
        if listener.who:
            try:
                self.slots.release(listener.who)
            except redis.RedisError as exc:  # counted until this process's heartbeat ends
                log.warning("could not give back a stream slot of %s: %s", listener.who, exc)

    @property
    def open_streams(self) -> int:
        with self._lock:
            return len(self._listeners)

    # -- the one subscription --------------------------------------------------------------
    def _start(self) -> None:
        if self._stopped.is_set():
            raise StoreUnavailable("the server is shutting down")
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="events-hub", daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Close every listener and end the hub's thread (an app being shut down, a test's)."""
        self._stopped.set()
        self._close(list(self._snapshot()), "the server is shutting down")
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        backoff = 0.1
        while not self._stopped.is_set():
            # Its reconnections are counted: redis-py reconnects and resubscribes by itself (to the
            # new master after a failover), and what was published meanwhile never arrives.
            pubsub = GapAwarePubSub(self.store.redis.connection_pool)
            try:
                pubsub.subscribe(self.store.events_channel, self.control_channel)
                confirmed, deadline = 0, time.monotonic() + self.confirm_within
                while confirmed < 2:
                    if time.monotonic() > deadline:
                        raise redis.TimeoutError("the subscription was not confirmed")
                    message = pubsub.get_message(timeout=0.5)
                    confirmed += bool(message and message.get("type") == "subscribe")
                self._ready.set()
                backoff = 0.1
                next_renew = time.monotonic() + self.renew_every
                gaps = pubsub.reconnections
                while not self._stopped.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if pubsub.reconnections != gaps:
                        gaps = pubsub.reconnections
                        self._gap()
                    if message is not None and message.get("type") == "message":
                        self._dispatch(str(message["channel"]), str(message["data"]))
                    if time.monotonic() >= next_renew:
                        next_renew = time.monotonic() + self.renew_every
                        self._renew()
            except Exception as exc:
                self._ready.clear()
                if not isinstance(exc, (redis.RedisError, OSError)):
                    log.exception("events hub failed")  # a bug: still, keep serving the streams
                if self._stopped.is_set():
                    break
                if not self.open_streams:
                    return  # nobody to serve: the next stream starts the hub again
                log.warning("events hub lost Redis (%s); closing %d streams, subscribing again", exc, self.open_streams)
                self._close(list(self._snapshot()), "the store is unavailable")
            finally:
                try:
                    pubsub.close()
                except redis.RedisError:
                    pass
            self._stopped.wait(backoff)
            backoff = min(backoff * 2, 2.0)

    def _gap(self) -> None:
        """The subscription was connected again (a failover, a Redis restart): events were missed,
        so every stream ends and its client reads the current state again, as on losing Redis."""
        log.warning(
            "events hub reconnected to Redis; closing %d streams that may have missed events", self.open_streams
        )
        self._close(list(self._snapshot()), "the store reconnected (a failover?): read the current state again")

    def _snapshot(self) -> Iterable[Listener]:
        with self._lock:
            return list(self._listeners)

    def _dispatch(self, channel: str, data: str) -> None:
        if channel == self.control_channel:
            self._control(data)
            return
        event = parse_event(data)
        if event is None:
            return
        with self._lock:
            targets = [*self._by_host.get(event.hostname, ()), *self._everything]
            if event.user:
                targets.extend(self._by_user.get(event.user, ()))
        for listener in targets:
            listener.deliver(event)

    def _control(self, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            return
        if not isinstance(message, dict) or message.get("event") != REVOKED:
            return
        token_id, session_id = str(message.get("token_id") or ""), str(message.get("session_id") or "")
        ended = [
            listener
            for listener in self._snapshot()
            if (token_id and listener.token_id == token_id) or (session_id and listener.session_id == session_id)
        ]
        self._close(ended, "its credentials were revoked")

    def _close(self, listeners: Iterable[Listener], reason: str) -> None:
        for listener in listeners:
            listener.close(reason)

    def _renew(self) -> None:
        try:
            self.slots.renew()
        except redis.RedisError as exc:
            log.warning("could not renew this process's stream slots: %s", exc)


def close_when_gone(sock: socket.socket, listener: Listener) -> None:
    """Close ``listener`` as soon as the client at the other end of ``sock`` hangs up.

    A stream writes only when there is an event or a keep-alive is due (every 15 s), so a client
    that left would otherwise hold its slot until then. A greenlet waits for the socket to become
    readable: a client of an event stream sends nothing after its request, so readable with
    nothing to read means it closed (or reset) the connection. It waits on a duplicate of the
    socket (its own object: gunicorn may read the next request of a kept-alive connection on the
    original once the stream is over), and the listener's closing closes the duplicate, which
    ends the wait. Only under gevent: a blocked thread per stream would cost what the serving
    model exists to avoid, so elsewhere the next keep-alive write notices.
    """
    if not monkey.is_module_patched("socket"):
        return
    watched = socket.socket(fileno=os.dup(sock.fileno()))

    def watch() -> None:
        try:
            if not watched.recv(1, socket.MSG_PEEK):
                listener.close("the client went away")
            # Something was sent (another request on a kept-alive connection): not gone; stop here.
        except OSError:
            listener.close("the client went away")  # a reset; or the duplicate closed below: a no-op
        finally:
            watched.close()

    listener.on_close(watched.close)
    threading.Thread(target=watch, name="stream-watch", daemon=True).start()
