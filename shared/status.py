"""The notebook status machine: every status and every allowed move, defined once.

No other module spells a status string; they import :class:`Status` and ask
:func:`can_transition`. The store enforces these moves atomically in Redis.
"""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    PENDING = "PENDING"  # accepted and queued; no engine object yet (the first API showed "")
    STARTING = "STARTING"  # the worker is creating/starting the container and waiting for it to answer
    ACTIVE = "ACTIVE"  # the container runs and its notebook port answers HTTP
    FAILED = "FAILED"  # it could not be started or it died; `error` says why; engine objects removed
    DELETING = "DELETING"  # a kill was accepted; the worker is stopping and removing it
    REMOVED = "REMOVED"  # the engine objects are gone

    def __str__(self) -> str:  # so f-strings and JSON show "ACTIVE", not "Status.ACTIVE"
        return self.value


#: Allowed moves. A kill (-> DELETING) wins over a spawn at every stage before the end.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.STARTING, Status.FAILED, Status.DELETING}),
    Status.STARTING: frozenset({Status.ACTIVE, Status.FAILED, Status.DELETING}),
    Status.ACTIVE: frozenset({Status.FAILED, Status.DELETING}),
    Status.DELETING: frozenset({Status.REMOVED}),
    Status.FAILED: frozenset(),
    Status.REMOVED: frozenset(),
}

#: Nothing more will happen to a record in these states.
TERMINAL: frozenset[Status] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)

#: States a client can stop waiting at: the notebook is usable, or it never will be.
SETTLED: frozenset[Status] = TERMINAL | {Status.ACTIVE}

#: States in which the notebook may own engine objects (containers/services).
LIVE: frozenset[Status] = frozenset({Status.PENDING, Status.STARTING, Status.ACTIVE, Status.DELETING})

#: States from which a kill request starts a deletion (others make the kill a no-op).
KILLABLE: frozenset[Status] = frozenset(s for s, nxt in TRANSITIONS.items() if Status.DELETING in nxt)


#: States in which a notebook takes a quota slot (shared/limits.py). A kill frees the slot at once
#: (DELETING), even though removing the container takes a moment longer.
COUNTED: frozenset[Status] = LIVE - {Status.DELETING}

#: States a spawn task may (still) work on (the store's claim_spawn).
SPAWNABLE: frozenset[Status] = frozenset({Status.PENDING, Status.STARTING})

#: The named groups above, by name: the store's Lua scripts get each as a set of the same name
#: (shared/lua/__init__.py), so no script spells a status list of its own.
GROUPS: dict[str, frozenset[Status]] = {
    "TERMINAL": TERMINAL,
    "SETTLED": SETTLED,
    "LIVE": LIVE,
    "KILLABLE": KILLABLE,
    "COUNTED": COUNTED,
    "SPAWNABLE": SPAWNABLE,
}


def can_transition(current: Status, new: Status) -> bool:
    return new in TRANSITIONS[current]


def sources_of(new: Status) -> frozenset[Status]:
    """Every status from which ``new`` may be entered."""
    return frozenset(s for s, nxt in TRANSITIONS.items() if new in nxt)
