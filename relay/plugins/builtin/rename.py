"""``rename``: map track event names, property names and trait names.

Its type is ``before`` so that, listed ahead of ``tracking_plan``, legacy names are renamed
before they are validated. A renamed key replaces a key of the new name.
"""

from __future__ import annotations

from typing import Any

import msgspec

from relay import __version__
from relay.plugins import Message


class RenameOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    events: dict[str, str] = msgspec.field(default_factory=dict)  # track `event`: old -> new
    properties: dict[str, str] = msgspec.field(default_factory=dict)  # keys of `properties`
    traits: dict[str, str] = msgspec.field(default_factory=dict)  # keys of `traits`, `context.traits`


def rename_keys(fields: Any, names: dict[str, str]) -> None:
    if not isinstance(fields, dict) or not names:
        return
    for old in [k for k in fields if k in names]:
        fields[names[old]] = fields.pop(old)


class Rename:
    name = "rename"
    type = "before"
    version = __version__
    Options = RenameOptions

    def __init__(self) -> None:
        self.options = RenameOptions()

    async def load(self, options: RenameOptions) -> None:
        self.options = options

    async def event(self, message: Message) -> Message:
        options = self.options
        if options.events and message.get("type") == "track":
            event = message.get("event")
            if isinstance(event, str) and event in options.events:
                message["event"] = options.events[event]
        rename_keys(message.get("properties"), options.properties)
        if options.traits:
            rename_keys(message.get("traits"), options.traits)
            context = message.get("context")
            if isinstance(context, dict):
                rename_keys(context.get("traits"), options.traits)
        return message
