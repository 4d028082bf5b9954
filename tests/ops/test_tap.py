"""The tap: viewers' buffers are bounded, filters hold, and `relay tap` prints NDJSON and
exits cleanly on SIGINT."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from relay.ops.tap import Filter, Tap, mask_key
from relay.types import Event
from tests.support.forwarding import track
from tests.support.upstream import FakeUpstream
from tests.support.watching import Lines, stop, wait_for_viewers, watched_toml

WRITE_KEY = "wk-debug-0001"


def _event(i: int, **fields: Any) -> Event:
    body = {"type": "track", "event": "Tested", "userId": "u1", "messageId": f"m{i}", **fields}
    return Event(f"m{i}", WRITE_KEY, body["type"], 1.0, body)


async def test_a_viewer_that_takes_nothing_keeps_at_most_its_buffer_and_counts_the_rest() -> None:
    tap = Tap()
    viewer = tap.open(Filter(), limit=10)
    tap.stored([_event(i) for i in range(25)])
    records = await viewer.take(1.0)
    assert records is not None
    assert json.loads(records[0]) == {"kind": "lost", "count": 15}
    assert [json.loads(r)["body"]["messageId"] for r in records[1:]] == [f"m{i}" for i in range(10)]
    tap.close(viewer)
    assert not tap.watched


async def test_an_unwatched_tap_is_one_false_attribute_and_filters_pick_messages_and_their_outcomes() -> None:
    tap = Tap()
    assert tap.watched is False
    viewer = tap.open(Filter(event="Wanted"))
    wanted, other = _event(1, event="Wanted"), _event(2)
    tap.stored([wanted, other])
    from relay.types import Stored
    rows = [Stored(1, 1.0, WRITE_KEY, "m1", "track", b"{}"), Stored(2, 1.0, WRITE_KEY, "m2", "track", b"{}")]
    tap.outcome("seg", rows, "delivered", {"status": 200, "attempts": 1})
    got = [json.loads(r) for r in await viewer.take(1.0) or []]
    assert [(g["kind"], g.get("messageId") or g["body"]["messageId"]) for g in got] == [
        ("event", "m1"), ("outcome", "m1")]
    assert got[0]["writeKey"] == mask_key(WRITE_KEY) != WRITE_KEY


async def test_relay_tap_prints_the_filtered_ndjson_and_exits_cleanly_on_sigint(relay_process: Any,
                                                                                tmp_path: Path) -> None:
    upstream = FakeUpstream()
    await upstream.start()
    relay = relay_process(watched_toml(tmp_path, upstream.url))
    tap: subprocess.Popen[bytes] | None = None
    try:
        port = await asyncio.to_thread(relay.start)
        tap = subprocess.Popen(  # noqa: ASYNC220 (started once; read on a thread)
            [sys.executable, "-m", "relay", "tap", "--config", str(relay.config_path),
             "--url", f"http://127.0.0.1:{relay.admin_port}", "--type", "track", "--event", "Wanted",
             "--outcomes"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        lines = Lines(tap)
        wanted = [str(uuid.uuid4()) for _ in range(3)]
        async with aiohttp.ClientSession() as session:
            await wait_for_viewers(session, relay.admin_port, 1)
            body = {"writeKey": WRITE_KEY, "batch": [
                *[track(i, event="Wanted") for i in wanted],
                track(str(uuid.uuid4()), event="Other"),
                {"type": "identify", "userId": "u1", "messageId": str(uuid.uuid4())},
            ]}
            async with session.post(f"http://127.0.0.1:{port}/v1/batch", json=body) as resp:
                assert resp.status == 200
        got = await asyncio.to_thread(lines.wait_for, lambda ls: sum(
            1 for line in ls if json.loads(line)["kind"] == "outcome"
            and json.loads(line)["outcome"] == "delivered") >= 3, 15.0, "three delivered outcomes")
        records = [json.loads(line) for line in got]
        assert [r["body"]["messageId"] for r in records if r["kind"] == "event"] == wanted
        assert {r["kind"] for r in records} <= {"event", "outcome"}
        for record in records:
            if record["kind"] == "event":
                assert record["body"]["type"] == "track" and record["body"]["event"] == "Wanted"
                assert record["writeKey"] == mask_key(WRITE_KEY)
            else:
                assert record["destination"] == "seg" and record["messageId"] in {
                    r["body"]["messageId"] for r in records if r["kind"] == "event"}
                assert record["outcome"] == "delivered" and record["status"] == 200
        tap.send_signal(signal.SIGINT)
        assert tap.wait(timeout=10) == 0
        assert tap.stderr is not None
        assert b"Traceback" not in tap.stderr.read()
    finally:
        if tap is not None:
            stop(tap)
        relay.kill()
        await upstream.stop()


def test_relay_tap_without_the_token_is_refused_with_a_message(relay_process, tmp_path: Path) -> None:
    relay = relay_process(watched_toml(tmp_path, None))
    relay.start()
    other = tmp_path / "other.toml"
    other.write_text(watched_toml(tmp_path, None, token="not-the-token"))
    done = subprocess.run([sys.executable, "-m", "relay", "tap", "--config", str(other),
                           "--url", f"http://127.0.0.1:{relay.admin_port}"],
                          capture_output=True, timeout=30)
    assert done.returncode == 1
    assert b"401" in done.stderr and b"Traceback" not in done.stderr


async def test_a_stopping_relay_ends_the_debugger_streams_it_serves(start_relay: Any) -> None:
    relay = await start_relay()
    async with aiohttp.ClientSession() as session, \
            session.get(relay.admin_url + "/debugger/stream") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
        await wait_for_viewers(session, relay.relay.admin.port, 1, token="")
        await asyncio.wait_for(relay.relay.stop(), 30)
        rest = await asyncio.wait_for(resp.content.read(), 10)  # the end of the stream, not a hang
        assert rest.startswith(b": relay tap")
    assert relay.relay.tap.watched is False
