"""An example plugin, written only against relay's public plugin API.

It stamps every message with the app's name and version (``context.app``) unless the SDK
already did, as a mobile SDK does. Use it from relay.toml:

    [[plugins]]
    use = "plugins/add_app_version.py:AddAppVersion"
    name = "app-version"
    options = { version = "2.4.1", name = "Storefront" }
"""

from __future__ import annotations

import msgspec

from relay.plugins import Message


class AppVersionOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    version: str
    name: str = ""
    build: str = ""


class AddAppVersion:
    name = "add-app-version"
    type = "enrichment"
    version = "1.0.0"
    Options = AppVersionOptions

    def __init__(self) -> None:
        self.app: dict[str, str] = {}

    async def load(self, options: AppVersionOptions) -> None:
        fields = {"name": options.name, "version": options.version, "build": options.build}
        self.app = {key: value for key, value in fields.items() if value}

    async def event(self, message: Message) -> Message:
        context = message.setdefault("context", {})
        if isinstance(context, dict) and not context.get("app"):
            context["app"] = dict(self.app)
        return message
