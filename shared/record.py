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
