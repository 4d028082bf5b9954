"""A fake Segment-compatible upstream: records what it receives, plays scripted answers."""

from __future__ import annotations

import asyncio
import base64
import json
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web


@dataclass
class Received:
    batch: list[dict[str, Any]]
    sent_at: str | None
    write_key: str | None
    auth_user: str | None
    headers: dict[str, str]
    status: int
    size: int = 0  # bytes of the (decompressed) request body
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class Slow:
    """A script entry: wait ``seconds`` before answering ``then`` (any other entry)."""

    seconds: float
    then: Any = 200


Script = int | tuple[int, dict[str, str]] | Slow | Any  # a status, (status, headers), Slow, or a callable


class FakeUpstream:
    """``script`` is consumed one entry per request; when empty, ``default`` answers.
    An entry may be a callable ``(batch) -> status | (status, headers, body) | Slow``.

    A request is recorded (in ``requests``, with the status it will be answered) as soon as
    its body has been read, before any delay: an upstream that processed a batch but
    answered too late, or to a client that died, still counts it as received."""

    def __init__(self, script: list[Script] | None = None, default: Any = 200,
                 delay: float = 0.0) -> None:
        self.script: deque[Script] = deque(script or [])
        self.default = default
        self.delay = delay
        self.requests: list[Received] = []
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self.arrived = asyncio.Event()
        self._closing = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def delivered(self) -> list[dict[str, Any]]:
        """Every event of every request answered 2xx, in arrival order."""
        return [e for r in self.requests if 200 <= r.status < 300 for e in r.batch]

    def delivered_ids(self) -> list[str]:
        return [e["messageId"] for e in self.delivered]

    async def start(self, port: int = 0) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/batch", self._handle)
        self._closing.clear()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        self._closing.set()  # cut short any delayed answer, so that no handler outlives the server
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()  # aiohttp has already undone Content-Encoding: gzip
        body = json.loads(raw)
        auth = request.headers.get("Authorization", "")
        user = base64.b64decode(auth[6:]).decode().partition(":")[0] if auth.startswith("Basic ") else None
        entry = self.script.popleft() if self.script else self.default
        delay = self.delay
        while True:
            if callable(entry):
                entry = entry(body["batch"])
            if isinstance(entry, Slow):
                delay += entry.seconds
                entry = entry.then
                continue
            break
        status, headers, text = 200, {}, None
        if isinstance(entry, tuple):
            status, headers, *rest = entry
            text = rest[0] if rest else None
        else:
            status = entry
        self.requests.append(Received(body["batch"], body.get("sentAt"), body.get("writeKey"), user,
                                      dict(request.headers), status, len(raw)))
        self.arrived.set()
        if delay:
            try:
                await asyncio.wait_for(self._closing.wait(), delay)
            except TimeoutError:
                pass
        if text is None:
            text = json.dumps({"success": 200 <= status < 300} if status < 400 else
                              {"success": False, "code": "err", "message": f"status {status}"})
        return web.Response(status=status, text=text, headers=headers, content_type="application/json")

    async def wait_for(self, count: int, timeout: float = 20.0) -> None:
        """Wait until ``count`` events were delivered (2xx), or fail after ``timeout``."""
        async def _wait() -> None:
            while len(self.delivered) < count:
                self.arrived.clear()
                await self.arrived.wait()
        await asyncio.wait_for(_wait(), timeout)
