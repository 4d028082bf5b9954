"""The ingest API: every route of the Segment-compatible protocol, answering only after commit."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import web

from relay import timestamps
from relay.config import ServerConfig
from relay.errors import InvalidMessage, QueueClosed, QueueError, QueueFull
from relay.ingest import admission, auth, bodies, browser, responses, typed
from relay.ingest.admission import Admitted
from relay.ingest.responses import Rejection
from relay.ops.tap import Tap
from relay.plugins.pipeline import Pipeline
from relay.queue import Queue
from relay.types import AppendResult, Arrival, DeadLetter, Event

log = logging.getLogger(__name__)

MAX_BATCH_MESSAGES = 2500
SINGLE_ROUTES = {
    "identify": "identify", "track": "track", "page": "page",
    "screen": "screen", "group": "group", "alias": "alias",
    "i": "identify", "t": "track", "p": "page", "s": "screen", "g": "group", "a": "alias",
}
BATCH_ROUTES = ("batch", "import", "b")
_encode = msgspec.json.Encoder().encode


def batch_parts(body: dict[str, Any]) -> tuple[list[Any], dict[str, Any] | None, dict[str, Any] | None]:
    """A batch body's messages, batch-level context and integrations; Rejection (400) when
    they are not a batch's."""
    messages = body.get("batch")
    if not isinstance(messages, list):
        raise Rejection(400, "invalid_batch", "body needs a `batch` array of messages")
    if not messages:
        raise Rejection(400, "invalid_batch", "batch is empty")
    if len(messages) > MAX_BATCH_MESSAGES:
        raise Rejection(400, "batch_too_large",
                        f"batch has {len(messages)} messages; the limit is {MAX_BATCH_MESSAGES}")
    context, integrations = body.get("context"), body.get("integrations")
    if context is not None and not isinstance(context, dict):
        raise Rejection(400, "invalid_batch", "batch-level context must be an object")
    if integrations is not None and not isinstance(integrations, dict):
        raise Rejection(400, "invalid_batch", "batch-level integrations must be an object")
    return messages, context, integrations


@dataclass(frozen=True, slots=True)
class Settings:
    """What a request is checked against; a reload replaces the whole of it at once."""

    config: ServerConfig
    keys: frozenset[str]
    trusted: tuple[auth.Network, ...]


class Ingest:
    def __init__(self, config: ServerConfig, queue: Queue, pipeline: Pipeline | None = None,
                 tap: Tap | None = None) -> None:
        self.queue = queue
        self.pipeline = pipeline
        self.tap = tap or Tap()
        self.apply(config)
        self.counters: dict[str, int] = {}
        self.received = 0  # messages in requests that passed the request-level checks
        self._clock_ms = 0
        self._now = (datetime.now(UTC), "")

    def apply(self, config: ServerConfig) -> None:
        """Take (new) write keys, proxies and limits, as one snapshot swapped in a single
        assignment; used at start and on reload."""
        self.snapshot = Settings(config, frozenset(config.write_keys),
                                 auth.networks(config.trusted_proxies))

    @property
    def config(self) -> ServerConfig:
        return self.snapshot.config

    def routes(self) -> list[web.RouteDef]:
        table = [web.post(f"/v1/{name}", self._single(kind)) for name, kind in SINGLE_ROUTES.items()]
        table += [web.post(f"/v1/{name}", self.batch) for name in BATCH_ROUTES]
        table += [
            web.get("/v1/pixel/{type}", self.pixel, allow_head=False),
            web.get("/v1/projects/{write_key}/settings", self.settings),
            # RudderStack's JavaScript SDK (v3): its beacon transport and its source config
            web.post("/beacon/v1/batch", self.beacon),
            web.get("/sourceConfig", self.source_config, allow_head=False),
            web.get("/sourceConfig/", self.source_config, allow_head=False),
        ]
        return table

    # --- handlers -------------------------------------------------------------------------

    def _single(self, kind: str) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.StreamResponse:
            data = await self._data(request)
            if self._typed():
                message = typed.read_single(data)
                if message is not None:
                    arrival = self._arrival(request, message.writeKey)
                    events = typed.admit_single(message, kind, arrival, data)
                    if events is not None:
                        result = await self._store(events, ())
                        return responses.ok({"duplicate": True} if result.duplicates else None)
            body = self._parse(data)
            arrival = self._arrival(request, body.get("writeKey"))
            admitted = await self._admit([body], arrival, type_hint=kind, strict=True)
            result = await self._store(admitted.events, admitted.dead, admitted.changes)
            if admitted.errors:  # a plugin refused it: dead-lettered, so nothing to retry
                return responses.ok({"accepted": result.stored, "rejected": result.dead_lettered,
                                     "errors": admitted.errors})
            return responses.ok({"duplicate": True} if result.duplicates else None)

        handler.__name__ = f"ingest_{kind}"
        return handler

    async def beacon(self, request: web.Request) -> web.StreamResponse:
        """``navigator.sendBeacon`` cannot set headers: the write key rides in the query."""
        return await self.batch(request, request.query.get("writeKey"))

    async def batch(self, request: web.Request, query_key: str | None = None) -> web.StreamResponse:
        data = await self._data(request)
        if self._typed():
            decoded = typed.read_batch(data, MAX_BATCH_MESSAGES)
            if decoded is not None:
                key = decoded.writeKey if not query_key or decoded.writeKey else query_key
                arrival = self._arrival(request, key, batch=(None, None, decoded.sentAt))
                events = typed.admit_batch(decoded, arrival, data)
                if events is not None:
                    result = await self._store(events, ())
                    return responses.ok({"accepted": result.stored, "duplicates": result.duplicates,
                                         "rejected": result.dead_lettered})
        body = self._parse(data)
        if query_key and not body.get("writeKey"):
            body["writeKey"] = query_key
        try:
            messages, context, integrations = batch_parts(body)
        except Rejection as exc:
            self._count(exc.code)
            raise
        arrival = self._arrival(request, body.get("writeKey"),
                                batch=(context, integrations, body.get("sentAt")))
        admitted = await self._admit(messages, arrival, indexed=True)
        result = await self._store(admitted.events, admitted.dead, admitted.changes)
        answer: dict[str, Any] = {
            "accepted": result.stored,
            "duplicates": result.duplicates,
            "rejected": result.dead_lettered,
        }
        if admitted.errors:
            answer["errors"] = admitted.errors
        return responses.ok(answer)

    async def _admit(self, messages: Sequence[object], arrival: Arrival, *, type_hint: str | None = None,
                     indexed: bool = False, strict: bool = False) -> Admitted:
        """Admit a request's messages; a protocol fault in a single-message request (``strict``)
        is its 400."""
        pipeline = self.pipeline  # held to the end: a reload unloads it only after
        watch = self.tap.watched and pipeline is not None and pipeline.runs_at_ingest
        if pipeline is not None:
            pipeline.hold()
        try:
            admitted = await admission.admit(messages, arrival, pipeline,
                                             Admitted(changes={}) if watch else None,
                                             type_hint=type_hint, indexed=indexed, strict=strict)
        except InvalidMessage as exc:
            raise self._reject(400, "invalid_message", str(exc)) from None
        except RecursionError:  # a backstop: bodies.too_deep refuses deep bodies before this
            raise self._reject(400, "nesting_too_deep", "the request nests too deep to be handled") from None
        finally:
            if pipeline is not None:
                pipeline.release()
        if admitted.dead:
            self._count("invalid_message", len(admitted.dead))
        if admitted.drops and self.tap.watched:
            self.tap.dropped(arrival.write_key, arrival.received_ts, admitted.drops)
        return admitted

    async def pixel(self, request: web.Request) -> web.StreamResponse:
        try:
            message = browser.pixel_message(request.match_info["type"], request.query.items())
        except InvalidMessage as exc:
            message = self._unreadable_pixel(request.match_info["type"], request.query)
            problem: str | None = str(exc)
        else:
            problem = None
        try:
            arrival = self._arrival(request, message.get("writeKey") if problem is None
                                    else request.query.get("writeKey"))
        except Rejection as exc:
            # A pixel always answers its image (a mail client shows nothing else); an
            # unauthorised one is not stored, not even as a dead letter.
            return responses.pixel({"X-Relay-Error": exc.message})
        if problem is None:
            admitted = await self._admit([message], arrival, type_hint=request.match_info["type"])
        else:
            admitted = Admitted()
            pipeline = self.pipeline
            if pipeline is not None:
                pipeline.hold()
            try:
                await admission.refuse(message, arrival, pipeline, admitted, problem)
            finally:
                if pipeline is not None:
                    pipeline.release()
            self._count("invalid_message")
        await self._store(admitted.events, admitted.dead, admitted.changes)
        if admitted.errors:
            return responses.pixel({"X-Relay-Error": admitted.errors[0]["reason"]})
        return responses.pixel()

    def _unreadable_pixel(self, msg_type: str, query: Mapping[str, str]) -> dict[str, Any]:
        """What a refused pixel is dead-lettered as: its fields when they can be read (then
        a scrubbing plugin scrubs them as any message's), else its query string; when a
        scrubbing plugin is configured, the values of an unreadable query are withheld,
        since nothing can tell what in them it would have removed."""
        try:
            return {**browser.pixel_fields(query.items()), "type": msg_type}
        except InvalidMessage:
            pass
        if self.pipeline is None or not self.pipeline.scrubs:
            return {"query": dict(query)}
        return {"query": {key: value if key == "writeKey" else f"<withheld: {len(value)} characters>"
                          for key, value in query.items()}}

    async def settings(self, request: web.Request) -> web.StreamResponse:
        write_key = request.match_info["write_key"]
        self._authorise(write_key)
        data = browser.settings(write_key, request.host, request.scheme)
        return web.Response(body=_encode(data), content_type="application/json")

    async def source_config(self, request: web.Request) -> web.StreamResponse:
        header_key = auth.basic_username(request.headers.get("Authorization"))
        write_key = self._authorise(auth.write_key(header_key, request.query.get("writeKey")))
        return web.Response(body=_encode(browser.source_config(write_key)),
                            content_type="application/json")

    # --- steps shared by the handlers ------------------------------------------------------

    async def _data(self, request: web.Request) -> bytes:
        """The body as sent, decompressed."""
        try:
            raw = await bodies.read_raw(request, self.config.body_timeout)
            return bodies.decompress(raw, request.headers.get("Content-Encoding", ""))
        except Rejection as exc:
            self._count(exc.code)
            raise

    def _parse(self, data: bytes) -> dict[str, Any]:
        """The body as a dict, for the dict path."""
        try:
            body = bodies.parse_json(data)
        except Rejection as exc:
            self._count(exc.code)
            raise
        if not isinstance(body, dict):
            raise self._reject(400, "invalid_json", "request body must be a JSON object")
        return body

    def _typed(self) -> bool:
        """Whether a request may take the typed path: no ingest plugin is there to run."""
        pipeline = self.pipeline
        return pipeline is None or not pipeline.runs_at_ingest

    def _arrival(
        self,
        request: web.Request,
        body_key: object,
        batch: tuple[dict[str, Any] | None, dict[str, Any] | None, object] | None = None,
    ) -> Arrival:
        """The request's facts (``body_key`` is the body's ``writeKey``); ``batch`` carries
        batch-level (context, integrations, sentAt)."""
        header_key = auth.basic_username(request.headers.get("Authorization"))
        key = auth.write_key(header_key, body_key)
        settings = self.snapshot  # keys and proxies from one snapshot
        write_key = self._authorise(key, settings)
        received_at, received_iso = self._clock()
        return Arrival(
            write_key=write_key,
            received_at=received_at,
            received_iso=received_iso,
            peer_ip=auth.client_ip(
                request.remote, request.headers.get("X-Forwarded-For"), settings.trusted
            ),
            context=batch[0] if batch else None,
            integrations=batch[1] if batch else None,
            sent_at=batch[2] if batch else None,
        )

    def _clock(self) -> tuple[datetime, str]:
        """Now, to the millisecond (as receivedAt is written), and its ISO form: requests
        arriving within the same millisecond share both."""
        ms = time.time_ns() // 1_000_000
        if ms != self._clock_ms:
            self._clock_ms = ms
            moment = datetime.fromtimestamp(ms / 1000, UTC)
            self._now = (moment, timestamps.iso(moment))
        return self._now

    def _authorise(self, key: str | None, settings: Settings | None = None) -> str:
        keys = (settings or self.snapshot).keys
        if not keys:
            return key or ""
        if not key:
            raise self._reject(401, "missing_write_key",
                               "no write key: send it as Basic auth username or as `writeKey`")
        if key not in keys:
            raise self._reject(401, "unknown_write_key", "the write key is not accepted here")
        return key

    async def _store(self, events: Sequence[Event], dead: Sequence[DeadLetter],
                     changes: Mapping[str, Any] | None = None) -> AppendResult:
        self.received += len(events) + len(dead)
        try:
            result = await self.queue.append(events, dead)
            if self.tap.watched:  # after the commit: what the viewers see is what was stored
                firsts = result.first_sightings
                self.tap.stored(events if firsts is None
                                else [e for e, first in zip(events, firsts, strict=True) if first], changes)
                if dead:
                    self.tap.refused(dead)
            return result
        except QueueFull as exc:
            raise self._reject(503, "queue_full", str(exc),
                               {"Retry-After": str(exc.retry_after)}) from None
        except QueueClosed:
            raise self._reject(503, "shutting_down", "the relay is shutting down",
                               {"Retry-After": "1"}) from None
        except QueueError as exc:
            raise self._reject(503, "queue_error", str(exc), {"Retry-After": "1"}) from None

    def _reject(self, status: int, code: str, message: str,
                headers: dict[str, str] | None = None) -> Rejection:
        self._count(code)
        return Rejection(status, code, message, headers)

    def _count(self, reason: str, by: int = 1) -> None:
        self.counters[reason] = self.counters.get(reason, 0) + by
