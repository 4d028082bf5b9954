"""``tracking_plan``: validate messages against a tracking plan, like Segment Protocols.

The plan is JSON Schema (draft-07 unless a schema's ``$schema`` says otherwise) for whole
messages: one per track event name (``events``), one for identify and one for group calls,
and a ``common`` schema every message must meet. Schemas are compiled once; a remote
``$ref`` is refused. What happens to a message:

- a track event the plan does not name: ``unplanned_events`` = allow | block;
- a property (trait, for identify and group) the event's schema does not list under
  ``properties``: ``unplanned_properties`` = allow | omit;
- a schema violation: ``violations`` = allow | omit (drop the invalid properties) | block.

Omitted fields and violations are recorded in ``context.protocols``; a blocked message goes
to the dead-letter table with its violations; with ``emit_violations`` each violation also
becomes a "Violation Generated" track event that goes on in the pipeline.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import fastjsonschema
import msgspec

from relay import __version__
from relay.plugins import Block, Message

MAX_VIOLATIONS = 20
VIOLATION_EVENT = "Violation Generated"
SECTIONS = {"track": "properties", "page": "properties", "screen": "properties",
            "identify": "traits", "group": "traits"}
VIOLATION_TYPES = {"required": "Required", "type": "Invalid Type",
                   "additionalProperties": "Unplanned Property"}

Validator = Callable[[Any], Any]


class PlanOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    plan: str = ""  # a JSON file with any of: common, events, identify, group
    common: dict[str, Any] | None = None
    events: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    identify: dict[str, Any] | None = None
    group: dict[str, Any] | None = None
    unplanned_events: Literal["allow", "block"] = "allow"
    unplanned_properties: Literal["allow", "omit"] = "allow"
    violations: Literal["allow", "omit", "block"] = "allow"
    emit_violations: bool = False

    def __post_init__(self) -> None:
        build_plan(self)  # a bad plan fails here, when the configuration is read


@dataclass(frozen=True, slots=True)
class Schema:
    validate: Validator
    planned: frozenset[str] | None  # the keys its `properties`/`traits` lists; None: not listed


@dataclass(frozen=True, slots=True)
class Plan:
    common: Schema | None
    events: dict[str, Schema]
    identify: Schema | None
    group: Schema | None


@dataclass(frozen=True, slots=True)
class Violation:
    type: str  # Unplanned Event | Unplanned Property | Required | Invalid Type | Invalid Value
    field: str
    description: str

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "field": self.field, "description": self.description}


def build_plan(options: PlanOptions) -> Plan:
    """Compile every schema; raise ValueError naming the key of the one that is wrong."""
    sources: dict[str, Any] = {"common": options.common, "events": options.events,
                               "identify": options.identify, "group": options.group}
    where = "$"
    if options.plan:
        where = "the plan file"
        try:
            loaded = json.loads(Path(options.plan).expanduser().read_text(encoding="utf-8"))
        except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: no home for ~
            raise ValueError(f"cannot read the plan {options.plan}: {exc} - at `$.plan`") from None
        if not isinstance(loaded, dict) or set(loaded) - set(sources):
            raise ValueError(f"the plan {options.plan} must be an object with any of "
                             f"{', '.join(sources)} - at `$.plan`")
        sources.update({k: v for k, v in loaded.items() if v is not None})
    events = sources["events"]
    if not isinstance(events, dict):
        raise ValueError(f"`events` must map event names to schemas - in {where}")
    return Plan(
        common=_schema(sources["common"], "common", where),
        events={name: s for name, schema in events.items()
                if (s := _schema(schema, f"events.{name}", where, "properties")) is not None},
        identify=_schema(sources["identify"], "identify", where, "traits"),
        group=_schema(sources["group"], "group", where, "traits"),
    )


def _schema(schema: Any, key: str, where: str, section: str = "") -> Schema | None:
    if schema is None:
        return None
    if not isinstance(schema, dict):
        raise ValueError(f"`{key}` must be a JSON Schema object - in {where}")
    try:
        validate = _compile(json.dumps(schema, sort_keys=True))
    except (fastjsonschema.JsonSchemaDefinitionException, RemoteRef) as exc:
        raise ValueError(f"`{key}` is not a valid JSON Schema: {exc} - in {where}") from None
    described = schema.get("properties", {}).get(section) if section else None
    keys = described.get("properties") if isinstance(described, dict) else None
    return Schema(validate, frozenset(keys) if isinstance(keys, dict) else None)


class RemoteRef(ValueError):
    pass


def _refuse(uri: str) -> Any:
    raise RemoteRef(f"remote $ref {uri!r} is not fetched; inline it")


@functools.lru_cache(maxsize=4096)
def _compile(schema_json: str) -> Validator:
    """Compile once per distinct schema (options are decoded at check time and at load)."""
    refuse = {scheme: _refuse for scheme in ("http", "https", "file", "ftp")}
    validator: Validator = fastjsonschema.compile(
        json.loads(schema_json), handlers=refuse, use_default=False, fast_fail=False
    )
    return validator


def check(validate: Validator, message: Message) -> list[tuple[Violation, str | None]]:
    """The message's violations of one schema, each with the property it could be fixed by
    omitting ("properties.total"), or None when omitting nothing fixes it."""
    try:
        validate(message)
    except fastjsonschema.JsonSchemaValuesException as exc:
        errors = exc.errors
    except fastjsonschema.JsonSchemaValueException as exc:
        errors = [exc]
    else:
        return []
    found: list[tuple[Violation, str | None]] = []
    for error in errors:
        field = (error.name or "data").removeprefix("data").lstrip(".")
        kind = VIOLATION_TYPES.get(error.rule or "", "Invalid Value")
        if error.rule == "required" and isinstance(error.value, dict):
            for missing in error.rule_definition or ():
                if missing not in error.value:
                    name = f"{field}.{missing}" if field else str(missing)
                    found.append((Violation(kind, name, f"`{name}` is required"), None))
        elif error.rule == "additionalProperties" and isinstance(error.value, dict):
            listed = (error.definition or {}).get("properties", {})
            for extra in [k for k in error.value if k not in listed]:
                name = f"{field}.{extra}" if field else extra
                found.append((Violation(kind, name, f"`{name}` is not in the plan"), _omittable(name)))
        else:
            found.append((Violation(kind, field, error.message.replace("data.", "", 1)), _omittable(field)))
    return found


def _omittable(field: str) -> str | None:
    """The field to omit to fix a violation at ``field`` (an array: the whole array), when it
    lies inside ``properties``, ``traits`` or ``context.traits``."""
    parts = field.partition("[")[0].split(".")
    depth = 3 if parts[:2] == ["context", "traits"] else 2 if parts[0] in ("properties", "traits") else 0
    return ".".join(parts) if depth and len(parts) >= depth else None


def _delete(message: Message, dotted: str) -> None:
    *parents, key = dotted.split(".")
    node: Any = message
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(key, None)


def violation_event(message: Message, violation: Violation) -> Message:
    event: Message = {
        "type": "track",
        "event": VIOLATION_EVENT,
        "messageId": str(uuid.uuid4()),
        "properties": {
            "eventName": message.get("event") or message.get("name") or message.get("type"),
            "eventType": message.get("type"),
            "violationType": violation.type,
            "violationField": violation.field,
            "violationDescription": violation.description,
        },
    }
    for key in ("userId", "anonymousId", "timestamp", "receivedAt"):
        if key in message:
            event[key] = message[key]
    return event


class TrackingPlan:
    name = "tracking_plan"
    type = "before"
    version = __version__
    Options = PlanOptions

    def __init__(self) -> None:
        self.options = PlanOptions()
        self.plan = Plan(None, {}, None, None)

    async def load(self, options: PlanOptions) -> None:
        self.options = options
        self.plan = build_plan(options)

    def _schema_for(self, message: Message) -> Schema | None:
        kind = message.get("type")
        if kind == "track":
            name = message.get("event")
            return self.plan.events.get(name) if isinstance(name, str) else None
        if kind == "identify":
            return self.plan.identify
        if kind == "group":
            return self.plan.group
        return None

    async def event(self, message: Message) -> Message | list[Message]:
        # The fast path, for a message that keeps to the plan: validate only (no lists, no
        # per-violation work); anything else is checked again in full by ``_enforce``.
        schema = self._schema_for(message)
        if schema is None and message.get("type") == "track":
            return self._enforce(message, schema)  # an unplanned event
        if (schema is not None and schema.planned is not None
                and self.options.unplanned_properties == "omit"):
            fields = message.get(SECTIONS.get(message.get("type", ""), ""))
            if isinstance(fields, dict) and not fields.keys() <= schema.planned:
                return self._enforce(message, schema)
        try:
            if self.plan.common is not None:
                self.plan.common.validate(message)
            if schema is not None:
                schema.validate(message)
        except fastjsonschema.JsonSchemaException:
            return self._enforce(message, schema)
        return message

    def _enforce(self, message: Message, schema: Schema | None) -> Message | list[Message]:
        options = self.options
        violations: list[Violation] = []
        omitted: list[str] = []
        invalid: list[str] = []
        if message.get("type") == "track" and schema is None:
            name = message.get("event")
            violations.append(Violation("Unplanned Event", "event", f"`{name}` is not in the tracking plan"))
            if options.unplanned_events == "block":
                raise self._block(message, violations)
        section = SECTIONS.get(message.get("type", ""), "")
        if schema is not None and schema.planned is not None and options.unplanned_properties == "omit":
            fields = message.get(section)
            if isinstance(fields, dict):
                for key in [k for k in fields if k not in schema.planned]:
                    del fields[key]
                    omitted.append(f"{section}.{key}")
        schema_violations: list[tuple[Violation, str | None]] = []
        for validator in (self.plan.common, schema):
            if validator is not None:
                schema_violations += check(validator.validate, message)
        violations += [v for v, _ in schema_violations]
        if schema_violations and options.violations == "block":
            raise self._block(message, violations)
        if schema_violations and options.violations == "omit":
            for fix in dict.fromkeys(f for _, f in schema_violations if f is not None):
                _delete(message, fix)
                invalid.append(fix)
        if omitted or invalid or violations:
            self._record(message, omitted, invalid, violations)
        if options.emit_violations and violations:
            return [message, *(violation_event(message, v) for v in violations[:MAX_VIOLATIONS])]
        return message

    def _block(self, message: Message, violations: list[Violation]) -> Block:
        described = "; ".join(f"{v.type} `{v.field}`: {v.description}" for v in violations[:MAX_VIOLATIONS])
        emit = ([violation_event(message, v) for v in violations[:MAX_VIOLATIONS]]
                if self.options.emit_violations else [])
        return Block(f"violates the tracking plan: {described}", emit)

    @staticmethod
    def _record(message: Message, omitted: list[str], invalid: list[str],
                violations: list[Violation]) -> None:
        context = message.get("context")
        if not isinstance(context, dict):
            context = message["context"] = {}
        protocols = context.get("protocols")
        if not isinstance(protocols, dict):
            protocols = context["protocols"] = {}
        if omitted:
            protocols["omitted"] = omitted
        if invalid:
            protocols["omitted_on_violation"] = invalid
        if violations:
            protocols["violations"] = [v.as_dict() for v in violations[:MAX_VIOLATIONS]]
