"""A guard around each ingest connection: a connection limit and a deadline for request headers.

aiohttp bounds idle keep-alive connections but not a client that sends its headers a
byte at a time (slowloris). The guard wraps aiohttp's protocol by composition: a new
connection past ``max_connections`` is refused at once, and a request head must be
complete within ``header_timeout`` of the connection opening or of its first byte. The
guard follows request boundaries (``Framing``: Content-Length and chunked bodies) to know
where each head starts, so every head on a kept-alive connection has its own deadline.
Request bodies are bounded by ``server.body_timeout`` where they are read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

log = logging.getLogger(__name__)
HEAD_END = b"\r\n\r\n"
MAX_HEAD_BYTES = 64 * 1024
MAX_LINE_BYTES = 8 * 1024  # a chunk-size line or a trailer line
CHUNKED = -1
_HEX = frozenset(b"0123456789abcdefABCDEF")


def content_length(head: bytes) -> int | None:
    """The body a request head announces: its length (0 without one), ``CHUNKED``, or None
    when it cannot be followed from the bytes alone (another transfer coding, both
    framings at once, a malformed or repeated length: aiohttp refuses those anyway)."""
    lines = head.lower().split(b"\r\n")
    lengths = [line[len(b"content-length:"):].strip() for line in lines
               if line.startswith(b"content-length:")]
    codings = [line[len(b"transfer-encoding:"):].strip() for line in lines
               if line.startswith(b"transfer-encoding:")]
    if codings:
        return CHUNKED if codings == [b"chunked"] and not lengths else None
    if not lengths:
        return 0
    if len(lengths) > 1 or not lengths[0].isdigit():
        return None
    return int(lengths[0])


class Framing:
    """Request boundaries on one connection, read from the bytes as they arrive: a head
    ends at ``\\r\\n\\r\\n``; a body of Content-Length bytes follows, or chunks (a hex
    size line, that many bytes and a CRLF, until a zero size; then trailer lines up to an
    empty one). ``feed`` returns how many heads started and how many ended in ``data``."""

    IDLE, HEAD, BODY, LOST, CHUNK_SIZE, CHUNK_DATA, TRAILER = range(7)

    def __init__(self) -> None:
        self.state = self.IDLE
        self._head = bytearray()
        self._line = bytearray()
        self._remaining = 0

    def feed(self, data: bytes) -> tuple[int, int]:
        started = ended = 0
        pos, size = 0, len(data)
        while pos < size and self.state != self.LOST:
            if self.state == self.IDLE:
                if data[pos] in b"\r\n":  # blank lines between requests are allowed
                    pos += 1
                    continue
                self.state, started = self.HEAD, started + 1
                self._head.clear()
            elif self.state == self.HEAD:
                before = len(self._head)
                self._head += data[pos:]
                at = self._head.find(HEAD_END, max(0, before - 3))
                if at < 0:
                    pos = size
                    if len(self._head) > MAX_HEAD_BYTES:
                        self.state = self.LOST  # aiohttp refuses such a head anyway
                    continue
                pos += at + len(HEAD_END) - before
                length = content_length(bytes(self._head[:at]))
                self._head.clear()
                ended += 1
                if length is None:
                    self.state = self.LOST
                elif length == CHUNKED:
                    self.state = self.CHUNK_SIZE
                    self._line.clear()
                elif length:
                    self.state, self._remaining = self.BODY, length
                else:
                    self.state = self.IDLE
            elif self.state in (self.CHUNK_SIZE, self.TRAILER):
                newline = data.find(b"\n", pos)
                self._line += data[pos:size if newline < 0 else newline]
                pos = size if newline < 0 else newline + 1
                if len(self._line) > MAX_LINE_BYTES:
                    self.state = self.LOST
                elif newline >= 0:
                    self._end_line()
            else:  # BODY or CHUNK_DATA
                take = min(self._remaining, size - pos)
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self.state = self.IDLE if self.state == self.BODY else self.CHUNK_SIZE
        return started, ended

    def _end_line(self) -> None:
        line = bytes(self._line).rstrip(b"\r")
        self._line.clear()
        if self.state == self.TRAILER:
            if not line:
                self.state = self.IDLE  # the empty line after the last chunk (and trailers)
            return
        digits = line.split(b";", 1)[0].strip()  # a chunk extension follows a ';'
        if not digits or not _HEX.issuperset(digits):
            self.state = self.LOST
            return
        chunk = int(digits, 16)
        if chunk:
            self.state, self._remaining = self.CHUNK_DATA, chunk + 2  # the data and its CRLF
        else:
            self.state = self.TRAILER


@dataclass(slots=True)
class GuardStats:
    refused: int = 0
    header_timeouts: int = 0
    connections: set[ConnectionGuard] = field(default_factory=set)

    @property
    def open(self) -> int:
        return len(self.connections)


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
        self._framing = Framing()

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
        self._timer = asyncio.get_running_loop().call_later(self._header_timeout, self._expire)
        self._inner = self._factory()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        _, ended = self._framing.feed(data)
        if self._framing.state == Framing.HEAD:
            if self._timer is None or ended:  # a head began after the last one ended: its own deadline
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = asyncio.get_running_loop().call_later(self._header_timeout, self._expire)
        elif self._timer is not None:
            self._timer.cancel()
            self._timer = None
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
        if self._inner is not None:
            inner, self._inner = self._inner, None
            inner.connection_lost(exc)

    def _expire(self) -> None:
        self._timer = None
        self._stats.header_timeouts += 1
        if self._transport is not None:
            self._transport.abort()
