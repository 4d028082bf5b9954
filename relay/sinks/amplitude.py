"""The ``amplitude`` type: Amplitude's HTTP V2 API (``POST /2/httpapi``).

Body ``{"api_key": ..., "events": [...], "options": {"min_id_length": n}?}``; at most 2,000
events and 1 MB a request (413 beyond). Segment calls are mapped as Segment's own
Amplitude destination documents it (see ``to_amplitude``); every event carries
``insert_id`` (Amplitude drops a repeat within 7 days), so a retried batch is not counted
twice. Answers: 400 rejects the whole request (the forwarder bisects to the bad event),
but the sink classifies a 400 for the API key itself as a pause (``classify``), so the
destination keeps its events instead of dead-lettering everything; a 429 without
``Retry-After`` waits ``throttle_wait`` seconds (Amplitude asks for 30 s per throttled user
or device).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Annotated, Any, Literal

import msgspec

from relay.config import DestinationConfig
from relay.forward import retry
from relay.forward.retry import Action, Answer, Decision
from relay.sinks import Outgoing
from relay.sinks import fields as f
from relay.sinks import options as opts
from relay.sinks.http import HttpClient, HttpSink
from relay.types import Stored

DEFAULT_ENDPOINT = "https://api2.amplitude.com"
PATH = "/2/httpapi"
MAX_EVENTS_PER_REQUEST = 2000
MAX_REQUEST_BYTES = 1_000_000
THROTTLE_WAIT = 30.0
LEGACY_GROUP_TYPE = "[Segment] Group"
PURCHASE_EVENT = "Order Completed"
PRODUCT_EVENT = "Product Purchased"
INTEGRATION_KEY = "Amplitude"  # integrations.Amplitude.{session_id, groups}, as Segment reads them
REVENUE_FIELDS = (("revenue", f.number), ("price", f.number), ("quantity", f.integer),
                  ("productId", f.text), ("revenueType", f.text))

PageEvent = Literal["all", "categorized", "named"]
_decode = msgspec.json.Decoder(dict[str, Any]).decode
_encode = msgspec.json.Encoder().encode


class AmplitudeOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    api_key: Annotated[str, msgspec.Meta(min_length=1)]
    # Segment's Track All / Categorized / Named Pages settings, for page and screen calls.
    page_events: tuple[PageEvent, ...] = ("all",)
    prefer_anonymous_id: bool = False  # device_id from anonymousId before context.device.id
    min_id_length: Annotated[int, msgspec.Meta(ge=1)] | None = None
    group_type_trait: str = ""
    group_value_trait: str = ""
    traits_to_set_once: tuple[str, ...] = ()
    traits_to_increment: tuple[str, ...] = ()
    # Segment's Log Purchase: revenue on each "Product Purchased" event instead of the order's.
    track_revenue_per_product: bool = False
    throttle_wait: Annotated[float, msgspec.Meta(ge=0)] = THROTTLE_WAIT

    def __repr__(self) -> str:
        return f"AmplitudeOptions(api_key=***, page_events={self.page_events!r})"


# --- the mapping (pure) -----------------------------------------------------------------------


def to_amplitude(message: f.MessageView, options: AmplitudeOptions) -> list[dict[str, Any]]:
    """The Amplitude events for one Segment message (none for ``alias``, which Segment sends
    to Amplitude's separate usermap API, off by default)."""
    kind = message.get("type")
    base = _common(message, options)
    if kind == "track":
        if message.get("event") == PURCHASE_EVENT:
            return _purchase(message, base, options)
        return [_track(message, base)]
    if kind in ("page", "screen"):
        return _page(message, base, options, "Page" if kind == "page" else "Screen")
    if kind == "identify":
        return [_identify(message, base, options)]
    if kind == "group":
        return _group(message, base, options)
    if kind == "alias":
        return []
    raise ValueError(f"unknown message type {kind!r}")


def _common(message: f.MessageView, options: AmplitudeOptions) -> dict[str, Any]:
    """Ids, time, insert_id and the context fields every Amplitude event takes."""
    event: dict[str, Any] = {}
    device_id = f.ident(f.at(message, "context.device.id"))
    anonymous_id = f.ident(message.get("anonymousId"))
    f.put(event, "user_id", f.ident(message.get("userId")))
    if options.prefer_anonymous_id:
        f.put(event, "device_id", anonymous_id or device_id)
    else:
        f.put(event, "device_id", device_id or anonymous_id)
    f.put(event, "time", f.millis(message.get("timestamp")))
    f.put(event, "insert_id", f.text(message.get("messageId")))
    context = f.obj(message.get("context"))
    f.put(event, "app_version", f.text(f.at(context, "app.version")))
    f.put(event, "platform", _platform(context))
    f.put(event, "os_name", f.text(f.at(context, "os.name")))
    f.put(event, "os_version", f.text(f.at(context, "os.version")))
    f.put(event, "device_brand", f.text(f.at(context, "device.brand")))
    f.put(event, "device_manufacturer", f.text(f.at(context, "device.manufacturer")))
    f.put(event, "device_model", f.text(f.at(context, "device.model")))
    f.put(event, "carrier", f.text(f.at(context, "network.carrier")))
    f.put(event, "country", f.text(f.at(context, "location.country")))
    f.put(event, "region", f.text(f.at(context, "location.region")))
    f.put(event, "city", f.text(f.at(context, "location.city")))
    f.put(event, "location_lat", f.number(f.at(context, "location.latitude")))
    f.put(event, "location_lng", f.number(f.at(context, "location.longitude")))
    f.put(event, "language", f.text(context.get("locale")))
    f.put(event, "ip", f.text(context.get("ip")))
    advertising_id = f.text(f.at(context, "device.advertisingId"))
    f.put(event, "idfa", advertising_id)
    f.put(event, "adid", advertising_id)
    f.put(event, "user_agent", f.text(context.get("userAgent")))
    f.put(event, "session_id", _session_id(_settings(message).get("session_id")))
    return event


def _settings(message: f.MessageView) -> dict[str, Any]:
    """The message's ``integrations.Amplitude`` object."""
    return f.obj(f.obj(message.get("integrations")).get(INTEGRATION_KEY))


def _platform(context: dict[str, Any]) -> str | None:
    platform = f.text(f.at(context, "device.type"))
    if platform is None:
        return "Web" if f.at(context, "library.name") == "analytics.js" else None
    lowered = platform.lower()
    return {"ios": "iOS", "android": "Android"}.get(lowered, platform)


def _session_id(value: object) -> int | None:
    """Epoch milliseconds (a number, or digits in a string, are taken as they are, as Segment
    does); an ISO-8601 time is converted; anything else is left out."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value:
        if value.isdigit():
            return int(value)
        try:
            return f.millis(value)
        except (ValueError, OverflowError):
            return None
    return None


def _track(message: f.MessageView, base: dict[str, Any]) -> dict[str, Any]:
    properties = f.properties(message)
    event = {**base, "event_type": message.get("event")}
    if properties:
        event["event_properties"] = properties
    if f.number(properties.get("revenue")) is not None:  # Segment's cloud-mode revenue fields
        for key, read in REVENUE_FIELDS:
            f.put(event, key, read(properties.get(key)))
    groups = _settings(message).get("groups")  # event-level groups
    if isinstance(groups, dict):
        event["groups"] = groups
    return event


def _purchase(message: f.MessageView, base: dict[str, Any],
              options: AmplitudeOptions) -> list[dict[str, Any]]:
    """Segment's Log Purchase (its preset for ``Order Completed``): the order's event with its
    revenue, then one ``Product Purchased`` event per product, the product as its
    properties; with ``track_revenue_per_product`` the revenue goes on each product instead."""
    properties = f.properties(message)
    listed = properties.get("products")
    products = [p for p in listed if isinstance(p, dict)] if isinstance(listed, list) else []
    order = {**base, "event_type": message.get("event")}
    if properties:
        order["event_properties"] = properties
    groups = _settings(message).get("groups")
    if isinstance(groups, dict):
        order["groups"] = groups
    per_product = options.track_revenue_per_product and bool(products)
    if not per_product:
        order.update(_revenue(properties))
    events = [order]
    for product in products:
        event = {**base, "event_type": PRODUCT_EVENT, "event_properties": product}
        if isinstance(groups, dict):
            event["groups"] = groups
        if "insert_id" in base:
            event["insert_id"] = f"{base['insert_id']}-{len(events) + 1}"
        if per_product:
            event.update(_revenue(product))
        events.append(event)
    return events


def _revenue(source: dict[str, Any]) -> dict[str, Any]:
    """Log Purchase's revenue fields: ``price * quantity`` when both are numbers, else
    ``revenue``; none when that is missing or zero; ``revenueType`` defaults to Purchase."""
    price, quantity = f.number(source.get("price")), f.number(source.get("quantity"))
    if price is not None and quantity is not None:
        revenue: float | int | None = price * quantity
    else:
        revenue = f.number(source.get("revenue"))
    if not revenue:
        return {}
    fields: dict[str, Any] = {"revenue": revenue,
                              "revenueType": f.text(source.get("revenueType")) or "Purchase"}
    f.put(fields, "quantity", round(quantity) if quantity is not None else None)
    f.put(fields, "price", price)
    f.put(fields, "productId", f.text(source.get("productId")))
    return fields


def _page(message: f.MessageView, base: dict[str, Any], options: AmplitudeOptions,
          noun: str) -> list[dict[str, Any]]:
    properties = f.properties(message)
    name = f.text(message.get("name")) or f.text(properties.get("name"))
    category = f.text(message.get("category")) or f.text(properties.get("category"))
    f.put(properties, "name", name)
    f.put(properties, "category", category)
    full_name = f"{category} {name}" if name and category else name
    names: list[tuple[str, str]] = []
    if "all" in options.page_events:
        names.append(("all", f"Loaded a {noun}"))
    if category and "categorized" in options.page_events:
        names.append(("categorized", f"Viewed {category} {noun}"))
    if full_name and "named" in options.page_events:
        names.append(("named", f"Viewed {full_name} {noun}"))
    events = []
    for index, (which, event_type) in enumerate(names):
        event = {**base, "event_type": event_type}
        if properties:
            event["event_properties"] = properties
        events.append(_nth(event, index, which))
    return events


def _identify(message: f.MessageView, base: dict[str, Any], options: AmplitudeOptions) -> dict[str, Any]:
    operations: dict[str, dict[str, Any]] = {}
    for key, value in f.traits(message).items():
        if key in options.traits_to_increment:
            operations.setdefault("$add", {})[key] = value
        elif key in options.traits_to_set_once:
            operations.setdefault("$setOnce", {})[key] = value
        else:
            operations.setdefault("$set", {})[key] = value
    event = {**base, "event_type": "$identify", "user_properties": operations}
    groups = _settings(message).get("groups")  # Segment's legacy group assignment
    if isinstance(groups, dict):
        event["groups"] = groups
    return event


def _group(message: f.MessageView, base: dict[str, Any], options: AmplitudeOptions) -> list[dict[str, Any]]:
    """The user joins the group (an ``$identify`` with ``groups``, as Amplitude's setGroup does);
    the group's traits become its properties (a ``$groupidentify``)."""
    traits = f.traits(message)
    group_type = traits.get(options.group_type_trait) if options.group_type_trait else None
    group_value = traits.get(options.group_value_trait) if options.group_value_trait else None
    if not (isinstance(group_type, str) and group_type and f.ident(group_value)):
        group_type, group_value = LEGACY_GROUP_TYPE, f.ident(message.get("groupId"))
    groups = {group_type: group_value}
    events = [{**base, "event_type": "$identify", "groups": groups,
               "user_properties": {"$set": dict(groups)}}]
    if traits:
        events.append(_nth({**base, "event_type": "$groupidentify", "groups": groups,
                            "group_properties": {"$set": traits}}, 1, "group"))
    return events


def _nth(event: dict[str, Any], index: int, which: str) -> dict[str, Any]:
    """The first event of a message keeps the messageId as insert_id; later ones add a suffix."""
    if index and "insert_id" in event:
        event["insert_id"] = f"{event['insert_id']}:{which}"
    return event


def classify(answer: Answer) -> Decision:
    """Amplitude's answer in the relay's terms: a 400 that refuses the API key pauses (a
    wrong key must not dead-letter the backlog); everything else as for any HTTP upstream."""
    if answer.status == 400:
        try:
            body = msgspec.json.decode(answer.body)
        except msgspec.DecodeError:
            body = None
        if isinstance(body, dict) and (body.get("error") == "Invalid API key"
                                       or body.get("missing_field") == "api_key"):
            return Decision(Action.PAUSE)
    return retry.classify(answer)


def throttled(answer: Answer, throttle_wait: float) -> Answer:
    """A 429 without ``Retry-After`` waits ``throttle_wait`` seconds."""
    if answer.status == 429 and answer.retry_after is None:
        return replace(answer, retry_after=throttle_wait)
    return answer


# --- the sink ---------------------------------------------------------------------------------


class AmplitudeSink(HttpSink):
    def __init__(self, config: DestinationConfig) -> None:
        self.config = config
        self.options = opts.parse(config.options, AmplitudeOptions)
        endpoint = opts.http_url(config.endpoint or DEFAULT_ENDPOINT, "endpoint")
        # events one message can become (an order with products more: see ``send``)
        fan_out = max(2, len(self.options.page_events))
        if config.max_events * fan_out > MAX_EVENTS_PER_REQUEST:
            raise ValueError(
                f"`max_events` is {config.max_events}, but Amplitude takes at most "
                f"{MAX_EVENTS_PER_REQUEST} events a request and one message can become {fan_out}: "
                f"use at most {MAX_EVENTS_PER_REQUEST // fan_out}"
            )
        if config.max_bytes > MAX_REQUEST_BYTES:
            raise ValueError(f"`max_bytes` is {config.max_bytes}; Amplitude takes at most "
                             f"{MAX_REQUEST_BYTES} bytes a request")
        self._http = HttpClient(config, endpoint.rstrip("/") + PATH)
        self._head = b'{"api_key":' + _encode(self.options.api_key) + b',"events":['
        request_options = b""
        if self.options.min_id_length is not None:
            request_options = b',"options":' + _encode({"min_id_length": self.options.min_id_length})
        self._tail = b"]" + request_options + b"}"

    def __repr__(self) -> str:
        return f"AmplitudeSink({self.config.name!r}, {self._http.shown_url!r})"

    def prepare(self, event: Stored) -> Outgoing | None:
        events = to_amplitude(_decode(event.body), self.options)
        if not events:
            return None
        return Outgoing(event, b",".join(_encode(e) for e in events), "", len(events))

    async def send(self, batch: Sequence[Outgoing]) -> Answer:
        events = sum(o.count for o in batch)
        if events > MAX_EVENTS_PER_REQUEST:  # an order's products: split before Amplitude refuses it
            return Answer(413, f"{events} Amplitude events; a request takes at most {MAX_EVENTS_PER_REQUEST}")
        body = self._head + b",".join(o.data for o in batch) + self._tail
        return throttled(await self._http.request(body), self.options.throttle_wait)

    def classify(self, answer: Answer) -> Decision:
        return classify(answer)
