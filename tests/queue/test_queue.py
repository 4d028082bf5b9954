"""The durable queue: group commit, dedup by (writeKey, messageId), the byte cap in both modes."""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from relay.config import QueueConfig
from relay.errors import QueueClosed
from relay.queue import Queue, facade, sightings
from relay.types import Event
from tests.conftest import make_config
from tests.support import queuefile

MIB = 1 << 20
CONCURRENT = 200


def _event(mid: str, write_key: str = "k", size: int = 0) -> Event:
    body = {"type": "track", "userId": "u", "event": "E", "messageId": mid, "properties": {"pad": "x" * size}}
    return Event(message_id=mid, write_key=write_key, type="track", received_at=time.time(), body=body)


def _stored(db: str | Path) -> list[tuple[str, str]]:
    conn = queuefile.connect(db)
    try:
        return conn.execute("SELECT write_key, message_id FROM events ORDER BY id").fetchall()
    finally:
        conn.close()


def _track(mid: str, pad: int = 0) -> dict[str, Any]:
    """A track event with ``pad`` characters of random text: the queue compresses what it
    stores, and the byte-cap tests need events whose size it cannot shrink."""
    return {"userId": "u1", "event": "Cap Test", "messageId": mid,
            "properties": {"pad": secrets.token_hex(pad // 2 + 1)[:pad]}}


# --- group commit ------------------------------------------------------------------------------


async def test_concurrent_appends_share_a_transaction_and_are_on_disk_when_they_return(
    tmp_path: Path,
) -> None:
    queue = Queue(QueueConfig(path=str(tmp_path / "q.db"), durability="fsync"))
    await queue.start()
    try:
        before = queue.commit_seq
        ids = [str(uuid.uuid4()) for _ in range(CONCURRENT)]
        results = await asyncio.wait_for(
            asyncio.gather(*(queue.append([_event(mid)]) for mid in ids)), 30
        )
        commits = queue.commit_seq - before
        # Read back through a connection of our own: acknowledged means committed.
        stored = [mid for _, mid in _stored(queue.path)]
    finally:
        await queue.stop()
    assert [r.stored for r in results] == [1] * CONCURRENT
    assert sorted(stored) == sorted(ids)
    assert 1 <= commits < CONCURRENT, f"{CONCURRENT} appends took {commits} commits"


async def test_concurrent_http_requests_all_commit_in_fewer_transactions(
    start_relay: Callable[..., Any],
) -> None:
    relay = await start_relay(queue={"durability": "fsync"})
    before = relay.relay.queue.commit_seq
    ids = [str(uuid.uuid4()) for _ in range(CONCURRENT)]
    answers = await asyncio.wait_for(
        asyncio.gather(*(relay.post("/v1/track", _track(mid)) for mid in ids)), 60
    )
    commits = relay.relay.queue.commit_seq - before
    assert [(status, body) for status, body, _ in answers] == [(200, {"success": True})] * CONCURRENT
    assert sorted(mid for _, mid in _stored(relay.db_path)) == sorted(ids)
    assert 1 <= commits < CONCURRENT, f"{CONCURRENT} requests took {commits} commits"


async def test_stop_commits_what_is_waiting_and_then_refuses(tmp_path: Path) -> None:
    queue = Queue(QueueConfig(path=str(tmp_path / "q.db")))
    await queue.start()
    ids = [str(uuid.uuid4()) for _ in range(50)]
    waiting = [asyncio.create_task(queue.append([_event(mid)])) for mid in ids]
    await asyncio.sleep(0)  # every append is now waiting for its commit
    await asyncio.wait_for(queue.stop(), 30)
    results = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 10)
    assert [getattr(r, "stored", r) for r in results] == [1] * 50
    assert sorted(mid for _, mid in _stored(tmp_path / "q.db")) == sorted(ids)
    with pytest.raises(QueueClosed):
        await queue.append([_event("late")])


# --- dedup ---------------------------------------------------------------------------------------


async def test_a_repeated_message_id_is_acknowledged_and_stored_once(start_relay: Callable[..., Any]) -> None:
    relay = await start_relay()
    headers = {"Authorization": "Basic " + "a2V5LWE6"}  # "key-a:"
    first = await relay.post("/v1/track", _track("m-1"), headers=headers)
    again = await relay.post("/v1/track", _track("m-1"), headers=headers)
    assert first[:2] == (200, {"success": True})
    assert again[:2] == (200, {"success": True, "duplicate": True})
    batch = {"writeKey": "key-a", "batch": [{"type": "track", **_track("m-1")},
                                            {"type": "track", **_track("m-2")},
                                            {"type": "track", **_track("m-2")}]}
    status, body, _ = await relay.post("/v1/batch", batch)
    assert (status, body) == (200, {"success": True, "accepted": 1, "duplicates": 2, "rejected": 0})
    assert _stored(relay.db_path) == [("key-a", "m-1"), ("key-a", "m-2")]


async def test_the_same_message_id_under_another_write_key_is_another_event(
    start_relay: Callable[..., Any],
) -> None:
    relay = await start_relay()
    for key in ("key-a", "key-b", "key-a"):
        status, _, _ = await relay.post("/v1/track", {**_track("m-1"), "writeKey": key})
        assert status == 200
    assert _stored(relay.db_path) == [("key-a", "m-1"), ("key-b", "m-1")]


async def test_dedup_window_zero_stores_every_copy(start_relay: Callable[..., Any]) -> None:
    relay = await start_relay(queue={"dedup_window": 0})
    for _ in range(3):
        assert (await relay.post("/v1/track", _track("m-1")))[:2] == (200, {"success": True})
    assert _stored(relay.db_path) == [("", "m-1")] * 3


async def test_dedup_outlives_a_restart(tmp_path: Path, start_relay: Callable[..., Any]) -> None:
    first = await start_relay()
    assert (await first.post("/v1/track", _track("m-1")))[0] == 200
    await first.relay.stop()
    second = await start_relay()
    assert second.db_path == first.db_path
    assert (await second.post("/v1/track", _track("m-1")))[:2] == (200, {"success": True, "duplicate": True})
    assert _stored(second.db_path) == [("", "m-1")]


async def test_a_repeat_after_the_dedup_window_is_stored_again(start_relay: Callable[..., Any]) -> None:
    relay = await start_relay(queue={"dedup_window": 1})
    assert (await relay.post("/v1/track", _track("m-1")))[:2] == (200, {"success": True})
    await asyncio.sleep(1.5)  # past the window (not a timing assertion: the window is the input)
    assert (await relay.post("/v1/track", _track("m-1")))[:2] == (200, {"success": True})
    assert _stored(relay.db_path) == [("", "m-1")] * 2


# --- the byte cap ----------------------------------------------------------------------------------


def _status_json(tmp_path: Path, db_path: str) -> dict[str, Any]:
    config = tmp_path / "status.toml"
    config.write_text(f'[queue]\npath = "{db_path}"\n')
    done = subprocess.run(
        [sys.executable, "-m", "relay", "status", "--json", "--config", str(config)],
        capture_output=True, text=True, timeout=30, check=True,
    )
    report: dict[str, Any] = json.loads(done.stdout)
    return report


async def test_when_full_reject_answers_503_and_loses_nothing_acknowledged(
    tmp_path: Path, start_relay: Callable[..., Any]
) -> None:
    relay = await start_relay(queue={"max_bytes": MIB, "when_full": "reject"})
    acked: list[str] = []
    refused: list[tuple[list[str], int, Any, Any]] = []

    async def fill(worker: int) -> None:
        for n in range(60):  # 60 x 4 workers x ~40 KB is several times the cap
            ids = [f"w{worker}-{n}-{i}" for i in range(10)]
            batch = {"batch": [{"type": "track", **_track(mid, 4000)} for mid in ids]}
            status, body, headers = await relay.post("/v1/batch", batch)
            if status == 200:
                assert body == {"success": True, "accepted": 10, "duplicates": 0, "rejected": 0}
                acked.extend(ids)
            else:
                refused.append((ids, status, body, headers))
                if len(refused) >= 8:
                    return

    await asyncio.wait_for(asyncio.gather(*(fill(w) for w in range(4))), 60)

    assert acked, "nothing was accepted before the cap"
    assert refused, "the cap was never reached"
    for _, status, body, headers in refused:
        assert status == 503
        assert int(headers["Retry-After"]) > 0
        assert headers["Content-Type"].startswith("application/json")
        assert body["success"] is False
        assert body["code"] == "queue_full"
        assert body["message"] and body["error"] == body["message"]
    stored = [mid for _, mid in _stored(relay.db_path)]
    assert sorted(stored) == sorted(acked), "an acknowledged event is missing or a refused one was stored"
    report = _status_json(tmp_path, relay.db_path)
    assert report["queue"]["events"] == len(acked)
    assert report["queue"]["bytes"] <= MIB
    assert report["queue"]["evicted_events"] == 0
    # A refusal is no dead letter: the client still has the events and retries them.
    assert report["dead_letter"]["events"] == 0


async def test_when_full_drop_oldest_accepts_new_events_and_counts_the_evicted(
    tmp_path: Path, start_relay: Callable[..., Any]
) -> None:
    relay = await start_relay(queue={"max_bytes": MIB, "when_full": "drop_oldest"})
    sent: list[str] = []
    for n in range(80):  # about 3 MiB of events through a 1 MiB queue
        ids = [f"r{n}-{i}" for i in range(10)]
        batch = {"batch": [{"type": "track", **_track(mid, 4000)} for mid in ids]}
        status, body, _ = await relay.post("/v1/batch", batch)
        assert (status, body) == (200, {"success": True, "accepted": 10, "duplicates": 0, "rejected": 0}), n
        sent.extend(ids)

    stored = [mid for _, mid in _stored(relay.db_path)]
    assert stored, "everything was evicted"
    assert len(stored) < len(sent), "nothing was evicted"
    # The oldest went first: what is left is exactly the newest events, in order.
    assert stored == sent[-len(stored):]
    report = _status_json(tmp_path, relay.db_path)
    assert report["queue"]["evicted_events"] == len(sent) - len(stored)
    assert report["queue"]["events"] == len(stored)
    assert report["queue"]["bytes"] <= MIB


async def test_drop_oldest_keeps_accepting_a_long_stream_of_small_events(
    start_relay: Callable[..., Any],
) -> None:
    relay = await start_relay(queue={"max_bytes": MIB, "when_full": "drop_oldest"})
    for n in range(120):  # 60,000 small events through a 1 MiB queue
        batch = {"batch": [{"type": "track", "userId": "u", "event": "E", "messageId": f"s{n}-{i}"}
                           for i in range(500)]}
        status, body, _ = await relay.post("/v1/batch", batch)
        assert status == 200, (n, body)
    assert relay.rows("SELECT max(message_id = 's119-499') FROM events") == [(1,)]


async def test_drop_oldest_evicts_to_make_room_for_a_large_valid_batch(
    start_relay: Callable[..., Any],
) -> None:
    relay = await start_relay(queue={"max_bytes": MIB, "when_full": "drop_oldest"})
    for n in range(3):
        batch = {"batch": [{"type": "track", "userId": "u", "event": "Small", "messageId": f"b{n}-{i}",
                            "properties": {"pad": "x" * 100}} for i in range(2500)]}
        body = json.dumps(batch).encode()
        assert len(body) < 500 * 1024  # within every protocol limit
        status, answer, _ = await relay.post("/v1/batch", data=body)
        assert status == 200, (n, answer)


async def test_a_repeat_is_caught_in_either_dedup_generation_and_rotation_keeps_times(
    start_relay: Callable[..., Any],
) -> None:
    relay = await start_relay(queue={"dedup_window": 3600})
    queue = relay.relay.queue
    first = {"type": "track", "userId": "u", "event": "E", "messageId": "gen-1"}
    assert (await relay.post("/v1/batch", {"batch": [first]}))[1]["accepted"] == 1
    assert await queue._db.call(queue.sightings.rotate) == 1  # gen-1 now lives in the old generation
    assert relay.rows("SELECT count(*) FROM sightings_log") == [(0,)]
    assert queue.sightings.recent == {}
    again = await relay.post("/v1/batch", {"batch": [first, {**first, "messageId": "gen-2"}]})
    assert (again[1]["accepted"], again[1]["duplicates"]) == (1, 1)
    # both generations age out by their own times: an hour and a bit later, gen-1 is new again
    await queue._db.call(queue.sightings.rotate)
    await queue._db.call(lambda conn: conn.executescript(
        "UPDATE sighting_runs SET at = at - 4000; UPDATE sighting_run_info SET newest = newest - 4000"))
    later = await relay.post("/v1/batch", {"batch": [first]})
    assert (later[1]["accepted"], later[1]["duplicates"]) == (1, 0)
    assert [e["messageId"] for e in relay.events()] == ["gen-1", "gen-2", "gen-1"]


async def test_status_is_read_beside_the_writer_never_behind_it(tmp_path):
    queue = Queue(make_config(tmp_path).queue)
    await queue.start()
    try:
        release = threading.Event()
        # the writer's thread busy for as long as the test wants
        busy = asyncio.ensure_future(queue._db.call(lambda conn: release.wait(10)))
        report = await asyncio.wait_for(queue.status(), 5)  # answered all the same
        assert report.queue.events == 0 and not busy.done()
        release.set()
        await busy
    finally:
        await queue.stop()


def _batch(ids: list[str]) -> dict[str, Any]:
    return {"batch": [{"type": "track", "userId": "u", "event": "E", "messageId": i} for i in ids]}


async def test_commits_carry_the_dedup_rotation_and_repeats_are_caught_across_it(
    start_relay: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(facade, "DEDUP_ROTATE_ROWS", 8)
    monkeypatch.setattr(facade, "DEDUP_ROTATE_STEP", 3)
    relay = await start_relay(queue={"dedup_window": 3600})
    queue = relay.relay.queue
    ids = [f"r{i}" for i in range(30)]
    for start in range(0, 30, 5):
        assert (await relay.post("/v1/batch", _batch(ids[start:start + 5])))[1]["accepted"] == 5
    merged = relay.rows("SELECT count(*) FROM sighting_runs")[0][0]
    assert merged >= 9  # steps of 3 in the commits, no transaction of their own
    logged = relay.rows("SELECT sum(length(hashes)) / 8 FROM sightings_log")[0][0] or 0
    assert logged == queue.sightings.logged and merged + logged >= 30
    answer = (await relay.post("/v1/batch", _batch(ids)))[1]
    assert (answer["accepted"], answer["duplicates"]) == (0, 30)
    assert len(relay.events()) == 30


ROWS = facade.DEDUP_ROTATE_ROWS


@pytest.mark.parametrize(("rotate", "compact", "logged", "compacted_last", "step"), [
    (False, False, 10, False, None),
    (True, False, ROWS + 1, False, "rotate"),
    (True, False, ROWS + 1, True, "rotate"),
    (False, True, 10, False, "compact"),
    (False, True, 10, True, "compact"),
    (True, True, ROWS + 1, False, "compact"),  # both due: turns
    (True, True, ROWS + 1, True, "rotate"),
    (True, True, 2 * ROWS, False, "compact"),
    (True, True, 2 * ROWS + 1, False, "rotate"),  # memory past twice a rotation's: it comes first
])
def test_a_commit_carries_the_dedup_step_that_is_due_and_both_take_turns(
    rotate: bool, compact: bool, logged: int, compacted_last: bool, step: str | None,
) -> None:
    assert facade.dedup_step(rotate, compact, logged, compacted_last) == step


async def test_commits_carry_compactions_of_the_runs_between_rotations(
    start_relay: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(facade, "DEDUP_ROTATE_ROWS", 4)
    monkeypatch.setattr(facade, "DEDUP_ROTATE_STEP", 3)
    monkeypatch.setattr(facade, "DEDUP_COMPACT_STEP", 2)
    monkeypatch.setattr(sightings, "RUNS_PER_COMPACTION", 4)
    relay = await start_relay(queue={"dedup_window": 3600})
    ids = [f"c{i}" for i in range(60)]
    for start in range(0, 60, 5):
        assert (await relay.post("/v1/batch", _batch(ids[start:start + 5])))[1]["accepted"] == 5
    levels = [level for (level,) in relay.rows("SELECT level FROM sighting_run_info")]
    assert max(levels) >= 1 and len(levels) < 12  # twelve rotations, fewer runs: some were compacted
    answer = (await relay.post("/v1/batch", _batch([*ids, "c-new"])))[1]
    assert (answer["accepted"], answer["duplicates"]) == (1, 60)
    assert len(relay.events()) == 61


async def test_a_compaction_step_that_fails_never_fails_the_commit_and_loses_no_sighting(
    start_relay: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(facade, "DEDUP_ROTATE_ROWS", 4)
    monkeypatch.setattr(facade, "DEDUP_ROTATE_STEP", 16)  # a rotation in one step: compactions get turns
    monkeypatch.setattr(facade, "DEDUP_COMPACT_STEP", 2)
    monkeypatch.setattr(sightings, "RUNS_PER_COMPACTION", 4)
    relay = await start_relay(queue={"dedup_window": 3600})
    queue = relay.relay.queue
    real = queue.sightings.compact_step
    failures = []

    def full(conn: sqlite3.Connection, chunk: int, cutoff: float) -> int:
        real(conn, chunk, cutoff)  # its statements ran: the savepoint must take them back
        failures.append(chunk)
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(queue.sightings, "compact_step", full)
    ids = [f"k{i}" for i in range(60)]
    for start in range(0, 60, 5):
        assert (await relay.post("/v1/batch", _batch(ids[start:start + 5])))[1]["accepted"] == 5
    assert len(failures) > 1  # compactions were due, and each failed
    assert relay.rows("SELECT count(*) FROM sighting_run_info WHERE level > 0") == [(0,)]
    answer = (await relay.post("/v1/batch", _batch([*ids, "k-new"])))[1]
    assert (answer["accepted"], answer["duplicates"]) == (1, 60)  # the rotations went on meanwhile
    monkeypatch.setattr(queue.sightings, "compact_step", real)
    for i in range(6):
        await relay.post("/v1/batch", _batch([f"m{i}-{j}" for j in range(5)]))
    assert relay.rows("SELECT max(level) FROM sighting_run_info")[0][0] >= 1  # compacted now
    assert relay.rows("SELECT count(*) FROM sighting_run_info i WHERE rows !="
                      " (SELECT count(*) FROM sighting_runs r WHERE r.run = i.run)") == [(0,)]
    again = [*ids, *(f"m{i}-{j}" for i in range(6) for j in range(5)), "k-new"]
    answer = (await relay.post("/v1/batch", _batch([*again, "k-last"])))[1]
    assert (answer["accepted"], answer["duplicates"]) == (1, len(again))
    assert len(relay.events()) == 60 + 1 + 30 + 1


async def test_a_rotation_step_that_fails_never_fails_the_commit_carrying_it(
    start_relay: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(facade, "DEDUP_ROTATE_ROWS", 4)
    relay = await start_relay(queue={"dedup_window": 3600})
    queue = relay.relay.queue
    real = queue.sightings.merge_step
    failures = []

    def full(conn: sqlite3.Connection, chunk: int) -> int:
        real(conn, chunk)  # its statements ran: the savepoint must take them back
        failures.append(chunk)
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(queue.sightings, "merge_step", full)
    assert (await relay.post("/v1/batch", _batch(["f0", "f1", "f2", "f3", "f4"])))[1]["accepted"] == 5
    assert (await relay.post("/v1/batch", _batch(["f5"])))[1]["accepted"] == 1
    assert failures and relay.rows("SELECT count(*) FROM sighting_runs") == [(0,)]
    monkeypatch.setattr(queue.sightings, "merge_step", real)
    answer = (await relay.post("/v1/batch", _batch(["f0", "f5", "f6"])))[1]
    assert (answer["accepted"], answer["duplicates"]) == (1, 2)  # memory read back from the log
    await _the_rotation_goes_on(relay, ["f1", "f6"], "g")
    assert len(relay.events()) == 11


async def test_a_step_whose_failure_took_the_whole_transaction_back_fails_that_commit_alone(
    start_relay: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SQLite may roll a whole transaction back on a full disk: there is then no savepoint
    to return to, the requests of that commit are answered with an error (not stored, not
    seen), and memory is read back from the log."""
    monkeypatch.setattr(facade, "DEDUP_ROTATE_ROWS", 4)
    relay = await start_relay(queue={"dedup_window": 3600})
    real = sightings._new_run

    def full(conn: sqlite3.Connection, level: int, newest: float) -> int:
        conn.execute("ROLLBACK")  # what SQLite may do itself on SQLITE_FULL
        raise sqlite3.OperationalError("database or disk is full")

    assert (await relay.post("/v1/batch", _batch(["w0", "w1", "w2", "w3", "w4"])))[1]["accepted"] == 5
    monkeypatch.setattr(sightings, "_new_run", full)  # the first step, memory frozen, its run not made
    status, answer, _ = await relay.post("/v1/batch", _batch(["w5", "w6"]))
    assert status >= 500 and "error" in json.dumps(answer).lower()  # not acknowledged
    monkeypatch.setattr(sightings, "_new_run", real)
    answer = (await relay.post("/v1/batch", _batch(["w0", "w4", "w5", "w6"])))[1]
    assert (answer["accepted"], answer["duplicates"]) == (2, 2)  # w5, w6 were never seen
    await _the_rotation_goes_on(relay, ["w1", "w5"], "x")
    assert len(relay.events()) == 11


async def _the_rotation_goes_on(relay: Any, seen: list[str], prefix: str) -> None:
    """After a failed step: three more commits (``<prefix>0`` ..) take the rotation on, and
    then ``seen``, from before, and ``<prefix>0`` are repeats, a new key is not."""
    for i in range(3):
        await relay.post("/v1/batch", _batch([f"{prefix}{i}"]))
    assert relay.rows("SELECT count(*) FROM sighting_runs")[0][0] > 0  # the rotation went on
    answer = (await relay.post("/v1/batch", _batch([*seen, f"{prefix}0", "new"])))[1]
    assert (answer["accepted"], answer["duplicates"]) == (1, len(seen) + 1)


def _record_from_another_process(path: str, write_key: str, message_id: str) -> None:
    """What ``relay recover`` does with a salvaged event's key: recorded in ``sightings``."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        recorder = sightings.Sightings()
        recorder.load(other)
        recorder.record_in_old_generation(other, [(write_key, message_id)], time.time())
        other.execute("COMMIT")
    finally:
        other.close()


async def test_the_dedup_filter_is_read_again_beside_the_writer_after_another_process_wrote(
    start_relay: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(facade, "DEDUP_ROTATE_ROWS", 2)
    relay = await start_relay(queue={"dedup_window": 3600})
    queue = relay.relay.queue
    for i in range(4):
        await relay.post("/v1/batch", _batch([f"a{i}"]))
    assert queue.sightings.filter is not None
    [(write_key,)] = relay.rows("SELECT DISTINCT write_key FROM batches")
    _record_from_another_process(queue.path, write_key, "salvaged")
    answer = (await relay.post("/v1/batch", _batch(["salvaged"])))[1]
    assert (answer["accepted"], answer["duplicates"]) == (0, 1)  # asked on disk meanwhile
    deadline = time.monotonic() + 10
    while queue.sightings.filter is None or queue.sightings.want_filter:
        assert time.monotonic() < deadline, "the filter was not read again"
        await asyncio.sleep(0.01)
    answer = (await relay.post("/v1/batch", _batch(["a0", "a3", "fresh"])))[1]
    assert (answer["accepted"], answer["duplicates"]) == (1, 2)
    # another commit from outside soon after: not read again for a while (a recover commits
    # chunk after chunk), and lookups stay exact meanwhile
    monkeypatch.setattr(facade, "DEDUP_FILTER_PAUSE", 3600.0)
    _record_from_another_process(queue.path, write_key, "salvaged-2")
    for ids in (["salvaged-2", "b1"], ["b2"]):
        await relay.post("/v1/batch", _batch(ids))
    assert queue.sightings.filter is None and queue._filter_build is None
    answer = (await relay.post("/v1/batch", _batch(["salvaged", "salvaged-2", "b1", "b3"])))[1]
    assert (answer["accepted"], answer["duplicates"]) == (1, 3)
