"""The ``nats`` source: a JetStream durable pull consumer feeding the relay's queue.

Each fetched batch is admitted like an HTTP request's messages (normalisation, dedup,
the ingest plugins) and stored in one queue transaction; its messages are acked to
JetStream only after that transaction committed. A message that cannot be admitted (not
JSON, not a valid Segment message, refused by a plugin) is dead-lettered with the reason
in the same transaction, and acked: it is never redelivered forever. When the queue is
full the batch is nak'ed with a delay (redelivered later, nothing lost); at a stop or a
crash an unacked batch is redelivered after ``ack_wait``, and the queue's dedup
(writeKey, messageId) makes a redelivery one event.

Several relays on the same ``durable`` share its messages: that is how a central tier
scales out. The write key of a message is its ``writeKey`` header (set by the ``nats``
destination), else its body's ``writeKey``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from relay import jetstream
from relay.config import SourceConfig
from relay.errors import QueueClosed, QueueError, QueueFull
from relay.sinks import options as opts
from relay.sources import Intake
from relay.types import Arrival

if TYPE_CHECKING:
    from nats.aio.msg import Msg

log = logging.getLogger(__name__)
RETRY_DELAY = 1.0  # seconds before trying again after a failure of the server or the queue
STOP_TIMEOUT = 10.0
_decode = msgspec.json.Decoder().decode


class NatsSourceOptions(jetstream.ConnectionOptions, frozen=True, forbid_unknown_fields=True, kw_only=True):
    stream: str
    durable: str
    filter_subject: str = ""  # default: every subject of the stream
    batch: int = 500  # messages a fetch asks for
    fetch_wait: float = 1.0  # seconds a fetch waits for messages
    ack_wait: float = 30.0  # seconds before JetStream redelivers an unacked message
    max_ack_pending: int = 20_000


class NatsSource:
    def __init__(self, config: SourceConfig, intake: Intake) -> None:
        self.config = config
        self.options = self.check(config)
        self._intake = intake
        self._connection = jetstream.Connection(self.options, "nats source", config.name)
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._fetching = False
        self.taken = 0  # messages acked since start (stored, duplicates and dead letters)

    @staticmethod
    def check(config: SourceConfig) -> NatsSourceOptions:
        options = opts.parse(config.options, NatsSourceOptions)
        jetstream.check(options, "nats (source)")
        if not options.stream or not options.durable:
            raise ValueError("`options.stream` and `options.durable` must not be empty")
        if min(options.batch, options.max_ack_pending) < 1 or min(options.fetch_wait, options.ack_wait) <= 0:
            raise ValueError("`options.batch`, `options.fetch_wait`, `options.ack_wait` and "
                             "`options.max_ack_pending` must be above 0")
        return options

    def __repr__(self) -> str:
        return f"NatsSource({self.config.name!r}, {self.options.stream}/{self.options.durable})"

    async def start(self) -> None:
        if self._task is not None:
            return
        self._stopping.clear()
        await self._connection.start()
        self._task = asyncio.create_task(self._run(), name=f"source-{self.config.name}")

    async def stop(self) -> None:
        """Stop fetching; a batch being stored is stored and acked first. Safe to call twice."""
        task, self._task = self._task, None
        if task is not None:
            self._stopping.set()
            if self._fetching:
                task.cancel()  # waiting on the server: nothing taken yet
            await asyncio.wait({task}, timeout=STOP_TIMEOUT)
            task.cancel()  # a no-op when it finished
            await asyncio.gather(task, return_exceptions=True)
        await self._connection.stop()

    async def _run(self) -> None:
        subscription: Any = None
        while not self._stopping.is_set():
            try:
                if not await self._connection.wait_connected(RETRY_DELAY):
                    await self._pause(RETRY_DELAY)
                    continue
                if subscription is None:
                    subscription = await self._subscribe()
                self._fetching = True
                try:
                    messages = await subscription.fetch(self.options.batch, timeout=self.options.fetch_wait)
                finally:
                    self._fetching = False
            except TimeoutError:
                continue  # nothing to take
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the server went away, the stream is missing, ...
                log.warning("cannot fetch from JetStream", extra={
                    "source": self.config.name, "error": f"{type(exc).__name__}: {exc}"})
                await self._pause(RETRY_DELAY)
                continue
            if messages:
                await self._take(messages)

    async def _subscribe(self) -> Any:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        client = self._connection.client
        assert client is not None
        o = self.options
        js = client.jetstream(timeout=max(5.0, o.fetch_wait))
        return await js.pull_subscribe(
            o.filter_subject, durable=o.durable, stream=o.stream,
            config=ConsumerConfig(durable_name=o.durable, ack_policy=AckPolicy.EXPLICIT,
                                  deliver_policy=DeliverPolicy.ALL, ack_wait=o.ack_wait,
                                  max_ack_pending=o.max_ack_pending,
                                  filter_subject=o.filter_subject or None))

    async def _take(self, messages: Sequence[Msg]) -> None:
        """Store the batch in one transaction, then ack it (nak it when it was not stored)."""
        received_at = datetime.now(UTC)
        groups: dict[str, list[object]] = defaultdict(list)
        for msg in messages:
            body: object
            try:
                body = _decode(msg.data)
            except msgspec.DecodeError:  # refused by admission as "not a JSON object", kept as text
                body = msg.data.decode("utf-8", "replace")
            key = (msg.headers or {}).get("writeKey")
            if key is None and isinstance(body, dict):
                key = body.get("writeKey")
            groups[key if isinstance(key, str) else ""].append(body)
        batches = [(group, Arrival(write_key=key, received_at=received_at)) for key, group in groups.items()]
        try:
            await self._intake(batches)
        except QueueFull as exc:
            await self._nak(messages, float(exc.retry_after))
            await self._pause(float(exc.retry_after))
            return
        except QueueClosed:
            return  # stopping: redelivered after ack_wait, to this relay or another
        except QueueError as exc:
            log.error("cannot store fetched messages", extra={"source": self.config.name, "error": str(exc)})
            await self._nak(messages, RETRY_DELAY)
            await self._pause(RETRY_DELAY)
            return
        for msg in messages:
            try:
                await msg.ack()
            except Exception as exc:  # stored: a lost ack only means a redelivery, which dedup drops
                log.warning("cannot ack", extra={"source": self.config.name, "error": str(exc)})
                break
        self.taken += len(messages)

    async def _nak(self, messages: Sequence[Msg], delay: float) -> None:
        for msg in messages:
            try:
                await msg.nak(delay=delay)
            except Exception:  # not redelivered before ack_wait then; nothing is lost
                return

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass
