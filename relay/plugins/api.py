"""What a plugin is written against: the message type, the plugin Protocols, and two exceptions.

A plugin is a class (instantiated with no arguments) or an object with::

    name = "add-app-version"   # its own name; an instance in relay.toml may rename it
    type = "enrichment"        # before | enrichment | destination | after | utility
    version = "1.0.0"
    Options = MyOptions        # optional: a msgspec Struct (or dataclass) its options decode into

    async def load(self, options) -> None: ...     # optional, once at start-up
    async def unload(self) -> None: ...            # optional, once at shutdown
    async def track(self, message) -> Message | None: ...   # and identify, page, screen, group,
    async def event(self, message) -> Message | None: ...   # alias; `event` catches the rest

A hook receives the message (the event body as a dict) and returns it, changed or not; a
different dict in its place; a list of messages to put in its place (for example the message
plus a "Violation Generated" track); or None to drop it on purpose. Raising ``Block`` rejects
it: the message goes to the dead-letter table with the reason. Any other exception is a
failure, handled by the plugin's type (see ``relay.plugins.pipeline``).

Exceptions::

    RelayError
    └── PluginError          a plugin failed while handling a message
        └── PluginTimeout    it ran past its time budget
    Block                    not a failure: a plugin rejects a message on purpose
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from relay.errors import RelayError

Message = dict[str, Any]
"""One event body: a Segment message (``type``, ``userId``, ``properties``, ``context``...)."""

HookResult = Message | list[Message] | None
PluginType = Literal["before", "enrichment", "destination", "after", "utility"]
PLUGIN_TYPES: tuple[PluginType, ...] = ("before", "enrichment", "destination", "after", "utility")
MESSAGE_HOOKS = ("track", "identify", "page", "screen", "group", "alias")
CATCH_ALL = "event"
Outcome = Literal["delivered", "dead_lettered", "dropped"]


class Plugin(Protocol):
    """The attributes every plugin has; its hooks and ``load``/``unload`` are optional."""

    name: str
    type: str  # one of PLUGIN_TYPES; checked when the plugin is loaded
    version: str


class Hook(Protocol):
    def __call__(self, message: Message, /) -> Awaitable[HookResult]: ...


class Router(Protocol):
    """A plugin that decides whether a destination gets a message at all (``consent`` does).

    It is asked before the destination's steps run, and before ``integrations``. A router
    that no destination lists in its ``plugins`` is asked for every destination."""

    def allows(self, destination: str, message: Message, /) -> bool: ...


@dataclass(frozen=True, slots=True)
class Delivery:
    """What an ``after`` plugin's ``delivered`` hook is told about one destination's batch."""

    destination: str
    messages: Sequence[Message]
    outcome: Outcome
    reason: str | None = None  # why it was dead-lettered or dropped


class AfterPlugin(Plugin, Protocol):
    async def delivered(self, delivery: Delivery, /) -> None: ...


class Block(Exception):
    """Raise from a hook to reject the message: it goes to the dead-letter table with ``reason``.

    ``emit`` are messages that go on in its place (a "Violation Generated" track, say)."""

    def __init__(self, reason: str, emit: Sequence[Message] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.emit = list(emit)


class PluginError(RelayError):
    """A plugin failed while it handled a message; ``plugin`` is its instance name."""

    def __init__(self, plugin: str, message: str) -> None:
        super().__init__(f"{plugin}: {message}")
        self.plugin = plugin
        self.detail = message


class PluginTimeout(PluginError):
    pass
