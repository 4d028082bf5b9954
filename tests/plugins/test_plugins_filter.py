"""filter: condition, then sample, drop, drop_properties, allow_properties, in that order."""

from __future__ import annotations

import copy
import random
from typing import Any

import msgspec
import pytest

from relay.plugins.builtin.filter import Filter, FilterOptions, sample_point

ORDER: dict[str, Any] = {
    "type": "track", "event": "Order Completed", "userId": "u1",
    "properties": {"total": 30, "email": "a@b", "sku": "x", "coupon": "C"},
    "context": {"ip": "1.2.3.4", "page": {"url": "u"}},
}


async def _filter(seed: int = 0, **options: Any) -> Filter:
    plugin = Filter(random.Random(seed))
    await plugin.load(msgspec.convert(options, FilterOptions, strict=True))
    return plugin


@pytest.mark.parametrize(("options", "expected"), [
    ({"if": 'event = "Order Completed"', "drop": True}, None),
    ({"if": 'event = "Signed Up"', "drop": True}, ORDER),  # no match: unchanged
    ({"drop": True}, None),  # no condition: every message
    ({"if": "properties.total > 10", "drop_properties": ["properties.email", "context.ip"]},
     {**ORDER, "properties": {"total": 30, "sku": "x", "coupon": "C"}, "context": {"page": {"url": "u"}}}),
    ({"allow_properties": ["properties.sku", "properties.total"]},
     {**ORDER, "properties": {"total": 30, "sku": "x"}}),
    ({"allow_properties": ["properties.sku", "context.page"]},
     {**ORDER, "properties": {"sku": "x"}, "context": {"page": {"url": "u"}}}),
    # drop_properties first, then allow_properties
    ({"drop_properties": ["properties.sku"], "allow_properties": ["properties.sku", "properties.total"]},
     {**ORDER, "properties": {"total": 30}}),
    # drop comes before the property actions: a dropped message is just dropped
    ({"drop": True, "drop_properties": ["properties.sku"]}, None),
    ({"sample": {"percent": 0}}, None),
    ({"sample": {"percent": 1}}, ORDER),
    ({"sample": {"percent": 1}, "drop": True}, None),
])
async def test_actions_apply_to_matching_messages_in_segment_order(options: dict[str, Any],
                                                                   expected: dict[str, Any] | None) -> None:
    plugin = await _filter(**options)
    assert await plugin.event(copy.deepcopy(ORDER)) == expected


async def test_random_sample_keeps_about_the_percent() -> None:
    plugin = await _filter(sample={"percent": 0.25}, seed=7)
    kept = sum([await plugin.event({"userId": str(i)}) is not None for i in range(4000)])
    assert 850 < kept < 1150


async def test_keyed_sample_is_the_same_for_every_message_of_a_user() -> None:
    plugin = await _filter(sample={"percent": 0.5, "path": "userId"})
    other = await _filter(sample={"percent": 0.5, "path": "userId"}, seed=99)
    decisions = {}
    for i in range(400):
        user = f"user-{i}"
        first = await plugin.event({"userId": user, "n": 1}) is not None
        assert (await plugin.event({"userId": user, "n": 2}) is not None) == first
        assert (await other.event({"userId": user}) is not None) == first  # not the random source
        decisions[user] = first
    assert 150 < sum(decisions.values()) < 250


async def test_keyed_sample_falls_back_to_random_without_the_field() -> None:
    plugin = await _filter(sample={"percent": 0.5, "path": "userId"}, seed=1)
    kept = sum([await plugin.event({"anonymousId": "a"}) is not None for _ in range(1000)])
    assert 400 < kept < 600


@pytest.mark.parametrize(("value", "point"), [("user-1", sample_point("user-1")), (7, sample_point(7))])
def test_sample_point_is_stable_and_in_range(value: Any, point: float) -> None:
    assert sample_point(value) == point
    assert 0 <= point < 1


@pytest.mark.parametrize(("options", "error"), [
    ({"if": "type = "}, "- at `$.if`"),
    ({"if": "eval('x')"}, "unknown function `eval`"),
    ({"sample": {"percent": 1.5}}, "Expected `float` <= 1.0 - at `$.sample.percent`"),
    ({"sample": {"path": "userId"}}, "missing required field `percent` - at `$.sample`"),
    ({"drop_properties": ["a..b"]}, "at `$.drop_properties[0]`"),
    ({"drop": "yes"}, "Expected `bool`, got `str` - at `$.drop`"),
    ({"where": "x"}, "unknown field `where`"),
])
def test_bad_filter_options_name_the_key(options: dict[str, Any], error: str) -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.convert(options, FilterOptions, strict=True)
    assert error in str(caught.value)
