"""A row per request: cursors inside rows, eviction of requests of mixed sizes, the writer's
split between the event loop and the connection's thread, and salvage of such rows."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from relay.queue import batches, store
from relay.queue.connection import Connection
from tests.conftest import make_config
from tests.support import queuefile
from tests.support.forwarding import dest, destination_report, wait_until
from tests.support.upstream import FakeUpstream

pytest_plugins = ["tests.support.forwarding_fixtures"]
pytestmark = pytest.mark.usefixtures("leak_check")

SIZES = [3, 10, 1, 25, 100, 4, 57, 2]  # events per request


def requests_of(sizes: list[int], prefix: str, pad: int = 0) -> list[list[dict[str, Any]]]:
    out = []
    for r, size in enumerate(sizes):
        out.append([{"type": "track", "event": "Mixed", "userId": f"u{r}", "messageId": f"{prefix}{r}-{i}",
                     "properties": {"pad": secrets.token_hex(pad // 2) if pad else "", "i": i}}
                    for i in range(size)])
    return out


async def post_requests(relay: Any, requests: list[list[dict[str, Any]]]) -> list[str]:
    sent = []
    for batch in requests:
        status, answer, _ = await relay.post("/v1/batch", {"batch": batch})
        assert (status, answer["accepted"]) == (200, len(batch)), answer
        sent += [m["messageId"] for m in batch]
    return sent


async def test_a_cursor_inside_a_request_resumes_there_after_a_restart(
        start_relay: Any, upstreams: Any, tmp_path: Path) -> None:
    """Batches of 7 cut requests of 3, 10, 1, 25 ... events anywhere: after one delivered
    batch the cursor sits inside the second request's row, after two past the third; a
    restart goes on from there, every event once, in order."""
    empty = await start_relay()  # every request queued before a destination reads any
    sent = await post_requests(empty, requests_of(SIZES, "c"))
    await empty.relay.stop()
    upstream: FakeUpstream = await upstreams(script=[200, 200], default=503)
    first = await start_relay(destinations=[dest("up", upstream.url, max_events=7)])
    await upstream.wait_for(14)
    assert [len(r.batch) for r in upstream.requests[:2]] == [7, 7]
    await wait_until(lambda: first.rows("SELECT cursor FROM progress") == [(14,)], 10, "cursor at 14")
    assert first.rows("SELECT first, count FROM batches ORDER BY first")[:2] == [(1, 3), (4, 10)]
    await first.relay.stop()

    upstream.default = 200
    second = await start_relay(destinations=[dest("up", upstream.url, max_events=7)])
    await upstream.wait_for(len(sent))
    assert upstream.delivered_ids() == sent
    await wait_until(lambda: second.rows("SELECT count(*) FROM batches") == [(0,)], 10, "an empty queue")
    report = await destination_report(second, "up")
    assert (report["pending"], report["delivered"]) == (0, len(sent))  # counted across the restart


async def test_drop_oldest_evicts_whole_requests_of_mixed_sizes_oldest_first(
        start_relay: Any, tmp_path: Path) -> None:
    relay = await start_relay(queue={"max_bytes": 1 << 20, "when_full": "drop_oldest"})
    sent = await post_requests(relay, requests_of(SIZES * 6, "e", pad=1600))  # ~2 MiB compressed
    stored = [mid for (mid,) in relay.rows("SELECT message_id FROM events ORDER BY id")]
    assert stored and len(stored) < len(sent)
    assert stored == sent[-len(stored):]  # what is left is the newest, in order
    first_left = stored[0]
    assert first_left.endswith("-0")  # a request is evicted whole, never half of it
    report = (await relay.relay.queue.status()).to_builtins()
    assert report["queue"]["evicted_events"] == len(sent) - len(stored)
    assert report["queue"]["events"] == len(stored)
    assert report["queue"]["bytes"] <= 1 << 20


async def test_the_writer_commits_on_the_connections_thread_before_any_other_call(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    conn = sqlite3.connect(path, isolation_level=None)
    store.prepare(conn, "fsync", 1 << 30)
    conn.close()
    db = Connection(path)
    await db.open()
    try:
        where: dict[str, int] = {}

        def here(c: sqlite3.Connection, n: int) -> int:
            where["here"] = threading.get_ident()
            c.execute("BEGIN IMMEDIATE")
            store.insert_events(c, [(1.0, "k", f"m{i}", "track", b"{}") for i in range(n)])
            return n

        def there(c: sqlite3.Connection, n: int) -> int:
            where["there"] = threading.get_ident()
            c.execute("COMMIT")
            return n

        def outside(c: sqlite3.Connection) -> bool:
            return c.in_transaction

        staged = asyncio.ensure_future(db.staged(here, there, 5))
        await asyncio.sleep(0)  # ``here`` has run; a call queued now comes after the COMMIT
        assert not await db.call(outside)
        assert await staged == 5
        assert where["here"] == threading.get_ident() != where["there"]

        # busy: a call running on the thread; ``staged`` declines and runs nothing
        gate, entered = threading.Event(), threading.Event()

        def hold(c: sqlite3.Connection) -> None:
            entered.set()
            gate.wait(10)

        held = asyncio.ensure_future(db.call(hold))
        await asyncio.to_thread(entered.wait, 10)
        assert await db.staged(here, there, 1) is None
        gate.set()
        await held
        assert await db.call(lambda c: c.execute("SELECT count(*) FROM batches").fetchone()[0]) == 1
    finally:
        await db.close()


async def test_another_writer_holding_the_lock_delays_a_commit_but_never_the_event_loop(
        start_relay: Any, tmp_path: Path) -> None:
    relay = await start_relay()
    other = sqlite3.connect(relay.db_path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # as `relay recover` or `relay dlq replay` do
    try:
        held = {"userId": "u", "event": "E", "messageId": "held"}
        post = asyncio.ensure_future(relay.post("/v1/track", held))
        await asyncio.sleep(0.3)
        assert not post.done()  # it waits for the lock (on the connection's thread) ...
        async with relay.session.get(relay.url + "/v1/projects/any/settings") as answer:
            assert answer.status == 200  # ... while the loop answers other requests
        other.execute("COMMIT")
        status, _, _ = await asyncio.wait_for(post, 10)
        assert status == 200
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
    assert [e["messageId"] for e in relay.events()] == ["held"]


async def test_recover_splits_rows_into_events_and_counts_a_damaged_rows_events(
        start_relay: Any, tmp_path: Path) -> None:
    """A file the relay wrote (rows of many events), one row's body damaged: recover
    queues every event of the other rows and counts the damaged row's events exactly."""
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    writer = await start_relay(make_config(old_dir))
    sent = await post_requests(writer, requests_of(SIZES, "r", pad=40))
    await writer.relay.stop()
    source = old_dir / "queue.db"
    conn = sqlite3.connect(source, isolation_level=None)
    damaged_first, damaged_count = conn.execute(
        "SELECT first, count FROM batches WHERE count = 25").fetchone()
    conn.execute("UPDATE batches SET body = x'00112233' WHERE first = ?", (damaged_first,))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()

    live = tmp_path / "live.db"
    config = tmp_path / "r.toml"
    config.write_text(f'[queue]\npath = "{live}"\n')
    done = subprocess.run([sys.executable, "-m", "relay", "recover", str(source), "--json", "--config",
                           str(config)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout)
    lost = set(sent[damaged_first - 1:damaged_first - 1 + damaged_count])
    assert (counts["read"], counts["unreadable"]) == (len(sent) - damaged_count, damaged_count)
    conn = queuefile.connect(live)
    try:
        recovered = [m for (m,) in conn.execute("SELECT message_id FROM events ORDER BY id")]
    finally:
        conn.close()
    assert recovered == [m for m in sent if m not in lost]


def test_a_rows_index_must_match_its_body() -> None:
    packed = batches.pack(1.0, "k", ["a", "b"], ["track", "identify"], [b'{"x":1}', b'{"y":2}'])
    events = batches.unpack(10, 1.0, "k", packed.ids, packed.body, packed.codec)
    assert [(e.id, e.message_id, e.type, e.body) for e in events] == [
        (10, "a", "track", b'{"x":1}'), (11, "b", "identify", b'{"y":2}')]
    later = batches.unpack(10, 1.0, "k", packed.ids, packed.body, packed.codec, after=10)
    assert [e.id for e in later] == [11]
    with pytest.raises(ValueError):
        batches.unpack(10, 1.0, "k", packed.ids, packed.body + b"x", packed.codec)


@pytest.mark.parametrize(("bodies", "codec"), [
    ([b"{}"], batches.RAW),  # too small to pay
    ([b'{"type":"track","event":"Same"}'] * 100, batches.ZSTD),  # repetitive: compressed
    ([os.urandom(800)], batches.RAW),  # random: would not shrink, kept as it is
])
def test_a_rows_body_is_compressed_only_when_it_pays(bodies: list[bytes], codec: int) -> None:
    packed = batches.pack(1.0, "k", [str(i) for i in range(len(bodies))], ["track"] * len(bodies), bodies)
    assert packed.codec == codec
    assert batches.body_bytes(packed.body, packed.codec) == b"".join(bodies)


def _file_of_rows(path: Path) -> sqlite3.Connection:
    """A queue file of three rows: 3,000 events for every destination (a file written in bulk),
    2 for destination "b" only, then 5 for every destination (ids 1-3000, 3001-3002, 3003-3007)."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    store.prepare(conn, "os", 64 << 20)
    conn.execute("BEGIN")
    store.insert_events(conn, [(1.0, "k", f"big-{i}", "track", b'{"i":%d}' % i) for i in range(3000)])
    store.insert_events(conn, [(2.0, "k", f"for-b-{i}", "track", b"{}", "b") for i in range(2)])
    store.insert_events(conn, [(3.0, "k", f"small-{i}", "track", b"{}") for i in range(5)])
    conn.execute("COMMIT")
    return conn


@pytest.mark.parametrize(("destination", "after", "limit", "ids"), [
    (None, 0, 0, []),  # nothing asked: nothing read
    ("a", 0, 1, [1]),
    ("a", 10, 5, [11, 12, 13, 14, 15]),  # inside the bulk row
    ("a", 2998, 4, [2999, 3000, 3003, 3004]),  # across rows, past the row for "b" alone
    ("b", 2998, 4, [2999, 3000, 3001, 3002]),
    ("a", 3004, 100, [3005, 3006, 3007]),  # fewer than asked for
    (None, 3000, 3, [3001, 3002, 3003]),  # every destination's events
])
def test_a_read_takes_the_events_after_the_cursor_up_to_the_limit_across_rows(
        tmp_path: Path, destination: str | None, after: int, limit: int, ids: list[int]) -> None:
    conn = _file_of_rows(tmp_path / "queue.db")
    try:
        events = (store.read_all_after(conn, after, limit) if destination is None
                  else store.read_after(conn, destination, after, limit))
        assert [e.id for e in events] == ids
        assert [e.body for e in events if e.id <= 3000] == [b'{"i":%d}' % (i - 1) for i in ids if i <= 3000]
    finally:
        conn.close()
