"""Readiness probes come fast for a notebook that just started, then at PROBE_INTERVAL, and only a
few waits of a process probe fast at once (worker/readiness.py). Pure schedule logic: no clock."""

from __future__ import annotations

from worker.readiness import FAST_FIRST, FAST_SHARE, ProbePacer


def test_gaps_start_short_and_grow_with_the_wait_up_to_the_interval() -> None:
    pace = ProbePacer(slots=1).pace(0.05)
    assert pace.gap(0.0) == FAST_FIRST
    assert pace.gap(0.5) == 0.5 * FAST_SHARE
    assert pace.gap(0.6) > pace.gap(0.5)
    assert pace.gap(10.0) == 0.05
    assert pace.gap(0.0) == 0.05  # steady once there: the fast phase is over


def test_only_so_many_waits_probe_fast_at_once() -> None:
    pacer = ProbePacer(slots=1)
    first = pacer.pace(0.05)
    second = pacer.pace(0.05)
    assert first.gap(0.0) == FAST_FIRST
    assert second.gap(0.0) == 0.05  # no slot left: the interval from the start
    first.close()
    first.close()  # closing twice gives the slot back once
    third, fourth = pacer.pace(0.05), pacer.pace(0.05)
    assert third.gap(0.0) == FAST_FIRST and fourth.gap(0.0) == 0.05


def test_a_wait_that_reaches_the_interval_gives_its_slot_back() -> None:
    pacer = ProbePacer(slots=1)
    slow = pacer.pace(0.05)
    slow.gap(60.0)  # a server that takes its time: steady now, and the slot is another wait's
    assert pacer.pace(0.05).gap(0.0) == FAST_FIRST


def test_other_schedules_for_other_waits() -> None:
    pace = ProbePacer().pace(0.15, first=0.02, share=0.1)
    assert pace.gap(0.0) == 0.02 and pace.gap(1.0) == 0.1 and pace.gap(5.0) == 0.15
