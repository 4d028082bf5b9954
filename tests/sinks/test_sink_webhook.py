"""The ``webhook`` destination type against a local receiver: batch and single mode, headers,
the HMAC signature (checked with an independent computation), retries and dead letters."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from relay.config import Config, DestinationConfig, load, masked
from relay.errors import ConfigError
from relay.sinks import make_sink
from relay.sinks.webhook import WebhookSink
from tests.support.fake_http import FakeServer, Reply, Request, wait_for_rows

SECRET = "s3cret-for-tests"
SERVER_CONTEXT = {"library": {"name": "analytics-python", "version": "2.3.2"}}
FAST = {"flush_interval": 0.05, "retry_initial": 0.05, "retry_max": 0.2}


def message(i: int, **extra: Any) -> dict[str, Any]:
    return {"type": "track", "userId": "user-1", "event": f"Event {i}", "messageId": f"m{i}",
            "timestamp": f"2024-05-01T10:00:0{i}.000Z", "properties": {"n": i},
            "context": SERVER_CONTEXT, **extra}


def as_stored(sent: dict[str, Any]) -> dict[str, Any]:
    """What the relay keeps (and the webhook receives) for a message sent by a server library,
    but for ``receivedAt``, which is the relay's clock."""
    return {**sent, "originalTimestamp": sent["timestamp"]}


def without_received_at(event: dict[str, Any]) -> dict[str, Any]:
    rest = dict(event)
    assert isinstance(rest.pop("receivedAt"), str)
    return rest


class Receiver(FakeServer):
    """A webhook receiver: 200 ``{"ok": true}``, but 400 for any event whose properties say
    ``reject``; in single mode the body is one event, in batch mode ``{"batch": [...]}``."""

    def answer(self, request: Request) -> Reply:
        body = request.json()
        events = body["batch"] if "batch" in body else [body]
        if any(e.get("properties", {}).get("reject") for e in events):
            return 400, {"error": "event rejected by the receiver"}, {}
        return 200, {"ok": True}, {}

    def accepted(self) -> list[dict[str, Any]]:
        """Every event of every 2xx request, in arrival order."""
        found = []
        for r in self.requests:
            if 200 <= r.status < 300:
                body = r.json()
                found.extend(body["batch"] if "batch" in body else [body])
        return found


def config(**fields: Any) -> DestinationConfig:
    return DestinationConfig(name="hook", type="webhook", **fields)


# --- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "named"), [
    ({"options": {}}, "`url`"),
    ({"options": {"url": "ftp://example.com/in"}}, "`options.url`"),
    ({"options": {"url": "example.com/in"}}, "`options.url`"),
    ({"options": {"url": "https://example.com", "colour": "red"}}, "`colour`"),
    ({"options": {"url": "https://example.com", "mode": "stream"}}, "`options.mode`"),
    ({"options": {"url": "https://example.com", "method": "GET"}}, "`options.method`"),
    ({"options": {"url": "https://example.com", "headers": {"X-N": 1}}}, "`options.headers"),
    ({"options": {"url": "https://example.com", "headers": {"Content-Type": "text/plain"}}},
     "`options.headers`"),
    ({"options": {"url": "https://example.com", "headers": {"x-signature": "forged"}}},
     "`options.headers`"),
    ({"options": {"url": "https://example.com", "headers": {"Bad Name": "v"}}}, "`options.headers`"),
    ({"options": {"url": "https://example.com", "headers": {"X-A": "v\r\nX-B: w"}}},
     "`options.headers`"),
    ({"options": {"url": "https://example.com", "hmac_secret": 7}}, "`options.hmac_secret`"),
    ({"endpoint": "https://example.com", "options": {"url": "https://example.com"}}, "`endpoint`"),
])
def test_a_wrong_option_is_refused_naming_it(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError) as caught:
        make_sink(config(**fields))
    assert named in str(caught.value)


def test_a_wrong_option_in_the_config_file_names_the_destination_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('[[destinations]]\nname = "hook"\ntype = "webhook"\n'
                    'options = { url = "https://example.com/in", mode = "each" }\n')
    with pytest.raises(ConfigError) as caught:
        load(path, environ={})
    assert "destinations[0] (hook)" in str(caught.value)
    assert "`options.mode`" in str(caught.value)


def test_the_secret_and_header_values_stay_out_of_its_repr() -> None:
    sink = make_sink(config(options={"url": "https://example.com/in?token=qs-secret",
                                     "headers": {"Authorization": "Bearer header-secret"},
                                     "hmac_secret": SECRET}))
    assert isinstance(sink, WebhookSink)
    shown = repr(sink)
    assert "Authorization" in shown
    for secret in ("header-secret", SECRET, "qs-secret"):
        assert secret not in shown


def configured(**options: Any) -> Config:
    destination = {"name": "hook", "type": "webhook", "options": options}
    return msgspec.convert({"destinations": [destination]}, Config)


def test_the_config_view_masks_the_hmac_secret() -> None:
    shown = json.dumps(masked(configured(url="https://example.com/in", hmac_secret=SECRET)))
    assert SECRET not in shown and "example.com" in shown


def test_the_config_view_masks_header_values() -> None:
    shown = json.dumps(masked(configured(url="https://example.com/in",
                                         headers={"Authorization": "Bearer header-secret"})))
    assert "header-secret" not in shown


# --- end to end ---------------------------------------------------------------------------------


async def test_batch_mode_posts_signed_gzipped_batches_and_retries_a_429(start_relay: Any) -> None:
    async with Receiver([(429, {"error": "slow down"}, {"Retry-After": "0"})]) as receiver:
        relay = await start_relay(destinations=[{
            "name": "hook", "type": "webhook", **FAST,
            "options": {"url": receiver.url + "/hooks/segment",
                        "headers": {"Authorization": "Bearer t0ken", "X-Team": "growth"},
                        "hmac_secret": SECRET},
        }])
        sent = [message(1), message(2), message(3)]
        status, _, _ = await relay.post("/v1/batch", {"writeKey": "wk", "batch": sent})
        assert status == 200
        await receiver.wait_until(lambda: len(receiver.accepted()) >= 3)

        assert [without_received_at(e) for e in receiver.accepted()] == [as_stored(m) for m in sent]
        assert [r.status for r in receiver.requests] == [429, 200]
        assert receiver.requests[0].body == receiver.requests[1].body  # the same batch, again
        for request in receiver.requests:
            assert (request.method, request.path) == ("POST", "/hooks/segment")
            assert request.headers["Content-Type"] == "application/json"
            assert request.headers["Content-Encoding"] == "gzip"
            assert request.headers["Authorization"] == "Bearer t0ken"
            assert request.headers["X-Team"] == "growth"
            assert set(request.json()) == {"batch"}
            expected = hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
            assert request.headers["X-Signature"] == f"sha256={expected}"
        assert relay.dead_letters() == []


async def test_batch_mode_dead_letters_only_the_event_the_receiver_rejects(start_relay: Any) -> None:
    async with Receiver() as receiver:
        relay = await start_relay(destinations=[{
            "name": "hook", "type": "webhook", **FAST, "gzip": False,
            "options": {"url": receiver.url + "/in"},
        }])
        bad = message(2, properties={"reject": True})
        sent = [message(1), bad, message(3)]
        await relay.post("/v1/batch", {"writeKey": "wk", "batch": sent})
        dead = await wait_for_rows(relay, "SELECT destination, message_id, reason, body FROM dead_letters", 1)
        await receiver.wait_until(lambda: len(receiver.accepted()) >= 2)

        assert [without_received_at(e) for e in receiver.accepted()] == [as_stored(sent[0]),
                                                                        as_stored(sent[2])]
        assert "X-Signature" not in receiver.requests[0].headers  # no secret, no signature
        assert "Content-Encoding" not in receiver.requests[0].headers
        [(destination, message_id, reason, body)] = dead
        assert (destination, message_id) == ("hook", "m2")
        assert "HTTP 400" in reason and "event rejected by the receiver" in reason
        assert without_received_at(json.loads(body)) == as_stored(bad)


async def test_single_mode_puts_one_event_a_request_and_a_retry_skips_those_accepted(
        start_relay: Any) -> None:
    retry_second: list[Any] = [None, (503, "upstream busy", {})]  # 2nd request: 503 once
    async with Receiver(retry_second) as receiver:
        relay = await start_relay(destinations=[{
            "name": "hook", "type": "webhook", **FAST, "gzip": False,
            "options": {"url": receiver.url + "/one", "mode": "single", "method": "PUT",
                        "hmac_secret": SECRET},
        }])
        sent = [message(1), message(2), message(3)]
        await relay.post("/v1/batch", {"writeKey": "wk", "batch": sent})
        await receiver.wait_until(lambda: len(receiver.accepted()) >= 3)

        order = [(r.json()["messageId"], r.status) for r in receiver.requests]
        assert order == [("m1", 200), ("m2", 503), ("m2", 200), ("m3", 200)]
        assert [without_received_at(e) for e in receiver.accepted()] == [as_stored(m) for m in sent]
        for request in receiver.requests:
            assert (request.method, request.path) == ("PUT", "/one")
            expected = hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
            assert request.headers["X-Signature"] == f"sha256={expected}"
        assert relay.dead_letters() == []


async def test_single_mode_dead_letters_the_rejected_event_and_delivers_the_others_once(
        start_relay: Any) -> None:
    async with Receiver() as receiver:
        relay = await start_relay(destinations=[{
            "name": "hook", "type": "webhook", **FAST,
            "options": {"url": receiver.url + "/one", "mode": "single"},
        }])
        sent = [message(1), message(2, properties={"reject": True}), message(3)]
        await relay.post("/v1/batch", {"writeKey": "wk", "batch": sent})
        dead = await wait_for_rows(relay, "SELECT destination, message_id FROM dead_letters", 1)
        await receiver.wait_until(lambda: len(receiver.accepted()) >= 2)

        assert dead == [("hook", "m2")]
        assert [e["messageId"] for e in receiver.accepted()] == ["m1", "m3"]
        sent_ids = [r.json()["messageId"] for r in receiver.requests]
        assert sent_ids.count("m1") == 1 and sent_ids.count("m3") == 1
        assert all(r.status == 400 for r in receiver.requests if r.json()["messageId"] == "m2")
