"""What the tap shows from ingest: events as stored, after the privacy plugin (what it
removed is never shown), what plugins dropped with the plugin and reason, what was refused
with the reason; and with nobody watching, nothing is kept for anyone."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relay.ops.tap import Filter

DROPPER = """
class NoTests:
    name = "no-tests"
    type = "before"
    version = "1"

    async def event(self, message):
        return None if message.get("event") == "Internal Test" else message
"""


def _plugin(use: str, name: str, **options: Any) -> dict[str, Any]:
    return {"use": use, "name": name, "options": options}


async def test_the_tap_shows_events_as_stored_after_privacy_and_what_plugins_dropped_or_refused(
        start_relay: Callable[..., Any], tmp_path: Path) -> None:
    (tmp_path / "dropper.py").write_text(DROPPER)
    relay = await start_relay(plugins=[
        _plugin("privacy", "privacy", remove=["context.traits.email"]),
        _plugin(f"{tmp_path / 'dropper.py'}:NoTests", "no-tests"),
    ])
    viewer = relay.relay.tap.open(Filter())
    try:
        body = {"writeKey": "wk", "batch": [
            {"type": "track", "userId": "u1", "event": "Signed Up", "messageId": "kept",
             "context": {"traits": {"email": "ada@example.com", "plan": "pro"}}},
            {"type": "track", "userId": "u1", "event": "Internal Test", "messageId": "dropped",
             "context": {"traits": {"email": "ada@example.com"}}},
            {"type": "track", "userId": "u1", "messageId": "invalid"},  # no event name
        ]}
        status, answer, _ = await relay.post("/v1/batch", body)
        assert status == 200, answer
        records = [json.loads(r) for r in await viewer.take(5.0) or []]
    finally:
        relay.relay.tap.close(viewer)
    by_kind = {r["kind"]: r for r in records}
    assert set(by_kind) == {"event", "dropped", "refused"}
    stored = by_kind["event"]["body"]
    assert stored["messageId"] == "kept"
    assert stored["context"]["traits"] == {"plan": "pro"}  # the email was removed before it was stored
    # what the plugins changed: the paths (never the values removed), and which plugins ran
    changed = by_kind["event"]["changed"]
    assert changed["removed"] == ["context.traits.email"]
    assert changed["plugins"] == ["privacy", "no-tests"]
    # and which plugin did it (no-tests changed nothing of this message)
    assert changed["steps"] == [{"plugin": "privacy", "removed": ["context.traits.email"],
                                 "changed": ["context.ip"]}]
    assert "ada@example.com" not in json.dumps(records)
    dropped = by_kind["dropped"]
    assert (dropped["plugin"], dropped["messageId"]) == ("no-tests", "dropped")
    assert dropped["name"] == "Internal Test" and dropped["reason"]
    assert "body" not in dropped
    assert by_kind["refused"]["messageId"] == "invalid" and "event" in by_kind["refused"]["reason"]
    assert relay.relay.tap.watched is False
