"""The plugin pipeline: which plugin runs where, and what its failure means.

- At ingest (``run_ingest``), before the message is written: every ``before`` plugin, then
  every ``enrichment`` plugin, in config order. ``Block`` or an error in a ``before`` plugin
  rejects the message (the caller dead-letters it with the reason); an error in an
  ``enrichment`` plugin is logged and counted and the message goes on as it was.
- Per destination (``run_destination``), on that destination's own copy: its routers
  (``consent``) and then ``integrations`` decide whether it gets the message at all; then
  the plugins its ``plugins`` list names run in that order, and an error or ``Block`` in one
  rejects that copy only.
- After a delivery (``run_after``): every ``after`` plugin; an error is logged and counted.
- A hook that runs past its budget counts as an error. A hook that never suspends is run
  directly; one that awaits something runs under a deadline and is cancelled at it.

Where an instance runs is decided by placement first: an instance that a destination lists
runs on that destination's copies (whatever its type), and only there. Otherwise its type
decides: ``before``/``enrichment`` at ingest, ``after`` after deliveries, a ``destination``
router (``consent``) for every destination; ``utility`` plugins are only loaded and unloaded.
"""

from __future__ import annotations

import asyncio
import logging
import time
import types
from collections.abc import Coroutine, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from relay.config import Config
from relay.errors import ConfigError
from relay.plugins.api import AfterPlugin, Block, Delivery, Message, PluginError, PluginTimeout, Router
from relay.plugins.loader import EVENT_PATH_TYPES, Loaded, hooks, load_all
from relay.plugins.routing import integrations_allow

log = logging.getLogger(__name__)

LOAD_TIMEOUT = 60.0  # seconds for one plugin's load() or unload()
ERROR_LOG_INTERVAL = 60.0  # seconds between log lines for one failing plugin
INTEGRATIONS = "integrations"


@dataclass(slots=True)
class PluginStats:
    errors: int = 0  # failures, timeouts included
    timeouts: int = 0
    dropped: int = 0  # messages the plugin dropped on purpose (returned None)
    rejected: int = 0  # messages it blocked (raised Block)


@dataclass(slots=True)
class Rejection:
    """A message to dead-letter, and why."""

    plugin: str
    reason: str
    message: Message


@dataclass(slots=True)
class Result:
    """What became of one message: ``messages`` go on (usually the one given, changed in
    place); ``rejected`` are dead-lettered; ``dropped`` counts messages dropped on purpose;
    ``skipped`` says why a destination does not get the message at all."""

    messages: list[Message]
    rejected: list[Rejection] = field(default_factory=list)
    dropped: int = 0
    skipped: str | None = None


@dataclass(slots=True)
class _Step:
    loaded: Loaded
    stage: str  # before | enrichment | destination | after
    hooks: dict[str, Any]  # message type (or "delivered") -> bound hook
    stats: PluginStats

    @property
    def fatal(self) -> bool:
        """Whether an error rejects the message rather than letting it go on."""
        return self.stage in ("before", "destination")


@dataclass(slots=True)
class _Target:
    type: str
    steps: list[_Step]
    routers: list[tuple[str, Router]]


class Pipeline:
    def __init__(self, plugins: Sequence[Loaded],
                 destinations: Mapping[str, tuple[str, Sequence[str]]]) -> None:
        """``destinations``: name -> (type, the plugin instances it lists, in order)."""
        self.plugins = list(plugins)
        self.stats: dict[str, PluginStats] = {p.name: PluginStats() for p in self.plugins}
        self.skipped: dict[str, dict[str, int]] = {name: {} for name in destinations}
        by_name = {p.name: p for p in self.plugins}
        placed = {name for _, listed in destinations.values() for name in listed}
        self._ingest: list[_Step] = []
        self._after: list[_Step] = []
        self._routers: list[tuple[str, Router]] = []
        for stage in ("before", "enrichment"):
            self._ingest += [self._step(p, stage) for p in self.plugins
                             if p.type == stage and p.name not in placed]
        for p in self.plugins:
            if p.name in placed:
                continue
            if p.type == "after":
                self._after.append(_Step(p, "after", {"delivered": cast(AfterPlugin, p.plugin).delivered},
                                         self.stats[p.name]))
            elif p.type == "destination":
                if _is_router(p):
                    self._routers.append((p.name, _router(p)))
                else:
                    log.warning("destination plugin is not listed by any destination",
                                extra={"plugin": p.name})
        self._targets: dict[str, _Target] = {}
        for destination, (kind, listed) in destinations.items():
            target = _Target(kind, [], [])
            for name in listed:
                plugin = by_name.get(name)
                if plugin is None:
                    raise ConfigError(f"destination {destination!r} lists the plugin {name!r}, "
                                      "which no [[plugins]] defines")
                if plugin.type not in EVENT_PATH_TYPES:
                    raise ConfigError(f"destination {destination!r} lists {plugin.where}, an "
                                      f"{plugin.type} plugin; only event-path plugins run on a destination")
                if _is_router(plugin):
                    target.routers.append((plugin.name, _router(plugin)))
                if hooks(plugin.plugin):
                    target.steps.append(self._step(plugin, "destination"))
            self._targets[destination] = target
        self._loaded: list[Loaded] = []
        self._errors = _ErrorLog()

    @classmethod
    def from_config(cls, config: Config, base: Path | None = None) -> Pipeline:
        """Load ``config.plugins`` (paths relative to ``base``) and place them."""
        destinations = {d.name: (d.type, d.plugins) for d in config.destinations}
        return cls(load_all(config.plugins, base), destinations)

    def _step(self, loaded: Loaded, stage: str) -> _Step:
        return _Step(loaded, stage, hooks(loaded.plugin), self.stats[loaded.name])

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Await each plugin's ``load(options)`` in config order; on a failure, unload the ones
        loaded and raise ConfigError naming the plugin."""
        if self._loaded:
            return
        for loaded in self.plugins:
            load = getattr(loaded.plugin, "load", None)
            if callable(load):
                try:
                    await asyncio.wait_for(load(loaded.options), LOAD_TIMEOUT)
                except Exception as exc:
                    await self.stop()
                    raise ConfigError(f"{loaded.where}: does not load: {_describe(exc)}") from exc
            self._loaded.append(loaded)

    async def stop(self) -> None:
        """Unload in reverse order; errors are logged. Safe to call twice."""
        while self._loaded:
            loaded = self._loaded.pop()
            unload = getattr(loaded.plugin, "unload", None)
            if callable(unload):
                try:
                    await asyncio.wait_for(unload(), LOAD_TIMEOUT)
                except Exception as exc:
                    log.warning("plugin does not unload", extra={"plugin": loaded.name,
                                                                 "error": _describe(exc)})

    # --- the event path -----------------------------------------------------------------------

    @property
    def runs_at_ingest(self) -> bool:
        return bool(self._ingest)

    @property
    def wants_deliveries(self) -> bool:
        return bool(self._after)

    async def run_ingest(self, message: Message) -> Result:
        """The ``before`` then ``enrichment`` plugins, on ``message`` (changed in place)."""
        result = Result([message])
        if self._ingest:
            await self._run(self._ingest, result)
        return result

    def passthrough(self, destination: str) -> bool:
        """True when ``destination`` gets every message unchanged (no decoding needed)."""
        target = self._targets.get(destination)
        return (target is not None and target.type == "segment" and not target.steps
                and not target.routers and not self._routers)

    def route(self, destination: str, message: Message) -> str | None:
        """Why ``destination`` does not get ``message`` (a router's name, or "integrations"),
        or None when it does. Routers are asked before ``integrations``."""
        target = self._targets.get(destination) or _Target("", [], [])
        for name, router in (*self._routers, *target.routers):
            if not router.allows(destination, message):
                return name
        if not integrations_allow(destination, target.type, message):
            return INTEGRATIONS
        return None

    async def run_destination(self, destination: str, message: Message) -> Result:
        """Route ``message`` (the destination's own copy), then run the destination's plugins."""
        result = Result([message])
        try:
            reason = self.route(destination, message)
        except Exception as exc:
            result.messages = []
            result.rejected.append(Rejection("routing", f"routing failed: {_describe(exc)}", message))
            return result
        if reason is not None:
            result.messages = []
            result.skipped = reason
            counts = self.skipped.setdefault(destination, {})
            counts[reason] = counts.get(reason, 0) + 1
            return result
        target = self._targets.get(destination)
        if target is not None and target.steps:
            await self._run(target.steps, result)
        return result

    async def run_after(self, delivery: Delivery) -> None:
        """Tell every ``after`` plugin; their errors are logged and counted, never raised."""
        for step in self._after:
            started = time.monotonic()
            try:
                await _call(step.hooks["delivered"], delivery, step.loaded, started)
            except Exception as exc:
                self._failed(step, exc)

    def metrics(self) -> dict[str, Any]:
        return {
            "plugins": {name: {"errors": s.errors, "timeouts": s.timeouts, "dropped": s.dropped,
                               "rejected": s.rejected} for name, s in self.stats.items()},
            "skipped": {name: dict(counts) for name, counts in self.skipped.items()},
        }

    # --- running steps ------------------------------------------------------------------------

    async def _run(self, steps: Sequence[_Step], result: Result) -> None:
        messages = result.messages
        for step in steps:
            if not messages:
                break
            out: list[Message] = []
            for message in messages:
                hook = step.hooks.get(message.get("type", ""))
                if hook is None:
                    out.append(message)
                else:
                    await self._apply(step, hook, message, out, result)
            messages = out
        result.messages = messages

    async def _apply(self, step: _Step, hook: Any, message: Message, out: list[Message],
                     result: Result) -> None:
        name = step.loaded.name
        started = time.monotonic()
        try:
            value = await _call(hook, message, step.loaded, started)
            value = _messages(value, name)
        except Block as block:
            step.stats.rejected += 1
            result.rejected.append(Rejection(name, f"blocked by {name}: {block.reason}", message))
            out.extend(block.emit)
            return
        except Exception as exc:
            self._failed(step, exc)
            if step.fatal:
                result.rejected.append(Rejection(name, f"plugin {name} failed: {_describe(exc)}", message))
            else:
                out.append(message)
            return
        if value is None:
            step.stats.dropped += 1
            result.dropped += 1
        elif isinstance(value, dict):
            out.append(value)
        else:
            out.extend(value)

    def _failed(self, step: _Step, exc: Exception) -> None:
        step.stats.errors += 1
        if isinstance(exc, PluginTimeout):
            step.stats.timeouts += 1
        self._errors.report(step.loaded.name, step.stage, exc)


async def _call(hook: Any, argument: Any, loaded: Loaded, started: float) -> Any:
    """Call ``hook(argument)`` within ``loaded.budget`` seconds of ``started``."""
    value = hook(argument)
    if type(value) is types.CoroutineType:
        try:
            pending = value.send(None)
        except StopIteration as done:
            value = done.value  # it finished without suspending: no timer needed
        else:
            deadline = asyncio.timeout(max(loaded.budget - (time.monotonic() - started), 0))
            try:
                async with deadline:
                    value = await _resume(value, pending)
            except TimeoutError:
                if deadline.expired():
                    raise _over_budget(loaded) from None
                raise
    if time.monotonic() - started > loaded.budget:
        raise _over_budget(loaded)
    return value


def _over_budget(loaded: Loaded) -> PluginTimeout:
    return PluginTimeout(loaded.name, f"over its time budget of {loaded.budget * 1000:g} ms")


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], pending: Any) -> Generator[Any, Any, Any]:
    """Go on with a coroutine that has already run to its first suspension (``pending`` is
    what it yielded), the way ``await`` would have."""
    while True:
        try:
            sent = yield pending
        except BaseException as exc:  # cancellation included: pass it in
            try:
                pending = coro.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                pending = coro.send(sent)
            except StopIteration as done:
                return done.value


def _messages(value: Any, plugin: str) -> Message | list[Message] | None:
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        return value
    raise TypeError(f"a hook returns a message, a list of messages or None, not {type(value).__name__}")


def _is_router(loaded: Loaded) -> bool:
    return callable(getattr(loaded.plugin, "allows", None))


def _router(loaded: Loaded) -> Router:
    return cast(Router, loaded.plugin)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, PluginError):
        return exc.detail
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _ErrorLog:
    """One log line per failing plugin per interval, with the count of those left out."""

    def __init__(self, interval: float = ERROR_LOG_INTERVAL) -> None:
        self.interval = interval
        self._last: dict[str, tuple[float, int]] = {}

    def report(self, plugin: str, stage: str, exc: Exception) -> None:
        now = time.monotonic()
        last, suppressed = self._last.get(plugin, (float("-inf"), 0))
        if now - last < self.interval:
            self._last[plugin] = (last, suppressed + 1)
            return
        self._last[plugin] = (now, 0)
        log.warning("plugin failed", extra={"plugin": plugin, "stage": stage, "error": _describe(exc),
                                            "suppressed": suppressed})
