"""The engines' nodes and the images pulled onto them ahead of demand, as the workers last saw them.

Which images: the warm pool's (POOL) and those of profiles marked ``prepull: true``
(:func:`prepull_images`). The workers look at the nodes on each reconcile pass and write what
they see here (``<prefix>nodes``: one hash field per node, its JSON); ``GET /nodes`` and
``swarm-manager nodes`` read it, so the API never asks the engine.

A node's entry: ``id``, ``hostname``, ``state`` (``ready``, ``down``, ...), ``availability``
(``active``, ``drain``, ``pause``), ``role``, ``address``, ``seen_at`` and ``images``: per
listed image ``{"state": "present" | "pulling" | "failed" | "missing", "reason", "at"}``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import redis

from shared.limits import canonical
from shared.profiles import Profiles
from shared.record import now_rfc3339
from shared.settings import Settings

log = logging.getLogger(__name__)

PRESENT, PULLING, FAILED, MISSING = "present", "pulling", "failed", "missing"


def prepull_images(settings: Settings, profiles: Profiles) -> list[str]:
    """The canonical references to keep on every node: the pool's images, then the ``prepull``
    profiles' (each once, in that order)."""
    listed = [image for image, _ in settings.pool]
    for profile in profiles:
        listed.extend(profile.prepull_images)
    out: dict[str, None] = {}
    for image in listed:
        try:
            out[canonical(image)] = None
        except ValueError:  # validated at start-up; never here
            continue
    return list(out)


class NodeBook:
    """What the workers last saw of each node, in one Redis hash. Takes its client (as Store does)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.key = f"{prefix}nodes"

    def read(self) -> dict[str, dict[str, Any]]:
        raw = self.redis.hgetall(self.key)
        out = {}
        for node_id, text in raw.items():
            try:
                entry = json.loads(text)
            except ValueError:
                continue
            if isinstance(entry, dict):
                out[str(node_id)] = entry
        return out

    def write(self, nodes: Mapping[str, Mapping[str, Any]], gone: Iterable[str] = ()) -> None:
        """Replace the entries of ``nodes`` and drop those of ``gone``, in one transaction."""
        pipe = self.redis.pipeline()
        for node_id, entry in nodes.items():
            pipe.hset(self.key, node_id, json.dumps({**entry, "seen_at": now_rfc3339()}))
        gone = list(gone)
        if gone:
            pipe.hdel(self.key, *gone)
        pipe.execute()

    def mark(self, node_id: str, image: str, state: str, reason: str = "") -> None:
        """One image's state on one node (a background pull finishing between passes)."""
        entry = self.read().get(node_id)
        if entry is None:
            return
        entry.setdefault("images", {})[image] = {"state": state, "reason": reason, "at": now_rfc3339()}
        self.redis.hset(self.key, node_id, json.dumps(entry))
