"""The ``posthog`` destination type: the mapping (table-driven) and end to end against a local
fake of PostHog's batch capture API that checks requests as PostHog documents them
(https://posthog.com/docs/api/capture) and answers as its capture service does."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import msgspec
import pytest

from relay.config import Config, DestinationConfig, masked
from relay.sinks import make_sink
from relay.sinks.posthog import PostHogOptions, event_uuid, to_posthog
from tests.support.fake_http import FakeServer, Reply, Request, wait_for_rows

API_KEY = "phc_testProjectKey0123456789abcdefghijklmn"
FAST = {"flush_interval": 0.05, "retry_initial": 0.05, "retry_max": 0.2}
T0 = "2024-05-01T10:00:00.000Z"
# The documented derivation for messageIds that are not UUIDs (see relay/sinks/posthog.py).
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "relay:segment-message-id")
UUID_1 = "0b8e4c5e-6f0a-4a4e-9c43-6a2b1f3e7d10"

# --- the fake -----------------------------------------------------------------------------------

EVENT_KEYS = {"event", "distinct_id", "properties", "timestamp", "uuid"}
BAD_KEY: Reply = (401, {"type": "authentication_error", "code": "invalid_api_key",
                        "detail": "Project API key invalid. You can find your project API key in "
                                  "PostHog project settings."}, {})


class FakePostHog(FakeServer):
    """``POST /batch/`` as documented: JSON ``{"api_key", "batch": [...]}`` under 20 MB; each
    event needs a string ``event`` and a non-empty ``distinct_id``; ``uuid`` must be a UUID.
    Errors answer as PostHog's capture service does (plain-text 400 for the whole request,
    401 for the key, 429 when rate limited); 200 ``{"status": 1}`` ingests the whole batch.
    Stricter than PostHog in one way: an event key outside the documented five is refused."""

    def __init__(self, api_key: str = API_KEY, script: list[Any] | None = None) -> None:
        super().__init__(script)
        self.api_key = api_key
        self.ingested: list[dict[str, Any]] = []

    def answer(self, request: Request) -> Reply:
        if (request.method, request.path) != ("POST", "/batch/"):
            return 404, "Not Found", {}
        if request.headers.get("Content-Type", "").split(";")[0] != "application/json":
            return 400, "failed to decode request: not JSON", {}
        if len(request.body) >= 20_000_000:
            return 413, "length limit exceeded", {}
        try:
            body = request.json()
        except ValueError as exc:
            return 400, f"failed to parse request: {exc}", {}
        if not body.get("api_key"):
            return 401, "event submitted without an api_key", {}
        if body["api_key"] != self.api_key:
            return BAD_KEY
        batch = body.get("batch")
        if not isinstance(batch, list) or not batch:
            return 400, "request holds no event", {}
        for event in batch:
            problem = self._problem(event)
            if problem:
                return 400, problem, {}
        self.ingested.extend(batch)
        return 200, {"status": 1}, {}

    @staticmethod
    def _problem(event: Any) -> str | None:
        if not isinstance(event, dict) or set(event) - EVENT_KEYS:
            return "failed to parse request: unknown field"
        name = event.get("event")
        if not isinstance(name, str):
            return f"failed to parse request: invalid type: {type(name).__name__} `{name}`, expected a string"
        if not name:
            return "event submitted with an empty event name"
        if not isinstance(event.get("properties", {}), dict):
            return "failed to parse request: invalid type, expected a map"
        distinct_id = event.get("distinct_id", event.get("properties", {}).get("distinct_id"))
        if distinct_id is None:
            return "event submitted without a distinct_id"
        if str(distinct_id) == "":
            return "event submitted with an empty distinct_id"
        if "timestamp" in event and not isinstance(event["timestamp"], str):
            return "failed to parse request: invalid type, expected a string"
        if "uuid" in event:
            try:
                uuid.UUID(event["uuid"])
            except (ValueError, TypeError, AttributeError):
                return "failed to parse request: UUID parsing failed"
        return None


# --- the mapping --------------------------------------------------------------------------------

OPTIONS = PostHogOptions(api_key=API_KEY)
CONTEXT = {
    "ip": "203.0.113.9",
    "page": {"url": "https://shop.example.com/cart?x=1", "path": "/cart",
             "referrer": "https://www.google.com/search"},
    "os": {"name": "Mac OS X", "version": "14.4"},
    "locale": "nl-NL",
    "timezone": "Europe/Amsterdam",
    "userAgent": "Mozilla/5.0",
    "library": {"name": "analytics.js", "version": "next-1.70.0"},
    "campaign": {"source": "news", "medium": "email", "name": "spring"},
}
CONTEXT_PROPS = {
    "$ip": "203.0.113.9", "$current_url": "https://shop.example.com/cart?x=1", "$pathname": "/cart",
    "$host": "shop.example.com", "$referrer": "https://www.google.com/search",
    "$referring_domain": "www.google.com", "$os": "Mac OS X", "$os_version": "14.4", "$locale": "nl-NL",
    "$timezone": "Europe/Amsterdam", "$raw_user_agent": "Mozilla/5.0", "$lib": "analytics.js",
    "$lib_version": "next-1.70.0", "utm_source": "news", "utm_medium": "email", "utm_campaign": "spring",
}


def msg(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "userId": "user-42", "anonymousId": "anon-42", "messageId": UUID_1,
            "timestamp": T0, **fields}


def ph(event: Any, properties: dict[str, Any], distinct_id: str = "user-42", **fields: Any) -> dict[str, Any]:
    return {"event": event, "distinct_id": distinct_id, "properties": properties, "timestamp": T0,
            "uuid": UUID_1, **fields}


MAPPINGS: list[tuple[str, dict[str, Any], PostHogOptions, dict[str, Any]]] = [
    ("track: the event name, properties and PostHog's names for the context",
     msg("track", event="Order Completed", properties={"total": 30}, context=CONTEXT), OPTIONS,
     ph("Order Completed", {**CONTEXT_PROPS, "total": 30})),
    ("track: anonymous only -> distinct_id is the anonymousId; numeric ids become strings",
     msg("track", event="E", userId=None, anonymousId=12345), OPTIONS, ph("E", {}, distinct_id="12345")),
    ("track: context.groupId -> $groups with the configured group type",
     msg("track", event="E", context={"groupId": "org-7"}),
     PostHogOptions(api_key=API_KEY, group_type="team"), ph("E", {"$groups": {"team": "org-7"}})),
    ("track: mobile context fields",
     msg("track", event="E", context={"device": {"id": "d-1", "manufacturer": "Apple", "model": "iPhone15,2",
                                                 "type": "ios"},
                                      "app": {"name": "Shop", "version": "3.1", "build": "301"},
                                      "screen": {"width": 390, "height": 844}}), OPTIONS,
     ph("E", {"$device_id": "d-1", "$device_manufacturer": "Apple", "$device_model": "iPhone15,2",
              "$device_type": "ios", "$app_name": "Shop", "$app_version": "3.1", "$app_build": "301",
              "$screen_width": 390, "$screen_height": 844})),
    ("page: $pageview; the page's own url, path, referrer and title over the context's",
     msg("page", name="Cart", category="Shop", context=CONTEXT,
         properties={"url": "https://shop.example.com/cart", "path": "/cart", "title": "Your cart",
                     "referrer": "https://shop.example.com/"}), OPTIONS,
     ph("$pageview", {**CONTEXT_PROPS, "$current_url": "https://shop.example.com/cart",
                      "$referrer": "https://shop.example.com/", "$referring_domain": "shop.example.com",
                      "title": "Your cart", "name": "Cart", "category": "Shop",
                      "url": "https://shop.example.com/cart", "path": "/cart",
                      "referrer": "https://shop.example.com/"})),
    ("screen: $screen with $screen_name",
     msg("screen", name="Settings", properties={"tab": "privacy"}), OPTIONS,
     ph("$screen", {"$screen_name": "Settings", "tab": "privacy"})),
    ("identify: $identify with traits as $set, merging the anonymous id",
     msg("identify", traits={"email": "a@example.com"}), OPTIONS,
     ph("$identify", {"$set": {"email": "a@example.com"}, "$anon_distinct_id": "anon-42"})),
    ("identify: anonymous only -> no $anon_distinct_id",
     msg("identify", userId=None, traits={"plan": "pro"}), OPTIONS,
     ph("$identify", {"$set": {"plan": "pro"}}, distinct_id="anon-42")),
    ("group: $groupidentify with type, key and traits as $group_set",
     msg("group", groupId="org-7", traits={"name": "Acme"}), OPTIONS,
     ph("$groupidentify", {"$group_type": "company", "$group_key": "org-7", "$group_set": {"name": "Acme"},
                           "$groups": {"company": "org-7"}})),
    ("alias: $create_alias from previousId to userId",
     msg("alias", previousId="anon-42"), OPTIONS,
     ph("$create_alias", {"alias": "user-42"}, distinct_id="anon-42")),
    ("a messageId that is not a UUID -> a UUID derived from it",
     msg("track", event="E", messageId="ajs-next-1714557600000-abc"), OPTIONS,
     ph("E", {}, uuid=str(uuid.uuid5(NAMESPACE, "ajs-next-1714557600000-abc")))),
    ("a numeric event name is sent as it is (PostHog judges it)",
     msg("track", event=42), OPTIONS, ph(42, {})),
]


@pytest.mark.parametrize(("message", "options", "expected"), [m[1:] for m in MAPPINGS],
                         ids=[m[0] for m in MAPPINGS])
def test_a_segment_call_maps_to_the_posthog_event_posthog_documents(
        message: dict[str, Any], options: PostHogOptions, expected: dict[str, Any]) -> None:
    assert to_posthog(message, options) == expected


def test_a_uuid_message_id_is_kept_and_any_other_gives_the_same_uuid_every_time() -> None:
    assert event_uuid(UUID_1.upper()) == UUID_1
    assert event_uuid("m-1") == event_uuid("m-1") != event_uuid("m-2")
    assert uuid.UUID(event_uuid("m-1") or "").version == 5


def test_properties_that_are_not_an_object_cannot_be_mapped() -> None:
    with pytest.raises(ValueError, match="properties"):
        to_posthog(msg("track", event="E", properties="x"), OPTIONS)


@pytest.mark.parametrize(("fields", "named"), [
    ({"options": {}}, "`api_key`"),
    ({"options": {"api_key": ""}}, "`options.api_key`"),
    ({"options": {"api_key": API_KEY, "group_type": ""}}, "`options.group_type`"),
    ({"options": {"api_key": API_KEY, "host": "x"}}, "`host`"),
    ({"options": {"api_key": API_KEY}, "endpoint": "us.i.posthog.com"}, "`endpoint`"),
    ({"options": {"api_key": API_KEY}, "max_bytes": 25_000_000}, "`max_bytes`"),
])
def test_a_wrong_option_is_refused_naming_it(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError) as caught:
        make_sink(DestinationConfig(name="ph", type="posthog", **fields))
    assert named in str(caught.value)
    assert API_KEY not in str(caught.value)


def test_the_api_key_stays_out_of_its_repr() -> None:
    sink = make_sink(DestinationConfig(name="ph", type="posthog", options={"api_key": API_KEY}))
    assert "us.i.posthog.com/batch/" in repr(sink)
    assert API_KEY not in repr(sink) and API_KEY not in repr(sink.options)  # type: ignore[attr-defined]


def test_the_config_view_masks_the_api_key() -> None:
    destination = {"name": "d", "type": "posthog", "options": {"api_key": API_KEY}}
    cfg = msgspec.convert({"destinations": [destination]}, Config)
    assert API_KEY not in str(masked(cfg))


# --- end to end ---------------------------------------------------------------------------------


def destination(fake: FakePostHog, **options: Any) -> dict[str, Any]:
    return {"name": "ph", "type": "posthog", "endpoint": fake.url, **FAST,
            "options": {"api_key": API_KEY, **options}}


async def test_every_call_reaches_posthog_as_documented(start_relay: Any) -> None:
    async with FakePostHog() as fake:
        relay = await start_relay(destinations=[destination(fake)])
        base = {"userId": "user-42", "anonymousId": "anon-42", "timestamp": T0, "context": CONTEXT}
        sent = [
            {**base, "type": "identify", "messageId": UUID_1, "traits": {"plan": "pro"}},
            {**base, "type": "track", "messageId": "m2", "event": "Order Completed",
             "properties": {"total": 30}},
            {**base, "type": "page", "messageId": "m3", "name": "Cart"},
            {**base, "type": "screen", "messageId": "m4", "name": "Settings"},
            {**base, "type": "group", "messageId": "m5", "groupId": "org-7", "traits": {"name": "Acme"}},
            {**base, "type": "alias", "messageId": "m6", "previousId": "anon-42"},
        ]
        status, _, _ = await relay.post("/v1/batch", {"writeKey": "wk", "batch": sent})
        assert status == 200
        await fake.wait_until(lambda: len(fake.ingested) >= 6)

        def expected(mid: str, event: str, props: dict[str, Any],
                     distinct_id: str = "user-42") -> dict[str, Any]:
            return {"event": event, "distinct_id": distinct_id, "properties": {**CONTEXT_PROPS, **props},
                    "timestamp": T0, "uuid": UUID_1 if mid == UUID_1 else str(uuid.uuid5(NAMESPACE, mid))}

        assert fake.ingested == [
            expected(UUID_1, "$identify", {"$set": {"plan": "pro"}, "$anon_distinct_id": "anon-42"}),
            expected("m2", "Order Completed", {"total": 30}),
            expected("m3", "$pageview", {"name": "Cart"}),
            expected("m4", "$screen", {"$screen_name": "Settings"}),
            expected("m5", "$groupidentify", {"$group_type": "company", "$group_key": "org-7",
                                              "$group_set": {"name": "Acme"},
                                              "$groups": {"company": "org-7"}}),
            expected("m6", "$create_alias", {"alias": "user-42"}, distinct_id="anon-42"),
        ]
        for request in fake.requests:
            assert request.status == 200 and request.reply == {"status": 1}
            assert request.headers["Content-Type"] == "application/json"
            assert request.headers["Content-Encoding"] == "gzip"
            assert set(request.json()) == {"api_key", "batch"}
        assert relay.dead_letters() == []


async def test_a_429_is_retried_with_the_same_uuids(start_relay: Any) -> None:
    async with FakePostHog(script=[(429, "rate limited", {})]) as fake:
        relay = await start_relay(destinations=[destination(fake)])
        sent = [{"type": "track", "anonymousId": "anon-42", "event": f"E{i}", "messageId": f"m{i}",
                 "timestamp": T0, "context": {"library": {"name": "analytics-python"}}} for i in (1, 2)]
        await relay.post("/v1/batch", {"writeKey": "wk", "batch": sent})
        await fake.wait_until(lambda: len(fake.ingested) >= 2)

        assert [r.status for r in fake.requests] == [429, 200]
        assert fake.requests[0].json() == fake.requests[1].json()
        assert fake.ingested == [
            {"event": f"E{i}", "distinct_id": "anon-42", "timestamp": T0,
             "uuid": str(uuid.uuid5(NAMESPACE, f"m{i}")), "properties": {"$lib": "analytics-python"}}
            for i in (1, 2)
        ]
        assert relay.dead_letters() == []


async def test_an_event_posthog_rejects_is_dead_lettered_and_the_rest_delivered(start_relay: Any) -> None:
    async with FakePostHog() as fake:
        relay = await start_relay(destinations=[destination(fake)])
        good = {"type": "track", "userId": "user-42", "event": "Good", "timestamp": T0}
        bad = {"type": "track", "userId": "user-42", "event": 42, "timestamp": T0, "messageId": "bad-1"}
        await relay.post("/v1/batch", {"writeKey": "wk", "batch": [{**good, "messageId": "ok-1"}, bad,
                                                                   {**good, "messageId": "ok-2"}]})
        dead = await wait_for_rows(relay, "SELECT destination, message_id, reason FROM dead_letters", 1)
        await fake.wait_until(lambda: len(fake.ingested) >= 2)

        assert [e["uuid"] for e in fake.ingested] == [str(uuid.uuid5(NAMESPACE, m)) for m in ("ok-1", "ok-2")]
        [(name, message_id, reason)] = dead
        assert (name, message_id) == ("ph", "bad-1")
        assert "HTTP 400" in reason and "expected a string" in reason


async def test_a_wrong_api_key_pauses_the_destination_and_is_never_logged(
        start_relay: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with FakePostHog(api_key="phc_anotherProject") as fake:
        relay = await start_relay(destinations=[destination(fake)])
        await relay.post("/v1/track", {"writeKey": "wk", "userId": "user-42", "event": "E", "timestamp": T0})
        await fake.wait_until(lambda: len(fake.requests) >= 2)

        forwarder = relay.relay.forwarders[0]
        assert forwarder.state == "paused"
        assert "invalid_api_key" in (forwarder.last_error or "")
        assert relay.dead_letters() == []
        assert relay.rows("SELECT count(*) FROM events") == [(1,)]
        assert API_KEY not in caplog.text
        assert API_KEY not in str(await relay.relay.status())
