"""Errors a person can read: a port in use is one line naming the port and the key; a client
that goes away mid-body is counted (relay_ingest_rejected_total{reason="client_disconnected"})
and logged at debug, not as an error with a traceback; the queue turning full and clearing
is logged once each."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any


def test_a_port_in_use_is_one_line_naming_the_port_and_the_key(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "relay.toml"
        path.write_text(f'[server]\nport = {port}\n[admin]\nenabled = false\n'
                        f'[queue]\npath = "{tmp_path}/q.db"\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        done = subprocess.run([sys.executable, "-m", "relay", "run", "--config", str(path)],
                              capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    line = done.stderr.strip().splitlines()[-1]
    assert f"127.0.0.1:{port}" in line and "[server]" in line and "in use" in line


async def test_a_client_gone_mid_body_is_counted_and_logged_at_debug(
        start_relay: Any, caplog: Any) -> None:
    running = await start_relay()
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    _reader, writer = await asyncio.open_connection("127.0.0.1", running.relay.port)
    writer.write(b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n{\"userId\": ")
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    async with asyncio.timeout(10):
        while not running.relay.ingest.counters.get("client_disconnected"):
            await asyncio.sleep(0.02)
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == [], [r.getMessage() for r in errors]
    assert any(r.levelno == logging.DEBUG and "disconnected" in r.getMessage() for r in caplog.records)


async def test_the_queue_turning_full_and_clearing_is_logged_once_each(start_relay: Any, caplog: Any) -> None:
    from tests.ops.test_admin import track
    from tests.support.upstream import FakeUpstream

    up = {"ok": False}
    upstream = FakeUpstream(default=lambda batch: 200 if up["ok"] else 503)
    await upstream.start()
    try:
        running = await start_relay(
            queue={"max_bytes": 1 << 20, "when_full": "reject"},
            destinations=[{"name": "seg", "type": "segment", "endpoint": upstream.url,
                           "flush_interval": 0.01, "retry_initial": 0.05, "retry_max": 0.1}])
        caplog.set_level(logging.INFO)
        caplog.clear()
        padding = secrets.token_hex(15_000)  # random: the queue cannot compress it below the cap
        refused = 0
        for i in range(400):
            status, _, _ = await running.post("/v1/track", track(f"m{i}", properties={"p": padding}))
            refused += status == 503
            if refused == 5:
                break
        assert refused == 5  # five writes refused ...
        up["ok"] = True
        async with asyncio.timeout(30):
            while running.relay.queue.full_since is not None:
                await asyncio.sleep(0.05)
        messages = [r.getMessage() for r in caplog.records]
        assert sum(m.startswith("queue is full") for m in messages) == 1  # ... logged once
        assert sum(m.startswith("queue has room again") for m in messages) == 1
    finally:
        await upstream.stop()
