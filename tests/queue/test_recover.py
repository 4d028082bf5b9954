"""``relay recover``: per-destination progress, partly readable files, exact counts, exit codes,
and chunked commits beside a running relay. Real SQLite files throughout."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from relay.queue import salvage, store
from relay.queue.files import QueueFile
from relay.queue.salvage import EVERY, Delivered, route
from tests.conftest import make_config
from tests.support import queuefile


def body(i: int) -> bytes:
    return json.dumps({"type": "track", "messageId": f"m{i:06d}", "userId": "u", "pad": "x" * 200},
                      separators=(",", ":")).encode()


def old_file(path: Path, count: int, cursors: dict[str, int] | None = None,
             done: tuple[tuple[str, int, int], ...] = ()) -> Path:
    """A queue file as the relay leaves it: ``count`` events (ids 1..count, messageId
    m{id-1}), the destinations' cursors and done ranges, checkpointed into the main file."""
    conn = sqlite3.connect(path, isolation_level=None)
    store.prepare(conn, "os", 1 << 30)
    store.register_destinations(conn, list(cursors or {}), 1.0)
    conn.execute("BEGIN")
    store.insert_events(conn, [(1.0 + i, "wk", f"m{i:06d}", "track", body(i)) for i in range(count)])
    for name, cursor in (cursors or {}).items():
        conn.execute("UPDATE progress SET cursor = ? WHERE destination = ?", (cursor, name))
    conn.executemany("INSERT INTO done_ranges VALUES (?, ?, ?)", done)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return path


def recover(tmp_path: Path, source: Path, destinations: list[str]) -> tuple[salvage.Recovery, Path]:
    live = tmp_path / "live.db"
    with QueueFile.create(str(live), "os", 1 << 30) as queue:
        result = queue.recover_from(str(source), destinations)
    return result, live


def queued_for(live: Path, destination: str) -> list[int]:
    """Old ids (from the messageId) the live queue holds for ``destination``, in queue order."""
    conn = queuefile.connect(live)
    try:
        rows = conn.execute("SELECT message_id FROM events WHERE target IS NULL OR target = ? ORDER BY id",
                            (destination,)).fetchall()
    finally:
        conn.close()
    return [int(m[1:]) + 1 for (m,) in rows]


def cli(source: Path, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay", "recover", str(source), "--json", "--config",
                           str(config)], capture_output=True, text=True, timeout=120)


def readable_markers(path: Path, count: int) -> set[int]:
    """The oracle for a damaged file: ids whose unique body bytes are still in it."""
    found = {int(m) + 1 for m in re.findall(rb'"messageId":"m(\d{6})"', path.read_bytes())}
    return {i for i in found if i <= count}


# --- fault 1: progress respected per destination ----------------------------------------------

ROUTES = [
    # (id, target, cursors, done, live) -> (targets, unknown)
    (5, None, {"a": 10, "b": 10}, {}, ["a", "b"], ((), ())),
    (15, None, {"a": 10, "b": 20}, {}, ["a", "b"], (("a",), ())),
    (25, None, {"a": 10, "b": 20}, {}, ["a", "b"], ((EVERY,), ())),
    (15, None, {"a": 10, "b": 20}, {"a": [(12, 16)]}, ["a", "b"], ((), ())),
    (15, None, {}, {}, ["a", "b"], ((EVERY,), ())),  # no progress: nothing is known delivered
    (15, None, {"a": 10, "gone": 0}, {}, ["a"], ((EVERY,), ("gone",))),
    (5, None, {"a": 10, "gone": 0}, {}, ["a"], ((), ("gone",))),
    (15, None, {"a": 10, "b": 20}, {}, ["a", "b", "new"], (("a", "new"), ())),
    (5, None, {"a": 10}, {}, ["a", "new"], ((), ())),  # finished everywhere it was known
    (15, "b", {"a": 10, "b": 10}, {}, ["a", "b"], (("b",), ())),
    (15, "b", {"a": 10, "b": 20}, {}, ["a", "b"], ((), ())),
    (15, "gone", {"a": 10}, {}, ["a"], ((), ("gone",))),
    (15, None, {"a": 10}, {}, [], ((EVERY,), ())),
]


@pytest.mark.parametrize(("event_id", "target", "cursors", "done", "live", "expected"), ROUTES)
def test_route_queues_an_old_event_only_for_destinations_that_had_not_finished_it(
        event_id: int, target: str | None, cursors: dict[str, int], done: dict[str, list[tuple[int, int]]],
        live: list[str], expected: Any) -> None:
    assert route(event_id, target, Delivered(cursors, done), live) == expected


def test_recover_queues_only_what_each_destination_had_not_delivered(tmp_path: Path) -> None:
    # a had delivered 1..2000, b 1..1000 and 1501..1600 (a done range), c everything
    source = old_file(tmp_path / "old.db", 3000, {"a": 2000, "b": 1000, "c": 3000}, (("b", 1501, 1600),))
    result, live = recover(tmp_path, source, ["a", "b", "c"])
    assert queued_for(live, "a") == list(range(2001, 3001))
    assert queued_for(live, "b") == [*range(1001, 1501), *range(1601, 3001)]
    assert queued_for(live, "c") == []
    assert (result.already_delivered, result.events, result.read, result.unreadable) == (1100, 1900, 3000, 0)
    assert result.rows == 900 + 2 * 1000  # b's part once, the part a and b both need once for each


def test_recover_names_old_destinations_the_config_lacks_and_gives_new_ones_the_backlog(
        tmp_path: Path) -> None:
    source = old_file(tmp_path / "old.db", 1000, {"a": 600, "gone": 300})
    result, live = recover(tmp_path, source, ["a", "new"])
    assert result.for_unknown_destinations == {"gone": 700}
    assert queued_for(live, "a") == list(range(601, 1001))
    assert queued_for(live, "new") == list(range(301, 1001))  # what the old file still held for someone


def test_recover_through_the_cli_does_not_resend_to_a_file_destination(tmp_path: Path) -> None:
    source = old_file(tmp_path / "old.db", 2000, {"out": 1000})
    config = tmp_path / "r.toml"
    config.write_text(f'[queue]\npath = "{tmp_path / "live.db"}"\n'
                      f'[[destinations]]\nname = "out"\ntype = "file"\npath = "{tmp_path / "out"}"\n')
    done = cli(source, config)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["already_delivered"] == 1000
    assert queued_for(tmp_path / "live.db", "out") == list(range(1001, 2001))


# --- fault 2 and 3: partly readable files, exact counts -----------------------------------------

def test_recover_from_a_file_truncated_at_60_percent_reads_every_row_of_its_readable_pages(
        tmp_path: Path) -> None:
    source = old_file(tmp_path / "old.db", 6000)
    size = source.stat().st_size
    with source.open("r+b") as f:
        f.truncate(int(size * 0.6) // 4096 * 4096)
    readable = readable_markers(source, 6000)
    assert 0 < len(readable) < 6000
    result, live = recover(tmp_path, source, ["out"])
    assert queued_for(live, "out") == sorted(readable)  # every row in the readable pages, in order
    assert (result.read, result.unreadable, result.unreadable_exact) == (len(readable), 6000 - len(readable),
                                                                          True)


def test_recover_from_a_file_whose_header_is_zeroed_reads_every_row(tmp_path: Path) -> None:
    source = old_file(tmp_path / "old.db", 5000, {"out": 2000})
    with source.open("r+b") as f:
        f.write(b"\0" * 100)
    with pytest.raises(sqlite3.DatabaseError):  # SQLite itself gives up on it
        queuefile.connect(source).execute("SELECT count(*) FROM events").fetchone()
    result, live = recover(tmp_path, source, ["out"])
    assert queued_for(live, "out") == list(range(2001, 5001))  # progress read too
    assert (result.read, result.unreadable, result.already_delivered) == (5000, 0, 2000)


def test_recover_counts_rows_lost_on_a_torn_page_exactly(tmp_path: Path) -> None:
    source = old_file(tmp_path / "old.db", 3000)
    data = bytearray(source.read_bytes())
    leaf = next(at for at in range(4096, len(data), 4096)
                if data[at] == 0x0D and b'"messageId":"m001500"' in data[at:at + 4096])
    lost = min(16, int.from_bytes(data[leaf + 3:leaf + 5], "big"))  # the page's cell count
    data[leaf + 8:leaf + 40] = b"\xde\xad\xbe\xef" * 8  # its first 16 cell pointers overwritten
    source.write_bytes(bytes(data))
    result, live = recover(tmp_path, source, ["out"])
    ids = queued_for(live, "out")
    assert len(ids) == 3000 - lost and ids == sorted(ids) and 1501 not in ids
    assert (result.unreadable, result.unreadable_exact) == (lost, True)


def test_recover_exits_non_zero_when_nothing_could_be_read_from_a_non_empty_file(tmp_path: Path) -> None:
    config = tmp_path / "r.toml"
    config.write_text(f'[queue]\npath = "{tmp_path / "live.db"}"\n')
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 1000)
    done = cli(garbage, config)
    assert done.returncode == 1
    assert "nothing could be read" in done.stderr
    assert json.loads(done.stdout)["read"] == 0

    empty = old_file(tmp_path / "empty.db", 0)  # a sound queue that held nothing: not a failure
    done = cli(empty, config)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["empty"] is True


def test_recovering_the_same_file_twice_adds_nothing_the_second_time(tmp_path: Path) -> None:
    source = old_file(tmp_path / "old.db", 1500)
    conn = sqlite3.connect(source)
    conn.execute("INSERT INTO dead_letters (failed_at, destination, reason, write_key, body)"
                 " VALUES (1, 'out', 'refused', 'wk', '{}')")
    conn.commit()
    conn.close()
    first, live = recover(tmp_path, source, ["out"])
    second, _ = recover(tmp_path, source, ["out"])
    assert (first.events, first.dead_letters) == (1500, 1)
    assert (second.events, second.duplicates, second.dead_letters, second.dead_letters_skipped) == (
        0, 1500, 0, True)
    assert len(queued_for(live, "out")) == 1500


# --- fault 4: chunked commits beside a running relay --------------------------------------------

async def test_recover_beside_a_running_relay_keeps_ingest_answering_200(start_relay, tmp_path: Path) -> None:
    source = old_file(tmp_path / "old.db", 10_000)  # five recovery transactions
    relay = await start_relay(make_config(tmp_path))
    config = tmp_path / "r.toml"
    config.write_text(f'[queue]\npath = "{relay.db_path}"\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "recover", str(source), "--json", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    answers: list[int] = []
    sent = 0
    while proc.returncode is None:
        message = {"userId": "u", "event": "E", "messageId": f"live-{sent}"}
        status, _, _ = await relay.post("/v1/track", message)
        answers.append(status)
        sent += 1
        try:
            await asyncio.wait_for(proc.wait(), 0.01)
        except TimeoutError:
            pass
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert json.loads(out)["events"] == 10_000
    assert answers and set(answers) == {200}
    ids = relay.rows("SELECT id, message_id FROM events ORDER BY id")
    recovered = [i for i, m in ids if not m.startswith("live-")]
    live = [i for i, m in ids if m.startswith("live-")]
    # the relay's own commits land between recovery transactions, not only before or after
    assert any(recovered[0] < i < recovered[-1] for i in live)
    assert len(live) == len(answers)


def test_recover_in_chunks_releases_the_write_lock_between_them(tmp_path: Path) -> None:
    source = old_file(tmp_path / "old.db", 5000)
    live_path = tmp_path / "live.db"
    with QueueFile.create(str(live_path), "os", 1 << 30):
        pass
    other = sqlite3.connect(live_path, isolation_level=None, timeout=0)  # never waits for the lock
    chunks = 0

    def between_chunks(n: int) -> None:
        nonlocal chunks
        chunks += 1
        other.execute("BEGIN IMMEDIATE")  # "database is locked" if recovery still held it
        other.execute("INSERT INTO meta VALUES ('other-writer', ?) ON CONFLICT DO UPDATE SET value = ?",
                      (chunks, chunks))
        other.execute("COMMIT")

    live = sqlite3.connect(live_path, isolation_level=None)
    result = salvage.recover(str(source), live, ["out"], between_chunks, chunk=1000, pause=0)
    assert (result.events, chunks) == (5000, 5)


def test_recover_reads_the_commits_that_are_only_in_the_old_files_wal(tmp_path: Path) -> None:
    source = old_file(tmp_path / "old.db", 1000, {"out": 500})
    conn = sqlite3.connect(source, isolation_level=None)
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("BEGIN")
    store.insert_events(conn, [(1.0 + i, "wk", f"m{i:06d}", "track", body(i)) for i in range(1000, 3000)])
    conn.execute("UPDATE progress SET cursor = 1500")
    conn.execute("COMMIT")
    moved = tmp_path / "moved.db"  # copied while open, as a power cut leaves it: -wal not checkpointed
    moved.write_bytes(source.read_bytes())
    Path(str(moved) + "-wal").write_bytes(Path(str(source) + "-wal").read_bytes())
    conn.close()
    result, live = recover(tmp_path, moved, ["out"])
    assert queued_for(live, "out") == list(range(1501, 3001))
    assert (result.read, result.unreadable, result.already_delivered) == (3000, 0, 1500)
