"""The references bench/ingest.py measures beside the relay, in the same run, on the same CPU.

    .venv/bin/python bench/reference.py sqlite --body body.json --commit-events 6400 --dir /tmp
    .venv/bin/python bench/reference.py codec --body body.json

``sqlite``: raw SQLite, no relay code on the write path: the request body's messages, encoded
once beforehand, are inserted as rows of the relay's own schema (``relay.store.prepare``,
durability fsync: synchronous=FULL, WAL) with one ``executemany`` and one commit per
``--commit-events`` rows, as fast as one thread can, for ``--duration`` seconds. No dedup, no
decoding: the most a queue that keeps one row per event can take on this disk and core.

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

from relay import store

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
            rows: list[store.Row] = []
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
    parser.add_argument("kind", choices=["sqlite", "codec"])
    parser.add_argument("--body", required=True, help="a request body (JSON), as the load generator sends")
    parser.add_argument("--commit-events", type=int, default=6400, help="rows a transaction (sqlite)")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the database goes (sqlite)")
    args = parser.parse_args(argv)
    body = Path(args.body).read_bytes().replace(b"@@MID@@", b"reference")
    if args.kind == "sqlite":
        result = sqlite_reference(body, max(1, args.commit_events), args.duration, args.dir)
    else:
        result = codec_reference(body, args.duration)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
