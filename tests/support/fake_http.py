"""A base for local fakes of vendors' HTTP APIs: an aiohttp server on 127.0.0.1 (a free port)
that records every request and answers through ``answer``, which a vendor's fake implements."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

Reply = tuple[int, Any, dict[str, str]]  # status, body (str: sent as text, else as JSON), headers


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes  # after aiohttp has undone Content-Encoding: gzip
    status: int = 0
    reply: Any = None

    def json(self) -> Any:
        return json.loads(self.body)


Scripted = Reply | Callable[[Request], Reply | None] | None


class FakeServer:
    """``script`` answers the first requests, one entry each (a callable may return None to
    let ``answer`` decide); then ``answer`` does."""

    def __init__(self, script: list[Scripted] | None = None) -> None:
        self.script: deque[Scripted] = deque(script or [])
        self.requests: list[Request] = []
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def answer(self, request: Request) -> Reply:
        return 200, {}, {}

    async def _handle(self, http: web.Request) -> web.StreamResponse:
        request = Request(http.method, http.path_qs, dict(http.headers), await http.read())
        reply: Reply | None = None
        if self.script:
            scripted = self.script.popleft()
            reply = scripted(request) if callable(scripted) else scripted
        status, body, headers = reply if reply is not None else self.answer(request)
        request.status, request.reply = status, body
        self.requests.append(request)
        self._changed.set()
        if isinstance(body, str):
            return web.Response(status=status, text=body, headers=headers)
        return web.json_response(body, status=status, headers=headers)

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 20.0) -> None:
        """Return once ``condition()`` holds (checked after each request); fail after ``timeout``."""
        async def _wait() -> None:
            while not condition():
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(_wait(), timeout)


async def wait_for_rows(running: Any, sql: str, count: int, timeout: float = 20.0) -> list[tuple[Any, ...]]:
    """Poll the relay's SQLite file until ``sql`` returns ``count`` rows (bounded)."""
    async def _wait() -> list[tuple[Any, ...]]:
        while True:
            rows: list[tuple[Any, ...]] = running.rows(sql)
            if len(rows) >= count:
                return rows
            await asyncio.sleep(0.02)
    return await asyncio.wait_for(_wait(), timeout)
