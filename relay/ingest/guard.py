"""A guard around each connection: a connection limit, a deadline for request headers, a
bound on chunks per body, and the relay's JSON error body for aiohttp's own error answers.

aiohttp bounds idle keep-alive connections but not a client that sends its headers a
byte at a time (slowloris). The guard wraps aiohttp's protocol by composition: a new
connection past ``max_connections`` is refused at once, and a request head must be
complete within ``header_timeout`` of the connection opening or of its first byte. The
guard follows request boundaries (``Framing``: Content-Length and chunked bodies, read as
aiohttp's parsers read them) to know where each head starts, so every head on a
kept-alive connection has its own deadline. When it cannot follow a connection (a framing
aiohttp refuses), that connection keeps its deadline: it never lives on unwatched. A body
of more than ``MAX_CHUNKS`` chunks is refused, so tiny chunks cannot buy loop time.
Request bodies are bounded by ``server.body_timeout`` where they are read.

aiohttp answers what its parser refuses (a URL or header over its limits, too many
headers, Content-Length with Transfer-Encoding, ...) itself, in text/plain, outside the
application and its middleware. The transport the guard hands to aiohttp (``Transport``)
re-encodes those answers as the relay's JSON error body, in their place in the stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast

from relay.ingest import responses

log = logging.getLogger(__name__)
HEAD_END = b"\r\n\r\n"
MAX_HEAD_BYTES = 64 * 1024  # past this, only the lines that frame the body are kept
MAX_LINE_BYTES = 8 * 1024  # a chunk-size line or a trailer line
MAX_CHUNKS = 1024  # chunks in one request body (500 KiB in 1,024 chunks is 500 bytes each)
CHUNKED = -1
_HEX = frozenset(b"0123456789abcdefABCDEF")
_FRAMING_HEADERS = (b"content-length:", b"transfer-encoding:")


def content_length(head: bytes) -> int | None:
    """The body a request head announces: its length (0 without one), ``CHUNKED``, or None
    when aiohttp refuses the head anyway (Content-Length with Transfer-Encoding, a
    repeated or malformed length, a transfer coding list that does not end in chunked).

    As aiohttp reads it (both its parsers): a Transfer-Encoding list whose last coding is
    ``chunked`` (any case, spaces and tabs around) is chunked, whatever comes before it
    (``identity, chunked``, ``gzip, chunked``); a repeated header is refused."""
    lines = head.lower().split(b"\r\n")
    lengths = [line[15:].strip(b" \t") for line in lines if line.startswith(b"content-length:")]
    codings = [line[18:] for line in lines if line.startswith(b"transfer-encoding:")]
    if codings:
        if lengths or len(codings) > 1:
            return None
        return CHUNKED if codings[0].rsplit(b",", 1)[-1].strip(b" \t") == b"chunked" else None
    if not lengths:
        return 0
    if len(lengths) > 1 or not lengths[0].isdigit():
        return None
    return int(lengths[0])


def framing_lines(head: bytes | bytearray) -> bytearray:
    """An unfinished head cut down to what framing needs: its Content-Length and
    Transfer-Encoding lines and the line still arriving (heads end as they would have)."""
    lines = bytes(head).split(b"\r\n")
    kept = [line for line in lines[1:-1] if line.lower().startswith(_FRAMING_HEADERS)]
    return bytearray(b"\r\n".join([b"-", *kept, lines[-1]]))


class Framing:
    """Request boundaries on one connection, read from the bytes as they arrive: a head
    ends at ``\\r\\n\\r\\n``; a body of Content-Length bytes follows, or chunks (a hex
    size line, that many bytes and a CRLF, until a zero size; then trailer lines up to an
    empty one). ``feed`` returns how many heads started and how many ended in ``data``.
    ``LOST``: the bytes cannot be followed (aiohttp refuses them too); ``FLOODED``: a body
    came in more than ``MAX_CHUNKS`` chunks."""

    IDLE, HEAD, BODY, CHUNK_SIZE, CHUNK_DATA, TRAILER, LOST, FLOODED = range(8)  # the last two end it

    def __init__(self) -> None:
        self.state = self.IDLE
        self._head = bytearray()
        self._line = bytearray()
        self._remaining = 0
        self._chunks = 0

    def feed(self, data: bytes) -> tuple[int, int]:
        started = ended = 0
        pos, size = 0, len(data)
        while pos < size and self.state < self.LOST:
            state = self.state
            if state == self.CHUNK_DATA or state == self.BODY:
                take = min(self._remaining, size - pos)
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self.state = self.IDLE if state == self.BODY else self.CHUNK_SIZE
            elif state == self.CHUNK_SIZE:
                newline = data.find(b"\n", pos)
                if newline < 0 or self._line:
                    self._line += data[pos:size if newline < 0 else newline]
                    pos = size if newline < 0 else newline + 1
                    if len(self._line) > MAX_LINE_BYTES:
                        self.state = self.LOST
                    elif newline >= 0:
                        line = bytes(self._line)
                        self._line.clear()
                        self._chunk_size(line)
                else:  # the whole size line is here (the usual case): no copy into the buffer
                    line, pos = data[pos:newline], newline + 1
                    self._chunk_size(line)
            elif state == self.IDLE:
                if data[pos] in b"\r\n":  # blank lines between requests are allowed
                    pos += 1
                    continue
                self.state, started = self.HEAD, started + 1
                self._head.clear()
            elif state == self.HEAD:
                before = len(self._head)
                self._head += data[pos:]
                at = self._head.find(HEAD_END, max(0, before - 3))
                if at < 0:
                    pos = size
                    if len(self._head) > MAX_HEAD_BYTES:
                        self._head = framing_lines(self._head)
                        if len(self._head) > MAX_HEAD_BYTES:
                            self.state = self.LOST  # endless framing lines: aiohttp refuses those
                    continue
                pos += at + len(HEAD_END) - before
                length = content_length(bytes(self._head[:at]))
                self._head.clear()
                ended += 1
                if length is None:
                    self.state = self.LOST
                elif length == CHUNKED:
                    self.state, self._chunks = self.CHUNK_SIZE, 0
                    self._line.clear()
                elif length:
                    self.state, self._remaining = self.BODY, length
                else:
                    self.state = self.IDLE
            else:  # TRAILER
                newline = data.find(b"\n", pos)
                self._line += data[pos:size if newline < 0 else newline]
                pos = size if newline < 0 else newline + 1
                if len(self._line) > MAX_LINE_BYTES:
                    self.state = self.LOST
                elif newline >= 0:
                    if not self._line.rstrip(b"\r"):
                        self.state = self.IDLE  # the empty line after the last chunk (and trailers)
                    self._line.clear()
        return started, ended

    def _chunk_size(self, line: bytes) -> None:
        digits = line.rstrip(b"\r").split(b";", 1)[0].strip()  # a chunk extension follows a ';'
        if not digits or not _HEX.issuperset(digits):
            self.state = self.LOST
            return
        chunk = int(digits, 16)
        if not chunk:
            self.state = self.TRAILER
            return
        self._chunks += 1
        if self._chunks > MAX_CHUNKS:
            self.state = self.FLOODED
        else:
            self.state, self._remaining = self.CHUNK_DATA, chunk + 2  # the data and its CRLF


def error_answer(status: int, code: str, message: str) -> bytes:
    """A whole HTTP response carrying the relay's JSON error body; the connection closes."""
    body = responses.error_body(code, message)
    reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


_CODES = {400: "bad_request", 500: "internal_error", 504: "handler_timeout"}


def as_json_error(data: bytes) -> bytes:
    """aiohttp's own text/plain error answer (``data``: its head and body) as the same
    answer with the relay's JSON error body; anything else unchanged."""
    head, sep, text = data.partition(HEAD_END)
    if not sep or b"\r\ncontent-type: text/plain" not in head.lower():
        return data
    lines = head.split(b"\r\n")
    status = int(lines[0][9:12])
    first = text.decode("utf-8", "replace").strip().split("\n", 1)[0].rstrip(": ")
    body = responses.error_body(_CODES.get(status, "http_error"), first or HTTPStatus(status).phrase)
    kept = [line for line in lines if not line.lower().startswith((b"content-type:", b"content-length:"))]
    kept += [b"Content-Type: application/json", b"Content-Length: %d" % len(body)]
    return b"\r\n".join(kept) + HEAD_END + body


class Transport:
    """The transport aiohttp's protocol writes to: the connection's own, except that an
    error answer aiohttp makes itself (text/plain; the application's are JSON) goes out
    with the relay's JSON body. ``wrote`` says whether anything was written since the
    guard last cleared it."""

    __slots__ = ("_transport", "wrote")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.wrote = False

    def write(self, data: Any) -> None:
        self.wrote = True
        if data[9:10] in (b"4", b"5") and bytes(data[:7]) == b"HTTP/1.":
            data = as_json_error(bytes(data))
        self._transport.write(data)

    def writelines(self, chunks: Iterable[Any]) -> None:
        parts = list(chunks)
        if parts and parts[0][9:10] in (b"4", b"5") and bytes(parts[0][:7]) == b"HTTP/1.":
            self.write(b"".join(parts))
        else:
            self.wrote = True
            self._transport.writelines(parts)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def close(self) -> None:
        self._transport.close()

    def abort(self) -> None:
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@dataclass(slots=True)
class GuardStats:
    refused: int = 0
    header_timeouts: int = 0
    chunk_floods: int = 0
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
        self._view: Transport | None = None
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
        self._view = Transport(self._transport)
        self._inner.connection_made(self._view)

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        framing = self._framing
        _, ended = framing.feed(data)
        state = framing.state
        if state == Framing.HEAD:
            if self._timer is None or ended:  # a head began after the last one ended: its own deadline
                self._arm()
        elif state == Framing.LOST:
            if self._timer is None:  # where the next head starts is unknown: the deadline stands
                self._arm()
        elif state == Framing.FLOODED:
            self._flooded()
            return
        elif self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if ended and self._view is not None:
            self._view.wrote = False
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

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self._header_timeout, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self._stats.header_timeouts += 1
        if self._transport is not None:
            self._transport.abort()

    def _flooded(self) -> None:
        """A body in more than MAX_CHUNKS chunks: answered 400 when nothing was answered
        to that request yet, else cut off; the rest is not read."""
        self._stats.chunk_floods += 1
        if self._stats.chunk_floods in (1, 10, 100) or self._stats.chunk_floods % 1000 == 0:
            log.warning("a request body came in too many chunks; closing its connection",
                        extra={"max_chunks": MAX_CHUNKS, "floods": self._stats.chunk_floods})
        if self._transport is None or self._transport.is_closing():
            return
        if self._view is not None and not self._view.wrote:
            self._transport.write(error_answer(
                400, "too_many_chunks", f"the chunked body has more than {MAX_CHUNKS} chunks"))
            self._transport.close()
        else:
            self._transport.abort()
