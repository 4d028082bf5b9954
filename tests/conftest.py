"""Shared fixtures: a relay started in-process on a free loopback port, real files in tmp_path."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from relay.app import Relay
from relay.config import Config
from tests.support import queuefile


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_config(tmp_path: Path, server: dict[str, Any] | None = None,
                queue: dict[str, Any] | None = None, admin: dict[str, Any] | None = None,
                **sections: Any) -> Config:
    """Loopback on free ports (the admin listener's too), the queue in ``tmp_path``."""
    raw: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, **(server or {})},
        "queue": {"path": str(tmp_path / "queue.db"), **(queue or {})},
        "admin": {"host": "127.0.0.1", "port": 0, **(admin or {})},
        **sections,
    }
    return msgspec.convert(raw, Config)


class Running:
    def __init__(self, relay: Relay, session: aiohttp.ClientSession) -> None:
        self.relay = relay
        self.session = session
        self.url = f"http://127.0.0.1:{relay.port}"
        self.admin_url = f"http://127.0.0.1:{relay.admin.port}"

    @property
    def db_path(self) -> str:
        return self.relay.config.queue.path

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """``sql`` against the queue file, with its events as a table (``queuefile``)."""
        conn = queuefile.connect(self.db_path)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(b) for (b,) in self.rows("SELECT body FROM events ORDER BY id")]

    def dead_letters(self) -> list[tuple[Any, ...]]:
        return self.rows("SELECT destination, reason, message_id, body FROM dead_letters ORDER BY id")

    async def post(self, path: str, body: Any = None, *, data: bytes | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
        payload = data if data is not None else json.dumps(body).encode()
        async with self.session.post(self.url + path, data=payload, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=10)) as resp:
            raw = await resp.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw
            return resp.status, parsed, resp.headers


@pytest.fixture
async def start_relay(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """``await start_relay(server={...}, queue={...})`` -> Running; stopped at teardown."""
    started: list[Running] = []
    session = aiohttp.ClientSession()

    async def start(config: Config | None = None, **kwargs: Any) -> Running:
        relay = Relay(config or make_config(tmp_path, **kwargs))
        await relay.start()
        running = Running(relay, session)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.relay.stop()
    await session.close()


@pytest.fixture
async def relay(start_relay: Callable[..., Any]) -> Running:
    running: Running = await start_relay()
    return running


class RelayProcess:
    """The relay as a real subprocess (``python -m relay run``), for kill -9 and signals."""

    def __init__(self, config_path: Path, env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        # The admin listener on a free port (the environment beats the config file; pass
        # env={"RELAY_ADMIN_PORT": ...} for another); its port is read from the "listening" line.
        self.env = {"RELAY_ADMIN_PORT": "0", **os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = config_path.with_suffix(".log")
        self.admin_port: int | None = None

    def launch(self) -> subprocess.Popen[bytes]:
        """Start the process without waiting for it (its output goes to ``log_path``)."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "relay", "run", "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, env=self.env,
            )
        return self.proc

    def start(self, timeout: float = 15.0) -> int:
        """Start the process; return its ingest port once it logs (in JSON) that it listens."""
        self.proc = self.launch()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_path.read_text().splitlines()[::-1]:
                if '"message":"listening"' in line:
                    entry = json.loads(line)
                    if self.proc.poll() is None and self._fresh(entry):
                        self.admin_port = entry.get("admin_port")
                        return int(entry["port"])
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        self.kill()
        raise TimeoutError("relay did not start listening")

    def _fresh(self, entry: dict[str, Any]) -> bool:
        return bool(entry.get("pid") == self.proc.pid) if self.proc else False

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def relay_process(tmp_path: Path) -> Iterator[Callable[..., RelayProcess]]:
    made: list[RelayProcess] = []

    def make(config_text: str, env: dict[str, str] | None = None) -> RelayProcess:
        path = tmp_path / f"relay{len(made)}.toml"
        path.write_text(config_text)
        proc = RelayProcess(path, env)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.kill()
