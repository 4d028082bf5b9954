"""The ``nats`` type: each event published to a JetStream stream; progress only past its PubAck.

A batch is published at once, every event with its own reply subject, and its PubAcks are
awaited together (pipelined: at most ``max_events x concurrency`` acks in flight). An
event whose ack came back is remembered until its batch is finished, so a retry publishes
only the others. ``Nats-Msg-Id`` is the event's messageId (``<writeKey>:<messageId>``
when events keep their own write keys, which may differ), so the stream's duplicate
window drops a resend after a crash; headers ``writeKey`` and ``type`` go with it. The
body is the event as the ``segment`` type sends it (its own time as ``originalTimestamp``,
no ``sentAt``), so a relay that consumes the stream keeps the event's time.

What came back, as the retry policy reads it:

| from JetStream                                    | answer        | action       |
|---------------------------------------------------|---------------|--------------|
| PubAck (a duplicate too)                          | 200           | delivered    |
| no connection, no ack within ``timeout``          | no answer     | retry        |
| no responders (no stream takes the subject), 503  | 503           | retry        |
| a refusal of the message (size, ...), other 4xx   | its code, 400 | dead letter  |
| login refused / publish not permitted            | 401 / 403     | pause        |
| the subject is in another stream than ``stream``  | 403           | pause        |
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from relay import jetstream
from relay.config import DestinationConfig
from relay.forward.retry import Answer
from relay.sinks import Outgoing, settle
from relay.sinks import options as opts
from relay.sinks.segment import as_sent
from relay.sinks.topics import Template
from relay.types import Stored

if TYPE_CHECKING:
    from nats.aio.msg import Msg

VIA = "JetStream"
NO_RESPONDERS = "503"
WRONG_STREAM = 10060  # JetStream's "expected stream does not match"
STREAM_IN_USE = 10058  # "stream name already in use": another relay created it first


class NatsOptions(jetstream.ConnectionOptions, frozen=True, forbid_unknown_fields=True, kw_only=True):
    subject: str = "segment.{write_key}.{type}"
    stream: str = ""  # when set, a message the server stores in another stream is refused
    create_stream: bool = False
    stream_subjects: tuple[str, ...] = ()  # default: the subject's first token + ".>"
    storage: Literal["file", "memory"] = "file"
    replicas: int = 1
    duplicate_window: float = 120.0  # seconds
    max_age: float = 0  # seconds; 0 keeps messages until the limits below
    max_bytes: int = 0  # 0: no limit
    max_msg_size: int = 0  # 0: the server's limit
    discard: Literal["new", "old"] = "new"  # at the limits: refuse new messages (kept queued here)


class _Reply(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: dict[str, Any] | None = None


_decode_reply = msgspec.json.Decoder(_Reply).decode


class Message(Outgoing):
    """An event with the subject and headers it is published with."""

    __slots__ = ("headers", "subject")

    def __init__(self, event: Stored, data: bytes, subject: str, headers: dict[str, str]) -> None:
        super().__init__(event, data, "")
        self.subject = subject
        self.headers = headers


class NatsSink:
    def __init__(self, config: DestinationConfig) -> None:
        self.config = config
        self.options = opts.parse(config.options, NatsOptions)
        if config.endpoint:
            raise ValueError("type nats takes its servers from `options.servers`; leave `endpoint` unset")
        self.subject = Template(self.options.subject, "subject")
        if self.options.create_stream and not self.options.stream:
            raise ValueError("`options.create_stream` needs `options.stream` (its name)")
        if self.options.replicas < 1 or self.options.duplicate_window < 0 or self.options.max_age < 0:
            raise ValueError("`options.replicas` must be at least 1, `options.duplicate_window` "
                             "and `options.max_age` at least 0")
        self._connection = jetstream.Connection(self.options, "nats", config.name)
        self._inbox = ""
        self._ready = False
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._tokens = itertools.count()
        self._accepted: set[int] = set()  # ids acknowledged within an unfinished batch

    def __repr__(self) -> str:
        return f"NatsSink({self.config.name!r}, {self._connection!r})"

    async def start(self) -> None:
        await self._connection.start()

    async def stop(self) -> None:
        await self._connection.stop()
        self._ready = False
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()

    async def probe(self) -> bool:
        return await self._connection.probe()

    def prepare(self, event: Stored) -> Message:
        key = self.config.write_key or event.write_key
        message_id = event.message_id if self.config.write_key or not key else f"{key}:{event.message_id}"
        headers = {"Nats-Msg-Id": message_id, "writeKey": key, "type": event.type}
        if self.options.stream:
            headers["Nats-Expected-Stream"] = self.options.stream
        return Message(event, as_sent(event.body), self.subject.render(event, key), headers)

    async def send(self, batch: Sequence[Outgoing]) -> Answer:
        connection = self._connection
        client = connection.client
        if client is None or not connection.connected:
            if connection.denied:
                return Answer(401, connection.denied, via="NATS")
            return Answer(None, error=connection.describe_down())
        if not self._ready:
            answer = await self._get_ready()
            if answer is not None:
                return answer
        todo = [m for m in batch if isinstance(m, Message) and m.event.id not in self._accepted]
        connection.forbidden = None
        loop = asyncio.get_running_loop()
        sent: list[tuple[Message, str, asyncio.Future[Msg]]] = []
        failure: Answer | None = None
        for message in todo:
            token = str(next(self._tokens))
            future: asyncio.Future[Msg] = loop.create_future()
            self._waiting[token] = future
            try:
                await client.publish(message.subject, message.data, reply=f"{self._inbox}.{token}",
                                     headers=message.headers)
            except Exception as exc:  # closed, reconnecting with a full buffer, ...: none of these stored
                del self._waiting[token]
                failure = Answer(None, error=f"cannot publish: {type(exc).__name__}: {exc}")
                break
            sent.append((message, token, future))
        if sent:
            await asyncio.wait([f for _, _, f in sent], timeout=self.config.timeout)
        answers = [self._read(message, token, future) for message, token, future in sent]
        return settle(answers, failure, batch, self._accepted)

    def _read(self, message: Message, token: str, future: asyncio.Future[Msg]) -> Answer:
        """What one publish came to (200 for an ack); the event is remembered if acked."""
        if not future.done():
            self._waiting.pop(token, None)
            future.cancel()
            if self._connection.forbidden:
                return Answer(403, self._connection.forbidden, via="NATS")
            return Answer(None, error=f"no PubAck within {self.config.timeout:g} s")
        reply = future.result()
        if reply.headers and reply.headers.get("Status") == NO_RESPONDERS:
            self._ready = False  # the stream may be gone: create it again next time (if asked to)
            return Answer(503, f"no stream takes the subject {message.subject!r} (no responders)", via=VIA)
        try:
            ack = _decode_reply(reply.data)
        except msgspec.DecodeError:
            return Answer(None, error=f"unreadable PubAck: {reply.data[:200]!r}")
        if ack.error is None:
            self._accepted.add(message.event.id)
            return Answer(200)
        return _refusal(ack.error)

    async def _get_ready(self) -> Answer | None:
        """Subscribe to the PubAcks' subjects and create the stream if asked; None when done."""
        client = self._connection.client
        assert client is not None
        from nats.js.errors import APIError, NotFoundError

        try:
            if not self._inbox:
                inbox = client.new_inbox()
                await client.subscribe(f"{inbox}.*", cb=self._on_reply)
                self._inbox = inbox
            if self.options.create_stream:
                js = client.jetstream(timeout=self.config.timeout)
                try:
                    await js.stream_info(self.options.stream)
                except NotFoundError:
                    await self._create_stream(js)
        except APIError as exc:  # retried: the events wait on disk until the stream can be made
            if exc.err_code != STREAM_IN_USE:
                return Answer(503, f"cannot create the stream {self.options.stream!r}: {exc.description} "
                              f"(err_code {exc.err_code})", via=VIA)
        except Exception as exc:
            return Answer(None, error=f"cannot set up the stream: {type(exc).__name__}: {exc}")
        self._ready = True
        return None

    async def _create_stream(self, js: Any) -> None:
        from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

        o = self.options
        subjects = list(o.stream_subjects) or [o.subject.split(".", 1)[0] + ".>"]
        await js.add_stream(StreamConfig(
            name=o.stream, subjects=subjects, retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE if o.storage == "file" else StorageType.MEMORY,
            num_replicas=o.replicas, duplicate_window=o.duplicate_window,
            max_age=o.max_age or None, max_bytes=o.max_bytes or None,
            max_msg_size=o.max_msg_size or None,
            discard=DiscardPolicy.NEW if o.discard == "new" else DiscardPolicy.OLD,
        ))

    async def _on_reply(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject[len(self._inbox) + 1:], None)
        if future is not None and not future.done():
            future.set_result(msg)


def _refusal(error: dict[str, Any]) -> Answer:
    """A JetStream API error as an answer: its code (HTTP-like) and description."""
    code = error.get("code")
    text = f"{error.get('description') or 'refused'} (err_code {error.get('err_code')})"
    if error.get("err_code") == WRONG_STREAM:
        return Answer(403, text, via=VIA)
    if not isinstance(code, int) or code >= 500 or code in (408, 429):
        return Answer(503, text, via=VIA)
    return Answer(code, text, via=VIA)
