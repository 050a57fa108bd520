"""The status machine in shared/status.py: every move, allowed or refused, and the derived sets."""

from __future__ import annotations

import itertools

import pytest

from shared.status import (
    KILLABLE,
    LIVE,
    SETTLED,
    TERMINAL,
    TRANSITIONS,
    Status,
    can_transition,
    sources_of,
)

S = Status

#: The machine as the README and the API contract describe it, written out independently of the code.
ALLOWED: set[tuple[Status, Status]] = {
    (S.PENDING, S.STARTING),
    (S.PENDING, S.FAILED),
    (S.PENDING, S.DELETING),
    (S.STARTING, S.ACTIVE),
    (S.STARTING, S.FAILED),
    (S.STARTING, S.DELETING),
    (S.ACTIVE, S.FAILED),
    (S.ACTIVE, S.DELETING),
    (S.DELETING, S.REMOVED),
}
ALL_PAIRS = list(itertools.product(Status, Status))
REFUSED = [pair for pair in ALL_PAIRS if pair not in ALLOWED]


def _id(pair: tuple[Status, Status]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


def test_statuses_are_exactly_the_six() -> None:
    assert [s.value for s in Status] == ["PENDING", "STARTING", "ACTIVE", "FAILED", "DELETING", "REMOVED"]


def test_status_prints_as_its_value() -> None:
    assert str(S.ACTIVE) == "ACTIVE"
    assert f"{S.DELETING}" == "DELETING"
    assert S("PENDING") is S.PENDING
    assert S.ACTIVE == "ACTIVE"  # a str enum: compares equal to the wire value


def test_every_status_has_an_entry_in_the_table() -> None:
    assert set(TRANSITIONS) == set(Status)


@pytest.mark.parametrize("pair", sorted(ALLOWED), ids=_id)
def test_allowed_move(pair: tuple[Status, Status]) -> None:
    current, new = pair
    assert can_transition(current, new)
    assert new in TRANSITIONS[current]
    assert current in sources_of(new)


@pytest.mark.parametrize("pair", REFUSED, ids=_id)
def test_refused_move(pair: tuple[Status, Status]) -> None:
    current, new = pair
    assert not can_transition(current, new)
    assert new not in TRANSITIONS[current]
    assert current not in sources_of(new)


def test_table_matches_the_contract_exactly() -> None:
    table = {(cur, new) for cur, nexts in TRANSITIONS.items() for new in nexts}
    assert table == ALLOWED


@pytest.mark.parametrize("status", list(Status), ids=str)
def test_no_status_moves_to_itself(status: Status) -> None:
    assert not can_transition(status, status)


def test_terminal() -> None:
    assert frozenset({S.FAILED, S.REMOVED}) == TERMINAL
    for status in TERMINAL:
        assert TRANSITIONS[status] == frozenset()
    for status in set(Status) - TERMINAL:
        assert TRANSITIONS[status]


def test_settled() -> None:
    assert frozenset({S.ACTIVE, S.FAILED, S.REMOVED}) == SETTLED
    assert TERMINAL < SETTLED


def test_killable() -> None:
    assert frozenset({S.PENDING, S.STARTING, S.ACTIVE}) == KILLABLE
    assert sources_of(S.DELETING) == KILLABLE
    # A kill of a record already deleting or finished is a no-op, not a move.
    for status in (S.DELETING, S.FAILED, S.REMOVED):
        assert status not in KILLABLE


def test_live() -> None:
    assert frozenset({S.PENDING, S.STARTING, S.ACTIVE, S.DELETING}) == LIVE
    assert LIVE.isdisjoint(TERMINAL)
    assert frozenset(Status) == LIVE | TERMINAL


@pytest.mark.parametrize(
    ("new", "sources"),
    [
        (S.PENDING, set()),
        (S.STARTING, {S.PENDING}),
        (S.ACTIVE, {S.STARTING}),
        (S.FAILED, {S.PENDING, S.STARTING, S.ACTIVE}),
        (S.DELETING, {S.PENDING, S.STARTING, S.ACTIVE}),
        (S.REMOVED, {S.DELETING}),
    ],
    ids=lambda v: str(v) if isinstance(v, Status) else "",
)
def test_sources_of(new: Status, sources: set[Status]) -> None:
    result = sources_of(new)
    assert isinstance(result, frozenset)
    assert result == frozenset(sources)


def test_nothing_enters_pending() -> None:
    # PENDING is only ever written by create, never reached by a move.
    assert sources_of(S.PENDING) == frozenset()


def test_every_status_is_reachable_from_pending() -> None:
    seen, todo = {S.PENDING}, [S.PENDING]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(Status)


def test_every_path_ends_in_a_terminal_status() -> None:
    # No cycles: following moves from any status always ends (the machine is a DAG).
    def depth(status: Status, trail: tuple[Status, ...] = ()) -> int:
        assert status not in trail, f"cycle through {(*trail, status)}"
        return 1 + max((depth(n, (*trail, status)) for n in TRANSITIONS[status]), default=0)

    for status in Status:
        assert depth(status) <= len(Status)
