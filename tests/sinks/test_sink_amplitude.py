"""The ``amplitude`` destination type: the mapping (table-driven), the answer policy, and end to
end against a local fake of Amplitude's HTTP V2 API that checks requests as Amplitude's
documentation specifies them (https://amplitude.com/docs/apis/analytics/http-v2)."""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec
import pytest

from relay.config import Config, DestinationConfig, masked
from relay.forward.retry import Action, Answer
from relay.sinks import make_sink
from relay.sinks.amplitude import AmplitudeOptions, classify, throttled, to_amplitude
from tests.support.fake_http import FakeServer, Reply, Request, wait_for_rows

API_KEY = "0123456789abcdef0123456789abcdef"
FAST = {"flush_interval": 0.05, "retry_initial": 0.05, "retry_max": 0.2}
T0 = "2024-05-01T10:00:00.000Z"
T0_MS = 1714557600000

# --- the fake -----------------------------------------------------------------------------------

# "Invalid IDs that result in a 400 error" (HTTP V2 API, Device IDs and User IDs minimum length).
INVALID_IDS = {"anonymous", "nil", "none", "null", "n/a", "na", "undefined", "unknown", '""',
               "00000000-0000-0000-0000-000000000000", "{}", "lmy47d", "0", "-1"}
NUMBER = (int, float)
# The documented keys of an event and their types ("Event array keys").
EVENT_KEYS: dict[str, Any] = {
    "user_id": str, "device_id": str, "event_type": str, "user_agent": str, "time": int,
    "event_properties": dict, "user_properties": dict, "groups": dict, "group_properties": dict,
    "$skip_user_properties_sync": bool, "app_version": str, "platform": str, "os_name": str,
    "os_version": str, "device_brand": str, "device_manufacturer": str, "device_model": str,
    "carrier": str, "country": str, "region": str, "city": str, "dma": str, "language": str,
    "price": NUMBER, "quantity": int, "revenue": NUMBER, "productId": str, "revenueType": str,
    "currency": str, "location_lat": NUMBER, "location_lng": NUMBER, "ip": str, "idfa": str,
    "idfv": str, "android_app_set_id": str, "adid": str, "android_id": str, "event_id": int,
    "session_id": int, "insert_id": str, "plan": dict,
}
THROTTLED: Reply = (429, {"code": 429, "error": "Too many requests for some devices and users",
                          "eps_threshold": 30, "throttled_devices": {}, "throttled_users": {},
                          "throttled_events": [0]}, {})


def _typed(value: Any, kind: Any) -> bool:
    if isinstance(value, bool):
        return kind is bool
    return isinstance(value, kind)


class FakeAmplitude(FakeServer):
    """``POST /2/httpapi`` as documented: JSON only, ``api_key`` in the body, at most 2,000 events
    and 1 MB, ``event_type`` and a ``user_id`` or ``device_id`` (5+ characters unless
    ``options.min_id_length``) on every event, ``time`` in epoch milliseconds, documented keys
    only. A 400 ingests nothing; a 200 ingests every event of the request."""

    def __init__(self, api_key: str = API_KEY, script: list[Any] | None = None) -> None:
        super().__init__(script)
        self.api_key = api_key
        self.ingested: list[dict[str, Any]] = []

    def answer(self, request: Request) -> Reply:
        if (request.method, request.path) != ("POST", "/2/httpapi"):
            return 404, {"code": 404, "error": "Invalid request path"}, {}
        if request.headers.get("Content-Type", "").split(";")[0] != "application/json":
            return 400, {"code": 400, "error": "Content-Type must be application/json"}, {}
        if len(request.body) > 1_000_000:
            return 413, {"code": 413, "error": "Payload too large"}, {}
        try:
            body = request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or set(body) - {"api_key", "events", "options"}:
            return 400, {"code": 400, "error": "Invalid JSON request body"}, {}
        for required in ("api_key", "events"):
            if not body.get(required):
                return 400, {"code": 400, "error": "Request missing required field",
                             "missing_field": required}, {}
        if body["api_key"] != self.api_key:
            return 400, {"code": 400, "error": "Invalid API key"}, {}
        events, options = body["events"], body.get("options", {})
        if len(events) > 2000:
            return 413, {"code": 413, "error": "Payload too large"}, {}
        if set(options) - {"min_id_length"}:
            return 400, {"code": 400, "error": "Invalid JSON request body"}, {}
        missing, invalid = self._check(events, options.get("min_id_length", 5))
        if missing:
            return 400, {"code": 400, "error": "Request missing required field",
                         "events_with_missing_fields": missing}, {}
        if invalid:
            return 400, {"code": 400, "error": "Invalid field values on some events",
                         "events_with_invalid_fields": invalid}, {}
        self.ingested.extend(events)
        return 200, {"code": 200, "events_ingested": len(events), "payload_size_bytes": len(request.body),
                     "server_upload_time": int(time.time() * 1000)}, {}

    @staticmethod
    def _check(events: list[Any], min_id_length: int) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
        missing: dict[str, list[int]] = {}
        invalid: dict[str, list[int]] = {}
        for i, event in enumerate(events):
            for key, value in event.items():
                if key not in EVENT_KEYS or not _typed(value, EVENT_KEYS[key]):
                    invalid.setdefault(key, []).append(i)
            if not event.get("event_type"):
                missing.setdefault("event_type", []).append(i)
            ids = []
            for key in ("user_id", "device_id"):
                value = event.get(key)
                if isinstance(value, str) and value.lower() in INVALID_IDS:
                    invalid.setdefault(key, []).append(i)
                elif isinstance(value, str) and len(value) >= min_id_length:
                    ids.append(value)  # shorter ids are removed from the event
            if not ids and i not in invalid.get("user_id", []) + invalid.get("device_id", []):
                missing.setdefault("user_id", []).append(i)
        return missing, invalid


# --- the mapping --------------------------------------------------------------------------------

CONTEXT = {
    "library": {"name": "analytics-python", "version": "2.3.2"},
    "ip": "203.0.113.9",
    "os": {"name": "iOS", "version": "17.1"},
    "device": {"type": "ios", "id": "dev-42", "model": "iPhone15,2", "manufacturer": "Apple"},
    "app": {"version": "3.5.1"},
    "locale": "en-US",
    "location": {"country": "Netherlands", "city": "Amsterdam", "latitude": "52.37", "longitude": 4.89},
    "network": {"carrier": "KPN"},
}
CONTEXT_FIELDS = {
    "ip": "203.0.113.9", "os_name": "iOS", "os_version": "17.1", "platform": "iOS",
    "device_model": "iPhone15,2", "device_manufacturer": "Apple", "app_version": "3.5.1",
    "language": "en-US", "country": "Netherlands", "city": "Amsterdam", "location_lat": 52.37,
    "location_lng": 4.89, "carrier": "KPN",
}


def msg(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "userId": "user-42", "anonymousId": "anon-42", "messageId": "mid-1",
            "timestamp": T0, **fields}


def amp(**fields: Any) -> dict[str, Any]:
    return {"user_id": "user-42", "device_id": "anon-42", "time": T0_MS, "insert_id": "mid-1", **fields}


OPTIONS = AmplitudeOptions(api_key=API_KEY)
PRODUCTS = [{"productId": "p-1", "name": "Beans", "price": 12.5, "quantity": 2},
            {"productId": "p-2", "revenue": 5, "revenueType": "Refund"}]
PAGE = msg("page", name="Pricing", category="Docs", properties={"url": "https://example.com/p"})
PAGE_PROPS = {"url": "https://example.com/p", "name": "Pricing", "category": "Docs"}

MAPPINGS: list[tuple[str, dict[str, Any], AmplitudeOptions, list[dict[str, Any]]]] = [
    ("track: event_type from event, properties as event_properties",
     msg("track", event="Signed Up", properties={"plan": "pro"}), OPTIONS,
     [amp(event_type="Signed Up", event_properties={"plan": "pro"})]),
    ("track: context fields; device_id from context.device.id; platform ios -> iOS",
     msg("track", event="E", context=CONTEXT), OPTIONS,
     [amp(event_type="E", device_id="dev-42", **CONTEXT_FIELDS)]),
    ("track: prefer_anonymous_id takes anonymousId over context.device.id",
     msg("track", event="E", context={"device": {"id": "dev-42"}}),
     AmplitudeOptions(api_key=API_KEY, prefer_anonymous_id=True),
     [amp(event_type="E", device_id="anon-42")]),
    ("track: revenue fields when properties.revenue is a number",
     msg("track", event="Order Completed",
         properties={"revenue": "25.5", "productId": "p-1", "revenueType": "Purchase", "quantity": 2}),
     OPTIONS,
     [amp(event_type="Order Completed", revenue=25.5, productId="p-1", revenueType="Purchase", quantity=2,
          event_properties={"revenue": "25.5", "productId": "p-1", "revenueType": "Purchase",
                            "quantity": 2})]),
    ("Order Completed (Log Purchase): the order with its revenue, then a Product Purchased per product",
     msg("track", event="Order Completed", properties={"revenue": 30, "products": PRODUCTS}), OPTIONS,
     [amp(event_type="Order Completed", revenue=30, revenueType="Purchase",
          event_properties={"revenue": 30, "products": PRODUCTS}),
      amp(event_type="Product Purchased", event_properties=PRODUCTS[0], insert_id="mid-1-2"),
      amp(event_type="Product Purchased", event_properties=PRODUCTS[1], insert_id="mid-1-3")]),
    ("Order Completed with track_revenue_per_product: price x quantity on each product instead",
     msg("track", event="Order Completed", properties={"revenue": 30, "products": PRODUCTS}),
     AmplitudeOptions(api_key=API_KEY, track_revenue_per_product=True),
     [amp(event_type="Order Completed", event_properties={"revenue": 30, "products": PRODUCTS}),
      amp(event_type="Product Purchased", event_properties=PRODUCTS[0], insert_id="mid-1-2",
          revenue=25.0, revenueType="Purchase", quantity=2, price=12.5, productId="p-1"),
      amp(event_type="Product Purchased", event_properties=PRODUCTS[1], insert_id="mid-1-3",
          revenue=5, revenueType="Refund", productId="p-2")]),
    ("Order Completed: price and quantity make the revenue; no revenue, no revenue fields",
     msg("track", event="Order Completed", properties={"price": 4.5, "quantity": 2}), OPTIONS,
     [amp(event_type="Order Completed", revenue=9.0, revenueType="Purchase", quantity=2, price=4.5,
          event_properties={"price": 4.5, "quantity": 2})]),
    ("Order Completed without revenue: no revenue fields",
     msg("track", event="Order Completed", properties={"orderId": "o-1"}), OPTIONS,
     [amp(event_type="Order Completed", event_properties={"orderId": "o-1"})]),
    ("track: no revenue, no revenue fields (a price alone is not revenue)",
     msg("track", event="Product Viewed", properties={"price": 9.99}), OPTIONS,
     [amp(event_type="Product Viewed", event_properties={"price": 9.99})]),
    ("track: integrations.Amplitude session_id (ISO) and event-level groups",
     msg("track", event="E", integrations={"Amplitude": {"session_id": T0, "groups": {"team": "a"}}}),
     OPTIONS, [amp(event_type="E", session_id=T0_MS, groups={"team": "a"})]),
    ("track: numeric userId becomes a string; analytics.js without device type is Web",
     msg("track", event="E", userId=12345, context={"library": {"name": "analytics.js"}}), OPTIONS,
     [amp(event_type="E", user_id="12345", platform="Web")]),
    ("page: Track All Pages (the default) -> Loaded a Page, name and category as properties",
     PAGE, OPTIONS, [amp(event_type="Loaded a Page", event_properties=PAGE_PROPS)]),
    ("page: categorized and named -> one event each, insert_id suffixed after the first",
     PAGE, AmplitudeOptions(api_key=API_KEY, page_events=("all", "categorized", "named")),
     [amp(event_type="Loaded a Page", event_properties=PAGE_PROPS),
      amp(event_type="Viewed Docs Page", event_properties=PAGE_PROPS, insert_id="mid-1:categorized"),
      amp(event_type="Viewed Docs Pricing Page", event_properties=PAGE_PROPS, insert_id="mid-1:named")]),
    ("page: named only, without a name -> nothing",
     msg("page"), AmplitudeOptions(api_key=API_KEY, page_events=("named",)), []),
    ("screen: named -> Viewed <name> Screen",
     msg("screen", name="Settings"), AmplitudeOptions(api_key=API_KEY, page_events=("named",)),
     [amp(event_type="Viewed Settings Screen", event_properties={"name": "Settings"})]),
    ("identify: traits as $set, with $setOnce and $add for the configured traits",
     msg("identify", traits={"email": "a@example.com", "signup": "2024-01-01", "logins": 3}),
     AmplitudeOptions(api_key=API_KEY, traits_to_set_once=("signup",), traits_to_increment=("logins",)),
     [amp(event_type="$identify", user_properties={"$set": {"email": "a@example.com"},
                                                   "$setOnce": {"signup": "2024-01-01"},
                                                   "$add": {"logins": 3}})]),
    ("identify: integrations.Amplitude.groups assign groups (legacy)",
     msg("identify", traits={}, integrations={"Amplitude": {"groups": {"sport": ["tennis"]}}}), OPTIONS,
     [amp(event_type="$identify", user_properties={}, groups={"sport": ["tennis"]})]),
    ("group: without type/value traits -> [Segment] Group = groupId; traits as group properties",
     msg("group", groupId="org-7", traits={"name": "Acme"}), OPTIONS,
     [amp(event_type="$identify", groups={"[Segment] Group": "org-7"},
          user_properties={"$set": {"[Segment] Group": "org-7"}}),
      amp(event_type="$groupidentify", groups={"[Segment] Group": "org-7"},
          group_properties={"$set": {"name": "Acme"}}, insert_id="mid-1:group")]),
    ("group: type and value from the configured traits",
     msg("group", groupId="org-7", traits={"kind": "Organization", "name": "Acme"}),
     AmplitudeOptions(api_key=API_KEY, group_type_trait="kind", group_value_trait="name"),
     [amp(event_type="$identify", groups={"Organization": "Acme"},
          user_properties={"$set": {"Organization": "Acme"}}),
      amp(event_type="$groupidentify", groups={"Organization": "Acme"},
          group_properties={"$set": {"kind": "Organization", "name": "Acme"}}, insert_id="mid-1:group")]),
    ("alias: not sent (Segment maps it to Amplitude's usermap API, off by default)",
     msg("alias", previousId="old-1"), OPTIONS, []),
]


@pytest.mark.parametrize(("message", "options", "expected"), [m[1:] for m in MAPPINGS],
                         ids=[m[0] for m in MAPPINGS])
def test_a_segment_call_maps_to_the_amplitude_events_segment_documents(
        message: dict[str, Any], options: AmplitudeOptions, expected: list[dict[str, Any]]) -> None:
    assert to_amplitude(message, options) == expected


def test_properties_that_are_not_an_object_cannot_be_mapped() -> None:
    with pytest.raises(ValueError, match="properties"):
        to_amplitude(msg("track", event="E", properties=["a"]), OPTIONS)


@pytest.mark.parametrize(("answer", "expected"), [
    (Answer(400, '{"code":400,"error":"Invalid API key"}'), Action.PAUSE),
    (Answer(400, '{"code":400,"error":"Request missing required field","missing_field":"api_key"}'),
     Action.PAUSE),
    (Answer(400, '{"code":400,"error":"Invalid field values on some events"}'), Action.REJECT),
    (Answer(400, "not json"), Action.REJECT),
    (Answer(200, '{"code":200}'), Action.DELIVERED),
    (Answer(None, error="refused"), Action.RETRY),
])
def test_a_rejected_api_key_pauses_instead_of_dead_lettering(answer: Answer, expected: Action) -> None:
    assert classify(answer).action is expected


def test_a_429_without_retry_after_waits_the_throttle_time() -> None:
    assert throttled(Answer(429, "{}"), 30.0).retry_after == 30.0
    assert throttled(Answer(429, "{}", retry_after=5.0), 30.0).retry_after == 5.0


@pytest.mark.parametrize(("fields", "named"), [
    ({"options": {}}, "`api_key`"),
    ({"options": {"api_key": ""}}, "`options.api_key`"),
    ({"options": {"api_key": API_KEY, "page_events": ["some"]}}, "`options.page_events"),
    ({"options": {"api_key": API_KEY, "min_id_length": 0}}, "`options.min_id_length`"),
    ({"options": {"api_key": API_KEY, "secret_key": "x"}}, "`secret_key`"),
    ({"options": {"api_key": API_KEY}, "endpoint": "api2.amplitude.com"}, "`endpoint`"),
    ({"options": {"api_key": API_KEY}, "max_events": 1500}, "`max_events`"),
    ({"options": {"api_key": API_KEY}, "max_bytes": 2_000_000}, "`max_bytes`"),
])
def test_a_wrong_option_is_refused_naming_it(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError) as caught:
        make_sink(DestinationConfig(name="amp", type="amplitude", **fields))
    assert named in str(caught.value)
    assert API_KEY not in str(caught.value)


def test_the_api_key_stays_out_of_its_repr() -> None:
    sink = make_sink(DestinationConfig(name="amp", type="amplitude", options={"api_key": API_KEY}))
    assert "api2.amplitude.com" in repr(sink)
    assert API_KEY not in repr(sink) and API_KEY not in repr(sink.options)  # type: ignore[attr-defined]


def test_the_config_view_masks_the_api_key() -> None:
    destination = {"name": "d", "type": "amplitude", "options": {"api_key": API_KEY}}
    cfg = msgspec.convert({"destinations": [destination]}, Config)
    assert API_KEY not in str(masked(cfg))


# --- end to end ---------------------------------------------------------------------------------


def destination(fake: FakeAmplitude, **options: Any) -> dict[str, Any]:
    return {"name": "amp", "type": "amplitude", "endpoint": fake.url, **FAST,
            "options": {"api_key": API_KEY, **options}}


async def test_every_call_reaches_amplitude_as_documented(start_relay: Any) -> None:
    async with FakeAmplitude() as fake:
        relay = await start_relay(destinations=[destination(fake, traits_to_increment=["logins"])])
        base = {"userId": "user-42", "anonymousId": "anon-42", "timestamp": T0, "context": CONTEXT}
        sent = [
            {**base, "type": "identify", "messageId": "m1", "traits": {"plan": "pro", "logins": 3}},
            {**base, "type": "track", "messageId": "m2", "event": "Order Completed",
             "properties": {"revenue": 25.5, "products": [{"productId": "p-1", "price": 25.5}]},
             "integrations": {"Amplitude": {"session_id": T0_MS}}},
            {**base, "type": "page", "messageId": "m3", "name": "Pricing"},
            {**base, "type": "screen", "messageId": "m4", "name": "Settings"},
            {**base, "type": "group", "messageId": "m5", "groupId": "org-7", "traits": {"name": "Acme"}},
            {**base, "type": "alias", "messageId": "m6", "previousId": "old-user-1"},
        ]
        status, _, _ = await relay.post("/v1/batch", {"writeKey": "wk", "batch": sent})
        assert status == 200
        await fake.wait_until(lambda: len(fake.ingested) >= 7)

        common = {"user_id": "user-42", "device_id": "dev-42", "time": T0_MS, **CONTEXT_FIELDS}
        group = {"[Segment] Group": "org-7"}
        assert fake.ingested == [
            {**common, "insert_id": "m1", "event_type": "$identify",
             "user_properties": {"$set": {"plan": "pro"}, "$add": {"logins": 3}}},
            {**common, "insert_id": "m2", "event_type": "Order Completed", "session_id": T0_MS,
             "event_properties": {"revenue": 25.5, "products": [{"productId": "p-1", "price": 25.5}]},
             "revenue": 25.5, "revenueType": "Purchase"},
            {**common, "insert_id": "m2-2", "event_type": "Product Purchased", "session_id": T0_MS,
             "event_properties": {"productId": "p-1", "price": 25.5}},
            {**common, "insert_id": "m3", "event_type": "Loaded a Page",
             "event_properties": {"name": "Pricing"}},
            {**common, "insert_id": "m4", "event_type": "Loaded a Screen",
             "event_properties": {"name": "Settings"}},
            {**common, "insert_id": "m5", "event_type": "$identify", "groups": group,
             "user_properties": {"$set": group}},
            {**common, "insert_id": "m5:group", "event_type": "$groupidentify", "groups": group,
             "group_properties": {"$set": {"name": "Acme"}}},
        ]
        for request in fake.requests:
            assert request.status == 200
            assert request.headers["Content-Type"] == "application/json"
            assert request.headers["Content-Encoding"] == "gzip"
            assert set(request.json()) == {"api_key", "events"}
        assert relay.dead_letters() == []


async def test_a_429_is_retried_with_the_same_insert_ids_and_min_id_length(start_relay: Any) -> None:
    async with FakeAmplitude(script=[THROTTLED]) as fake:
        relay = await start_relay(destinations=[destination(fake, min_id_length=4, throttle_wait=0.05)])
        sent = [{"type": "track", "userId": "u123", "event": f"E{i}", "messageId": f"m{i}",
                 "timestamp": T0, "context": {"library": {"name": "analytics-python"}}} for i in (1, 2)]
        await relay.post("/v1/batch", {"writeKey": "wk", "batch": sent})
        await fake.wait_until(lambda: len(fake.ingested) >= 2)

        assert [r.status for r in fake.requests] == [429, 200]
        first, second = (r.json() for r in fake.requests)
        assert first == second
        assert second["options"] == {"min_id_length": 4}
        assert fake.ingested == [
            {"user_id": "u123", "time": T0_MS, "insert_id": f"m{i}", "event_type": f"E{i}"} for i in (1, 2)
        ]
        assert relay.dead_letters() == []


async def test_an_event_amplitude_rejects_is_dead_lettered_and_the_rest_delivered(start_relay: Any) -> None:
    async with FakeAmplitude() as fake:
        relay = await start_relay(destinations=[destination(fake)])
        good = {"type": "track", "userId": "user-42", "event": "Good", "timestamp": T0}
        bad = {"type": "track", "userId": "undefined", "event": "Bad", "timestamp": T0, "messageId": "bad-1"}
        sent = [{**good, "messageId": "ok-1"}, bad, {**good, "messageId": "ok-2"}]
        await relay.post("/v1/batch", {"writeKey": "wk", "batch": sent})
        dead = await wait_for_rows(relay, "SELECT destination, message_id, reason FROM dead_letters", 1)
        await fake.wait_until(lambda: len(fake.ingested) >= 2)

        assert [e["insert_id"] for e in fake.ingested] == ["ok-1", "ok-2"]
        [(name, message_id, reason)] = dead
        assert (name, message_id) == ("amp", "bad-1")
        assert "HTTP 400" in reason and "events_with_invalid_fields" in reason


async def test_a_wrong_api_key_pauses_the_destination_and_is_never_logged(
        start_relay: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with FakeAmplitude(api_key="another-project-key-000000000000") as fake:
        relay = await start_relay(destinations=[destination(fake)])
        await relay.post("/v1/track", {"writeKey": "wk", "userId": "user-42", "event": "E", "timestamp": T0})
        await fake.wait_until(lambda: len(fake.requests) >= 2)  # asked again: kept, not dropped

        forwarder = relay.relay.forwarders[0]
        assert forwarder.state == "paused"
        assert "Invalid API key" in (forwarder.last_error or "")
        assert relay.dead_letters() == []
        assert relay.rows("SELECT count(*) FROM events") == [(1,)]
        assert all(r.status == 400 for r in fake.requests)
        assert API_KEY not in caplog.text
        assert API_KEY not in str(await relay.relay.status())


async def test_orders_whose_products_exceed_a_request_are_split_before_amplitude_sees_them(
        start_relay: Any) -> None:
    """An order becomes one event per product: three orders of 800 products are 2,403 events,
    more than a request takes; the batch is split before sending, never refused by Amplitude."""
    async with FakeAmplitude() as fake:
        relay = await start_relay(destinations=[{**destination(fake), "max_events": 3}])
        orders = [{"type": "track", "userId": "user-42", "event": "Order Completed", "timestamp": T0,
                   "messageId": f"order-{n}",
                   "properties": {"products": [{"productId": f"p{i}"} for i in range(800)]}}
                  for n in range(3)]
        status, answer, _ = await relay.post("/v1/batch", {"writeKey": "wk", "batch": orders})
        assert status == 200 and answer["accepted"] == 3
        await fake.wait_until(lambda: len(fake.ingested) >= 3 * 801)
        assert [r.status for r in fake.requests] == [200] * len(fake.requests)
        assert all(len(r.json()["events"]) <= 2000 for r in fake.requests)
        assert [e["insert_id"] for e in fake.ingested if e["event_type"] == "Order Completed"] == [
            "order-0", "order-1", "order-2"]
        assert relay.dead_letters() == []
