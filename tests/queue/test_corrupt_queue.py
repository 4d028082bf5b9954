"""A damaged queue file at start: detected, moved aside intact, fresh queue, salvage with recover."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from relay.queue import batches, salvage
from tests.conftest import make_config


def fill_queue(path: Path, count: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    from relay.queue import store

    store.prepare(conn, "os", 1 << 30)
    rows = [(1.0 + i, "wk", f"m{i}", "track",
             json.dumps({"type": "track", "messageId": f"m{i}", "pad": "x" * 200}).encode())
            for i in range(count)]
    conn.execute("BEGIN")
    store.insert_events(conn, rows)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def damage_leaf_holding(path: Path, marker: bytes) -> None:
    """Overwrite the cell pointers of the table-leaf page that stores ``marker`` (a torn page)."""
    data = path.read_bytes()
    for start in range(4096, len(data), 4096):
        page = data[start:start + 4096]
        if page[0] == 0x0D and marker in page:
            with path.open("r+b") as f:
                f.seek(start + 8)
                f.write(b"\xde\xad\xbe\xef" * 8)
            return
    raise AssertionError("no leaf page holds the marker")


def readable_ids(path: Path, count: int) -> list[str]:
    """The oracle: every row SQLite can still read from the damaged file, looked up one by one."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    found = []
    for rowid in range(1, count + 1):
        try:
            row = conn.execute("SELECT ids FROM batches WHERE first = ?", (rowid,)).fetchone()
        except sqlite3.DatabaseError:
            continue
        if row:
            found += batches.index_of(row[0])[0]
    conn.close()
    return found


async def test_garbage_file_is_moved_aside_and_a_fresh_queue_takes_events(start_relay, tmp_path):
    queue = tmp_path / "queue.db"
    queue.write_bytes(b"this is not a database" * 1000)
    relay = await start_relay(make_config(tmp_path))
    [moved] = list(tmp_path.glob("queue.db.corrupt-*"))
    assert moved.read_bytes() == b"this is not a database" * 1000  # kept intact
    status, body, _ = await relay.post("/v1/track", {"userId": "u", "event": "E"})
    assert (status, body) == (200, {"success": True})
    report = (await relay.relay.queue.status()).to_builtins()
    assert report["queue"]["corrupt_files"] == 1
    assert report["queue"]["last_corrupt_file"] == str(moved)


async def test_recover_salvages_every_readable_event_from_a_damaged_file(start_relay, tmp_path):
    queue = tmp_path / "queue.db"
    fill_queue(queue, 3000)
    damage_leaf_holding(queue, b'"m1500"')
    assert salvage.problem(str(queue)) is not None
    relay = await start_relay(make_config(tmp_path))
    [moved] = [p for p in tmp_path.glob("queue.db.corrupt-*") if not p.name.endswith(("-wal", "-shm"))]
    assert relay.events() == []

    config = tmp_path / "r.toml"
    config.write_text(f'[queue]\npath = "{queue}"\n')
    done = subprocess.run([sys.executable, "-m", "relay", "recover", str(moved), "--json", "--config",
                           str(config)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout)
    ids = [e["messageId"] for e in relay.events()]
    assert counts["events"] == len(ids)
    assert ids == readable_ids(moved, 3000)  # every readable row is back, in order
    assert "m1500" not in ids and 3000 - 40 <= len(ids) < 3000  # only the torn page's rows are lost

    again = subprocess.run([sys.executable, "-m", "relay", "recover", str(moved), "--json", "--config",
                            str(config)], capture_output=True, text=True, timeout=120)
    assert json.loads(again.stdout)["duplicates"] == len(ids)  # recovering twice adds nothing
