"""A guard around each ingest connection: a connection limit and a deadline for request headers.

aiohttp bounds idle keep-alive connections but not a client that sends its headers a
byte at a time (slowloris). The guard wraps aiohttp's protocol by composition: a new
connection past ``max_connections`` is refused at once, and a connection that has not
sent a complete request head (``\\r\\n\\r\\n``) within ``header_timeout`` of connecting is
closed. Request bodies are bounded by ``server.body_timeout`` where they are read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

log = logging.getLogger(__name__)
HEAD_END = b"\r\n\r\n"


@dataclass(slots=True)
class GuardStats:
    open: int = 0
    refused: int = 0
    header_timeouts: int = 0
    connections: set[ConnectionGuard] = field(default_factory=set)


class ConnectionGuard(asyncio.Protocol):
    def __init__(self, inner: Callable[[], Any], max_connections: int, header_timeout: float,
                 stats: GuardStats) -> None:
        self._factory = inner
        self._max = max_connections
        self._header_timeout = header_timeout
        self._stats = stats
        self._inner: Any = None
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        if len(self._stats.connections) >= self._max:
            self._stats.refused += 1
            if self._stats.refused in (1, 10, 100) or self._stats.refused % 1000 == 0:
                log.warning("connection limit reached; refusing new connections",
                            extra={"max_connections": self._max, "refused": self._stats.refused})
            self._transport.abort()
            return
        self._stats.connections.add(self)
        self._stats.open = len(self._stats.connections)
        self._timer = asyncio.get_running_loop().call_later(self._header_timeout, self._expire)
        self._inner = self._factory()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if self._timer is not None:
            if HEAD_END in self._tail + data[:4] or HEAD_END in data:
                self._timer.cancel()
                self._timer = None
            else:
                self._tail = (self._tail + data)[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._stats.connections.discard(self)
        self._stats.open = len(self._stats.connections)
        if self._inner is not None:
            inner, self._inner = self._inner, None
            inner.connection_lost(exc)

    def _expire(self) -> None:
        self._timer = None
        self._stats.header_timeouts += 1
        if self._transport is not None:
            self._transport.abort()
