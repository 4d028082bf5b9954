"""The HTTP client the device-mode destination types share.

One aiohttp session per destination, sized for its ``concurrency``; a request body is
gzipped when the destination's ``gzip`` is on; whatever comes back becomes a
``retry.Answer`` (no answer at all: status None and the error). Redirects are not
followed: a 3xx means the address is wrong, and the retry policy pauses on it. Error
texts never carry the URL's query or user info, which may hold credentials.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Mapping
from urllib.parse import urlsplit

import aiohttp

from relay import __version__
from relay.config import DestinationConfig
from relay.forward.retry import Answer, parse_retry_after
from relay.sinks.options import shown

MAX_ANSWER_BYTES = 4096
PROBE_TIMEOUT = 1.0
GZIP_LEVEL = 1


class HttpClient:
    def __init__(self, config: DestinationConfig, url: str) -> None:
        self.config = config
        self.url = url
        self.shown_url = shown(url)
        split = urlsplit(url)
        self._host = split.hostname or "localhost"
        self._port = split.port or (443 if split.scheme == "https" else 80)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"HttpClient({self.shown_url!r})"

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                connector=aiohttp.TCPConnector(limit=self.config.concurrency * 2),
                headers={"User-Agent": f"relay/{__version__}"},
                auto_decompress=True,
            )

    async def stop(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def request(self, body: bytes, headers: Mapping[str, str] | None = None,
                      method: str = "POST") -> Answer:
        """Send ``body`` (JSON) and report the answer; ``headers`` are added to the defaults."""
        if self._session is None:
            return Answer(None, error="destination is stopped")
        sent = {"Content-Type": "application/json", **(headers or {})}
        if self.config.gzip:
            body = gzip.compress(body, compresslevel=GZIP_LEVEL)
            sent["Content-Encoding"] = "gzip"
        try:
            async with self._session.request(method, self.url, data=body, headers=sent,
                                             allow_redirects=False) as resp:
                text = (await _read_capped(resp.content)).decode("utf-8", "replace")
                return Answer(resp.status, text, parse_retry_after(resp.headers.get("Retry-After")))
        except TimeoutError:
            return Answer(None, error=f"no answer within {self.config.timeout} s")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return Answer(None, error=self._redact(f"{type(exc).__name__}: {exc}"))

    async def probe(self) -> bool:
        """Whether the upstream accepts TCP connections again."""
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(self._host, self._port), PROBE_TIMEOUT
            )
        except (OSError, TimeoutError):
            return False
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
        return True

    def _redact(self, text: str) -> str:
        return text.replace(self.url, self.shown_url)


class HttpSink:
    """start, stop and probe for a sink that talks to its upstream through ``_http``."""

    _http: HttpClient

    async def start(self) -> None:
        await self._http.start()

    async def stop(self) -> None:
        await self._http.stop()

    async def probe(self) -> bool:
        return await self._http.probe()


async def _read_capped(stream: aiohttp.StreamReader) -> bytes:
    """Up to ``MAX_ANSWER_BYTES`` of an answer's body (``read(n)`` may stop at a chunk)."""
    chunks: list[bytes] = []
    size = 0
    while size < MAX_ANSWER_BYTES:
        chunk = await stream.read(MAX_ANSWER_BYTES - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
