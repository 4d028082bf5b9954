"""`relay top` in a pseudo-terminal: it draws the destinations and live rates, and q quits."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import select
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from tests.support.forwarding import post_to
from tests.support.upstream import FakeUpstream
from tests.support.watching import watched_toml

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def _read_until(fd: int, proc: subprocess.Popen[bytes], seen: bytearray, pattern: re.Pattern[str],
                timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = ANSI.sub(b"", bytes(seen)).decode(errors="replace")
        if pattern.search(text):
            return text
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                break
        if proc.poll() is not None and not ready:
            break
    shown = ANSI.sub(b"", bytes(seen))[-1500:]
    raise AssertionError(f"relay top did not show {pattern.pattern!r}: {shown!r}")


async def test_relay_top_in_a_terminal_shows_destinations_and_live_rates_and_q_quits(
        relay_process: Any, tmp_path: Path) -> None:
    upstream = FakeUpstream()
    await upstream.start()
    relay = relay_process(watched_toml(tmp_path, upstream.url))
    master, slave = pty.openpty()
    proc: subprocess.Popen[bytes] | None = None
    try:
        port = await asyncio.to_thread(relay.start)
        proc = subprocess.Popen(  # noqa: ASYNC220 (started once; read with select)
            [sys.executable, "-m", "relay", "top", "--config", str(relay.config_path),
             "--url", f"http://127.0.0.1:{relay.admin_port}"],
            stdin=slave, stdout=slave, stderr=slave, close_fds=True,
            env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "140", "LINES": "30"})
        os.close(slave)
        seen = bytearray()
        await asyncio.to_thread(_read_until, master, proc, seen, re.compile(r"seg\s+ok"), 15.0)
        stop = asyncio.Event()

        async def traffic() -> None:
            while not stop.is_set():
                ids = [str(uuid.uuid4()) for _ in range(100)]
                await post_to(port, ids, chunk=100, write_key="wk-debug-0001")
                await asyncio.sleep(0.05)

        sender = asyncio.create_task(traffic())
        try:
            rates = re.compile(r"in [1-9][\d,]*\.\d ev/s.*out [1-9][\d,]*\.\d ev/s")
            text = await asyncio.to_thread(_read_until, master, proc, seen, rates, 20.0)
        finally:
            stop.set()
            await sender
        assert "destination" in text and "queue depth" in text and "dead letters" in text
        os.write(master, b"q")
        assert await asyncio.to_thread(proc.wait, 10) == 0
        assert b"Traceback" not in bytes(seen)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.close(master)
        relay.kill()
        await upstream.stop()
