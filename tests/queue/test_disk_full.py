"""Full disk: SQLite reports SQLITE_FULL; ingest answers 503 + Retry-After, loses nothing
acknowledged, and resumes by itself when space returns."""

from __future__ import annotations

import sqlite3


def limit_pages(extra: int):
    def apply(conn: sqlite3.Connection) -> int:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        return int(conn.execute(f"PRAGMA max_page_count = {pages + extra}").fetchone()[0])
    return apply


def lift_limit(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA max_page_count = 1000000").fetchone()[0])


async def test_disk_full_answers_503_keeps_acknowledged_events_and_recovers(start_relay):
    relay = await start_relay(queue={"dedup_window": 0})
    acknowledged: list[str] = []
    await relay.relay.queue._db.call(limit_pages(3))
    refused = None
    padding = "x" * 3000
    for i in range(200):
        status, body, headers = await relay.post(
            "/v1/track", {"userId": "u", "event": "E", "messageId": f"a{i}", "properties": {"p": padding}})
        if status == 200:
            acknowledged.append(f"a{i}")
            continue
        refused = (status, body, headers)
        break
    assert refused is not None, "the page limit never filled"
    status, body, headers = refused
    assert status == 503 and body["success"] is False and body["code"] == "queue_full"
    assert "full" in body["message"] and int(headers["Retry-After"]) > 0
    assert relay.relay.queue.full_since is not None

    # still full: a batch is refused as a whole, nothing of it stored
    status, body, _ = await relay.post("/v1/batch", {"batch": [
        {"type": "track", "userId": "u", "event": "E", "messageId": "b1", "properties": {"p": padding}}]})
    assert status == 503

    await relay.relay.queue._db.call(lift_limit)  # space returns
    status, body, _ = await relay.post("/v1/track", {"userId": "u", "event": "E", "messageId": "after"})
    assert (status, body) == (200, {"success": True})
    assert relay.relay.queue.full_since is None

    stored = [e["messageId"] for e in relay.events()]
    assert stored == [*acknowledged, "after"]
