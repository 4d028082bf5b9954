"""Crash safety: under concurrent load the relay is killed with SIGKILL at a random moment and
restarted on the same queue file; every event it answered 200 for is in the queue."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import queuefile

ROUNDS = 6
CLIENTS = 8
MAX_REQUESTS_PER_CLIENT = 400
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=5)
FIRST_ACK_TIMEOUT = 15.0
CLIENTS_STOP_TIMEOUT = 15.0


def _config(tmp_path: Path) -> str:
    return (
        "[server]\n"
        'host = "127.0.0.1"\n'
        "port = 0\n"
        "[queue]\n"
        f'path = "{tmp_path / "queue.db"}"\n'
        'durability = "fsync"\n'
    )


def _stored_ids(db_path: Path) -> set[str]:
    conn = queuefile.connect(db_path)
    try:
        return {mid for (mid,) in conn.execute("SELECT message_id FROM events")}
    finally:
        conn.close()


def _message(mid: str, n: int) -> dict[str, Any]:
    return {"type": "track", "userId": f"u{n % 17}", "event": "Crash Test", "messageId": mid,
            "properties": {"n": n, "pad": "p" * (n % 300)}}


async def _client(url: str, seed: int, acked: set[str], first_ack: asyncio.Event,
                  stop: asyncio.Event, batches_only: bool = False) -> dict[str, int]:
    """Post single events and batches with known messageIds (only 100-event batches, as an
    SDK's, with ``batches_only``); record those answered 200."""
    rng = random.Random(seed)
    outcomes: dict[str, int] = {}
    async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session:
        for n in range(MAX_REQUESTS_PER_CLIENT):
            if stop.is_set():
                break
            if not batches_only and rng.random() < 0.5:
                mid = f"s-{uuid.uuid4()}"
                path, body, ids = "/v1/track", _message(mid, n), [mid]
            else:
                ids = [f"b-{uuid.uuid4()}" for _ in range(100 if batches_only else rng.randint(2, 60))]
                path, body = "/v1/batch", {"batch": [_message(m, n + i) for i, m in enumerate(ids)]}
            try:
                async with session.post(url + path, data=json.dumps(body).encode(),
                                        headers={"Content-Type": "application/json"}) as resp:
                    answer = await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError):
                outcomes["error"] = outcomes.get("error", 0) + 1
                if stop.is_set():
                    break
                await asyncio.sleep(0.01)
                continue
            outcomes[str(status)] = outcomes.get(str(status), 0) + 1
            if status == 200:
                parsed = json.loads(answer)
                assert parsed["success"] is True
                if path == "/v1/batch":
                    # Every message is valid and new: all of them must have been stored.
                    assert parsed["accepted"] == len(ids), parsed
                acked.update(ids)
                first_ack.set()
    return outcomes


@pytest.mark.parametrize("batches_only", [False, True], ids=["mixed", "batches"])
async def test_every_acknowledged_event_survives_kill_9(
    tmp_path: Path, relay_process: Callable[..., Any], batches_only: bool
) -> None:
    """Each request's events are one row of the queue: a kill in the middle of a commit
    leaves the rows whole (every one decodes) and every acknowledged event in them."""
    config = _config(tmp_path)
    db_path = tmp_path / "queue.db"
    rng = random.Random()
    acked: set[str] = set()
    per_round: list[tuple[int, dict[str, int]]] = []

    for round_no in range(ROUNDS):
        proc = relay_process(config)
        port = await asyncio.to_thread(proc.start)
        url = f"http://127.0.0.1:{port}"
        if round_no:
            # Restarted on the same file: everything acknowledged in earlier rounds is still there.
            missing = acked - _stored_ids(db_path)
            assert not missing, f"round {round_no}: {len(missing)} acknowledged events lost"

        round_acked: set[str] = set()
        first_ack, stop = asyncio.Event(), asyncio.Event()
        clients = [
            asyncio.create_task(
                _client(url, rng.randrange(2**32), round_acked, first_ack, stop, batches_only))
            for _ in range(CLIENTS)
        ]
        try:
            await asyncio.wait_for(first_ack.wait(), FIRST_ACK_TIMEOUT)
            # A random moment after the load has started: sometimes almost at once, sometimes later.
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            await asyncio.to_thread(proc.kill)
            assert proc.proc.returncode == -9
            stop.set()
            done, pending = await asyncio.wait(clients, timeout=CLIENTS_STOP_TIMEOUT)
            assert not pending, "client tasks did not finish after the relay was killed"
            outcomes: dict[str, int] = {}
            for task in done:
                for key, count in task.result().items():
                    outcomes[key] = outcomes.get(key, 0) + count
        finally:
            stop.set()
            for task in clients:
                task.cancel()
            await asyncio.gather(*clients, return_exceptions=True)
            await asyncio.to_thread(proc.kill)
        assert round_acked, f"round {round_no}: no request was acknowledged before the kill"
        assert set(outcomes) <= {"200", "error"}, outcomes
        acked |= round_acked
        per_round.append((len(round_acked), outcomes))

    # The last restart, then the check against the file the restarted relay opened.
    proc = relay_process(config)
    await asyncio.to_thread(proc.start)
    try:
        stored = _stored_ids(db_path)
        missing = acked - stored
        assert not missing, (
            f"{len(missing)} of {len(acked)} acknowledged events are not in the queue; rounds: {per_round}"
        )
    finally:
        assert await asyncio.to_thread(proc.terminate) == 0
