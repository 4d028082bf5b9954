"""The ``segment`` type: any Segment-compatible collector (Segment, RudderStack, a relay).

Each event is sent with its own time: the relay's corrected ``timestamp`` also becomes
its ``originalTimestamp`` and the request carries a fresh ``sentAt``, so the upstream's
skew correction (``receivedAt - (sentAt - originalTimestamp)``) lands on that same time
however long the event waited in the queue.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec

from relay import __version__, timestamps
from relay.config import DestinationConfig
from relay.retry import Answer, parse_retry_after
from relay.sinks import Outgoing
from relay.store import Stored

MAX_ANSWER_BYTES = 4096
PROBE_TIMEOUT = 1.0
GZIP_LEVEL = 1
_decode = msgspec.json.Decoder(dict[str, Any]).decode
_encode = msgspec.json.Encoder().encode


class SegmentSink:
    def __init__(self, config: DestinationConfig) -> None:
        self.config = config
        self.url = config.endpoint.rstrip("/") + "/v1/batch"
        split = urlsplit(config.endpoint)
        self._host = split.hostname or "localhost"
        self._port = split.port or (443 if split.scheme == "https" else 80)
        self._session: aiohttp.ClientSession | None = None
        self._auth: dict[str, str] = {}

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

    def prepare(self, event: Stored) -> Outgoing:
        body = _decode(event.body)
        body.pop("sentAt", None)
        if "timestamp" in body:
            body["originalTimestamp"] = body["timestamp"]
        return Outgoing(event, _encode(body), self.config.write_key or event.write_key)

    def payload(self, batch: Sequence[Outgoing], sent_at: datetime) -> bytes:
        return b"".join((
            b'{"batch":[', b",".join(o.data for o in batch), b'],"sentAt":',
            _encode(timestamps.iso(sent_at)), b',"writeKey":', _encode(batch[0].key), b"}",
        ))

    def _authorization(self, key: str) -> str:
        header = self._auth.get(key)
        if header is None:
            header = "Basic " + base64.b64encode(f"{key}:".encode()).decode("ascii")
            self._auth[key] = header
        return header

    async def send(self, batch: Sequence[Outgoing]) -> Answer:
        if self._session is None:
            return Answer(None, error="destination is stopped")
        body = self.payload(batch, datetime.now(UTC))
        headers = {"Content-Type": "application/json", "Authorization": self._authorization(batch[0].key)}
        if self.config.gzip:
            body = gzip.compress(body, compresslevel=GZIP_LEVEL)
            headers["Content-Encoding"] = "gzip"
        try:
            async with self._session.post(self.url, data=body, headers=headers) as resp:
                text = (await resp.content.read(MAX_ANSWER_BYTES)).decode("utf-8", "replace")
                return Answer(resp.status, text, parse_retry_after(resp.headers.get("Retry-After")))
        except TimeoutError:
            return Answer(None, error=f"no answer within {self.config.timeout} s")
        except (aiohttp.ClientError, OSError) as exc:
            return Answer(None, error=f"{type(exc).__name__}: {exc}")

    async def probe(self) -> bool:
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
