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
- Scrubbing: a ``before`` plugin that sets ``scrubs = True`` (``privacy`` does) also runs on
  every message about to be dead-lettered at ingest that it has not seen: one refused by a
  plugin ahead of it, and (through ``scrub``) one that breaks the protocol. What it removes
  does not reach the dead-letter table either.

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
from relay.plugins import paths
from relay.plugins.api import AfterPlugin, Block, Delivery, Message, PluginError, PluginTimeout, Router
from relay.plugins.loader import EVENT_PATH_TYPES, Loaded, hooks, load_all
from relay.plugins.routing import integrations_allow

log = logging.getLogger(__name__)
Trace = list[dict[str, Any]]
"""What each ingest plugin changed, in order (see ``Pipeline.run_ingest``)."""

LOAD_TIMEOUT = 60.0  # seconds for one plugin's load() or unload()
ERROR_LOG_INTERVAL = 60.0  # seconds between log lines for one failing plugin
INTEGRATIONS = "integrations"
_monotonic = time.monotonic
_CoroutineType = types.CoroutineType


@dataclass(slots=True)
class PluginStats:
    errors: int = 0  # failures, timeouts included
    timeouts: int = 0
    dropped: int = 0  # messages the plugin dropped on purpose (returned None)
    rejected: int = 0  # messages it blocked (raised Block)


@dataclass(slots=True)
class Refusal:
    """A message to dead-letter (or, in ``Result.drops``, one dropped on purpose), and why."""

    plugin: str
    reason: str
    message: Message


@dataclass(slots=True)
class Result:
    """What became of one message: ``messages`` go on (usually the one given, changed in
    place); ``rejected`` are dead-lettered; ``dropped`` counts messages dropped on purpose;
    ``skipped`` says why a destination does not get the message at all; ``drops`` are the
    dropped messages, each with the plugin that dropped it."""

    messages: list[Message]
    rejected: list[Refusal] = field(default_factory=list)
    dropped: int = 0
    skipped: str | None = None
    drops: list[Refusal] = field(default_factory=list)


@dataclass(slots=True)
class _Step:
    loaded: Loaded
    stage: str  # before | enrichment | destination | after
    hooks: dict[str, Any]  # message type (or "delivered") -> bound hook
    stats: PluginStats
    scrubs: bool = False  # also run on messages dead-lettered at ingest (see ``Pipeline.scrub``)

    @property
    def fatal(self) -> bool:
        """Whether an error rejects the message rather than letting it go on."""
        return self.stage in ("before", "destination")


@dataclass(slots=True)
class _Target:
    type: str
    steps: list[_Step]
    routers: list[tuple[str, Router]]  # the ones it lists
    asked: tuple[tuple[str, Router], ...] = ()  # every router it is asked by: unlisted ones first


class Pipeline:
    def __init__(self, plugins: Sequence[Loaded],
                 destinations: Mapping[str, tuple[str, Sequence[str]]]) -> None:
        """``destinations``: name -> (type, the plugin instances it lists, in order)."""
        self.plugins = list(plugins)
        self.stats: dict[str, PluginStats] = {p.name: PluginStats() for p in self.plugins}
        self._users = 0  # ingest requests admitting through this pipeline now
        self._unused = asyncio.Event()
        self._unused.set()
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
            target.asked = (*self._routers, *target.routers)
            self._targets[destination] = target
        self._loaded: list[Loaded] = []
        self._errors = _ErrorLog()

    @classmethod
    def from_config(cls, config: Config, base: Path | None = None) -> Pipeline:
        """Load ``config.plugins`` (paths relative to ``base``) and place them."""
        destinations = {d.name: (d.type, d.plugins) for d in config.destinations}
        return cls(load_all(config.plugins, base), destinations)

    def _step(self, loaded: Loaded, stage: str) -> _Step:
        scrubs = stage == "before" and getattr(loaded.plugin, "scrubs", False) is True
        return _Step(loaded, stage, hooks(loaded.plugin), self.stats[loaded.name], scrubs)

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

    def hold(self) -> None:
        """An ingest request starts using the pipeline (``release`` when it is done)."""
        self._users += 1
        self._unused.clear()

    def release(self) -> None:
        self._users -= 1
        if not self._users:
            self._unused.set()

    async def drained(self, timeout: float) -> bool:
        """Wait until no ingest request holds the pipeline (False at the timeout)."""
        try:
            await asyncio.wait_for(self._unused.wait(), timeout)
        except TimeoutError:
            log.warning("ingest requests still hold the old pipeline at the timeout",
                        extra={"requests": self._users})
            return False
        return True

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
    def ingest_plugins(self) -> list[str]:
        """The names of the plugins run at ingest, in order."""
        return [step.loaded.name for step in self._ingest]

    @property
    def scrubs(self) -> bool:
        """Whether a scrubbing plugin (privacy) runs at ingest."""
        return any(step.scrubs for step in self._ingest)

    @property
    def wants_deliveries(self) -> bool:
        return bool(self._after)

    async def run_ingest(self, message: Message, trace: Trace | None = None) -> Result:
        """The ``before`` then ``enrichment`` plugins, on ``message`` (changed in place). With
        ``trace`` (only while someone watches), each plugin that changed the message while it
        was one message is recorded there: its name and the paths it removed, added, changed."""
        result = Result([message])
        if self._ingest:
            await self._run(self._ingest, result, trace)
        return result

    async def scrub(self, message: Any) -> Any:
        """``message`` (about to be dead-lettered at ingest without having been through the
        plugins) after every scrubbing ``before`` plugin; anything but a dict as it is."""
        return await self._scrub(message, self._ingest) if isinstance(message, dict) else message

    async def _scrub(self, message: Message, steps: Sequence[_Step]) -> Message:
        for step in steps:
            if not step.scrubs:
                continue
            hook = step.hooks.get(message.get("type", "")) or getattr(step.loaded.plugin, "event", None)
            if not callable(hook):
                continue
            try:
                value = await _call(hook, message, step.loaded, time.monotonic())
            except Exception as exc:  # Block included: scrubbing never refuses anything
                if not isinstance(exc, Block):
                    self._failed(step, exc)
                continue
            if isinstance(value, dict):
                message = value
        return message

    def passthrough(self, destination: str) -> bool:
        """True when ``destination`` gets every message unchanged (no decoding needed)."""
        target = self._targets.get(destination)
        return target is not None and target.type == "segment" and self.routed_by_integrations(destination)

    def routed_by_integrations(self, destination: str) -> bool:
        """True when nothing but ``integrations`` decides what ``destination`` gets, and it
        gets it unchanged (no plugins, no routers): ``skipped_by_integrations`` answers from
        that one field, without the whole message."""
        target = self._targets.get(destination)
        return target is not None and not target.steps and not target.routers and not self._routers

    def skipped_by_integrations(self, destination: str, integrations: object) -> bool:
        """For a destination ``routed_by_integrations``: whether the message's
        ``integrations`` keep it from ``destination`` (counted as ``run_destination`` counts)."""
        target = self._targets.get(destination)
        if integrations_allow(destination, "" if target is None else target.type,
                              {"integrations": integrations}):
            return False
        self._count_skip(destination, INTEGRATIONS)
        return True

    def _count_skip(self, destination: str, reason: str) -> None:
        counts = self.skipped.setdefault(destination, {})
        counts[reason] = counts.get(reason, 0) + 1

    def route(self, destination: str, message: Message) -> str | None:
        """Why ``destination`` does not get ``message`` (a router's name, or "integrations"),
        or None when it does. Routers are asked before ``integrations``."""
        target = self._targets.get(destination)
        for name, router in self._routers if target is None else target.asked:
            if not router.allows(destination, message):
                return name
        if not integrations_allow(destination, "" if target is None else target.type, message):
            return INTEGRATIONS
        return None

    async def run_destination(self, destination: str, message: Message) -> Result:
        """Route ``message`` (the destination's own copy), then run the destination's plugins."""
        result = Result([message])
        try:
            reason = self.route(destination, message)
        except Exception as exc:
            result.messages = []
            result.rejected.append(Refusal("routing", f"routing failed: {_describe(exc)}", message))
            return result
        if reason is not None:
            result.messages = []
            result.skipped = reason
            self._count_skip(destination, reason)
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

    async def _run(self, steps: Sequence[_Step], result: Result, trace: Trace | None = None) -> None:
        # The hot path: ``_call`` inlined (a hook that never suspends costs one ``send``).
        messages = result.messages
        for index, step in enumerate(steps):
            if not messages:
                break
            before = paths.leaves(messages[0]) if trace is not None and len(messages) == 1 else None
            out: list[Message] = []
            refused = len(result.rejected)
            hooks_for, loaded = step.hooks.get, step.loaded
            for message in messages:
                hook = hooks_for(message.get("type", ""))
                if hook is None:
                    out.append(message)
                    continue
                started = _monotonic()
                try:
                    value = hook(message)
                    if type(value) is _CoroutineType:
                        try:
                            pending = value.send(None)
                        except StopIteration as done:
                            value = done.value  # it finished without suspending: no timer needed
                        else:
                            value = await _finish(value, pending, loaded, started)
                    if _monotonic() - started > loaded.budget:
                        raise _over_budget(loaded)
                    if type(value) is not dict:
                        value = _messages(value, loaded.name)
                except Block as block:
                    self._blocked(step, block, message, out, result)
                    continue
                except Exception as exc:
                    self._error(step, exc, message, out, result)
                    continue
                if value is None:
                    self._dropped(step, message, result)
                elif isinstance(value, dict):
                    out.append(value)
                else:
                    out.extend(value)
            if steps is self._ingest and len(result.rejected) > refused:
                # refused here: the scrubbers after this step have not run on them
                for rejection in result.rejected[refused:]:
                    rejection.message = await self._scrub(rejection.message, steps[index + 1:])
            if before is not None and trace is not None and len(out) == 1:
                change = paths.changed(before, paths.leaves(out[0]))
                if change:
                    trace.append({"plugin": step.loaded.name, **change})
            messages = out
        result.messages = messages

    def _blocked(self, step: _Step, block: Block, message: Message, out: list[Message],
                 result: Result) -> None:
        name = step.loaded.name
        step.stats.rejected += 1
        result.rejected.append(Refusal(name, f"blocked by {name}: {block.reason}", message))
        out.extend(block.emit)

    def _error(self, step: _Step, exc: Exception, message: Message, out: list[Message],
               result: Result) -> None:
        name = step.loaded.name
        self._failed(step, exc)
        if step.fatal:
            result.rejected.append(Refusal(name, f"plugin {name} failed: {_describe(exc)}", message))
        else:
            out.append(message)

    @staticmethod
    def _dropped(step: _Step, message: Message, result: Result) -> None:
        name = step.loaded.name
        step.stats.dropped += 1
        result.dropped += 1
        result.drops.append(Refusal(name, f"dropped by {name}", message))

    def _failed(self, step: _Step, exc: Exception) -> None:
        step.stats.errors += 1
        if isinstance(exc, PluginTimeout):
            step.stats.timeouts += 1
        self._errors.report(step.loaded.name, step.stage, exc)


async def _call(hook: Any, argument: Any, loaded: Loaded, started: float) -> Any:
    """Call ``hook(argument)`` within ``loaded.budget`` seconds of ``started``."""
    value = hook(argument)
    if type(value) is _CoroutineType:
        try:
            pending = value.send(None)
        except StopIteration as done:
            value = done.value  # it finished without suspending: no timer needed
        else:
            value = await _finish(value, pending, loaded, started)
    if _monotonic() - started > loaded.budget:
        raise _over_budget(loaded)
    return value


async def _finish(coro: Coroutine[Any, Any, Any], pending: Any, loaded: Loaded, started: float) -> Any:
    """Go on with a hook that suspended (``pending`` is what it yielded), under the deadline
    its budget leaves."""
    deadline = asyncio.timeout(max(loaded.budget - (_monotonic() - started), 0))
    try:
        async with deadline:
            return await _resume(coro, pending)
    except TimeoutError:
        if deadline.expired():
            raise _over_budget(loaded) from None
        raise


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
