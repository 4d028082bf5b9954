"""The progress ledger: pure bookkeeping, checked row by row."""

from __future__ import annotations

import pytest

from relay.forward.ledger import Finished, Ledger
from relay.types import DeadLetter


def letter(name: str) -> DeadLetter:
    return DeadLetter(reason=name, write_key="k", body=b"{}")


@pytest.mark.parametrize(("ranges", "cursor", "asked", "expected"), [
    ([], 0, [1, 2, 3], [False, False, False]),
    ([(5, 9)], 0, [4, 5, 9, 10], [False, True, True, False]),
    ([(5, 9), (12, 12)], 0, [6, 11, 12, 13], [True, False, True, False]),
    ([(1, 3), (5, 9)], 4, [5, 10], [True, False]),  # a range at or behind the cursor is dropped
    ([(12, 14), (5, 9)], 0, [5, 13], [True, True]),  # ranges are taken in id order
])
def test_ids_finished_beyond_the_cursor_before_a_restart_are_skipped(
        ranges: list[tuple[int, int]], cursor: int, asked: list[int], expected: list[bool]) -> None:
    ledger = Ledger()
    ledger.restart(ranges, cursor)
    assert [ledger.already_done(i) for i in asked] == expected


def test_refused_copies_are_dead_lettered_once_the_cursor_passes_them() -> None:
    ledger = Ledger()
    for event_id in (3, 7, 11):
        ledger.refuse(event_id, letter(f"e{event_id}"))
    assert ledger.refused_through(2) == []
    assert [d.reason for d in ledger.refused_through(7)] == ["e3", "e7"]
    assert ledger.refused_through(7) == []  # taken out: never recorded twice
    assert [d.reason for d in ledger.refused_between(10, 12)] == ["e11"]
    assert ledger.refused_through(100) == []


def test_batches_in_flight_are_known_by_their_last_id_until_settled() -> None:
    ledger = Ledger()
    ledger.sent(1, 10)
    ledger.sent(11, 20)
    assert ledger.settled(20) == 11
    assert ledger.settled(20) is None
    ledger.restart((), 10)
    assert ledger.settled(10) is None  # a restart forgets what was in flight


@pytest.mark.parametrize(("dead_ids", "through", "kept"), [
    ([4, 6, 9], 6, [4, 6]),
    ([4, 6, 9], 3, []),
    ([], 5, []),
])
def test_a_cut_batch_keeps_only_what_finished_at_or_below_the_cut(
        dead_ids: list[int], through: int, kept: list[int]) -> None:
    finished = Finished(delivered=2, dead=[letter(str(i)) for i in dead_ids], dead_ids=list(dead_ids))
    cut = finished.cut(through)
    assert cut is not None and cut.cut_after == through
    assert cut.dead_ids == kept and [d.reason for d in cut.dead] == [str(i) for i in kept]
    assert Finished().cut(None) is None
