"""A viewer that reads nothing while 100,000 events pass: the relay's memory stays flat and
ingest answers 200 as usual (the viewer's records are dropped for it alone)."""

from __future__ import annotations

import asyncio
import socket
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from tests.support.forwarding import track
from tests.support.watching import TOKEN, wait_for_viewers, watched_toml

pytestmark = pytest.mark.slow

EVENTS = 100_000
WARMUP = 20_000
PER_REQUEST = 500
RSS_BOUND = 64 * 1024 * 1024  # generous: the viewer's buffer is a few MB at most


def _stuck_viewer(admin_port: int) -> socket.socket:
    """An SSE request on a socket that is never read (a small receive buffer, so that the
    relay's writes to it block soon)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", admin_port))
    sock.sendall(f"GET /debugger/stream?outcomes=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 f"Authorization: Bearer {TOKEN}\r\n\r\n".encode())
    return sock


async def _post(session: aiohttp.ClientSession, port: int, count: int) -> None:
    for _ in range(count // PER_REQUEST):
        body = {"writeKey": "wk-debug-0001",
                "batch": [track(str(uuid.uuid4()), properties={"pad": "x" * 200})
                          for _ in range(PER_REQUEST)]}
        async with session.post(f"http://127.0.0.1:{port}/v1/batch", json=body,
                                timeout=aiohttp.ClientTimeout(total=30)) as resp:
            answer = await resp.json()
            assert resp.status == 200, answer
            assert answer["accepted"] == PER_REQUEST


async def test_a_viewer_that_reads_nothing_leaves_rss_flat_and_ingest_answering(
        relay_process: Any, tmp_path: Path) -> None:
    relay = relay_process(watched_toml(tmp_path, None))
    port = await asyncio.to_thread(relay.start)
    assert relay.proc is not None and relay.admin_port is not None
    process = psutil.Process(relay.proc.pid)
    sock = _stuck_viewer(relay.admin_port)
    try:
        async with aiohttp.ClientSession() as session:
            await wait_for_viewers(session, relay.admin_port, 1)
            await _post(session, port, WARMUP)  # the viewer's buffer and the socket fill up here
            before = process.memory_info().rss
            await _post(session, port, EVENTS)
            after = process.memory_info().rss
            await wait_for_viewers(session, relay.admin_port, 1)  # still connected, still not reading
        print(f"relay RSS before {before / 2**20:.1f} MiB, "
              f"after {EVENTS} more events {after / 2**20:.1f} MiB")
        assert after - before < RSS_BOUND, f"RSS grew by {(after - before) / 2**20:.1f} MiB"
    finally:
        sock.close()
        relay.kill()
