"""``user_agent``: parse ``context.userAgent`` into ``context.browser``, ``context.os`` and
``context.device`` with ua-parser (the maintained uap-core rules).

Fields a message already has (a mobile SDK's ``context.os``, say) are kept unless
``overwrite`` is set. Results are cached per user-agent string (the last ``CACHE_SIZE``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import ua_parser

from relay import __version__
from relay.plugins import Message

OTHER = "Other"  # ua-parser's family for "not recognised"
CACHE_SIZE = 4096  # user-agent strings whose parsed fields are kept


class UserAgentOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    overwrite: bool = False


def _version(*parts: str | None) -> str | None:
    present = []
    for part in parts:
        if part is None:
            break
        present.append(part)
    return ".".join(present) or None


def describe(result: ua_parser.Result) -> dict[str, dict[str, str]]:
    """ua-parser's result as Segment-style context fields, leaving out what it did not find."""
    found: dict[str, dict[str, Any]] = {}
    agent, system, device = result.user_agent, result.os, result.device
    if agent is not None and agent.family != OTHER:
        found["browser"] = {"name": agent.family, "version": _version(agent.major, agent.minor, agent.patch)}
    if system is not None and system.family != OTHER:
        found["os"] = {"name": system.family, "version": _version(system.major, system.minor, system.patch)}
    if device is not None and device.family != OTHER:
        found["device"] = {"manufacturer": device.brand, "model": device.model}
    return {key: {k: v for k, v in fields.items() if v is not None} for key, fields in found.items()
            if any(v is not None for v in fields.values())}


Described = tuple[tuple[str, dict[str, str]], ...]  # ("browser", {"name": ...}), ...: copied out


class UserAgent:
    name = "user_agent"
    type = "enrichment"
    version = __version__
    Options = UserAgentOptions

    def __init__(self) -> None:
        self._overwrite = False
        self._parser: ua_parser.Parser | None = None
        self._cache: dict[str, Described] = {}  # user agent -> its fields; the oldest goes first

    async def load(self, options: UserAgentOptions) -> None:
        self._overwrite = options.overwrite
        # the rules take ~0.1 s to compile: off the event loop, once for all instances
        self._parser = await asyncio.to_thread(lambda: ua_parser.parser)

    def _described(self, parser: ua_parser.Parser, agent: str) -> Described:
        found = self._cache.get(agent)
        if found is None:
            found = tuple(describe(parser.parse(agent)).items())
            if len(self._cache) >= CACHE_SIZE:
                del self._cache[next(iter(self._cache))]
            self._cache[agent] = found
        return found

    async def event(self, message: Message) -> Message:
        context = message.get("context")
        if not isinstance(context, dict):
            return message
        agent = context.get("userAgent")
        if not isinstance(agent, str) or not agent or self._parser is None:
            return message
        for key, fields in self._described(self._parser, agent):
            current = context.get(key)
            if not isinstance(current, dict):
                if current is None or self._overwrite:
                    context[key] = fields.copy()
                continue
            for name, value in fields.items():
                if self._overwrite or name not in current:
                    current[name] = value
        return message
