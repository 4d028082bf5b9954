"""Upgrading: a queue file of version 1 (one row per event) opened by this version and drained.

No user loses a queued event, a destination's progress or a dedup sighting by upgrading:
the events keep their ids, so every cursor and done range still means what it meant.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from relay.queue import store
from tests.support import queuefile, v1queue
from tests.support.forwarding import dest, destination_report, post_events, wait_until
from tests.support.upstream import FakeUpstream

pytest_plugins = ["tests.support.forwarding_fixtures"]
pytestmark = pytest.mark.usefixtures("leak_check")

EVENTS = 250


def body(i: int, target: str | None = None) -> bytes:
    message = {"type": "track", "event": "Old", "userId": f"u{i % 7}", "messageId": f"old-{i}",
               "properties": {"i": i, "for": target or "all"},
               "receivedAt": "2026-11-30T10:00:00.000Z", "timestamp": "2026-11-30T10:00:00.000Z"}
    return json.dumps(message, separators=(",", ":")).encode()


def version_1_file(path: Path) -> list[tuple[float, str, str, str, bytes, str | None]]:
    """250 events as version 1 stored them: arrivals shared by runs of events (requests)
    and one replayed dead letter for destination "b" only (id 120); "a" had finished
    through 100 and, beyond its cursor, 150..160; "b" nothing; one ingest dead letter;
    dedup sightings in both of its generations."""
    events = []
    for i in range(1, EVENTS + 1):
        target = "b" if i == 120 else None
        events.append((1_700_000_000.0 + i // 10, "wk", f"old-{i}", "track", body(i, target), target))
    v1queue.build(path, events, cursors={"a": 100, "b": 0},
                  seen=[("wk", "seen-in-old-generation", 4_000_000_000.0)],
                  logged=[("wk", "seen-in-log", 4_000_000_000.0)])
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("INSERT INTO done_ranges VALUES ('a', 150, 160)")
    conn.execute("INSERT INTO dead_letters (failed_at, destination, reason, write_key, message_id, body)"
                 " VALUES (1.0, NULL, 'message has no type', 'wk', 'bad-1', x'7b7d')")
    conn.close()
    return events


def ids(upstream: FakeUpstream) -> list[int]:
    return [int(m.split("-")[1]) for m in upstream.delivered_ids() if m.startswith("old-")]


async def test_a_version_1_file_is_migrated_on_start_and_drained_by_every_destination(
        start_relay: Any, upstreams: Any, tmp_path: Path) -> None:
    version_1_file(tmp_path / "queue.db")
    a: FakeUpstream = await upstreams()
    b: FakeUpstream = await upstreams()
    relay = await start_relay(queue={"dedup_window": 3600},
                              destinations=[dest("a", a.url, max_events=40), dest("b", b.url, max_events=40)])
    expected_a = [i for i in range(101, EVENTS + 1) if not 150 <= i <= 160 and i != 120]
    await a.wait_for(len(expected_a))
    await b.wait_for(EVENTS)
    assert ids(a) == expected_a  # its cursor and its done range kept their meaning
    assert ids(b) == list(range(1, EVENTS + 1))  # the replayed dead letter too, in its place
    assert {e["messageId"]: e["properties"]["i"] for e in b.delivered}["old-7"] == 7  # bodies intact

    conn = sqlite3.connect(relay.db_path)
    try:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "events" not in tables and "batches" in tables
        assert store.meta_int(conn, "schema_version") == store.SCHEMA_VERSION
    finally:
        conn.close()
    assert relay.dead_letters() == [(None, "message has no type", "bad-1", b"{}")]

    # new events are numbered after the old ones, and both destinations take them
    await post_events(relay, ["new-1", "new-2"])
    await a.wait_for(len(expected_a) + 2)
    await b.wait_for(EVENTS + 2)
    await wait_until(lambda: relay.rows("SELECT count(*) FROM events") == [(0,)], 10, "an empty queue")
    for name, delivered in (("a", len(expected_a) + 2), ("b", EVENTS + 2)):
        report = await destination_report(relay, name)
        assert (report["pending"], report["delivered"]) == (0, delivered)
    conn = sqlite3.connect(relay.db_path)
    try:
        assert store.last_event_id(conn) == EVENTS + 2
    finally:
        conn.close()

    # the old file's dedup memory still answers
    status, answer, _ = await relay.post("/v1/batch", {"writeKey": "wk", "batch": [
        {"type": "track", "event": "E", "userId": "u", "messageId": "seen-in-old-generation"},
        {"type": "track", "event": "E", "userId": "u", "messageId": "seen-in-log"},
        {"type": "track", "event": "E", "userId": "u", "messageId": "never-seen"}]})
    assert (status, answer["accepted"], answer["duplicates"]) == (200, 1, 2)


def test_a_migration_cut_short_goes_on_at_the_next_start(tmp_path: Path, monkeypatch: Any) -> None:
    """Each chunk moves in a transaction of its own: a crash between chunks leaves some
    events moved and the rest in the old table; the next start moves the rest, once each."""
    path = tmp_path / "queue.db"
    events = version_1_file(path)
    monkeypatch.setattr(store, "MIGRATE_CHUNK", 60)
    conn = sqlite3.connect(path, isolation_level=None)
    calls = 0
    real = store._runs

    def crash_on_the_third_chunk(rows: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("killed")
        return real(rows)

    monkeypatch.setattr(store, "_runs", crash_on_the_third_chunk)
    store.prepare(conn, "fsync", 1 << 30)
    with pytest.raises(RuntimeError):
        store.migrate(conn)
    conn.close()
    conn = sqlite3.connect(path, isolation_level=None)
    left = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    assert left == EVENTS - 120  # two chunks moved, the third rolled back
    monkeypatch.setattr(store, "_runs", real)
    store.prepare(conn, "fsync", 1 << 30)
    store.migrate(conn)
    rows = queuefile.event_rows(conn)
    conn.close()
    assert [(r[0], r[3], r[5], r[6]) for r in rows] == [
        (i, e[2], e[4], e[5]) for i, e in enumerate(events, start=1)]


def test_a_read_only_command_on_a_version_1_file_says_the_relay_migrates_it(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    version_1_file(path)
    config = tmp_path / "r.toml"
    config.write_text(f'[queue]\npath = "{path}"\n')
    done = subprocess.run([sys.executable, "-m", "relay", "status", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "older version of the relay" in done.stderr + done.stdout
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == EVENTS  # untouched
    finally:
        conn.close()
