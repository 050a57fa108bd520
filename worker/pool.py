"""Keeping the warm pool full: start members until each pooled image has its configured count."""

from __future__ import annotations

import logging
import time

from shared.errors import QueueUnavailable, QuotaExceeded
from shared.limits import Quota
from shared.locks import RerunLock
from shared.notebook_token import FIELD as TOKEN_FIELD
from shared.notebook_token import new_token, wanted
from shared.pool import POOL_USER, Pool
from shared.profiles import Profiles, load_profiles
from shared.queue import Queue
from shared.record import Internal
from shared.settings import Settings
from shared.status import LIVE
from shared.store import Store

log = logging.getLogger(__name__)


class Refiller:
    def __init__(
        self, store: Store, pool: Pool, queue: Queue, settings: Settings, profiles: Profiles | None = None
    ) -> None:
        self.store = store
        self.pool = pool
        self.queue = queue
        self.settings = settings
        self.profiles = profiles if profiles is not None else load_profiles(settings.profiles_file)

    def refill(self, image: str) -> list[str]:
        """Start as many new members of ``image``'s pool as are missing; return their hostnames.

        Runs under a lock per image (shared/locks.py), so a burst of claims (each queueing a
        refill) and the reconciler's pass never start more members than the pool's size between
        them; a refill asked for while one runs makes that one run again, so the pool always ends
        full (the hostnames started by runs of another process are not returned here).
        """
        if not self.pool.sizes.get(image, 0):
            return []
        runs = RerunLock(self.store.redis, self.store.prefix, f"refill:{image}").run(lambda: self._refill(image))
        return [hostname for started in runs for hostname in started]

    def _refill(self, image: str) -> list[str]:
        size = self.pool.sizes.get(image, 0)
        live, gone = set(), set()
        for hostname in self.pool.members(image):
            record = self.store.get(hostname)
            if record is not None and record.status in LIVE and record.user == POOL_USER:
                live.add(hostname)
            else:
                gone.add(hostname)  # claimed meanwhile (not ours to count), failed, culled or purged
        self.pool.forget(image, gone)
        started = []
        # Members run with the image's profile, as a spawn of the image that claims one would.
        profile = self.profiles.for_image(image)
        for _ in range(size - len(live)):
            # Made now, shown to whoever claims the member (never to anyone while it is the pool's).
            token = new_token() if wanted(self.settings.notebook_token, profile) else ""
            try:
                record = self.store.create(
                    image=image,
                    user=POOL_USER,
                    domain=self.settings.domain,
                    profile=profile.name if profile else "",
                    internal={
                        Internal.POOL: image,
                        Internal.QUEUE_DEADLINE: str(time.time() + self.settings.start_timeout),
                        **({TOKEN_FIELD: token} if token else {}),
                    },
                    # Members count against MAX_NOTEBOOKS: the pool never fills the last slots.
                    quota=Quota(max_total=self.settings.max_notebooks),
                )
            except QuotaExceeded as exc:
                log.warning("pool %s: not refilled: %s", image, exc)
                break
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
