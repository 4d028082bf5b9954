"""Graceful stop: on SIGTERM (or SIGINT) the relay stops accepting, finishes the requests in
flight, closes the queue cleanly and exits 0; every request answered 200 is stored."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import queuefile

LOAD_CLIENTS = 6
HELD_REQUESTS = 3
MAX_REQUESTS_PER_CLIENT = 2000
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=20)
EXIT_TIMEOUT = 30.0


def _config(tmp_path: Path, shutdown_timeout: float = 15.0) -> str:
    return (
        "[server]\n"
        'host = "127.0.0.1"\n'
        "port = 0\n"
        f"shutdown_timeout = {shutdown_timeout}\n"
        "[queue]\n"
        f'path = "{tmp_path / "queue.db"}"\n'
        'durability = "fsync"\n'
    )


def _batch(ids: list[str]) -> bytes:
    messages = [{"type": "track", "userId": "u1", "event": "Stop Test", "messageId": mid,
                 "properties": {"pad": "x" * 200}} for mid in ids]
    return json.dumps({"batch": messages}).encode()


async def _load(url: str, acked: set[str], refused: list[tuple[int, Any]], first_ack: asyncio.Event,
                stop: asyncio.Event) -> None:
    """Post batches until told to stop or the relay stops answering; record what got 200."""
    async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session:
        for _ in range(MAX_REQUESTS_PER_CLIENT):
            if stop.is_set():
                return
            ids = [str(uuid.uuid4()) for _ in range(50)]
            try:
                async with session.post(url + "/v1/batch", data=_batch(ids)) as resp:
                    body = await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.01)  # refused or reset: the relay is going away
                continue
            if status == 200:
                acked.update(ids)
                first_ack.set()
            else:
                refused.append((status, json.loads(body)))


async def _held_request(url: str, ids: list[str], release: asyncio.Event | None = None) -> tuple[int, Any]:
    """Post one batch; with ``release``, the second half of its body is sent only once it is set."""
    payload = _batch(ids)
    half = len(payload) // 2

    async def body() -> AsyncIterator[bytes]:
        yield payload[:half]
        assert release is not None
        await release.wait()
        yield payload[half:]

    async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session:
        async with session.post(url + "/v1/batch", data=payload if release is None else body(),
                                headers={"Content-Type": "application/json"}) as resp:
            return resp.status, json.loads(await resp.read())


def _stored(db_path: Path) -> set[str]:
    conn = queuefile.connect(db_path)
    try:
        return {mid for (mid,) in conn.execute("SELECT message_id FROM events")}
    finally:
        conn.close()


def _log(proc: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proc.log_path.read_text().splitlines() if line.startswith("{")]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_stop_signal_finishes_requests_in_flight_and_exits_0(
    tmp_path: Path, relay_process: Callable[..., Any], signum: int
) -> None:
    proc = relay_process(_config(tmp_path))
    port = await asyncio.to_thread(proc.start)
    url = f"http://127.0.0.1:{port}"
    db_path = tmp_path / "queue.db"
    acked: set[str] = set()
    refused: list[tuple[int, Any]] = []
    first_ack, stop = asyncio.Event(), asyncio.Event()
    held_ids = [[str(uuid.uuid4()) for _ in range(20)] for _ in range(HELD_REQUESTS)]
    held: list[asyncio.Task[tuple[int, Any]]] = []
    load = [asyncio.create_task(_load(url, acked, refused, first_ack, stop)) for _ in range(LOAD_CLIENTS)]
    # Holding SQLite's write lock from here keeps the relay's next commit waiting, so the held
    # requests (sent in full) are certainly in flight, waiting for their commit, when the signal comes.
    lock = sqlite3.connect(db_path, timeout=10, isolation_level=None, check_same_thread=False)
    try:
        await asyncio.wait_for(first_ack.wait(), 15)
        await asyncio.to_thread(lock.execute, "BEGIN IMMEDIATE")
        held = [asyncio.create_task(_held_request(url, ids)) for ids in held_ids]
        await asyncio.sleep(0.5)  # let the relay read them; none can be answered while the lock is held
        assert not any(task.done() for task in held), "a held request was answered before its commit"

        proc.proc.send_signal(signum)
        await asyncio.sleep(0.3)  # the relay is stopping while the held requests wait for their commit
        lock.execute("ROLLBACK")
        code = await asyncio.wait_for(asyncio.to_thread(proc.proc.wait, EXIT_TIMEOUT), EXIT_TIMEOUT + 5)
        stop.set()
        held_answers = await asyncio.wait_for(asyncio.gather(*held), 10)
        await asyncio.wait_for(asyncio.gather(*load), 30)
    finally:
        lock.close()
        stop.set()
        for task in [*held, *load]:
            task.cancel()
        await asyncio.gather(*held, *load, return_exceptions=True)
        await asyncio.to_thread(proc.kill)

    assert code == 0
    # The requests in flight when the signal came were finished, and answered only once stored.
    assert held_answers == [(200, {"success": True, "accepted": 20, "duplicates": 0, "rejected": 0})] * 3
    # Requests that arrived while stopping may be refused, but only with a retryable 503.
    for status, body in refused:
        assert (status, body["code"]) == (503, "shutting_down"), body

    stored = _stored(db_path)
    assert acked, "no request was acknowledged"
    missing = (acked | {mid for ids in held_ids for mid in ids}) - stored
    assert not missing, f"{len(missing)} acknowledged events are not in the queue"

    log = _log(proc)
    messages = [entry["message"] for entry in log]
    assert "stopping" in messages
    assert messages[-1] == "stopped"
    assert not [e for e in log if e["level"] in ("error", "critical")], "errors logged while stopping"
    # The queue was closed cleanly: SQLite checkpointed and removed its write-ahead log.
    assert not (tmp_path / "queue.db-wal").exists()


async def test_stop_signal_finishes_a_request_whose_body_is_still_arriving(
    tmp_path: Path, relay_process: Callable[..., Any]
) -> None:
    proc = relay_process(_config(tmp_path, shutdown_timeout=2.0))
    port = await asyncio.to_thread(proc.start)
    url = f"http://127.0.0.1:{port}"
    release = asyncio.Event()
    ids = [str(uuid.uuid4()) for _ in range(20)]
    held = asyncio.create_task(_held_request(url, ids, release))
    try:
        # One full request answered after the held one started: the relay has read its headers.
        await asyncio.sleep(0.2)
        assert (await _held_request(url, [str(uuid.uuid4())]))[0] == 200
        assert not held.done()
        proc.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        release.set()
        code = await asyncio.wait_for(asyncio.to_thread(proc.proc.wait, EXIT_TIMEOUT), EXIT_TIMEOUT + 5)
        answer = await asyncio.wait_for(held, 10)
    finally:
        release.set()
        held.cancel()
        await asyncio.gather(held, return_exceptions=True)
        await asyncio.to_thread(proc.kill)
    assert code == 0
    assert answer == (200, {"success": True, "accepted": 20, "duplicates": 0, "rejected": 0})
    assert set(ids) <= _stored(tmp_path / "queue.db")
