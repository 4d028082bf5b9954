"""``consent``: a destination gets a message only with the user's consent for its categories.

Categories come from ``destinations`` (destination name -> categories) or, for every other
destination, from ``categories``. Enforced against ``context.consent.categoryPreferences``
with the semantics of ``relay.plugins.routing.consent_allows``. Consent is a router: listed by
a destination it decides for that destination; listed by none, for all of them.
"""

from __future__ import annotations

import msgspec

from relay import __version__
from relay.plugins import Message
from relay.plugins.routing import consent_allows


class ConsentOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    destinations: dict[str, tuple[str, ...]] = msgspec.field(default_factory=dict)
    categories: tuple[str, ...] = ()  # for every destination `destinations` does not name


class Consent:
    name = "consent"
    type = "destination"
    version = __version__
    Options = ConsentOptions

    def __init__(self) -> None:
        self._mapping: dict[str, frozenset[str]] = {}
        self._default: frozenset[str] = frozenset()

    async def load(self, options: ConsentOptions) -> None:
        self._mapping = {name: frozenset(c) for name, c in options.destinations.items()}
        self._default = frozenset(options.categories)

    def categories(self, destination: str) -> frozenset[str]:
        return self._mapping.get(destination, self._default)

    def allows(self, destination: str, message: Message) -> bool:
        return consent_allows(self.categories(destination), message)
