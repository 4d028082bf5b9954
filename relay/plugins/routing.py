"""Which destinations get a message: ``integrations`` and consent, as pure functions."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

SEGMENT_TYPE = "segment"
ALL = "All"


def integrations_allow(destination: str, destination_type: str, message: dict[str, Any]) -> bool:
    """False when ``integrations[destination]`` is false, or ``All`` is false and the
    destination has no key of its own. A ``segment`` destination always gets the message:
    the upstream reads ``integrations`` itself, as Segment's own plugin lets it."""
    if destination_type == SEGMENT_TYPE:
        return True
    integrations = message.get("integrations")
    if not isinstance(integrations, dict) or not integrations:
        return True
    if destination in integrations:
        return integrations[destination] is not False
    return integrations.get(ALL, True) is not False


def category_preferences(message: dict[str, Any]) -> dict[str, Any] | None:
    """``context.consent.categoryPreferences``, or None when the message states no consent."""
    context = message.get("context")
    if not isinstance(context, dict):
        return None
    consent = context.get("consent")
    if not isinstance(consent, dict):
        return None
    preferences = consent.get("categoryPreferences")
    return preferences if isinstance(preferences, dict) else None


def consent_allows(categories: Collection[str], message: dict[str, Any]) -> bool:
    """A destination mapped to ``categories`` gets the message only when every one of them is
    true. No consent object: no enforcement. An empty preferences object: every category is
    false. A destination mapped to no category always gets it."""
    if not categories:
        return True
    preferences = category_preferences(message)
    if preferences is None:
        return True
    for category in categories:  # a loop, not all(): this runs for every copy of every event
        if preferences.get(category) is not True:
            return False
    return True
