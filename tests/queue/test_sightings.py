"""Dedup memory on a real queue file: the in-memory recent generation follows what committed."""

from __future__ import annotations

import itertools
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.queue import sightings, store
from relay.queue.sightings import OldFilter, Sightings
from relay.queue.sightings import _unpack as unpack
from tests.support import v1queue

NOW = 1_700_000_000.0
WINDOW = 3600.0


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(str(tmp_path / "queue.db"), isolation_level=None)
    store.prepare(db, "fsync", 1 << 30)
    yield db
    db.close()


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[sqlite3.Connection, sqlite3.Connection]]:
    """The relay's connection to a queue file and another one (another process, or the
    relay's status connection)."""
    path = str(tmp_path / "queue.db")
    writer = sqlite3.connect(path, isolation_level=None)
    store.prepare(writer, "fsync", 1 << 30)
    other = sqlite3.connect(path, isolation_level=None)
    yield writer, other
    writer.close()
    other.close()


def see(conn: sqlite3.Connection, memory: Sightings, ids: list[str], now: float = NOW,
        commit: bool = True) -> list[bool]:
    conn.execute("BEGIN IMMEDIATE")
    firsts = memory.first_sightings(conn, [("wk", i) for i in ids], now, WINDOW)
    if commit:
        conn.execute("COMMIT")
        memory.committed()
    else:
        conn.execute("ROLLBACK")
        memory.rolled_back()
    return firsts


def test_a_repeat_is_caught_in_memory_inside_a_group_and_across_write_keys(conn: sqlite3.Connection) -> None:
    memory = Sightings()
    memory.load(conn)
    assert see(conn, memory, ["a", "b", "a"]) == [True, True, False]
    assert see(conn, memory, ["a", "c"]) == [False, True]
    conn.execute("BEGIN IMMEDIATE")
    assert memory.first_sightings(conn, [("other-key", "a")], NOW, WINDOW) == [True]
    conn.execute("ROLLBACK")
    memory.rolled_back()
    # one log row per commit, holding every sighting, repeats too
    assert conn.execute("SELECT count(*), sum(length(hashes)) / 8 FROM sightings_log").fetchone() == (2, 5)
    assert memory.logged == 5


def test_a_rolled_back_commit_leaves_no_sighting(conn: sqlite3.Connection) -> None:
    """Otherwise the client's retry of events that were never stored would be taken for
    duplicates and acknowledged: lost."""
    memory = Sightings()
    memory.load(conn)
    assert see(conn, memory, ["x"], commit=False) == [True]
    assert see(conn, memory, ["x"]) == [True]
    assert see(conn, memory, ["x"]) == [False]


def test_the_window_counts_from_the_last_sighting(conn: sqlite3.Connection) -> None:
    memory = Sightings()
    memory.load(conn)
    assert see(conn, memory, ["w"], now=NOW) == [True]
    assert see(conn, memory, ["w"], now=NOW + WINDOW - 1) == [False]
    assert see(conn, memory, ["w"], now=NOW + 2 * WINDOW - 2) == [False]  # refreshed by the repeat
    assert see(conn, memory, ["w"], now=NOW + 4 * WINDOW) == [True]


def test_a_restart_reads_the_recent_generation_back(conn: sqlite3.Connection) -> None:
    memory = Sightings()
    memory.load(conn)
    see(conn, memory, ["r1", "r2"])
    after_restart = Sightings()
    after_restart.load(conn)
    assert after_restart.logged == 2
    assert see(conn, after_restart, ["r1", "r3"]) == [False, True]


def test_rotation_moves_the_log_into_the_old_generation_and_lookups_follow(conn: sqlite3.Connection) -> None:
    memory = Sightings()
    memory.load(conn)
    see(conn, memory, ["o1", "o2"], now=NOW)
    see(conn, memory, ["o1"], now=NOW + 10)
    assert memory.rotate(conn) == 2  # the log merged, each hash once (o1 was seen twice)
    assert (memory.recent, memory.logged) == ({}, 0)
    times = dict(conn.execute("SELECT h, at FROM sighting_runs").fetchall())
    assert times[sightings.dedup_hash("wk", "o1")] == NOW + 10  # the latest time is kept
    assert see(conn, memory, ["o1", "o2", "o3"], now=NOW + 20) == [False, False, True]


def test_a_version_1_files_sightings_are_still_caught_until_they_age_out(tmp_path: Path) -> None:
    """An upgrade keeps dedup: a version 1 file's sightings (hashed with blake2b, in its old
    generation and its log) are looked up until the window has passed, then dropped."""
    path = v1queue.build(tmp_path / "v1.db", [], seen=[("wk", "old-gen", NOW), ("wk", "aged", NOW)],
                         logged=[("wk", "in-log", NOW + 1)])
    conn = sqlite3.connect(str(path), isolation_level=None)
    store.prepare(conn, "fsync", 1 << 30)
    store.migrate(conn)
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'seen_log'").fetchone() is None
    memory = Sightings()
    memory.load(conn)
    assert memory.legacy
    assert see(conn, memory, ["old-gen", "in-log", "new"], now=NOW + 2) == [False, False, True]
    assert memory.forget_before(conn, NOW + 1.5, chunk=100) == 3  # the three version 1 sightings
    assert not memory.legacy
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'seen'").fetchone() is None
    assert see(conn, memory, ["aged", "new"], now=NOW + 3) == [True, False]
    conn.close()


def test_another_process_records_where_the_running_relay_looks(conn: sqlite3.Connection) -> None:
    """``relay recover`` runs beside a live relay: its keys go to ``seen``, which the
    relay's lookups read, and it sees the relay's log."""
    relay_memory = Sightings()
    relay_memory.load(conn)
    see(conn, relay_memory, ["live"])
    recover_memory = Sightings()
    conn.execute("BEGIN IMMEDIATE")
    recover_memory.load(conn)
    firsts = recover_memory.record_in_old_generation(conn, [("wk", "live"), ("wk", "salvaged")], NOW)
    conn.execute("COMMIT")
    assert firsts == [False, True]
    assert see(conn, relay_memory, ["salvaged", "fresh"]) == [False, True]


def test_forgetting_at_the_cap_then_rolling_back_restores_the_memory(conn: sqlite3.Connection) -> None:
    memory = Sightings()
    memory.load(conn)
    see(conn, memory, ["f1"], now=NOW)
    see(conn, memory, ["f2"], now=NOW + 1)
    conn.execute("BEGIN IMMEDIATE")
    assert memory.forget_oldest(conn, 1) == 1
    assert memory.first_sightings(conn, [("wk", "f1"), ("wk", "f2")], NOW + 2, WINDOW) == [True, False]
    conn.execute("ROLLBACK")
    memory.rolled_back()
    assert see(conn, memory, ["f1"], now=NOW + 3) == [False]  # the forgetting was rolled back too


def test_pruning_drops_old_sightings_from_memory_and_disk(conn: sqlite3.Connection) -> None:
    memory = Sightings()
    memory.load(conn)
    see(conn, memory, ["p1"], now=NOW)
    memory.rotate(conn)
    see(conn, memory, ["p2"], now=NOW)
    see(conn, memory, ["p3"], now=NOW + 100)
    assert memory.forget_before(conn, NOW + 50, chunk=1) == 2
    assert memory.logged == 1
    assert list(memory.recent.values()) == [NOW + 100]
    assert conn.execute("SELECT (SELECT count(*) FROM sightings)"
                        " + (SELECT count(*) FROM sighting_runs)").fetchone()[0] == 0


def test_a_rotation_in_steps_keeps_every_sighting_visible_and_new_ones_apart(
    conn: sqlite3.Connection,
) -> None:
    memory = Sightings()
    memory.load(conn)
    for i in range(10):  # ten commits: ten rows of the log
        see(conn, memory, [f"s{i}"], now=NOW)
    assert 0 < memory.rotate_step(conn, 4) < 10  # frozen: s0..s9; one key range of them merged
    assert memory.rotating
    see(conn, memory, ["new"], now=NOW + 1)  # lands in the fresh generation
    assert see(conn, memory, ["s0", "s9", "new", "other"], now=NOW + 2) == [False, False, False, True]
    while memory.rotating:
        memory.rotate_step(conn, 4)
    assert set(memory.frozen) == set()
    merged = {h for (h,) in conn.execute("SELECT h FROM sighting_runs")}
    assert {sightings.dedup_hash("wk", f"s{i}") for i in range(10)} <= merged
    logged = [h for (blob,) in conn.execute("SELECT hashes FROM sightings_log") for h in unpack(blob)]
    assert sightings.dedup_hash("wk", "new") in logged and len(logged) == memory.logged
    after_restart = Sightings()
    after_restart.load(conn)
    assert see(conn, after_restart, ["s3", "new", "s10"], now=NOW + 3) == [False, False, True]


def test_a_restart_in_the_middle_of_a_rotation_loses_nothing(conn: sqlite3.Connection) -> None:
    memory = Sightings()
    memory.load(conn)
    see(conn, memory, [f"m{i}" for i in range(6)], now=NOW)
    memory.rotate_step(conn, 3)  # half merged, then the process dies
    after_restart = Sightings()
    after_restart.load(conn)
    assert not after_restart.rotating
    assert see(conn, after_restart, [f"m{i}" for i in range(6)], now=NOW + 1) == [False] * 6


def test_a_rotation_cut_short_is_written_again_once_and_counts_only_when_finished(
    conn: sqlite3.Connection, four_a_level: None,
) -> None:
    memory = Sightings()
    memory.load(conn)
    _one_run_each(conn, memory, [[f"d{g}"] for g in range(3)])  # three runs of level 0
    see(conn, memory, [f"m{i}" for i in range(600)], now=NOW)
    memory.rotate_step(conn, 100)  # a part written, then the process dies
    assert not memory.compaction_due  # the run being written is not one to compact
    after_restart = Sightings()
    after_restart.load(conn)
    assert not after_restart.compaction_due
    assert see(conn, after_restart, ["m0", "m599"], now=NOW + 1) == [False, False]
    after_restart.rotate(conn)
    (stored, distinct) = conn.execute("SELECT count(*), count(DISTINCT h) FROM sighting_runs").fetchone()
    assert stored == distinct == 603  # the part written before the restart was dropped, not kept twice
    assert after_restart.compaction_due  # four runs of level 0 now
    assert [level for level, _, _ in _runs(conn)] == [0, 0, 0, 0]


def _random_hashes(count: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.getrandbits(64) - (1 << 63) for _ in range(count)]


@pytest.mark.parametrize(("count", "chunk", "ranges"), [
    (0, 2048, 1),
    (1, 2048, 1),
    (2047, 2048, 1),
    (4096, 2048, 2),
    (32_769, 2048, 16),  # a rotation as the writer starts one: 16 steps of about 2,048
    (65_535, 2048, 16),
    (10, 4, 2),
    (1000, 1, 512),
    (10, 1 << 62, 1),  # ``rotate``: the whole generation in one step
])
def test_a_frozen_generation_is_parted_into_key_ranges_of_about_a_step_each(
    count: int, chunk: int, ranges: int,
) -> None:
    hashes = _random_hashes(count, seed=count)
    parted = sightings._key_ranges(dict.fromkeys(hashes, NOW), chunk)
    assert len(parted) == ranges
    assert [h for part in parted for h in sorted(part)] == sorted(hashes)  # every hash once, in key order
    if count >= 4096:
        assert all(chunk // 2 <= len(part) <= 2.5 * chunk for part in parted)  # twice a step, and chance


def test_each_step_of_a_rotation_merges_the_next_key_range(conn: sqlite3.Connection) -> None:
    memory = Sightings()
    memory.load(conn)
    see(conn, memory, [f"r{i}" for i in range(5000)], now=NOW)
    merged: list[list[int]] = []
    while True:
        before = {h for (h,) in conn.execute("SELECT h FROM sighting_runs")}
        conn.execute("BEGIN IMMEDIATE")
        memory.merge_step(conn, 1024)
        conn.execute("COMMIT")
        memory.committed()
        merged.append(sorted({h for (h,) in conn.execute("SELECT h FROM sighting_runs")} - before))
        if not memory.rotating:
            break
    assert len(merged) == 4
    assert all(a[-1] < b[0] for a, b in itertools.pairwise(merged))  # ranges in key order
    assert sorted(h for step in merged for h in step) == sorted(
        sightings.dedup_hash("wk", f"r{i}") for i in range(5000))
    assert conn.execute("SELECT count(*) FROM sightings_log").fetchone() == (0,)


@pytest.mark.parametrize("count", [1, 1000, 100_000])
def test_the_old_generations_filter_holds_every_hash_added_and_few_others(count: int) -> None:
    held = OldFilter(count)
    added = _random_hashes(count, seed=count)
    held.add(added)
    assert held.maybe(added) == added  # never "absent" for a hash it holds
    others = _random_hashes(20_000, seed=count + 1_000_000)  # (a negative seed is its absolute value)
    assert len(held.maybe(others)) < 0.02 * len(others)  # built: at most ~1.4% false positives
    assert held.count == count and not held.full


def test_a_filled_filter_still_answers_within_its_bound() -> None:
    held = OldFilter(0)
    held.add(_random_hashes(held.capacity, seed=1))
    assert not held.full
    assert len(held.maybe(_random_hashes(20_000, seed=2))) < 0.06 * 20_000  # ~4.9% when full
    held.add(_random_hashes(1, seed=3))
    assert held.full


def test_with_the_filter_rotated_sightings_are_caught_and_fresh_keys_skip_the_lookup(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch,
) -> None:
    memory = Sightings()
    memory.load(conn)
    see(conn, memory, ["before-1", "before-2"], now=NOW)
    memory.rotate(conn)  # in sightings before the filter is built: read by the build
    memory.build_filter(conn)
    see(conn, memory, ["after"], now=NOW + 1)
    memory.rotate(conn)  # merged after the build: added to the filter by the rotation
    assert memory.filter is not None and memory.filter.count == 3
    asked: list[list[int]] = []
    real = sightings.seen_in_old_generation

    def spy(conn: sqlite3.Connection, hashes: list[int], cutoff: float) -> set[int]:
        asked.append(list(hashes))
        return real(conn, hashes, cutoff)

    monkeypatch.setattr(sightings, "seen_in_old_generation", spy)
    assert see(conn, memory, ["before-1", "after", "fresh"], now=NOW + 2) == [False, False, True]
    wanted = {sightings.dedup_hash("wk", "before-1"), sightings.dedup_hash("wk", "after")}
    assert set(asked[0]) == wanted  # "fresh" answered by the filter alone
    restarted = Sightings()
    restarted.load(conn)
    restarted.build_filter(conn)
    seen_again = see(conn, restarted, ["before-2", "after", "fresh", "new"], now=NOW + 3)
    assert seen_again == [False, False, False, True]


def test_a_commit_by_another_process_sets_the_filter_aside_until_it_is_built_again(
    two: tuple[sqlite3.Connection, sqlite3.Connection],
) -> None:
    """``relay recover`` records salvaged keys in ``sightings`` from its own connection: the
    relay's filter does not hold them, so it must not be trusted once the file changed."""
    relay_conn, recover_conn = two
    memory = Sightings()
    memory.load(relay_conn)
    memory.build_filter(relay_conn)
    see(relay_conn, memory, ["live"])
    recover_conn.execute("BEGIN IMMEDIATE")
    other = Sightings()
    other.load(recover_conn)
    assert other.record_in_old_generation(recover_conn, [("wk", "salvaged")], NOW) == [True]
    recover_conn.execute("COMMIT")
    assert see(relay_conn, memory, ["salvaged", "fresh"]) == [False, True]
    assert memory.filter is None and memory.want_filter
    memory.build_filter(relay_conn)
    assert memory.filter is not None and not memory.want_filter
    assert see(relay_conn, memory, ["salvaged", "fresh-2"]) == [False, True]


def test_a_full_filter_asks_to_be_built_again_larger(conn: sqlite3.Connection,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(OldFilter, "MIN_BITS", 1024)
    memory = Sightings()
    memory.load(conn)
    memory.build_filter(conn)
    assert memory.filter is not None
    small = len(memory.filter.bits)
    ids = [f"k{i}" for i in range(memory.filter.capacity + 1)]
    see(conn, memory, ids)
    memory.rotate(conn)
    assert memory.want_filter
    memory.build_filter(conn)
    assert len(memory.filter.bits) > small and not memory.want_filter
    assert see(conn, memory, [*ids[:3], "not-yet"]) == [False, False, False, True]


def test_a_filter_read_beside_the_writer_takes_in_what_was_merged_meanwhile(
    two: tuple[sqlite3.Connection, sqlite3.Connection],
) -> None:
    writer, reader = two
    memory = Sightings()
    memory.load(writer)
    see(writer, memory, ["early"])
    memory.rotate(writer)
    version = memory.start_filter(writer)
    built = sightings.read_filter(reader)  # holds "early" only
    see(writer, memory, ["meanwhile"])
    memory.rotate(writer)  # merged after the read
    memory.adopt_filter(built, version)
    assert memory.filter is built and not memory.want_filter
    hashes = [sightings.dedup_hash("wk", key) for key in ("early", "meanwhile")]
    assert built.maybe(hashes) == hashes
    assert see(writer, memory, ["early", "meanwhile", "fresh"], now=NOW + 1) == [False, False, True]


def test_a_rotation_step_in_a_commit_leaves_that_commits_own_sightings_in_the_log(
    conn: sqlite3.Connection,
) -> None:
    """The writer runs the step after the group's log row is staged: the rotation freezes
    only what had committed before, so the last step never deletes the new row."""
    memory = Sightings()
    memory.load(conn)
    see(conn, memory, ["old-1", "old-2"])
    conn.execute("BEGIN IMMEDIATE")
    assert memory.first_sightings(conn, [("wk", "staged")], NOW, WINDOW) == [True]
    assert memory.merge_step(conn, 100) == 2  # the whole frozen generation: old-1, old-2
    conn.execute("COMMIT")
    memory.committed()
    assert not memory.rotating and memory.logged == 1
    restarted = Sightings()
    restarted.load(conn)
    assert restarted.logged == 1  # "staged" is still in the log
    assert see(conn, restarted, ["old-1", "staged", "new"], now=NOW + 1) == [False, False, True]


def test_a_rotation_keeps_each_sightings_own_time_to_the_minute(conn: sqlite3.Connection) -> None:
    """The window is not lengthened by the generation's span: an hour apart, two sightings
    merged together keep their own times (rounded up to a minute at most)."""
    memory = Sightings()
    memory.load(conn)
    see(conn, memory, ["early"], now=NOW)
    see(conn, memory, ["late"], now=NOW + 3500)
    memory.rotate(conn)
    times = dict(conn.execute("SELECT h, at FROM sighting_runs").fetchall())
    early = times[sightings.dedup_hash("wk", "early")]
    assert NOW <= early <= NOW + sightings.MERGE_TIME_STEP
    assert times[sightings.dedup_hash("wk", "late")] == NOW + 3500  # the newest: its own
    assert see(conn, memory, ["early", "late"], now=NOW + WINDOW + 100) == [True, False]


def test_a_rotation_merges_what_the_log_holds_even_a_sighting_memory_missed(conn: sqlite3.Connection) -> None:
    memory = Sightings()
    memory.load(conn)
    see(conn, memory, ["in-memory"])
    conn.execute("INSERT INTO sightings_log (at, hashes) VALUES (?, ?)",
                 (NOW, sightings._pack([sightings.dedup_hash("wk", "only-logged")])))
    memory.rotate(conn)
    merged = {h for (h,) in conn.execute("SELECT h FROM sighting_runs")}
    assert {sightings.dedup_hash("wk", k) for k in ("in-memory", "only-logged")} <= merged
    assert conn.execute("SELECT count(*) FROM sightings_log").fetchone() == (0,)
    assert memory.logged == 0  # the log's hashes counted out: the one memory held, not the other


def test_two_lookups_in_one_transaction_both_reach_memory(conn: sqlite3.Connection) -> None:
    memory = Sightings()
    memory.load(conn)
    conn.execute("BEGIN IMMEDIATE")
    assert memory.first_sightings(conn, [("wk", "one")], NOW, WINDOW) == [True]
    assert memory.first_sightings(conn, [("wk", "two")], NOW, WINDOW) == [True]
    conn.execute("COMMIT")
    memory.committed()
    assert memory.logged == 2
    assert see(conn, memory, ["one", "two"], now=NOW + 1) == [False, False]


def test_a_clock_stepped_back_never_shortens_a_merged_sightings_time(conn: sqlite3.Connection) -> None:
    memory = Sightings()
    memory.load(conn)
    see(conn, memory, ["k"], now=NOW + 500)
    see(conn, memory, ["k"], now=NOW)  # a later commit, the clock set back meanwhile
    memory.rotate(conn)
    assert conn.execute("SELECT at FROM sighting_runs").fetchall() == [(NOW + 500,)]


@pytest.fixture
def four_a_level(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs compacted four at a time, so that a test needs few of them."""
    monkeypatch.setattr(sightings, "RUNS_PER_COMPACTION", 4)


def _one_run_each(conn: sqlite3.Connection, memory: Sightings, groups: list[list[str]],
                  now: float = NOW) -> None:
    """Each group seen, then rotated into a run of its own."""
    for ids in groups:
        see(conn, memory, ids, now=now)
        memory.rotate(conn)


def _runs(conn: sqlite3.Connection) -> list[tuple[int, int, int]]:
    """(level, rows as counted, rows held) of each run."""
    return [(level, rows, held) for level, rows, held in conn.execute(
        "SELECT level, rows, (SELECT count(*) FROM sighting_runs r WHERE r.run = i.run)"
        " FROM sighting_run_info i ORDER BY run")]


def _compact(conn: sqlite3.Connection, memory: Sightings, chunk: int, cutoff: float,
             steps: int | None = None) -> int:
    """Compaction steps, each its own transaction, until none is due (or ``steps`` ran)."""
    ran = 0
    while memory.compaction_due and (steps is None or ran < steps):
        conn.execute("BEGIN IMMEDIATE")
        memory.compact_step(conn, chunk, cutoff)
        conn.execute("COMMIT")
        memory.committed()
        ran += 1
    return ran


def test_four_runs_of_a_level_compact_into_one_of_the_next_and_every_sighting_is_still_caught(
    conn: sqlite3.Connection, four_a_level: None,
) -> None:
    memory = Sightings()
    memory.load(conn)
    groups = [[f"c{g}-{i}" for i in range(300)] + ["shared"] for g in range(4)]
    _one_run_each(conn, memory, groups[:3])
    assert not memory.compaction_due  # three runs of level 0
    _one_run_each(conn, memory, groups[3:])
    assert memory.compaction_due
    assert [level for level, _, _ in _runs(conn)] == [0, 0, 0, 0]
    assert _compact(conn, memory, 256, NOW - WINDOW, steps=2) == 2  # part of the way
    every = [i for ids in groups for i in ids]
    assert see(conn, memory, [*every, "fresh-1"], now=NOW + 1) == [False] * len(every) + [True]
    _compact(conn, memory, 256, NOW - WINDOW)
    assert _runs(conn) == [(1, 1201, 1201)]  # "shared" once
    memory.rotate(conn)  # "fresh-1" into a run of level 0
    after_restart = Sightings()
    after_restart.load(conn)
    assert see(conn, after_restart, [*every, "fresh-1", "fresh-2"], now=NOW + 2) == (
        [False] * len(every) + [False, True])


def test_a_compaction_cut_short_leaves_every_sighting_in_one_run_or_another(
    conn: sqlite3.Connection, four_a_level: None,
) -> None:
    memory = Sightings()
    memory.load(conn)
    groups = [[f"k{g}-{i}" for i in range(500)] for g in range(4)]
    _one_run_each(conn, memory, groups)
    _compact(conn, memory, 250, NOW - WINDOW, steps=3)  # of 8 key ranges; then the process dies
    held = {h for (h,) in conn.execute("SELECT h FROM sighting_runs")}
    every = [i for ids in groups for i in ids]
    assert held == {sightings.dedup_hash("wk", i) for i in every}
    after_restart = Sightings()
    after_restart.load(conn)
    assert see(conn, after_restart, [*every[::7], "new"], now=NOW + 1) == [False] * len(every[::7]) + [True]
    after_restart.rotate(conn)  # "new" makes a fifth run of level 0: compacted again with three of them
    _compact(conn, after_restart, 250, NOW - WINDOW)
    new = sightings.dedup_hash("wk", "new")
    assert {h for (h,) in conn.execute("SELECT h FROM sighting_runs")} == held | {new}
    assert all(rows == count for _, rows, count in _runs(conn))  # the bookkeeping follows the rows


def test_a_compaction_step_rolled_back_is_done_again(conn: sqlite3.Connection, four_a_level: None) -> None:
    memory = Sightings()
    memory.load(conn)
    groups = [[f"b{g}-{i}" for i in range(200)] for g in range(4)]
    _one_run_each(conn, memory, groups)
    _compact(conn, memory, 100, NOW - WINDOW, steps=1)
    conn.execute("BEGIN IMMEDIATE")
    memory.compact_step(conn, 100, NOW - WINDOW)
    conn.execute("ROLLBACK")
    memory.rolled_back()
    _compact(conn, memory, 100, NOW - WINDOW)
    every = [i for ids in groups for i in ids]
    assert {h for (h,) in conn.execute("SELECT h FROM sighting_runs")} == {
        sightings.dedup_hash("wk", i) for i in every}
    assert see(conn, memory, every, now=NOW + 1) == [False] * len(every)
    assert all(rows == count for _, rows, count in _runs(conn))


def test_a_compaction_leaves_out_what_the_window_forgot(conn: sqlite3.Connection, four_a_level: None) -> None:
    memory = Sightings()
    memory.load(conn)
    _one_run_each(conn, memory, [["old-1", "old-2", "both"]], now=NOW)
    _one_run_each(conn, memory, [[f"n{g}", "both"] for g in range(3)], now=NOW + 100)
    _compact(conn, memory, 100, NOW + 50)
    assert dict(conn.execute("SELECT h, at FROM sighting_runs").fetchall()) == {
        sightings.dedup_hash("wk", key): NOW + 100 for key in ("n0", "n1", "n2", "both")}
    assert _runs(conn) == [(1, 4, 4)]


def test_pruning_drops_whole_runs_past_the_window_but_not_the_one_a_compaction_writes(
    conn: sqlite3.Connection, four_a_level: None,
) -> None:
    memory = Sightings()
    memory.load(conn)
    _one_run_each(conn, memory, [[f"a{g}-{i}" for i in range(100)] for g in range(4)], now=NOW)
    _one_run_each(conn, memory, [["b1"]], now=NOW + 100)
    _compact(conn, memory, 50, NOW - WINDOW, steps=2)  # of 8 key ranges, into a run whose newest is NOW
    compacted = sum(rows for level, rows, _ in _runs(conn) if level == 1)
    assert 0 < compacted < 400
    assert memory.forget_before(conn, NOW + 50, chunk=7) == 400 - compacted  # the four runs, not the fifth
    assert [level for level, _, _ in _runs(conn)] == [0, 1]  # b1's run, and the compaction's
    _compact(conn, memory, 50, NOW + 50)
    assert memory.forget_before(conn, NOW + 50, chunk=7) == compacted  # no longer written: dropped
    assert [rows for _, rows, _ in _runs(conn)] == [1]
    assert conn.execute("SELECT count(*) FROM sighting_runs WHERE run NOT IN"
                        " (SELECT run FROM sighting_run_info)").fetchone() == (0,)  # nothing left behind
    assert see(conn, memory, ["a0-1", "b1"], now=NOW + 60) == [True, False]


def test_at_the_cap_the_oldest_runs_are_forgotten_first(conn: sqlite3.Connection) -> None:
    memory = Sightings()
    memory.load(conn)
    _one_run_each(conn, memory, [[f"o{i}" for i in range(10)]], now=NOW)
    _one_run_each(conn, memory, [[f"y{i}" for i in range(10)]], now=NOW + 10)
    conn.execute("BEGIN IMMEDIATE")
    assert memory.forget_oldest(conn, 14) == 14
    conn.execute("COMMIT")
    memory.committed()
    assert [rows for _, rows, _ in _runs(conn)] == [6]  # the older run gone, four of the newer
    assert sum(see(conn, memory, [f"o{i}" for i in range(10)], now=NOW + 20)) == 10
    assert sum(see(conn, memory, [f"y{i}" for i in range(10)], now=NOW + 20)) == 4


def test_the_filter_holds_the_runs_hashes(conn: sqlite3.Connection) -> None:
    memory = Sightings()
    memory.load(conn)
    _one_run_each(conn, memory, [[f"f{i}" for i in range(100)]])
    built = sightings.read_filter(conn)
    hashes = [sightings.dedup_hash("wk", f"f{i}") for i in range(100)]
    assert built.maybe(hashes) == hashes and built.count == 100


def test_a_first_rotation_step_that_fails_after_memory_was_frozen_has_memory_read_back(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch,
) -> None:
    memory = Sightings()
    memory.load(conn)
    ids = [f"z{i}" for i in range(50)]
    see(conn, memory, ids)
    real = sightings._new_run

    def full(conn: sqlite3.Connection, level: int, newest: float) -> int:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(sightings, "_new_run", full)  # after the freeze, before the run exists
    conn.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError):
        memory.merge_step(conn, 10)
    conn.execute("ROLLBACK")
    memory.rolled_back()
    monkeypatch.setattr(sightings, "_new_run", real)
    memory.rotate(conn)
    assert see(conn, memory, [*ids[::7], "new"], now=NOW + 1) == [False] * len(ids[::7]) + [True]
    assert conn.execute("SELECT count(*) FROM sighting_runs WHERE run NOT IN"
                        " (SELECT run FROM sighting_run_info)").fetchone() == (0,)  # no run lookups miss
    assert _runs(conn) == [(0, 50, 50)]


def test_a_compaction_step_given_up_leaves_the_rotation_under_way_where_it_was(
    conn: sqlite3.Connection, four_a_level: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    memory = Sightings()
    memory.load(conn)
    groups = [[f"q{g}-{i}" for i in range(200)] for g in range(4)]
    _one_run_each(conn, memory, groups)  # four runs of level 0: a compaction is due
    fresh = [f"r{i}" for i in range(400)]
    see(conn, memory, fresh)
    memory.rotate_step(conn, 100)  # a rotation under way, a step of it written
    assert memory.rotating and memory.compaction_due
    _compact(conn, memory, 100, NOW - WINDOW, steps=1)  # a compaction under way too
    written = conn.execute("SELECT count(*) FROM sighting_runs").fetchone()
    left = len(memory._ranges) - memory._next  # the rotation's key ranges not written yet
    assert left >= 2
    conn.execute("BEGIN IMMEDIATE")  # as the writer carries a step: in a savepoint, which fails
    conn.execute("SAVEPOINT rotation")
    with pytest.raises(sqlite3.OperationalError):  # its insert done, a source's delete refused
        memory.compact_step(_Refusing(conn, "DELETE FROM sighting_runs"), 100, NOW - WINDOW)  # type: ignore[arg-type]
    conn.execute("ROLLBACK TO rotation")
    memory.step_failed(compaction=True)
    conn.execute("RELEASE rotation")
    conn.execute("COMMIT")
    memory.committed()
    assert conn.execute("SELECT count(*) FROM sighting_runs").fetchone() == written
    assert memory.rotating  # not started again from the log
    assert memory.compaction_due  # the levels are counted again by the next compaction step
    steps = 0
    while memory.rotating:
        memory.rotate_step(conn, 100)
        steps += 1
    assert steps == left  # those ranges only: the rotation was not started again
    _compact(conn, memory, 100, NOW - WINDOW, steps=1)  # a new compaction: the levels as on disk
    assert memory._levels == memory._finished_levels(conn)
    _compact(conn, memory, 100, NOW - WINDOW)
    every = [i for ids in groups for i in ids] + fresh
    assert {h for (h,) in conn.execute("SELECT h FROM sighting_runs")} == {
        sightings.dedup_hash("wk", i) for i in every}
    assert see(conn, memory, [*every[::9], "new"], now=NOW + 1) == [False] * len(every[::9]) + [True]
    assert all(rows == held for _, rows, held in _runs(conn))


class _Refusing:
    """A connection whose statements starting with ``refused`` fail as on a full disk."""

    def __init__(self, conn: sqlite3.Connection, refused: str) -> None:
        self.conn, self.refused = conn, refused

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        if sql.startswith(self.refused):
            raise sqlite3.OperationalError("database or disk is full")
        return self.conn.execute(sql, params)
