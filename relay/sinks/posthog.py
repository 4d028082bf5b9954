"""The ``posthog`` type: PostHog's batch capture API (``POST /batch/``).

Body ``{"api_key": ..., "batch": [{"event", "distinct_id", "properties", "timestamp",
"uuid"}, ...]}``, under 20 MB a request (no limit on the number of events). Segment calls
become PostHog's own event types as PostHog's Segment destination documents them
(``$pageview``, ``$screen``, ``$identify``, ``$create_alias``; a group call becomes
``$groupidentify``, see ``to_posthog``). ``timestamp`` is the relay's skew-corrected time and
no ``sent_at`` is sent, so PostHog does not correct it a second time. ``uuid`` is the
messageId when that is a UUID, else a UUID derived from it, so a retried batch carries the
same ids. PostHog answers 200 ``{"status": 1}``, 400 for a request it cannot take
(the whole request; the forwarder bisects), 401 for a bad key, 413 over the size limit,
429 when rate limited, 503 when it should be retried.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Annotated, Any

import msgspec

from relay.config import DestinationConfig
from relay.forward.retry import Answer
from relay.sinks import Outgoing
from relay.sinks import fields as f
from relay.sinks import options as opts
from relay.sinks.http import HttpClient, HttpSink
from relay.types import Stored

DEFAULT_ENDPOINT = "https://us.i.posthog.com"
PATH = "/batch/"
MAX_REQUEST_BYTES = 20_000_000
# uuid5 namespace for messageIds that are not UUIDs themselves (fixed: retries must agree).
MESSAGE_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "relay:segment-message-id")
# context -> PostHog's own property names (those posthog-js and PostHog's SDKs set).
CONTEXT_PROPERTIES = (
    ("$ip", "ip"),
    ("$current_url", "page.url"),
    ("$pathname", "page.path"),
    ("$referrer", "page.referrer"),
    ("$os", "os.name"),
    ("$os_version", "os.version"),
    ("$device_id", "device.id"),
    ("$device_type", "device.type"),
    ("$device_manufacturer", "device.manufacturer"),
    ("$device_model", "device.model"),
    ("$device_name", "device.name"),
    ("$app_name", "app.name"),
    ("$app_version", "app.version"),
    ("$app_build", "app.build"),
    ("$app_namespace", "app.namespace"),
    ("$screen_height", "screen.height"),
    ("$screen_width", "screen.width"),
    ("$screen_density", "screen.density"),
    ("$locale", "locale"),
    ("$timezone", "timezone"),
    ("$raw_user_agent", "userAgent"),
    ("$lib", "library.name"),
    ("$lib_version", "library.version"),
    ("utm_source", "campaign.source"),
    ("utm_medium", "campaign.medium"),
    ("utm_campaign", "campaign.name"),
    ("utm_term", "campaign.term"),
    ("utm_content", "campaign.content"),
)
_decode = msgspec.json.Decoder(dict[str, Any]).decode
_encode = msgspec.json.Encoder().encode


class PostHogOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    api_key: Annotated[str, msgspec.Meta(min_length=1)]  # the project API key (phc_...)
    group_type: Annotated[str, msgspec.Meta(min_length=1)] = "company"  # for group calls, context.groupId

    def __repr__(self) -> str:
        return f"PostHogOptions(api_key=***, group_type={self.group_type!r})"


# --- the mapping (pure) -----------------------------------------------------------------------


def to_posthog(message: f.MessageView, options: PostHogOptions) -> dict[str, Any]:
    """The PostHog event for one Segment message."""
    kind = message.get("type")
    distinct_id = f.ident(message.get("userId")) or f.ident(message.get("anonymousId"))
    props = _context_properties(message, options)
    if kind == "track":
        name: Any = message.get("event")
        props.update(f.properties(message))
    elif kind == "page":
        name = "$pageview"
        props.update(_page_properties(message))
    elif kind == "screen":
        name = "$screen"
        own = f.properties(message)
        f.put(props, "$screen_name", f.text(message.get("name")) or f.text(own.get("name")))
        props.update(own)
    elif kind == "identify":
        name = "$identify"
        props["$set"] = f.traits(message)
        anonymous_id = f.ident(message.get("anonymousId"))
        if f.ident(message.get("userId")) and anonymous_id and anonymous_id != distinct_id:
            props["$anon_distinct_id"] = anonymous_id  # merges the anonymous person into this one
    elif kind == "group":
        name = "$groupidentify"
        key = f.ident(message.get("groupId"))
        props.update({"$group_type": options.group_type, "$group_key": key,
                      "$group_set": f.traits(message), "$groups": {options.group_type: key}})
    elif kind == "alias":
        name = "$create_alias"
        distinct_id = f.ident(message.get("previousId"))
        props["alias"] = f.ident(message.get("userId"))
    else:
        raise ValueError(f"unknown message type {kind!r}")
    event: dict[str, Any] = {"event": name, "distinct_id": distinct_id, "properties": props}
    f.put(event, "timestamp", f.text(message.get("timestamp")))
    f.put(event, "uuid", event_uuid(message.get("messageId")))
    return event


def _context_properties(message: f.MessageView, options: PostHogOptions) -> dict[str, Any]:
    context = f.obj(message.get("context"))
    props: dict[str, Any] = {}
    for name, path in CONTEXT_PROPERTIES:
        value = f.at(context, path)
        if value is not None and value != "":
            props[name] = value
    f.put(props, "$host", f.host(props.get("$current_url")))
    f.put(props, "$referring_domain", f.host(props.get("$referrer")))
    group_id = f.ident(context.get("groupId"))
    if group_id:
        props["$groups"] = {options.group_type: group_id}
    return props


def _page_properties(message: f.MessageView) -> dict[str, Any]:
    """A page's own url, path, referrer and title (Segment's page properties) over the context's."""
    own = f.properties(message)
    props: dict[str, Any] = {}
    f.put(props, "$current_url", f.text(own.get("url")))
    f.put(props, "$host", f.host(own.get("url")))
    f.put(props, "$pathname", f.text(own.get("path")))
    f.put(props, "$referrer", f.text(own.get("referrer")))
    f.put(props, "$referring_domain", f.host(own.get("referrer")))
    f.put(props, "title", f.text(own.get("title")))
    f.put(props, "name", f.text(message.get("name")))
    f.put(props, "category", f.text(message.get("category")))
    props.update(own)
    return props


def event_uuid(message_id: object) -> str | None:
    """The messageId as a canonical UUID, or a UUID derived from it (the same every time)."""
    text = f.text(message_id)
    if text is None:
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return str(uuid.uuid5(MESSAGE_ID_NAMESPACE, text))


# --- the sink ---------------------------------------------------------------------------------


class PostHogSink(HttpSink):
    def __init__(self, config: DestinationConfig) -> None:
        self.config = config
        self.options = opts.parse(config.options, PostHogOptions)
        endpoint = opts.http_url(config.endpoint or DEFAULT_ENDPOINT, "endpoint")
        if config.max_bytes > MAX_REQUEST_BYTES:
            raise ValueError(f"`max_bytes` is {config.max_bytes}; PostHog takes requests under "
                             f"{MAX_REQUEST_BYTES} bytes")
        self._http = HttpClient(config, endpoint.rstrip("/") + PATH)
        self._head = b'{"api_key":' + _encode(self.options.api_key) + b',"batch":['

    def __repr__(self) -> str:
        return f"PostHogSink({self.config.name!r}, {self._http.shown_url!r})"

    def prepare(self, event: Stored) -> Outgoing:
        return Outgoing(event, _encode(to_posthog(_decode(event.body), self.options)), "")

    async def send(self, batch: Sequence[Outgoing]) -> Answer:
        return await self._http.request(self._head + b",".join(o.data for o in batch) + b"]}")
