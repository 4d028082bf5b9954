"""The Python load generator bench/ingest.py falls back to when wrk is not installed.

    .venv/bin/python bench/loadgen.py --url http://127.0.0.1:8088/v1/track --template BODY_FILE \
        [--connections 64] [--duration 10] [--nonce N] [--header 'Authorization: Basic ...']

Keeps ``--connections`` HTTP/1.1 keep-alive connections busy for ``--duration`` seconds, one request
in flight on each (as wrk does). Every request's body is the template with each ``@@MID@@`` replaced
by a fresh messageId, so the relay stores every event instead of deduplicating it. Prints one JSON
line: requests, non-2xx answers, socket errors, the measured duration and the latency percentiles
(exact, from every request's latency) in microseconds. A raw asyncio protocol rather than an HTTP
client library, so that the generator costs as little CPU as possible.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from array import array
from urllib.parse import urlsplit

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is installed with the relay
    uvloop = None  # type: ignore[assignment]

PLACEHOLDER = b"@@MID@@"


class _Connection(asyncio.Protocol):
    """One keep-alive connection; ``request`` sends one request and waits for its answer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.head_end = -1
        self.status = 0
        self.need = -1  # total bytes (head + body) of the answer being read, -1 when unknown
        self.chunked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(str(exc) if exc else "connection closed"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.head_end < 0:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head_end = end + 4
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            self.status = int(head[0].split(" ", 2)[1])
            self.need = -1
            self.chunked = False
            for line in head[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    self.need = self.head_end + int(value)
                elif name == "transfer-encoding" and "chunked" in value.lower():
                    self.chunked = True
            if self.need < 0 and not self.chunked:
                self.need = self.head_end
        if self.chunked:
            if not self.buffer.endswith(b"0\r\n\r\n"):
                return
            self.need = len(self.buffer)
        if len(self.buffer) < self.need:
            return
        del self.buffer[: self.need]
        self.head_end = -1
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.status)

    async def request(self, data: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        url = urlsplit(args.url)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 80
        path = url.path or "/"
        with open(args.template, "rb") as f:
            self.parts = f.read().split(PLACEHOLDER)
        extra = "".join(f"{h}\r\n" for h in args.header)
        self.head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\n{extra}Content-Length: "
        ).encode()
        self.nonce = args.nonce
        self.connections = args.connections
        self.duration = args.duration
        self.latencies: array[float] = array("d")
        self.requests = 0
        self.non2xx = 0
        self.errors = 0

    def body(self, worker: int, n: int) -> bytes:
        parts = self.parts
        out = [parts[0]]
        prefix = f"{self.nonce}-{worker}-{n}-"
        for i, part in enumerate(parts[1:], 1):
            out.append(f"{prefix}{i}".encode())
            out.append(part)
        return b"".join(out)

    async def worker(self, index: int, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        clock = time.perf_counter
        conn: _Connection | None = None
        n = 0
        while clock() < deadline:
            if conn is None or conn.transport is None:
                try:
                    _, conn = await loop.create_connection(_Connection, self.host, self.port)
                except OSError:
                    self.errors += 1
                    await asyncio.sleep(0.05)
                    continue
            n += 1
            body = self.body(index, n)
            data = b"%s%d\r\n\r\n%s" % (self.head, len(body), body)
            started = clock()
            try:
                status = await conn.request(data)
            except ConnectionError:
                self.errors += 1
                conn = None
                continue
            self.latencies.append(clock() - started)
            self.requests += 1
            if not 200 <= status < 300:
                self.non2xx += 1
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    async def run(self) -> dict[str, object]:
        started = time.perf_counter()
        deadline = started + self.duration
        await asyncio.gather(*(self.worker(i, deadline) for i in range(self.connections)))
        elapsed = time.perf_counter() - started
        return {
            "requests": self.requests,
            "non2xx": self.non2xx,
            "errors": self.errors,
            "duration_s": elapsed,
            "latency_us": percentiles(self.latencies),
        }


def percentiles(samples: array[float]) -> dict[str, float]:
    """Exact nearest-rank percentiles of latencies given in seconds, in microseconds."""
    if not samples:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "mean": 0.0, "max": 0.0}
    ordered = sorted(samples)

    def rank(q: float) -> float:
        index = max(0, min(len(ordered) - 1, int(q / 100 * len(ordered) + 0.999999) - 1))
        return float(ordered[index]) * 1e6

    return {
        "p50": rank(50),
        "p90": rank(90),
        "p99": rank(99),
        "mean": sum(ordered) / len(ordered) * 1e6,
        "max": ordered[-1] * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--template", required=True, help="file holding the body, @@MID@@ per messageId")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--nonce", default=f"{time.time_ns():x}")
    parser.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    args = parser.parse_args()
    load = Load(args)
    runner = uvloop.run if uvloop is not None else asyncio.run
    result = runner(load.run())
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
