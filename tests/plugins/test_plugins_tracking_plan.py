"""tracking_plan: unplanned events and properties, schema violations, each action."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from relay.plugins import Block
from relay.plugins.builtin.tracking_plan import VIOLATION_EVENT, PlanOptions, TrackingPlan

ORDER = {
    "type": "object",
    "properties": {
        "properties": {
            "type": "object",
            "properties": {"order_id": {"type": "string"}, "total": {"type": "number", "minimum": 0},
                           "currency": {"enum": ["EUR", "USD"]}},
            "required": ["order_id"],
        },
    },
}
IDENTIFY = {"type": "object", "properties": {"traits": {"type": "object",
                                                        "properties": {"email": {"type": "string"}}}}}
COMMON = {"type": "object", "required": ["userId"]}


async def _plan(**options: Any) -> TrackingPlan:
    options.setdefault("events", {"Order Completed": ORDER})
    plugin = TrackingPlan()
    await plugin.load(msgspec.convert(options, PlanOptions, strict=True))
    return plugin


def _order(**properties: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Order Completed", "userId": "u1", "properties": properties}


async def test_valid_message_passes_unchanged() -> None:
    plugin = await _plan(violations="block", unplanned_events="block", unplanned_properties="omit")
    message = _order(order_id="o1", total=5, currency="EUR")
    assert await plugin.event(message) == _order(order_id="o1", total=5, currency="EUR")


@pytest.mark.parametrize(("properties", "violation"), [
    ({"total": 5}, {"type": "Required", "field": "properties.order_id",
                    "description": "`properties.order_id` is required"}),
    ({"order_id": 7}, {"type": "Invalid Type", "field": "properties.order_id",
                       "description": "properties.order_id must be string"}),
    ({"order_id": "o", "total": -1}, {"type": "Invalid Value", "field": "properties.total",
                                       "description": "properties.total must be bigger than or equal to 0"}),
    ({"order_id": "o", "currency": "GBP"},
     {"type": "Invalid Value", "field": "properties.currency",
      "description": "properties.currency must be one of ['EUR', 'USD']"}),
])
async def test_allow_forwards_and_records_the_violation(properties: dict[str, Any],
                                                        violation: dict[str, str]) -> None:
    plugin = await _plan(violations="allow")
    out = await plugin.event(_order(**properties))
    assert isinstance(out, dict)
    assert out["properties"] == properties
    assert out["context"]["protocols"] == {"violations": [violation]}


async def test_block_rejects_with_every_violation_in_the_reason() -> None:
    plugin = await _plan(violations="block")
    with pytest.raises(Block) as blocked:
        await plugin.event(_order(total="lots", currency="GBP"))
    reason = blocked.value.reason
    assert reason.startswith("violates the tracking plan: ")
    for part in ("Required `properties.order_id`", "Invalid Type `properties.total`",
                 "Invalid Value `properties.currency`"):
        assert part in reason
    assert blocked.value.emit == []


async def test_omit_drops_invalid_properties_and_records_them() -> None:
    plugin = await _plan(violations="omit")
    out = await plugin.event(_order(order_id="o1", total="lots", currency="GBP", note="hi"))
    assert isinstance(out, dict)
    assert out["properties"] == {"order_id": "o1", "note": "hi"}
    protocols = out["context"]["protocols"]
    assert sorted(protocols["omitted_on_violation"]) == ["properties.currency", "properties.total"]
    assert sorted(v["field"] for v in protocols["violations"]) == ["properties.currency", "properties.total"]


async def test_omit_cannot_fix_a_missing_required_property_and_forwards_it() -> None:
    plugin = await _plan(violations="omit")
    out = await plugin.event(_order(total=1))
    assert isinstance(out, dict)
    assert out["properties"] == {"total": 1}
    assert "omitted_on_violation" not in out["context"]["protocols"]
    assert out["context"]["protocols"]["violations"][0]["type"] == "Required"


async def test_unplanned_properties_are_omitted_and_recorded() -> None:
    plugin = await _plan(unplanned_properties="omit")
    message = _order(order_id="o1", coupon="X", referrer="y")
    message["context"] = {"protocols": {"sourceId": "s"}}
    out = await plugin.event(message)
    assert isinstance(out, dict)
    assert out["properties"] == {"order_id": "o1"}
    assert out["context"]["protocols"] == {"sourceId": "s",
                                           "omitted": ["properties.coupon", "properties.referrer"]}


async def test_unplanned_traits_of_identify_are_omitted() -> None:
    plugin = await _plan(identify=IDENTIFY, unplanned_properties="omit")
    out = await plugin.event({"type": "identify", "userId": "u", "traits": {"email": "e", "age": 3}})
    assert isinstance(out, dict)
    assert out["traits"] == {"email": "e"}


async def test_additional_properties_false_is_an_unplanned_property_violation() -> None:
    strict = {"type": "object", "properties": {"properties": {
        "type": "object", "properties": {"a": {}}, "additionalProperties": False}}}
    plugin = await _plan(events={"E": strict}, violations="omit")
    out = await plugin.event({"type": "track", "event": "E", "userId": "u", "properties": {"a": 1, "b": 2}})
    assert isinstance(out, dict)
    assert out["properties"] == {"a": 1}
    assert out["context"]["protocols"]["violations"] == [
        {"type": "Unplanned Property", "field": "properties.b",
         "description": "`properties.b` is not in the plan"}
    ]


@pytest.mark.parametrize(("action", "blocked"), [("allow", False), ("block", True)])
async def test_unplanned_event_is_allowed_or_blocked(action: str, blocked: bool) -> None:
    plugin = await _plan(unplanned_events=action)
    message = {"type": "track", "event": "Made Up", "userId": "u"}
    if blocked:
        with pytest.raises(Block, match="Unplanned Event `event`: `Made Up` is not in the tracking plan"):
            await plugin.event(message)
    else:
        out = await plugin.event(message)
        assert isinstance(out, dict)
        assert out["context"]["protocols"]["violations"][0]["type"] == "Unplanned Event"


async def test_common_schema_applies_to_every_message_type() -> None:
    plugin = await _plan(common=COMMON, violations="block")
    await plugin.event({"type": "page", "userId": "u"})
    with pytest.raises(Block, match="`userId` is required"):
        await plugin.event({"type": "page", "anonymousId": "a"})


async def test_page_and_alias_without_schemas_pass() -> None:
    plugin = await _plan(violations="block", unplanned_events="block")
    for message in ({"type": "page", "userId": "u"}, {"type": "alias", "userId": "u", "previousId": "p"}):
        assert await plugin.event(dict(message)) == message


async def test_violations_are_emitted_as_violation_generated_tracks() -> None:
    plugin = await _plan(violations="allow", emit_violations=True)
    message = _order(order_id=1)
    message.update(anonymousId="a1", timestamp="2024-01-01T00:00:00.000Z")
    out = await plugin.event(message)
    assert isinstance(out, list)
    original, violation = out
    assert original is message
    assert violation["type"] == "track" and violation["event"] == VIOLATION_EVENT
    assert violation["properties"] == {
        "eventName": "Order Completed", "eventType": "track", "violationType": "Invalid Type",
        "violationField": "properties.order_id", "violationDescription": "properties.order_id must be string",
    }
    assert (violation["userId"], violation["anonymousId"]) == ("u1", "a1")
    assert violation["timestamp"] == "2024-01-01T00:00:00.000Z"
    assert violation["messageId"] and violation["messageId"] != message.get("messageId")


async def test_a_blocked_message_still_emits_its_violations() -> None:
    plugin = await _plan(violations="block", emit_violations=True)
    with pytest.raises(Block) as blocked:
        await plugin.event(_order())
    assert [e["properties"]["violationType"] for e in blocked.value.emit] == ["Required"]


async def test_plan_is_read_from_a_json_file(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"events": {"Order Completed": ORDER}, "common": COMMON}))
    plugin = await _plan(plan=str(plan), events={}, violations="block")
    await plugin.event(_order(order_id="o"))
    with pytest.raises(Block):
        await plugin.event(_order())


async def test_a_plan_file_under_the_home_folder_may_be_named_with_a_tilde(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "plan.json").write_text(json.dumps({"events": {"Order Completed": ORDER}}))
    plugin = await _plan(plan="~/plan.json", events={}, violations="block")
    await plugin.event(_order(order_id="o"))
    with pytest.raises(Block):
        await plugin.event(_order())


@pytest.mark.parametrize(("options", "error"), [
    ({"events": {"E": {"type": "nope"}}}, "`events.E` is not a valid JSON Schema"),
    ({"events": {"E": {"$ref": "http://example.invalid/schema.json"}}}, "remote $ref"),
    ({"common": {"properties": {"a": {"type": "object", "required": ["x"], "properties": {},
                                      "additionalProperties": False}}}}, "`common` is not a valid"),
    ({"plan": "/nonexistent/plan.json"}, "cannot read the plan"),
    ({"violations": "ignore"}, "Invalid enum value 'ignore' - at `$.violations`"),
    ({"events": {"E": "not a schema"}}, "Expected `object`, got `str` - at `$.events[...]`"),
])
def test_bad_plan_is_refused_when_the_options_are_read(options: dict[str, Any], error: str) -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.convert(options, PlanOptions, strict=True)
    assert error in str(caught.value)
