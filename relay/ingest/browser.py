"""What browsers and e-mail clients need: analytics.js settings and tracking-pixel data."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from typing import Any

import msgspec

from relay.errors import InvalidMessage
from relay.ingest.bodies import MAX_NESTING, too_deep

PIXEL_TYPES = {"track", "identify", "page", "screen", "group", "alias"}
_decode = msgspec.json.Decoder().decode


def settings(write_key: str, host: str, scheme: str) -> dict[str, Any]:
    """analytics.js settings whose ``Segment.io`` integration sends back to this relay."""
    enabled = {"__default": {"enabled": True, "integrations": {}}}
    return {
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": f"{host}/v1",
                "protocol": scheme,
                "unbundledIntegrations": [],
                "addBundledMetadata": True,
                "maybeBundledConfigIds": {},
                "versionSettings": {"version": "4.4.7", "componentTypes": ["browser"]},
            }
        },
        "plan": {"track": enabled, "identify": enabled, "group": enabled},
        "edgeFunction": {},
        "analyticsNextEnabled": True,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
        "consentSettings": {"allCategories": []},
    }


def source_config(write_key: str) -> dict[str, Any]:
    """RudderStack's source config: the source enabled, no device-mode destinations and no
    reporting to RudderStack's hosts, so the SDK becomes ready talking only to the relay."""
    return {
        "isHosted": False,
        "source": {
            "id": f"relay-{hashlib.sha256(write_key.encode()).hexdigest()[:16]}",
            "name": "relay",
            "writeKey": write_key,
            "enabled": True,
            "workspaceId": "relay",
            "config": {"statsCollection": {"errorReports": {"enabled": False},
                                           "metrics": {"enabled": False}}},
            "destinations": [],
        },
    }


def pixel_message(msg_type: str, query: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """A message from ``?data=<base64 JSON>`` or from plain (dotted) query parameters."""
    if msg_type not in PIXEL_TYPES:
        raise InvalidMessage(f"pixel type must be one of {', '.join(sorted(PIXEL_TYPES))}")
    return pixel_fields(query)


def pixel_fields(query: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """The message's fields from the query string, whatever the pixel's type."""
    params = list(query)
    data = next((v for k, v in params if k == "data"), None)
    message: dict[str, Any]
    if data is not None:
        message = _decode_data(data)
    else:
        message = {}
        for key, value in params:
            _set_dotted(message, key, value)
    for key, value in params:
        if key == "writeKey" and "writeKey" not in message:
            message["writeKey"] = value
    return message


def _decode_data(data: str) -> dict[str, Any]:
    # A "+" left unescaped in a link arrives as a space (the query string's encoding of one).
    text = data.replace(" ", "+").strip()
    padded = text + "=" * (-len(text) % 4)
    deep = f"pixel data nests deeper than {MAX_NESTING} levels"
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidMessage("pixel data is not base64-encoded JSON") from None
    if too_deep(raw):
        raise InvalidMessage(deep)
    try:
        decoded = _decode(raw)
    except (ValueError, msgspec.DecodeError):
        raise InvalidMessage("pixel data is not base64-encoded JSON") from None
    except RecursionError:  # unbalanced brackets the nesting check left to the decoder
        raise InvalidMessage(deep) from None
    if not isinstance(decoded, dict):
        raise InvalidMessage("pixel data must be a JSON object")
    return decoded


def _set_dotted(target: dict[str, Any], dotted: str, value: str) -> None:
    if dotted.count(".") >= MAX_NESTING:  # each segment but the last is an object
        raise InvalidMessage(f"query key {dotted[:40]!r}... nests deeper than {MAX_NESTING} levels")
    parts = dotted.split(".")
    node = target
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value
