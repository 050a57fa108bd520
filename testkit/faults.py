"""Invariants after a fault, shared by the fault tests and the fault benchmark (bench/faults.py)."""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from shared.record import Notebook
from shared.status import Status

FINAL = {Status.ACTIVE, Status.FAILED, Status.REMOVED}


@dataclass
class Outcome:
    trials: int = 0
    active: int = 0
    failed: int = 0
    removed: int = 0
    lost: int = 0  # records that vanished
    stuck: int = 0  # records that never reached ACTIVE or FAILED
    orphans: int = 0  # containers with no live record, or a FAILED/REMOVED record's container still there
    duplicates: int = 0  # notebooks with more than one container
    broken: int = 0  # ACTIVE records whose container is not running

    def add(self, other: Outcome) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def settle(stack: Any, hostnames: list[str], timeout: float) -> list[Notebook | None]:
    """Wait (bounded) until every record is ACTIVE, FAILED or REMOVED; return what each ended as."""
    deadline = time.monotonic() + timeout
    while True:
        records = [_get(stack, h) for h in hostnames]
        if all(r is None or r.status in FINAL for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.25)


def _get(stack: Any, hostname: str) -> Notebook | None:
    for _ in range(40):  # Redis may still be coming back
        try:
            return stack.store.get(hostname)  # type: ignore[no-any-return]
        except Exception:
            time.sleep(0.25)
    return None


def check_outcome(
    stack: Any, records: list[Notebook | None], grace: float = 5.0, others: Collection[str] = ()
) -> Outcome:
    """Count outcomes and compare records with the containers on the engine (those of ``others``,
    live notebooks outside this count, are neither counted nor orphans)."""
    out = Outcome(trials=len(records))
    by_host: dict[str, list[Any]] = {}
    # A spawn that lost a race removes its container right after the record settles.
    deadline = time.monotonic() + grace
    while True:
        by_host = {}
        for c in stack.containers():
            by_host.setdefault(c.labels.get("swarm-manager.hostname", ""), []).append(c)
        stray = [r for r in records if r is not None and r.status != Status.ACTIVE and by_host.get(r.hostname)]
        if not stray or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    for r in records:
        if r is None:
            out.lost += 1
            continue
        mine = by_host.get(r.hostname, [])
        if r.status == Status.ACTIVE:
            out.active += 1
            if len(mine) > 1:
                out.duplicates += 1
            if not [c for c in mine if c.status == "running"]:
                out.broken += 1
        elif r.status in (Status.FAILED, Status.REMOVED):
            if r.status == Status.FAILED:
                out.failed += 1
            else:
                out.removed += 1
            out.orphans += len(mine)
        else:
            out.stuck += 1
    known = {r.hostname for r in records if r is not None} | set(others)
    out.orphans += sum(len(cs) for h, cs in by_host.items() if h not in known)
    return out
