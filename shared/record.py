"""The notebook record: what the API returns and what Redis holds (one hash per notebook).

The public JSON keeps the first API's field names and order; extra fields follow them.

The stored hash leaves out what it need not hold, since a record lives for days and there may
be hundreds of thousands: ``url`` (always ``<hostname>.<domainname>``) and extra fields that
are still empty. Reading puts them back (:meth:`Notebook.from_hash`), so the public JSON always
has every field. Together they keep a typical hash in the allocator's 448-byte size class
instead of the 512-byte one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from shared.status import SETTLED, Status


def now_rfc3339() -> str:
    """Current UTC time as RFC 3339 with microseconds and a Z, as the first API printed it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(value: str) -> float:
    """Epoch seconds of an RFC 3339 time as written by :func:`now_rfc3339`; 0.0 if unparsable."""
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def derived_url(hostname: str, domainname: str) -> str:
    """A notebook's ``url``: its hostname under the domain it was spawned with."""
    return f"{hostname}.{domainname}"


@dataclass
class Notebook:
    hostname: str
    domainname: str
    image: str
    url: str
    container_id: str = ""
    status: Status = Status.PENDING
    start_time: str = ""
    user: str = ""
    # Extras beyond the first API's contract.
    error: str = ""  # why it FAILED (or why it left ACTIVE)
    updated_at: str = ""
    address: str = ""  # direct http://host:port of the notebook server, for local use and the proxy
    node: str = ""  # the engine node it runs on
    expires_at: str = ""  # when it will be killed for age (MAX_AGE or the spawn's ttl); "" for never
    profile: str = ""  # the per-image profile it was spawned with (shared/profiles.py); "" for none

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> Notebook:
        """The record from its stored hash (or a record event); what the hash left out is put back."""
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {k: v for k, v in data.items() if k in known}
        values["status"] = Status(values.get("status", Status.PENDING.value))
        if not values.get("url"):
            values["url"] = derived_url(values.get("hostname", ""), values.get("domainname", ""))
        return cls(**values)

    def to_hash(self) -> dict[str, str]:
        """The fields to store: without ``url`` and without extra fields that are still empty."""
        return {k: v for k, v in self.to_json().items() if k not in UNSTORED and (v or k not in OMITTED_WHEN_EMPTY)}

    def to_json(self) -> dict[str, str]:
        """The public record, every field in the first API's order."""
        out = asdict(self)
        out["status"] = self.status.value
        return out

    @property
    def settled(self) -> bool:
        return self.status in SETTLED


#: Public fields never stored: derived on reading (:func:`derived_url`).
UNSTORED = frozenset({"url"})
#: Extra fields whose empty value is not stored (reading gives "" back).
OMITTED_WHEN_EMPTY = frozenset({"container_id", "error", "address", "node", "expires_at", "profile"})
#: What the public record shows for a field its hash lacks (a record written before the field existed).
PUBLIC_DEFAULTS: dict[str, str] = {
    f.name: str(getattr(f.default, "value", f.default)) for f in fields(Notebook) if isinstance(f.default, str)
}


class Internal(str, Enum):
    """The record's internal fields: in its hash as ``_<name>`` (:attr:`key`), never in the public
    record nor in an event. Each is defined here once, for the API, the spawner, the reconciler and
    the store's scripts (which get them as ``INTERNAL.<NAME>``, shared/lua/__init__.py)."""

    TOKEN = "token"  # the notebook's own token (shared/notebook_token.py), shown only to its owner
    QUEUE_DEADLINE = "queue_deadline"  # epoch by which a spawn must have started (the reconciler resends, then fails)
    READY_DEADLINE = "ready_deadline"  # epoch by which a started notebook must answer
    RESENT = "resent"  # "1" once the reconciler sent a PENDING record's spawn task again
    MEM_LIMIT = "mem_limit"  # limits the user asked for (shared/profiles.py Limits), within the profile's
    CPU_LIMIT = "cpu_limit"
    POOL = "pool"  # a warm-pool member's POOL entry (the image as written there), until a spawn claims it
    ATTEMPT = "attempt"  # the record's current spawn attempt (Store.claim_spawn); a fencing move ends them all
    SPAWNING = "spawning"  # the attempt between claiming the record and recording its container
    COUNTED = "counted"  # the outcome the spawn was counted under in /metrics (once per notebook)

    def __str__(self) -> str:
        return self.value

    @property
    def key(self) -> str:
        """The field's name in the record's hash."""
        return f"_{self.value}"


#: What a spawn is, between the API and the spawner, that the public record does not show: its
#: deadlines and the attempt's marks go once the spawn is over (the record lives on for days).
SPAWN_INTERNALS: tuple[Internal, ...] = (
    Internal.QUEUE_DEADLINE,
    Internal.READY_DEADLINE,
    Internal.SPAWNING,
    Internal.ATTEMPT,
)
