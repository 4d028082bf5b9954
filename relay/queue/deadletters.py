"""Inspecting and acting on the dead-letter table from the command line.

Dead letters come from two places: ingest (``destination`` is NULL: the message broke the
protocol or a ``before`` plugin refused it) and delivery (a destination refused it for
good). Replaying a delivery dead letter queues it again for that destination only;
replaying an ingest dead letter runs it through ingest validation again and queues it
for every destination when it now passes.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from relay import timestamps
from relay.queue import store
from relay.types import Arrival, Event

INGEST = "(ingest)"
_decode = msgspec.json.decode


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    destination: str | None = None  # a destination name, INGEST, or None for all
    reason: str | None = None  # a substring of the reason
    ids: tuple[int, ...] = ()

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if self.destination == INGEST:
            clauses.append("destination IS NULL")
        elif self.destination is not None:
            clauses.append("destination = ?")
            params.append(self.destination)
        if self.reason:
            clauses.append("instr(reason, ?) > 0")
            params.append(self.reason)
        if self.ids:
            clauses.append(f"id IN ({','.join('?' * len(self.ids))})")
            params.extend(self.ids)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


COLUMNS = ("id", "failed_at", "destination", "reason", "status", "response", "attempts",
           "received_at", "write_key", "message_id", "body")


def _row(values: tuple[Any, ...], with_body: bool) -> dict[str, Any]:
    row = dict(zip(COLUMNS, values, strict=True))
    row["failed_at"] = timestamps.iso(timestamps.from_epoch(row["failed_at"]))
    if row["received_at"] is not None:
        row["received_at"] = timestamps.iso(timestamps.from_epoch(row["received_at"]))
    row["destination"] = row["destination"] or INGEST
    row.pop("write_key")  # a secret: never printed
    body = row.pop("body")
    if with_body:
        try:
            row["event"] = _decode(body)
        except msgspec.DecodeError:
            row["event"] = bytes(body).decode("utf-8", "replace")
    return row


def count(conn: sqlite3.Connection, flt: DeadLetterFilter) -> int:
    where, params = flt.where()
    return int(conn.execute(f"SELECT count(*) FROM dead_letters{where}", params).fetchone()[0])


def listing(
    conn: sqlite3.Connection, flt: DeadLetterFilter, limit: int, with_body: bool = False
) -> list[dict[str, Any]]:
    where, params = flt.where()
    rows = conn.execute(
        f"SELECT {', '.join(COLUMNS)} FROM dead_letters{where} ORDER BY id LIMIT ?", [*params, limit]
    ).fetchall()
    return [_row(r, with_body) for r in rows]


def iterate(conn: sqlite3.Connection, flt: DeadLetterFilter, chunk: int = 1000) -> Iterator[dict[str, Any]]:
    where, params = flt.where()
    last = 0
    joiner = " AND " if where else " WHERE "
    while True:
        rows = conn.execute(
            f"SELECT {', '.join(COLUMNS)} FROM dead_letters{where}{joiner}id > ? ORDER BY id LIMIT ?",
            [*params, last, chunk],
        ).fetchall()
        if not rows:
            return
        for r in rows:
            yield _row(r, with_body=True)
        last = rows[-1][0]


@dataclass(slots=True)
class ReplayResult:
    queued: int = 0
    still_invalid: int = 0


Admit = Callable[[object, Arrival], "list[Event] | None"]
"""Admission (``relay.ingest.admission``) for an ingest dead letter's message: the events
to queue, or None when it is refused again."""


def replay(conn: sqlite3.Connection, flt: DeadLetterFilter, admit: Admit,
           progress: Callable[[int], None] | None = None, chunk: int = 500) -> ReplayResult:
    """Queue matching dead letters again (each chunk in one transaction) and remove them.
    Ingest dead letters are admitted again, as if they had just arrived."""
    result = ReplayResult()
    where, params = flt.where()
    joiner = " AND " if where else " WHERE "
    last = 0
    while True:
        rows = conn.execute(
            f"SELECT id, destination, write_key, message_id, received_at, body FROM dead_letters"
            f"{where}{joiner}id > ? ORDER BY id LIMIT ?", [*params, last, chunk],
        ).fetchall()
        if not rows:
            return result
        last = rows[-1][0]
        with store.transaction(conn):
            for letter_id, destination, write_key, message_id, received_at, body in rows:
                event_rows = _requeue(destination, write_key, message_id, received_at, body, admit)
                if event_rows is None:
                    result.still_invalid += 1
                    continue
                store.insert_events(conn, event_rows)
                conn.execute("DELETE FROM dead_letters WHERE id = ?", (letter_id,))
                result.queued += 1
        if progress:
            progress(len(rows))


def _requeue(destination: str | None, write_key: str, message_id: str | None, received_at: float | None,
             body: bytes, admit: Admit) -> list[tuple[Any, ...]] | None:
    when = received_at if received_at is not None else time.time()
    try:
        message = _decode(body)
    except msgspec.DecodeError:
        return None
    if destination is not None:
        kind = message.get("type", "track") if isinstance(message, dict) else "track"
        return [(when, write_key, message_id or "", kind, bytes(body), destination)]
    events = admit(message, Arrival(write_key=write_key, received_at=datetime.fromtimestamp(when, UTC)))
    if not events:
        return None
    return [(e.received_at, e.write_key, e.message_id, e.type, e.encode(), None) for e in events]


def purge(conn: sqlite3.Connection, flt: DeadLetterFilter) -> int:
    where, params = flt.where()
    with store.transaction(conn):
        deleted = conn.execute(f"DELETE FROM dead_letters{where}", params).rowcount
    return int(deleted)
