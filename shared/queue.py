"""The task queue contract both sides share: task names, Celery configuration, enqueueing.

The API sends tasks by name (``send_task``) with a Celery app built here, so it never
imports the worker package or the Docker SDK.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import redis
from celery import Celery
from kombu.exceptions import OperationalError
from kombu.transport import redis as kombu_redis

from shared.errors import QueueUnavailable
from shared.failover import KEEPALIVE, sentinel_options
from shared.settings import RedisTarget, Settings
from shared.tasknames import KILL_TASK, QUEUE_NAME, REFILL_TASK, SPAWN_TASK

log = logging.getLogger(__name__)

#: Error replies by which Redis refuses a write for a while (not a bug in the command).
REFUSALS = ("NOREPLICAS", "READONLY", "MISCONF", "LOADING", "MASTERDOWN", "OOM")


class RedisChannel(kombu_redis.Channel):
    """kombu's Redis channel, minus "restore unacknowledged messages when the channel closes".

    Redis keeps every unacknowledged message in its own hash and hands it out again after
    the visibility timeout, which is what makes a task survive a worker killed mid-task.
    Restoring on close is extra, and harmful here: when the connection to Redis drops
    (a Redis restart) kombu closes the channel, requeues the tasks that are still running
    (so they run twice), and in kombu 5.7 then crashes the worker with
    "'NoneType' object has no attribute 'hostname'" because the transport's client is
    already gone. Without it, a Redis restart is a pause the worker rides out.
    """

    do_restore = False

    # Acknowledging a task that was running when the connection dropped: the channel it came
    # on is closed and has no connection, and kombu 5.7 crashes the worker trying to use it.
    # Such a message stays in Redis's unacked hash and comes back after the visibility
    # timeout; tasks are idempotent, so that second delivery finds its work done.
    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        if self._stale():
            log.info("not acknowledging message %s on a channel closed by a lost connection", delivery_tag)
            return
        super().basic_ack(delivery_tag, multiple)  # type: ignore[no-untyped-call]

    def basic_reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if self._stale():
            log.info("not rejecting message %s on a channel closed by a lost connection", delivery_tag)
            return
        super().basic_reject(delivery_tag, requeue)  # type: ignore[no-untyped-call]

    def _stale(self) -> bool:
        return bool(self.closed or self.connection is None or self.connection.client is None)

    # kombu makes a new redis-py client object for every command it sends outside its polling
    # loop (each task publish, each task event), and redis-py builds its response callbacks for
    # every client: a large share of the cost of sending a task (docs/benchmarks.md).
    # A client is only a handle on the channel's connection pool and is thread-safe, so one is
    # kept per channel, and made again if the channel replaces its pool (after a disconnect).
    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        client = self.__dict__.get("_sync_client")
        if client is None or client.connection_pool is not self.pool:
            client = self.__dict__["_sync_client"] = super()._create_client()  # type: ignore[no-untyped-call]
        return client


class SentinelChannel(RedisChannel, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel (its pool asks the sentinels where the master is) with every one
    of :class:`RedisChannel`'s changes, which come first in the method order: after a failover the
    worker's connection drops as it does on a Redis restart, and must be ridden out the same way."""


class RedisTransport(kombu_redis.Transport):
    Channel = RedisChannel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


def broker(target: RedisTarget) -> tuple[str, str, dict[str, Any]]:
    """The broker URL, transport and transport options for ``target``: Celery's own forms.

    One server: its ``redis://`` URL. Sentinels: ``sentinel://host:port/db;sentinel://...`` with
    the master's name (``master_name``) and how to reach the sentinels (``sentinel_kwargs``) as
    transport options, as Celery documents it; the URL's user and password are the master's.
    """
    url = urlsplit(target.url)
    password = target.password or unquote(url.password or "")
    userinfo = quote(unquote(url.username or ""), safe="") + (":" + quote(password, safe="") if password else "")
    if not target.sentinels:
        if target.password:
            host = url.netloc.rpartition("@")[2]
            return urlunsplit(url._replace(netloc=f"{userinfo}@{host}")), f"{__name__}:RedisTransport", {}
        return target.url, f"{__name__}:RedisTransport", {}
    db = url.path.strip("/") or "0"
    auth = f"{userinfo}@" if userinfo else ""
    urls = [f"sentinel://{auth}{f'[{h}]' if ':' in h else h}:{port}/{db}" for h, port in target.sentinels]
    options = {"master_name": target.master, "sentinel_kwargs": sentinel_options(target)}
    return ";".join(urls), f"{__name__}:SentinelTransport", options


#: How the queue's connections notice a Redis that vanished without closing them (a lost host, or
#: a master killed with its network: no reset ever arrives). Without these a worker's consumer
#: waits on the dead connection until kombu's own check (``brpop_timeout + 2 x
#: health_check_interval``, 51 s by default) and a publish can hang for good; with them
#: the consumer drops it within ~11 s (its BRPOP's reply overdue by 1 + 5 s, checked every 5 s),
#: a command or connect gives up within seconds, and the TCP options (KEEPALIVE) drop a silent
#: connection, so a worker reaches the master Sentinel promoted meanwhile. The consumer's BRPOP
#: waits 1 s on the server, well inside socket_timeout.
LOST_PEER: dict[str, Any] = {
    "socket_timeout": 5,
    "socket_connect_timeout": 2,
    "health_check_interval": 5,
    **KEEPALIVE,
}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Configuration for the worker app and for the API's sending app alike."""
    # The longest task is a spawn: up to START_TIMEOUT of engine retries, then up to
    # START_TIMEOUT waiting for the notebook to answer. An unacknowledged message is handed
    # to another worker only after the visibility timeout, so it must exceed that, or a
    # slow but healthy spawn would be delivered twice (harmless, spawns are idempotent,
    # but wasteful). A worker that died mid-task is covered sooner by the reconciler.
    visibility = int(max(300, 3 * settings.start_timeout + 60))
    url, transport, options = broker(settings.redis_target)
    return {
        "broker_url": url,
        "broker_transport": transport,
        "broker_transport_options": {
            "visibility_timeout": visibility,
            "global_keyprefix": settings.key_prefix,
            **LOST_PEER,
            **options,
        },
        "broker_connection_retry_on_startup": True,
        "task_ignore_result": True,  # the record in Redis is the result
        "task_acks_late": True,  # a task lost with its worker is delivered again
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_serializer": "json",
        "accept_content": ["json"],
        # Flower shows live task history from these events.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_default_queue": QUEUE_NAME,
        # A publish that cannot reach Redis fails in about a second instead of hanging a request.
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
        "worker_hijack_root_logger": False,
        "timezone": "UTC",
    }


def make_celery(settings: Settings, name: str = "swarm_manager") -> Celery:
    app = Celery(name)
    app.conf.update(celery_config(settings))
    return app


class Queue:
    """Enqueues spawn and kill tasks; the record's hostname is the only argument."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def _send(self, name: str, arg: str, task_id: str) -> None:
        try:
            self.app.send_task(name, args=[arg], task_id=task_id)
        except (OperationalError, OSError) as exc:
            raise QueueUnavailable(f"the task queue is unavailable: {exc}") from exc
        except redis.ResponseError as exc:
            # Redis refusing writes (a master short of its min-replicas-to-write, out of memory, a
            # failing disk) reaches here as it is: kombu re-raises only connection errors as its own.
            if not str(exc).startswith(REFUSALS):
                raise
            raise QueueUnavailable(f"the task queue refused the task: {exc}") from exc

    def spawn(self, hostname: str) -> None:
        self._send(SPAWN_TASK, hostname, f"spawn-{hostname}")

    def refill(self, image: str) -> None:
        self._send(REFILL_TASK, image, f"refill-{uuid.uuid4().hex[:12]}")

    def kill(self, hostname: str) -> None:
        # Unique ids: a kill can be sent again (by the reconciler) and each send is its own task.
        self._send(KILL_TASK, hostname, f"kill-{hostname}-{uuid.uuid4().hex[:8]}")
