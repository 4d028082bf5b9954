"""The ``webhook`` type: events as Segment JSON to any URL.

``mode = "batch"`` sends one request a batch, ``{"batch": [event, ...]}``. ``mode =
"single"`` sends each event as its own request (the event object is the body), one after
another in queue order; ``send`` stops at the first answer that is not 2xx and reports it,
so the forwarder's policy applies to it unchanged (retry the batch, split it, bisect it to
the one event to dead-letter). Events of the batch that were already accepted are
remembered until the batch is finished, and the forwarder's next attempt skips them: a
retry does not deliver them twice.

With ``hmac_secret`` every request carries ``X-Signature: sha256=<hex>``, the HMAC-SHA256
of the JSON body under the secret, computed before gzip (a receiver that decodes
``Content-Encoding`` verifies it over the bytes it reads).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from typing import Literal

import msgspec

from relay.config import DestinationConfig
from relay.forward.retry import Answer
from relay.sinks import Outgoing
from relay.sinks import options as opts
from relay.sinks.http import HttpClient, HttpSink
from relay.types import Stored

SIGNATURE_HEADER = "X-Signature"
SIGNATURE_PREFIX = "sha256="
# Headers the sink sets itself; an option that sets one would break the request or its signature.
RESERVED_HEADERS = frozenset({
    "content-type", "content-encoding", "content-length", "transfer-encoding", "host",
    "connection", SIGNATURE_HEADER.lower(),
})
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 field-name


class WebhookOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    url: str
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    mode: Literal["batch", "single"] = "batch"
    method: Literal["POST", "PUT"] = "POST"
    hmac_secret: str = ""

    def __repr__(self) -> str:  # header values and the secret are credentials
        return (f"WebhookOptions(url={opts.shown(self.url)!r}, headers={sorted(self.headers)!r}, "
                f"mode={self.mode!r}, method={self.method!r}, signed={bool(self.hmac_secret)})")


def signature(secret: bytes, body: bytes) -> str:
    """The ``X-Signature`` value for ``body``."""
    return SIGNATURE_PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def batch_body(events: Sequence[bytes]) -> bytes:
    return b'{"batch":[' + b",".join(events) + b"]}"


class WebhookSink(HttpSink):
    def __init__(self, config: DestinationConfig) -> None:
        self.config = config
        self.options = opts.parse(config.options, WebhookOptions)
        opts.http_url(self.options.url, "options.url")
        if config.endpoint:
            raise ValueError("type webhook takes its address from `options.url`; leave `endpoint` unset")
        for name, value in self.options.headers.items():
            if not _TOKEN.match(name):
                raise ValueError(f"`options.headers`: {name!r} is not a valid header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"`options.headers`: {name!r} is set by the relay and cannot be changed")
            if any(c in value for c in "\r\n\0"):
                raise ValueError(f"`options.headers`: the value of {name!r} contains a line break")
        self._http = HttpClient(config, self.options.url)
        self._secret = self.options.hmac_secret.encode()
        self._accepted: set[int] = set()  # single mode: ids delivered within an unfinished batch

    def __repr__(self) -> str:
        return f"WebhookSink({self.config.name!r}, {self.options!r})"

    def prepare(self, event: Stored) -> Outgoing:
        return Outgoing(event, event.body, "")

    async def send(self, batch: Sequence[Outgoing]) -> Answer:
        if self.options.mode == "batch":
            return await self._post(batch_body([o.data for o in batch]))
        answer = Answer(200)
        for outgoing in batch:
            if outgoing.event.id in self._accepted:
                continue
            answer = await self._post(outgoing.data)
            if answer.status is None or not 200 <= answer.status <= 299:
                return answer
            self._accepted.add(outgoing.event.id)
        for outgoing in batch:  # the whole batch is delivered: the forwarder is done with it
            self._accepted.discard(outgoing.event.id)
        return answer

    async def _post(self, body: bytes) -> Answer:
        headers = dict(self.options.headers)
        if self._secret:
            headers[SIGNATURE_HEADER] = signature(self._secret, body)
        return await self._http.request(body, headers, self.options.method)
