"""Plugins: the device-mode pipeline at the edge.

A user's plugin imports only from here (see ``relay.plugins.api`` and docs/plugins.md).
The relay builds a ``relay.plugins.pipeline.Pipeline`` from the ``[[plugins]]`` tables.
"""

from relay.plugins.api import (
    CATCH_ALL,
    MESSAGE_HOOKS,
    PLUGIN_TYPES,
    AfterPlugin,
    Block,
    Delivery,
    Hook,
    HookResult,
    Message,
    Outcome,
    Plugin,
    PluginError,
    PluginTimeout,
    PluginType,
    Router,
)

__all__ = [
    "CATCH_ALL",
    "MESSAGE_HOOKS",
    "PLUGIN_TYPES",
    "AfterPlugin",
    "Block",
    "Delivery",
    "Hook",
    "HookResult",
    "Message",
    "Outcome",
    "Plugin",
    "PluginError",
    "PluginTimeout",
    "PluginType",
    "Router",
]
