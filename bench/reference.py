"""The references bench/ingest.py measures beside the relay, in the same run, on the same CPU.

    .venv/bin/python bench/reference.py sqlite --body body.json --commit-events 6400 --dir /tmp
    .venv/bin/python bench/reference.py sqlite-request --body body.json --commit-events 6400
    .venv/bin/python bench/reference.py codec --body body.json

``sqlite``: raw SQLite, no relay code on the write path: the request body's messages, encoded
once beforehand, are inserted as rows of the relay's own schema (``relay.queue.store.prepare``,
durability fsync: synchronous=FULL, WAL) with one ``executemany`` and one commit per
``--commit-events`` rows, as fast as one thread can, for ``--duration`` seconds. No dedup, no
decoding: the most a queue that keeps one row per event can take on this disk and core.

``sqlite-request``: the same, but one row per request (its events' encoded bodies joined in one
blob, in a scratch table of the same file): what a queue that stores whole requests could take.

``codec``: the JSON work any relay must do per request, with the libraries the relay uses:
decode the body with msgspec, encode each message again, for ``--duration`` seconds.

Each prints one JSON line: {"events": N, "seconds": S, "events_per_s": R}.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay import types
from relay.queue import store

MAX_BYTES = 64 << 30


def messages(body: bytes) -> list[dict[str, Any]]:
    data = msgspec.json.decode(body)
    batch = data.get("batch")
    if isinstance(batch, list):
        return [m for m in batch if isinstance(m, dict)]
    return [data]


def sqlite_reference(body: bytes, commit_events: int, duration: float, directory: str) -> dict[str, Any]:
    encode = msgspec.json.Encoder().encode
    template = messages(body)
    with tempfile.TemporaryDirectory(prefix="relay-bench-sqlite-", dir=directory) as tmp:
        conn = sqlite3.connect(str(Path(tmp) / "queue.db"), isolation_level=None)
        try:
            store.prepare(conn, "fsync", MAX_BYTES)
            rows: list[types.Row] = []
            while len(rows) < commit_events:
                for message in template:
                    message_id = str(uuid.uuid4())
                    rows.append((time.time(), "bench-write-key", message_id, "track",
                                 encode({**message, "messageId": message_id})))
            rows = rows[:commit_events]
            events = 0
            start = time.perf_counter()
            deadline = start + duration
            while time.perf_counter() < deadline:
                conn.execute("BEGIN IMMEDIATE")
                store.insert_events(conn, rows)
                conn.execute("COMMIT")
                events += len(rows)
                if events % (commit_events * 64) == 0:  # as the relay's checkpointer does, now and then
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            seconds = time.perf_counter() - start
        finally:
            conn.close()
    return {"events": events, "seconds": seconds, "events_per_s": events / seconds}


def request_rows_reference(body: bytes, commit_events: int, duration: float,
                           directory: str) -> dict[str, Any]:
    encode = msgspec.json.Encoder().encode
    template = messages(body)
    blob = b"\n".join(encode({**m, "messageId": str(uuid.uuid4())}) for m in template)
    per_commit = max(1, commit_events // len(template))
    with tempfile.TemporaryDirectory(prefix="relay-bench-sqlite-", dir=directory) as tmp:
        conn = sqlite3.connect(str(Path(tmp) / "queue.db"), isolation_level=None)
        try:
            store.prepare(conn, "fsync", MAX_BYTES)
            conn.execute("CREATE TABLE requests (id INTEGER PRIMARY KEY, received_at REAL NOT NULL,"
                         " write_key TEXT NOT NULL, events INTEGER NOT NULL, body BLOB NOT NULL)")
            rows = [(time.time(), "bench-write-key", len(template), blob)] * per_commit
            events = commits = 0
            start = time.perf_counter()
            deadline = start + duration
            while time.perf_counter() < deadline:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany("INSERT INTO requests (received_at, write_key, events, body)"
                                 " VALUES (?,?,?,?)", rows)
                conn.execute("COMMIT")
                events += per_commit * len(template)
                commits += 1
                if commits % 64 == 0:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            seconds = time.perf_counter() - start
        finally:
            conn.close()
    return {"events": events, "seconds": seconds, "events_per_s": events / seconds}


def codec_reference(body: bytes, duration: float) -> dict[str, Any]:
    decode = msgspec.json.Decoder().decode
    encode = msgspec.json.Encoder().encode
    events = 0
    start = time.perf_counter()
    deadline = start + duration
    while time.perf_counter() < deadline:
        data = decode(body)
        batch = data.get("batch") if isinstance(data, dict) else None
        for message in batch if isinstance(batch, list) else [data]:
            encode(message)
            events += 1
    seconds = time.perf_counter() - start
    return {"events": events, "seconds": seconds, "events_per_s": events / seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["sqlite", "sqlite-request", "codec"])
    parser.add_argument("--body", required=True, help="a request body (JSON), as the load generator sends")
    parser.add_argument("--commit-events", type=int, default=6400, help="rows a transaction (sqlite)")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the database goes (sqlite)")
    args = parser.parse_args(argv)
    body = Path(args.body).read_bytes().replace(b"@@MID@@", b"reference")
    if args.kind == "sqlite":
        result = sqlite_reference(body, max(1, args.commit_events), args.duration, args.dir)
    elif args.kind == "sqlite-request":
        result = request_rows_reference(body, max(1, args.commit_events), args.duration, args.dir)
    else:
        result = codec_reference(body, args.duration)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
