"""Status figures must not cost a scan of the events table, whatever the backlog: they are
read on the queue's own thread (every /metrics scrape, every STATUS= line), where a scan
of a million events would stall commits. Checked on SQLite's own query plans."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from relay.queue import store
from relay.types import Live


def plans_of(conn: sqlite3.Connection, call) -> list[tuple[str, str]]:
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    call()
    conn.set_trace_callback(None)
    plans = []
    for sql in statements:
        if not sql.lstrip().upper().startswith("SELECT"):
            continue
        for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall():
            plans.append((sql, row[-1]))
    return plans


def test_status_and_destination_status_search_the_events_table_never_scan_it(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "q.db", isolation_level=None)
    store.prepare(conn, "os", 1 << 30)
    store.insert_events(conn, [(1.0, "k", f"m{i}", "track", b"{}") for i in range(100)])
    store.register_destinations(conn, ["up"], 0.0)
    plans = plans_of(conn, lambda: store.report(conn, [], "q", 1 << 30, 0.0))
    plans += plans_of(conn, lambda: store.destination_status(conn, Live("up", "segment"), 0.0))
    assert any("batches" in sql for sql, _ in plans)
    scans = [(sql, plan) for sql, plan in plans if plan.startswith("SCAN batches")]
    assert scans == []


def _status_steps(tmp_path: Path, backlog: int) -> int:
    """SQLite virtual-machine steps (in units of 100) that one status read costs."""
    conn = sqlite3.connect(tmp_path / f"q{backlog}.db", isolation_level=None)
    store.prepare(conn, "os", 1 << 30)
    store.register_destinations(conn, ["up", "other"], 0.0)
    store.insert_events(conn, [(1.0, "k", f"m{i}", "track", b"{}") for i in range(backlog)])
    store.insert_events(conn, [(1.0, "k", "replayed", "track", b"{}", "other")])
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(count, 100)
    store.report(conn, [Live("up", "segment"), Live("other", "segment")], "q", 1 << 30, 0.0)
    conn.set_progress_handler(None, 0)
    conn.close()
    return steps


def test_status_costs_the_same_whatever_the_backlog(tmp_path: Path) -> None:
    small, large = _status_steps(tmp_path, 1_000), _status_steps(tmp_path, 100_000)
    assert large <= small + 2, (small, large)  # a walk of the backlog would cost ~100x
