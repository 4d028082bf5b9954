"""The FQL subset: what each expression matches, and where a bad one is reported."""

from __future__ import annotations

import pytest

from relay.plugins.fql import FQLError, compile_condition, equal

MESSAGE = {
    "type": "track",
    "event": "Order Completed",
    "userId": "u-1",
    "properties": {"total": 12.5, "count": 3, "coupon": None, "vip": True, "tags": ["sale", "new"],
                   "order id": "A-1", "items": [{"sku": "x1"}]},
    "context": {"library": {"name": "analytics.js"}},
}


@pytest.mark.parametrize(("expression", "expected"), [
    ('type = "track"', True),
    ("type = 'track'", True),
    ('type == "track"', True),
    ('type != "track"', False),
    ('event = "Order Completed" and properties.total > 10', True),
    ('event = "Order Completed" and properties.total > 20', False),
    ('type = "identify" or properties.count >= 3', True),
    ("properties.count < 3", False),
    ("properties.count <= 3", True),
    ("properties.total > 12", True),
    ("properties.total >= 12.5", True),
    ("properties.count = 3.0", True),
    ("properties.count > -1", True),
    ("properties.total > 1e1", True),
    ('properties.total > "10"', False),  # a number and a string are not ordered
    ('"b" > "a"', True),
    ("not properties.count = 3", False),
    ('!(type = "identify")', True),
    ('not not type = "track"', True),
    ("properties.vip", True),
    ("properties.vip = true", True),
    ("properties.vip = 1", False),  # true is not 1
    ("properties.count = true", False),
    ("properties.coupon = null", True),
    ("properties.missing = null", True),
    ("properties.missing != null", False),
    ("properties.missing.deeper = null", True),
    ("properties.missing > 0", False),
    ('contains(event, "Order")', True),
    ('contains(event, "order")', False),
    ('contains(properties.tags, "sale")', True),
    ('contains(properties.tags, "old")', False),
    ('contains(properties.total, "1")', False),
    ('match(event, "Order *")', True),
    ('match(event, "Order?Completed")', True),
    ('match(event, "*Created")', False),
    ('match(properties.total, "*")', False),
    ('match(context.library.name, "analytics*")', True),
    ('properties.order\\ id = "A-1"', True),
    ('properties.items.0.sku = "x1"', True),
    ('(type = "identify" or type = "track") and not contains(event, "Test")', True),
    ('type = "page" or type = "screen" and event = "Order Completed"', False),  # and binds tighter
    ('TYPE = "track"', False),  # paths are case-sensitive
    ('type = "track" AND userId = "u-1"', True),  # keywords are not
])
def test_expression_matches_message_as_fql_defines(expression: str, expected: bool) -> None:
    assert compile_condition(expression).matches(MESSAGE) is expected


@pytest.mark.parametrize(("expression", "error"), [
    ("", "empty"),
    ("type =", "ends where a value"),
    ('type = "track', "unterminated string at position 7"),
    ("type = = 1", "unexpected `=` at position 7"),
    ('type = "a" "b"', 'unexpected `"b"` at position 11'),
    ("(type = 1", "ends where `)` was expected"),
    ("type = 1)", "unexpected `)` at position 8"),
    ("type ~ 1", "unexpected `~` at position 5"),
    ("lower(type) = 1", "unknown function `lower`"),
    ("contains(event)", "takes 2 arguments, got 1"),
    ("match(event, event)", "string pattern"),
    ("and", "unexpected `and`"),
    ("a = 1 = 2", "unexpected `=`"),
    ("(" * 100 + "true" + ")" * 100, "nests deeper"),
    ("x" * 5000, "longer than"),
])
def test_bad_expression_is_refused_naming_the_place(expression: str, error: str) -> None:
    with pytest.raises(FQLError) as caught:
        compile_condition(expression)
    assert error in str(caught.value)


def test_expression_is_parsed_never_evaluated_as_python() -> None:
    with pytest.raises(FQLError):
        compile_condition("__import__('os').system('true')")


@pytest.mark.parametrize(("a", "b", "expected"), [
    (1, 1.0, True), (True, 1, False), (False, 0, False), (None, None, True), ("1", 1, False),
    ([1], [1], True), ({"a": 1}, {"a": 1}, True), (True, True, True),
])
def test_equality_follows_json_not_python(a: object, b: object, expected: bool) -> None:
    assert equal(a, b) is expected


def test_condition_on_non_object_message_is_false() -> None:
    assert compile_condition('type = "track"').matches([]) is False
