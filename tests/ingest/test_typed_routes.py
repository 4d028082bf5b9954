"""The typed path over a real socket: every batch and single-event route answers and stores
what the dict path answers and stores, and an ingest plugin still sees every message."""

from __future__ import annotations

import base64
import gzip
import json
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from relay import timestamps
from relay.ingest import routes, typed

NOW = datetime(2024, 6, 1, 12, 0, 0, 250000, tzinfo=UTC)
AUTH = {"Authorization": "Basic " + base64.b64encode(b"wk:").decode()}


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both relays receive at the same instant, so that their times can be compared."""
    monkeypatch.setattr(routes.Ingest, "_clock", lambda self: (NOW, timestamps.iso(NOW)))


@pytest.fixture
def typed_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The routes whose requests the typed path stored."""
    calls: list[str] = []
    admit_batch, admit_single = typed.admit_batch, typed.admit_single

    def batch(*args: Any) -> Any:
        events = admit_batch(*args)
        calls.extend(["batch"] if events is not None else [])
        return events

    def single(*args: Any) -> Any:
        events = admit_single(*args)
        calls.extend(["single"] if events is not None else [])
        return events

    monkeypatch.setattr(typed, "admit_batch", batch)
    monkeypatch.setattr(typed, "admit_single", single)
    return calls


def track(i: int, **fields: Any) -> dict[str, Any]:
    return {"type": "track", "userId": f"u{i}", "event": "E", "messageId": f"m-{i}",
            "properties": {"n": i, "tags": ["a", "b"], "price": 1.5}, "timestamp": "2024-06-01T11:59:00.000Z",
            **fields}


BROWSER = {"library": {"name": "analytics.js", "version": "next-1.70.0"}, "page": {"path": "/"}}
REQUESTS: list[tuple[str, str, Any]] = [
    ("batch", "/v1/batch", {"batch": [track(i) for i in range(5)], "sentAt": "2024-06-01T11:59:30Z"}),
    ("batch", "/v1/import", {"batch": [track(10, context={"library": {"name": "analytics-python"}})]}),
    ("batch", "/v1/b", {"batch": [track(20, context=BROWSER, sentAt="2024-06-01T11:59:59.000Z")],
                        "writeKey": "wk", "sentAt": "2024-06-01T11:59:59.000Z"}),
    ("batch", "/beacon/v1/batch?writeKey=wk", {"batch": [track(30)]}),
    ("single", "/v1/track", track(40, context=BROWSER, sentAt="2024-06-01T11:59:58.000Z")),
    ("single", "/v1/t", {**track(41), "writeKey": "wk", "_metadata": {"bundled": []}}),
    ("single", "/v1/identify", {"userId": "u42", "traits": {"plan": "pro"}, "messageId": "m-42"}),
    ("single", "/v1/g", {"userId": "u43", "groupId": "g1", "messageId": "m-43"}),
    ("single", "/v1/alias", {"userId": "u44", "previousId": "a44", "messageId": "m-44"}),
    ("single", "/v1/page", {"anonymousId": "a45", "name": "Home", "messageId": "m-45"}),
    ("single", "/v1/s", {"anonymousId": "a46", "name": "Settings", "messageId": "m-46"}),
    # handed to the dict path, which refuses, dead-letters or takes them as before
    ("dict", "/v1/batch", {"batch": [track(50), track(51, userId=None), {"type": "bogus", "userId": "u"}]}),
    ("dict", "/v1/batch", {"batch": [track(52, extraField=[1])]}),
    ("dict", "/v1/batch", {"batch": []}),
    ("dict", "/v1/batch", {"batch": [track(53)], "context": "x"}),
    ("dict", "/v1/track", {"userId": "u54"}),
    ("dict", "/v1/track", [1, 2]),
]


async def _run_all(relay: Any) -> list[tuple[int, Any]]:
    answers = []
    for _, path, body in REQUESTS:
        status, answer, _ = await relay.post(path, body, headers=AUTH)
        answers.append((status, answer))
    return answers


def _stored(relay: Any) -> list[tuple[Any, ...]]:
    rows = relay.rows("SELECT write_key, message_id, type, body FROM events ORDER BY id")
    return [(key, mid, kind, msgspec.json.decode(body)) for key, mid, kind, body in rows]


async def test_every_route_answers_and_stores_what_the_dict_path_does(
        start_relay: Any, fixed_clock: None, typed_calls: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    typed_relay = await start_relay()
    typed_answers = await _run_all(typed_relay)
    assert typed_calls == [kind for kind, _, _ in REQUESTS if kind != "dict"]
    monkeypatch.setattr(routes.Ingest, "_typed", lambda self: False)
    dict_relay = await start_relay(queue={"path": str(typed_relay.relay.config.queue.path) + ".dict"})
    dict_answers = await _run_all(dict_relay)
    assert typed_answers == dict_answers
    assert _stored(typed_relay) == _stored(dict_relay)
    assert typed_relay.dead_letters() == dict_relay.dead_letters()
    assert any(status == 400 for status, _ in typed_answers)


async def test_a_duplicate_is_answered_as_one_on_the_typed_path(relay: Any, typed_calls: list[str]) -> None:
    for _ in range(2):
        status, answer, _ = await relay.post("/v1/batch", {"batch": [track(1)]}, headers=AUTH)
        assert status == 200
    assert answer == {"success": True, "accepted": 0, "duplicates": 1, "rejected": 0}
    status, answer, _ = await relay.post("/v1/track", track(1), headers=AUTH)
    assert (status, answer) == (200, {"success": True, "duplicate": True})
    assert typed_calls == ["batch", "batch", "single"]


async def test_an_ingest_plugin_sees_every_message_so_the_typed_path_steps_aside(
        start_relay: Any, typed_calls: list[str]) -> None:
    relay = await start_relay(plugins=[{"use": "privacy", "name": "strip",
                                        "options": {"remove": ["properties.secret"]}}])
    status, _, _ = await relay.post("/v1/batch", {"batch": [track(1, properties={"secret": 1, "n": 2})]},
                                    headers=AUTH)
    assert status == 200
    assert typed_calls == []
    [event] = relay.events()
    assert event["properties"] == {"n": 2}


async def test_a_gzip_body_takes_the_typed_path(relay: Any, typed_calls: list[str]) -> None:
    data = gzip.compress(json.dumps({"batch": [track(1)]}).encode())
    status, _, _ = await relay.post("/v1/batch", data=data, headers={**AUTH, "Content-Encoding": "gzip"})
    assert status == 200
    assert typed_calls == ["batch"]
    [event] = relay.events()
    assert event["messageId"] == "m-1" and event["context"] == {"ip": "127.0.0.1"}
