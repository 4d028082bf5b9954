"""The ``kafka`` type: each event a record (aiokafka, ``acks = "all"``); progress only past
records whose send future resolved.

The record key is the event's userId, else its anonymousId, so one user's events stay in
order on one partition; the topic comes from a template (``{write_key}``, ``{type}``,
``{event}``); headers ``messageId``, ``writeKey`` and ``type`` go with it. The idempotent
producer (``idempotent = true``, the default) drops a batch the producer retried within
one session; across a restart only ``messageId`` dedup downstream removes a resend.
Brokers that refuse InitProducerId (Tansu, for one) need ``idempotent = false``.

A record the broker refuses for good (too large, an invalid topic) is dead-lettered with
the broker's error; a refused login or topic authorisation pauses the destination; any
other failure is retried with backoff.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import Any, Literal

import msgspec

from relay.config import DestinationConfig
from relay.forward.retry import Answer
from relay.sinks import Outgoing, settle
from relay.sinks import options as opts
from relay.sinks.segment import as_sent
from relay.sinks.topics import Template
from relay.types import Stored

VIA = "Kafka"
PROBE_TIMEOUT = 1.0
REFUSED = frozenset({"MessageSizeTooLargeError", "RecordTooLargeError", "InvalidTopicError",
                     "RecordListTooLargeError", "CorruptRecordException", "InvalidRequestError",
                     "UnsupportedForMessageFormatError", "PolicyViolationError"})
DENIED = frozenset({"AuthenticationFailedError", "AuthenticationMethodNotSupported",
                    "UnsupportedSaslMechanismError", "IllegalSaslStateError", "SaslAuthenticationFailed",
                    "TopicAuthorizationFailedError", "ClusterAuthorizationFailedError"})


class KafkaOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    bootstrap_servers: tuple[str, ...] = ("127.0.0.1:9092",)
    topic: str = "segment.{type}"
    client_id: str = ""
    idempotent: bool = True
    compression: Literal["none", "gzip", "lz4", "zstd"] = "none"
    linger_ms: int = 5
    max_request_size: int = 1_048_576
    sasl_mechanism: Literal["", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = ""
    sasl_user: str = ""
    sasl_password: str = ""
    sasl_password_env: str = ""
    sasl_password_file: str = ""
    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""


class _Identity(msgspec.Struct):
    userId: Any = None  # the Segment fields' names
    anonymousId: Any = None


_identity = msgspec.json.Decoder(_Identity).decode


class Record(Outgoing):
    __slots__ = ("headers", "record_key", "topic")

    def __init__(self, event: Stored, data: bytes, topic: str, record_key: bytes | None,
                 headers: list[tuple[str, bytes]]) -> None:
        super().__init__(event, data, "")
        self.topic = topic
        self.record_key = record_key
        self.headers = headers


class KafkaSink:
    def __init__(self, config: DestinationConfig) -> None:
        self.config = config
        self.options = o = opts.parse(config.options, KafkaOptions)
        opts.require("aiokafka", "aiokafka", "kafka")
        if o.compression in ("lz4", "zstd"):
            opts.require("cramjam", "cramjam", f"kafka with compression {o.compression}")
        if config.endpoint:
            raise ValueError("type kafka takes its brokers from `options.bootstrap_servers`; "
                             "leave `endpoint` unset")
        if not o.bootstrap_servers:
            raise ValueError("`options.bootstrap_servers` is empty")
        self.topic = Template(o.topic, "topic")
        self._password = opts.secret("sasl_password", o.sasl_password, o.sasl_password_env,
                                     o.sasl_password_file)
        if o.sasl_mechanism and not (o.sasl_user and self._password):
            raise ValueError("`options.sasl_mechanism` needs `options.sasl_user` and `options.sasl_password`")
        if bool(o.tls_cert) != bool(o.tls_key):
            raise ValueError("`options.tls_cert` and `options.tls_key` go together")
        self._producer: Any = None
        self._accepted: set[int] = set()  # ids acknowledged within an unfinished batch

    def __repr__(self) -> str:
        return f"KafkaSink({self.config.name!r}, {list(self.options.bootstrap_servers)!r})"

    async def start(self) -> None:
        return None  # the producer connects at the first send, so a relay starts while no broker answers

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await _quietly(producer.stop())

    async def probe(self) -> bool:
        for server in self.options.bootstrap_servers:
            host, _, port = server.rpartition(":")
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)),
                                                   PROBE_TIMEOUT)
            except (OSError, TimeoutError, ValueError):
                continue
            writer.close()
            return True
        return False

    def prepare(self, event: Stored) -> Record:
        key = self.config.write_key or event.write_key
        who = _identity(event.body)
        ident = next((v for v in (who.userId, who.anonymousId) if _is_id(v)), None)
        record_key = None if ident is None else str(ident).encode()
        headers = [("messageId", event.message_id.encode()), ("writeKey", key.encode()),
                   ("type", event.type.encode())]
        return Record(event, as_sent(event.body), self.topic.render(event, key), record_key, headers)

    async def send(self, batch: Sequence[Outgoing]) -> Answer:
        from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

        try:
            producer = await self._started()
        except KafkaError as exc:
            return _answer(exc, "cannot reach the brokers")
        todo = [r for r in batch if isinstance(r, Record) and r.event.id not in self._accepted]
        sent: list[tuple[Record, asyncio.Future[Any]]] = []
        failure: Answer | None = None
        for record in todo:
            try:
                future = await producer.send(record.topic, record.data, key=record.record_key,
                                             headers=record.headers)
            except KafkaError as exc:
                failure = _answer(exc)
                break
            sent.append((record, future))
        if sent:
            await asyncio.wait([f for _, f in sent], timeout=self.config.timeout + 1)
        answers = []
        for record, future in sent:
            if not future.done():
                answers.append(Answer(None, error=f"no acknowledgement within {self.config.timeout:g} s"))
            elif (error := future.exception()) is not None:
                answers.append(_answer(error))
            else:
                self._accepted.add(record.event.id)
        return settle(answers, failure, batch, self._accepted)

    async def _started(self) -> Any:
        if self._producer is not None:
            return self._producer
        from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

        o = self.options
        producer = AIOKafkaProducer(
            bootstrap_servers=list(o.bootstrap_servers), client_id=o.client_id or f"relay-{self.config.name}",
            acks="all", enable_idempotence=o.idempotent,
            compression_type=None if o.compression == "none" else o.compression,
            linger_ms=o.linger_ms, max_request_size=o.max_request_size,
            request_timeout_ms=int(self.config.timeout * 1000),
            security_protocol=("SASL_" if o.sasl_mechanism else "") + ("SSL" if o.tls else "PLAINTEXT"),
            ssl_context=self._tls() if o.tls else None,
            sasl_mechanism=o.sasl_mechanism or "PLAIN",
            sasl_plain_username=o.sasl_user or None, sasl_plain_password=self._password or None,
        )
        try:
            await producer.start()
        except BaseException:
            await _quietly(producer.stop())
            raise
        self._producer = producer
        return producer

    def _tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.options.tls_ca or None)
        if self.options.tls_cert:
            context.load_cert_chain(self.options.tls_cert, self.options.tls_key)
        return context


def _is_id(value: object) -> bool:
    if isinstance(value, str):
        return bool(value)
    return isinstance(value, int | float) and not isinstance(value, bool)


def _answer(exc: BaseException, doing: str = "") -> Answer:
    """An aiokafka error as the retry policy reads it."""
    name = type(exc).__name__
    text = f"{doing + ': ' if doing else ''}{name}: {exc}"
    if name in DENIED:
        return Answer(403 if "Authorization" in name else 401, text, via=VIA)
    if name in REFUSED:
        return Answer(400, text, via=VIA)
    return Answer(None, error=text)


async def _quietly(stopping: Any) -> None:
    try:
        await stopping
    except Exception:  # a producer that never connected: nothing to flush
        pass
