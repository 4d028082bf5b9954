"""Helpers for the debugger, tap and top tests: a relay subprocess with its admin listener,
and a subprocess whose output lines are collected by a thread of their own."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TOKEN = "admin-token-for-tests"


def watched_toml(tmp_path: Path, endpoint: str | None, token: str = TOKEN, write_key: str = "wk-debug-0001",
                 **destination: Any) -> str:
    """A relay.toml with the admin listener (and its token) and, given an endpoint, one
    segment destination named "seg"."""
    lines = [
        "[server]", 'host = "127.0.0.1"', "port = 0", f"write_keys = [{json.dumps(write_key)}]",
        "[queue]", f"path = {json.dumps(str(tmp_path / 'queue.db'))}",
        "[admin]", 'host = "127.0.0.1"', "port = 0", f"token = {json.dumps(token)}",
    ]
    if endpoint is not None:
        options = {"flush_interval": 0.05, "retry_initial": 0.05, "retry_max": 0.2, "timeout": 5.0,
                   "max_events": 10, **destination}
        lines += ["[[destinations]]", 'name = "seg"', 'type = "segment"',
                  f"endpoint = {json.dumps(endpoint)}",
                  *[f"{k} = {json.dumps(v)}" for k, v in options.items()]]
    return "\n".join([*lines, ""])


class Lines:
    """A subprocess's stdout, line by line, read on a thread (so waits stay bounded)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True, name="lines")
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._lock:
                self.lines.append(raw.decode(errors="replace"))

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self.lines)

    def wait_for(self, condition: Callable[[list[str]], bool], timeout: float = 15.0,
                 what: str = "") -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.snapshot()
            if condition(lines):
                return lines
            if self.proc.poll() is not None:
                time.sleep(0.1)
                lines = self.snapshot()
                if condition(lines):
                    return lines
                raise AssertionError(f"process exited ({self.proc.returncode}) before {what}: {lines[-20:]}")
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}: {self.snapshot()[-20:]}")


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=timeout)


async def wait_for_viewers(session: Any, admin_port: int | None, count: int, timeout: float = 15.0,
                           token: str = TOKEN) -> None:
    """Until the relay's tap has ``count`` viewers connected (as /debugger/series says)."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        async with session.get(f"http://127.0.0.1:{admin_port}/debugger/series",
                               headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200
            if (await resp.json())["viewers"] >= count:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {count} viewers after {timeout} s")
        await asyncio.sleep(0.05)
