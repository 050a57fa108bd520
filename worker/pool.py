"""Keeping the warm pool full: start members until each pooled image has its configured count."""

from __future__ import annotations

import logging
import time

from shared.errors import QueueUnavailable
from shared.pool import POOL_USER, Pool
from shared.queue import Queue
from shared.settings import Settings
from shared.status import LIVE
from shared.store import Store

log = logging.getLogger(__name__)


class Refiller:
    def __init__(self, store: Store, pool: Pool, queue: Queue, settings: Settings) -> None:
        self.store = store
        self.pool = pool
        self.queue = queue
        self.settings = settings

    def refill(self, image: str) -> list[str]:
        """Start as many new members of ``image``'s pool as are missing; return their hostnames.

        Runs under a short lock per image, so a burst of claims (each queueing a refill) and the
        reconciler's pass never start more members than the pool's size between them.
        """
        size = self.pool.sizes.get(image, 0)
        if not size or not self.store.try_lock(f"refill:{image}", 10):
            return []
        live, gone = set(), set()
        for hostname in self.pool.members(image):
            record = self.store.get(hostname)
            if record is not None and record.status in LIVE and record.user == POOL_USER:
                live.add(hostname)
            else:
                gone.add(hostname)  # claimed meanwhile (not ours to count), failed, culled or purged
        self.pool.forget(image, gone)
        started = []
        for _ in range(size - len(live)):
            record = self.store.create(
                image=image,
                user=POOL_USER,
                domain=self.settings.domain,
                internal={"pool": image, "queue_deadline": str(time.time() + self.settings.start_timeout)},
            )
            self.pool.add_member(image, record.hostname)
            try:
                self.queue.spawn(record.hostname)
            except QueueUnavailable:
                log.warning("pool %s: could not queue member %s; the reconciler retries", image, record.hostname)
                break
            started.append(record.hostname)
        if started:
            log.info("pool %s: starting %d member(s): %s", image, len(started), ", ".join(started))
        return started
