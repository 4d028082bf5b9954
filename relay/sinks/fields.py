"""Reading a Segment message for a vendor mapping: small pure helpers.

Mappings copy values as the client sent them (the vendor judges them, and what it
rejects is dead-lettered with its answer); only identifiers are turned into strings,
because Segment libraries accept numeric ids and every vendor keys users by string.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from relay import timestamps

MessageView = Mapping[str, Any]
"""A Segment message as a mapping read (never changed) by a vendor mapping."""


def obj(value: object) -> dict[str, Any]:
    """``value`` when it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def at(message: MessageView, path: str) -> Any:
    """The value at a dotted ``path`` (``"context.device.id"``), or None."""
    value: Any = message
    for key in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def ident(value: object) -> str | None:
    """An identifier as a string: a non-empty string, or a number written out; else None."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def text(value: object) -> str | None:
    """A non-empty string, a number as text, or None."""
    return ident(value)


def number(value: object) -> float | int | None:
    """A number, or a string holding one (``"37.77"``), or None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            parsed = float(value)
        except ValueError:
            return None
        return parsed if math.isfinite(parsed) else None
    return None


def integer(value: object) -> int | None:
    """A whole number (``3``, ``3.0``, ``"3"``), or None."""
    found = number(value)
    if found is None or found != int(found):
        return None
    return int(found)


def millis(value: object) -> int | None:
    """An ISO-8601 time (or epoch milliseconds) as integer milliseconds since the epoch."""
    if value is None or value == "":
        return None
    moment = timestamps.parse(value)
    return round((moment - timestamps.EPOCH).total_seconds() * 1000)


def properties(message: MessageView) -> dict[str, Any]:
    """The message's ``properties`` (a copy); a non-object is an error, not an empty object."""
    value = message.get("properties")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("`properties` is not a JSON object")
    return dict(value)


def traits(message: MessageView) -> dict[str, Any]:
    value = message.get("traits")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("`traits` is not a JSON object")
    return dict(value)


def host(url: object) -> str | None:
    if not isinstance(url, str) or not url:
        return None
    try:
        return urlsplit(url).hostname or None
    except ValueError:
        return None


def put(target: dict[str, Any], key: str, value: object) -> None:
    """Set ``key`` unless ``value`` is None (a mapping leaves absent fields out)."""
    if value is not None:
        target[key] = value
