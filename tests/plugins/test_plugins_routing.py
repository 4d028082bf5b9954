"""Which destination gets a message: integrations and consent (docs/protocol.md)."""

from __future__ import annotations

from typing import Any

import pytest

from relay.plugins.builtin.consent import Consent, ConsentOptions
from relay.plugins.routing import consent_allows, integrations_allow


def _message(integrations: Any = None, preferences: Any = "absent",
             consent: Any = "absent") -> dict[str, Any]:
    message: dict[str, Any] = {"type": "track", "event": "E", "userId": "u"}
    if integrations is not None:
        message["integrations"] = integrations
    if consent != "absent":
        message["context"] = {"consent": consent}
    elif preferences != "absent":
        message["context"] = {"consent": {"categoryPreferences": preferences}}
    return message


@pytest.mark.parametrize(("integrations", "name", "kind", "expected"), [
    (None, "Amplitude", "webhook", True),
    ({}, "Amplitude", "webhook", True),
    ({"Amplitude": False}, "Amplitude", "webhook", False),
    ({"Amplitude": True}, "Amplitude", "webhook", True),
    ({"Amplitude": {"session_id": 1}}, "Amplitude", "webhook", True),  # settings object: on
    ({"All": False}, "Amplitude", "webhook", False),
    ({"All": False, "Amplitude": True}, "Amplitude", "webhook", True),
    ({"All": False, "Amplitude": {}}, "Amplitude", "webhook", True),
    ({"All": True, "Amplitude": False}, "Amplitude", "webhook", False),
    ({"All": False, "Mixpanel": True}, "Amplitude", "webhook", False),
    ({"amplitude": False}, "Amplitude", "webhook", True),  # names are case-sensitive
    ({"Amplitude": None}, "Amplitude", "webhook", True),
    ({"All": False}, "upstream", "segment", True),  # segment forwards; the upstream decides
    ({"upstream": False}, "upstream", "segment", True),
    ("not an object", "Amplitude", "webhook", True),
])
def test_integrations_skip_a_destination_only_when_false(integrations: Any, name: str, kind: str,
                                                          expected: bool) -> None:
    assert integrations_allow(name, kind, _message(integrations)) is expected


@pytest.mark.parametrize(("categories", "message", "expected"), [
    (["analytics"], _message(), True),  # no consent object: no enforcement
    (["analytics"], _message(consent={}), True),  # consent object without preferences
    (["analytics"], _message(preferences={}), False),  # empty preferences: every category false
    (["analytics"], _message(preferences={"analytics": True}), True),
    (["analytics"], _message(preferences={"analytics": False}), False),
    (["analytics"], _message(preferences={"analytics": "true"}), False),  # only true is consent
    (["analytics"], _message(preferences={"advertising": True}), False),
    (["analytics", "advertising"], _message(preferences={"analytics": True, "advertising": True}), True),
    (["analytics", "advertising"], _message(preferences={"analytics": True, "advertising": False}), False),
    (["analytics", "advertising"], _message(preferences={"analytics": True}), False),
    ([], _message(preferences={}), True),  # unmapped destination: always
    ([], _message(preferences={"analytics": False}), True),
])
def test_consent_needs_every_mapped_category(categories: list[str], message: dict[str, Any],
                                             expected: bool) -> None:
    assert consent_allows(categories, message) is expected


async def test_consent_plugin_maps_destinations_and_leaves_unmapped_ones_alone() -> None:
    consent = Consent()
    await consent.load(ConsentOptions(destinations={"Ads": ("advertising",), "Product": ("analytics",)}))
    message = _message(preferences={"analytics": True, "advertising": False})
    assert consent.allows("Product", message)
    assert not consent.allows("Ads", message)
    assert consent.allows("Warehouse", message)  # not mapped


async def test_consent_plugin_categories_apply_to_destinations_not_named() -> None:
    consent = Consent()
    await consent.load(ConsentOptions(destinations={"Ads": ("advertising",)}, categories=("analytics",)))
    message = _message(preferences={"analytics": False, "advertising": True})
    assert consent.allows("Ads", message)
    assert not consent.allows("Anything", message)
