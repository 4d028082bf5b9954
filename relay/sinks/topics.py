"""Where a broker destination puts an event: a subject or topic template, filled per event.

A template names ``{write_key}``, ``{type}`` and ``{event}`` (the track event's name, or a
page's or screen's ``name``). Each value is written as a slug: characters other than
letters, digits, ``_`` and ``-`` become ``_``, so a value can neither split a NATS subject
into more tokens nor make a Kafka topic name invalid; an empty value becomes ``_``.
"""

from __future__ import annotations

import re
import string
from typing import Any

import msgspec

from relay.types import Stored

FIELDS = frozenset({"write_key", "type", "event"})
MAX_SLUG_CHARS = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_decode = msgspec.json.Decoder(dict[str, Any]).decode


def slug(value: object) -> str:
    text = value if isinstance(value, str) else ""
    return _UNSAFE.sub("_", text[:MAX_SLUG_CHARS]) or "_"


class Template:
    """A parsed template; ``render`` fills it for one event (its write key given apart, as
    a destination may send every event under one key)."""

    __slots__ = ("needs_event", "text")

    def __init__(self, text: str, name: str) -> None:
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
        except ValueError as exc:
            raise ValueError(f"`options.{name}`: {exc}") from None
        if not text:
            raise ValueError(f"`options.{name}` must not be empty")
        if unknown := fields - FIELDS:
            raise ValueError(f"`options.{name}`: {', '.join(sorted('{' + f + '}' for f in unknown))} "
                             f"is not one of {', '.join('{' + f + '}' for f in sorted(FIELDS))}")
        self.text = text
        self.needs_event = "event" in fields

    def render(self, event: Stored, write_key: str) -> str:
        name: object = ""
        if self.needs_event:
            body = _decode(event.body)
            name = body.get("event") if event.type == "track" else body.get("name")
        return self.text.format(write_key=slug(write_key), type=slug(event.type), event=slug(name))
