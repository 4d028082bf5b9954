"""rename: event names, property keys and trait keys."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from relay.plugins.builtin.rename import Rename, RenameOptions

OPTIONS = {
    "events": {"order_completed": "Order Completed"},
    "properties": {"amt": "total", "cur": "currency"},
    "traits": {"mail": "email"},
}


@pytest.mark.parametrize(("message", "expected"), [
    ({"type": "track", "event": "order_completed", "properties": {"amt": 5, "sku": "x"}},
     {"type": "track", "event": "Order Completed", "properties": {"total": 5, "sku": "x"}}),
    ({"type": "track", "event": "Other", "properties": {"cur": "EUR"}},
     {"type": "track", "event": "Other", "properties": {"currency": "EUR"}}),
    ({"type": "page", "name": "order_completed", "properties": {"amt": 1}},  # only track names
     {"type": "page", "name": "order_completed", "properties": {"total": 1}}),
    ({"type": "identify", "traits": {"mail": "a@b"}, "context": {"traits": {"mail": "a@b"}}},
     {"type": "identify", "traits": {"email": "a@b"}, "context": {"traits": {"email": "a@b"}}}),
    ({"type": "track", "event": "E", "properties": {"amt": 1, "total": 2}},  # renamed value wins
     {"type": "track", "event": "E", "properties": {"total": 1}}),
    ({"type": "track", "event": "E", "properties": "not an object"},
     {"type": "track", "event": "E", "properties": "not an object"}),
])
async def test_names_are_mapped(message: dict[str, Any], expected: dict[str, Any]) -> None:
    plugin = Rename()
    await plugin.load(msgspec.convert(OPTIONS, RenameOptions, strict=True))
    assert await plugin.event(message) == expected


def test_rename_options_must_map_strings_to_strings() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"Expected `str`, got `int` - at `\$.events\[...\]`"):
        msgspec.convert({"events": {"a": 1}}, RenameOptions, strict=True)
