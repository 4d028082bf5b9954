"""Destinations' transports behind one small interface.

A sink turns a queued event into the bytes its upstream takes (``prepare``), sends one
batch of them (``send``) and reports what came back as a ``retry.Answer``; the forwarder
decides what that answer means (``relay.forward.retry.classify``), unless the sink has a
``classify`` of its own for an upstream whose API says more than its status (Vector's
per-sink retry logic). ``probe`` is a cheap "is it reachable again?" check used while an
upstream is down, so that delivery resumes soon after it comes back.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Protocol

from relay.config import DestinationConfig
from relay.forward.retry import Answer
from relay.types import Stored


class Outgoing:
    """An event as one destination sends it; ``key`` groups what may share a request;
    ``count`` is how many of the destination's own events ``data`` holds (one message can
    become several, as an Amplitude order does)."""

    __slots__ = ("count", "data", "event", "key", "size")

    def __init__(self, event: Stored, data: bytes, key: str, count: int = 1) -> None:
        self.event = event
        self.data = data
        self.key = key
        self.size = len(data)
        self.count = count


class Sink(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def prepare(self, event: Stored) -> Outgoing | None: ...

    async def send(self, batch: Sequence[Outgoing]) -> Answer: ...

    async def probe(self) -> bool: ...


# type name -> "module:Class"; a class is built with the DestinationConfig and raises
# ValueError naming the option when ``config.options`` is wrong.
SINK_TYPES: dict[str, str] = {
    "segment": "relay.sinks.segment:SegmentSink",
    "file": "relay.sinks.file:FileSink",
    "webhook": "relay.sinks.webhook:WebhookSink",
    "amplitude": "relay.sinks.amplitude:AmplitudeSink",
    "posthog": "relay.sinks.posthog:PostHogSink",
    "nats": "relay.sinks.nats:NatsSink",
    "kafka": "relay.sinks.kafka:KafkaSink",
    "duckdb": "relay.sinks.warehouse.duckdb:DuckDBSink",
    "postgres": "relay.sinks.warehouse.postgres:PostgresSink",
    "parquet": "relay.sinks.warehouse.parquet:ParquetSink",
}


def make_sink(config: DestinationConfig) -> Sink:
    spec = SINK_TYPES.get(config.type)
    if spec is None:
        raise ValueError(f"unknown destination type {config.type!r}; known: {', '.join(sorted(SINK_TYPES))}")
    module_name, _, class_name = spec.partition(":")
    factory = getattr(importlib.import_module(module_name), class_name)
    sink: Sink = factory(config)
    return sink


def most_urgent(answers: Sequence[Answer]) -> Answer:
    """One answer for a batch whose events were answered one by one (a broker's acks):
    delivered when every one is; else a pause (401/403) first, then a retry (no answer,
    5xx), then a refusal, which the forwarder bisects to dead-letter only the refused."""
    failed = [a for a in answers if a.status is None or not 200 <= a.status <= 299]
    for urgent in (lambda a: a.status in (401, 403), lambda a: a.status is None or a.status >= 500):
        first = next((a for a in failed if urgent(a)), None)
        if first is not None:
            return first
    return failed[0] if failed else Answer(200)


def settle(answers: Sequence[Answer], failure: Answer | None, batch: Sequence[Outgoing],
           accepted: set[int]) -> Answer:
    """The batch's answer from its events' acks (and a failure that cut the sending short);
    once the batch is delivered, its events leave ``accepted``, the ids acked within a batch
    still unfinished (so that a retry sends only the others)."""
    answer = most_urgent([*answers, failure] if failure is not None else answers)
    if answer.status == 200:
        for outgoing in batch:
            accepted.discard(outgoing.event.id)
    return answer
