"""The pipeline: order, placement, routing, and what each kind of failure means."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec
import pytest

from relay.config import Config
from relay.errors import ConfigError
from relay.plugins import Block, Delivery, Message
from relay.plugins.loader import Loaded
from relay.plugins.pipeline import Pipeline

BUDGET = 0.05


class Step:
    """A plugin whose hook does what the test says."""

    version = "1"

    def __init__(self, name: str, type: str, action: Any = None, log: list[str] | None = None) -> None:
        self.name, self.type = name, type
        self.action = action
        self.log = log if log is not None else []

    async def event(self, message: Message) -> Any:
        self.log.append(self.name)
        if self.action is None:
            message.setdefault("seen", []).append(self.name)
            return message
        return await self.action(message)


def loaded(plugin: Any, index: int = 0, budget: float = BUDGET, options: Any = None) -> Loaded:
    return Loaded(index, plugin.name, plugin, plugin.type, options, budget)


def track(**fields: Any) -> Message:
    return {"type": "track", "event": "E", "userId": "u", **fields}


async def _raise(message: Message) -> Any:
    raise ValueError("boom")


async def _block(message: Message) -> Any:
    raise Block("not allowed here")


async def _drop(message: Message) -> Any:
    return None


async def _slow(message: Message) -> Any:
    await asyncio.sleep(1)
    return message


async def _busy(message: Message) -> Any:
    time.sleep(BUDGET * 1.5)  # never suspends, but runs past the budget
    return message


async def _yielding(message: Message) -> Any:
    await asyncio.sleep(0)
    await asyncio.sleep(0.001)
    message["awaited"] = True
    return message


async def test_before_plugins_run_before_enrichment_in_config_order() -> None:
    log: list[str] = []
    plugins = [Step("e1", "enrichment", log=log), Step("b1", "before", log=log),
               Step("e2", "enrichment", log=log), Step("b2", "before", log=log)]
    pipeline = Pipeline([loaded(p, i) for i, p in enumerate(plugins)], {})
    result = await pipeline.run_ingest(track())
    assert log == ["b1", "b2", "e1", "e2"]
    assert result.messages[0]["seen"] == ["b1", "b2", "e1", "e2"]


async def test_before_error_rejects_the_message_with_the_reason_and_stops_it() -> None:
    log: list[str] = []
    plugins = [Step("check", "before", _raise, log), Step("later", "enrichment", log=log)]
    pipeline = Pipeline([loaded(p, i) for i, p in enumerate(plugins)], {})
    message = track()
    result = await pipeline.run_ingest(message)
    assert result.messages == []
    [rejection] = result.rejected
    assert (rejection.plugin, rejection.reason) == ("check", "plugin check failed: ValueError: boom")
    assert rejection.message is message
    assert log == ["check"]
    assert pipeline.metrics()["plugins"]["check"] == {"errors": 1, "timeouts": 0, "dropped": 0, "rejected": 0}


async def test_block_rejects_on_purpose_and_is_not_counted_as_an_error() -> None:
    pipeline = Pipeline([loaded(Step("gate", "before", _block))], {})
    result = await pipeline.run_ingest(track())
    assert [r.reason for r in result.rejected] == ["blocked by gate: not allowed here"]
    assert pipeline.stats["gate"].rejected == 1 and pipeline.stats["gate"].errors == 0


async def test_block_can_emit_messages_in_place_of_the_blocked_one() -> None:
    async def block_and_report(message: Message) -> Any:
        raise Block("bad", emit=[{"type": "track", "event": "Report"}])

    plugins = [Step("gate", "before", block_and_report), Step("enrich", "enrichment")]
    pipeline = Pipeline([loaded(p, i) for i, p in enumerate(plugins)], {})
    result = await pipeline.run_ingest(track())
    assert result.messages == [{"type": "track", "event": "Report", "seen": ["enrich"]}]
    assert len(result.rejected) == 1


async def test_enrichment_error_is_logged_and_counted_and_the_message_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    plugins = [Step("broken", "enrichment", _raise), Step("next", "enrichment")]
    pipeline = Pipeline([loaded(p, i) for i, p in enumerate(plugins)], {})
    with caplog.at_level(logging.WARNING, logger="relay.plugins.pipeline"):
        first = await pipeline.run_ingest(track())
        second = await pipeline.run_ingest(track())
    assert first.messages == [track(seen=["next"])] and first.rejected == []
    assert second.messages == [track(seen=["next"])]
    assert pipeline.stats["broken"].errors == 2
    records = [r for r in caplog.records if r.getMessage() == "plugin failed"]
    assert len(records) == 1  # one line per interval, not one per message
    assert records[0].__dict__["plugin"] == "broken" and records[0].__dict__["error"] == "ValueError: boom"


async def test_returning_none_drops_the_message_on_purpose() -> None:
    pipeline = Pipeline([loaded(Step("sieve", "before", _drop))], {})
    result = await pipeline.run_ingest(track())
    assert (result.messages, result.rejected, result.dropped) == ([], [], 1)
    assert pipeline.stats["sieve"].dropped == 1


async def test_returning_a_list_puts_several_messages_in_place_of_one() -> None:
    async def split(message: Message) -> Any:
        return [message, {"type": "identify", "userId": "u"}]

    pipeline = Pipeline([loaded(Step("split", "before", split)), loaded(Step("enrich", "enrichment"), 1)], {})
    result = await pipeline.run_ingest(track())
    assert result.messages == [track(seen=["enrich"]),
                               {"type": "identify", "userId": "u", "seen": ["enrich"]}]


@pytest.mark.parametrize("returned", ["a string", 5, [{"ok": 1}, "not a message"]])
async def test_returning_something_else_is_an_error(returned: Any) -> None:
    async def odd(message: Message) -> Any:
        return returned

    pipeline = Pipeline([loaded(Step("odd", "before", odd))], {})
    result = await pipeline.run_ingest(track())
    assert result.rejected[0].reason.startswith("plugin odd failed: TypeError: a hook returns a message")


@pytest.mark.parametrize("action", [_slow, _busy])
@pytest.mark.parametrize(("kind", "goes_on"), [("before", False), ("enrichment", True)])
async def test_running_past_the_budget_is_an_error(action: Any, kind: str, goes_on: bool) -> None:
    pipeline = Pipeline([loaded(Step("slow", kind, action))], {})
    started = time.monotonic()
    result = await pipeline.run_ingest(track())
    assert time.monotonic() - started < 0.5  # the slow one is cancelled at its deadline
    assert bool(result.messages) is goes_on
    if not goes_on:
        assert result.rejected[0].reason == "plugin slow failed: over its time budget of 50 ms"
    assert pipeline.stats["slow"].timeouts == 1 and pipeline.stats["slow"].errors == 1


async def test_a_hook_that_awaits_within_its_budget_finishes_normally() -> None:
    pipeline = Pipeline([loaded(Step("io", "before", _yielding))], {})
    result = await pipeline.run_ingest(track())
    assert result.messages == [track(awaited=True)]
    assert pipeline.stats["io"].errors == 0


async def test_a_plugins_own_timeout_error_is_not_reported_as_its_budget() -> None:
    async def own_timeout(message: Message) -> Any:
        await asyncio.sleep(0)
        raise TimeoutError("upstream slow")

    pipeline = Pipeline([loaded(Step("io", "before", own_timeout))], {})
    result = await pipeline.run_ingest(track())
    assert result.rejected[0].reason == "plugin io failed: TimeoutError: upstream slow"
    assert pipeline.stats["io"].timeouts == 0


async def test_cancelling_the_caller_cancels_a_suspended_hook() -> None:
    started = asyncio.Event()

    async def waits(message: Message) -> Any:
        started.set()
        await asyncio.sleep(10)
        return message

    pipeline = Pipeline([loaded(Step("waits", "before", waits), budget=30)], {})
    task = asyncio.create_task(pipeline.run_ingest(track()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


class Typed:
    name, type, version = "typed", "before", "1"

    async def track(self, message: Message) -> Message:
        message["by"] = "track"
        return message

    async def event(self, message: Message) -> Message:
        message["by"] = "event"
        return message


class TrackOnly:
    name, type, version = "track-only", "before", "1"

    async def track(self, message: Message) -> Message:
        message["by"] = "track"
        return message


async def test_hook_per_message_type_and_catch_all() -> None:
    pipeline = Pipeline([loaded(Typed())], {})
    assert (await pipeline.run_ingest(track())).messages[0]["by"] == "track"
    assert (await pipeline.run_ingest({"type": "page"})).messages[0]["by"] == "event"
    only = Pipeline([loaded(TrackOnly())], {})
    assert (await only.run_ingest({"type": "page"})).messages == [{"type": "page"}]


# --- destinations ---------------------------------------------------------------------------


class Consent:
    name, type, version = "consent", "destination", "1"

    def __init__(self, mapping: dict[str, str]) -> None:
        self.mapping = mapping

    def allows(self, destination: str, message: Message) -> bool:
        category = self.mapping.get(destination)
        preferences = message.get("context", {}).get("consent", {}).get("categoryPreferences")
        return category is None or preferences is None or preferences.get(category) is True


async def test_destination_steps_run_only_for_the_destination_that_lists_them() -> None:
    steps = [Step("fails", "destination", _raise), Step("tags", "destination"), Step("enrich", "enrichment")]
    pipeline = Pipeline([loaded(p, i) for i, p in enumerate(steps)],
                        {"a": ("webhook", ["fails"]), "b": ("webhook", ["tags", "enrich"]),
                         "c": ("segment", [])})
    stored = (await pipeline.run_ingest(track())).messages[0]
    assert "seen" not in stored  # `enrich` is placed on destination b, so not at ingest
    a = await pipeline.run_destination("a", track())
    b = await pipeline.run_destination("b", track())
    c = await pipeline.run_destination("c", track())
    assert a.messages == [] and a.rejected[0].reason == "plugin fails failed: ValueError: boom"
    assert b.messages == [track(seen=["tags", "enrich"])]
    assert c.messages == [track()]


async def test_an_enrichment_plugin_placed_on_a_destination_fails_that_copy() -> None:
    pipeline = Pipeline([loaded(Step("broken", "enrichment", _raise))], {"a": ("webhook", ["broken"])})
    result = await pipeline.run_destination("a", track())
    assert result.messages == [] and len(result.rejected) == 1


@pytest.mark.parametrize(("integrations", "preferences", "skipped"), [
    (None, None, None),
    ({"a": False}, None, "integrations"),
    ({"All": False}, None, "integrations"),
    ({"All": False, "a": True}, None, None),
    (None, {"analytics": False}, "consent"),
    ({"a": True}, {"analytics": False}, "consent"),  # consent is checked before integrations
    ({"a": False}, {"analytics": False}, "consent"),
    ({"a": False}, {"analytics": True}, "integrations"),
])
async def test_routing_checks_consent_then_integrations(integrations: Any, preferences: Any,
                                                        skipped: str | None) -> None:
    pipeline = Pipeline([loaded(Consent({"a": "analytics"})), loaded(Step("tags", "destination"), 1)],
                        {"a": ("webhook", ["tags"])})
    message = track()
    if integrations is not None:
        message["integrations"] = integrations
    if preferences is not None:
        message["context"] = {"consent": {"categoryPreferences": preferences}}
    result = await pipeline.run_destination("a", message)
    assert result.skipped == skipped
    assert bool(result.messages) is (skipped is None)
    if skipped:
        assert pipeline.metrics()["skipped"]["a"] == {skipped: 1}


async def test_segment_destination_ignores_integrations_but_not_consent() -> None:
    pipeline = Pipeline([loaded(Consent({"up": "analytics"}))], {"up": ("segment", [])})
    off = track(integrations={"All": False, "up": False})
    assert (await pipeline.run_destination("up", off)).skipped is None
    denied = track(context={"consent": {"categoryPreferences": {}}})
    assert (await pipeline.run_destination("up", denied)).skipped == "consent"


async def test_a_router_listed_by_one_destination_decides_only_for_it() -> None:
    pipeline = Pipeline([loaded(Consent({"a": "analytics", "b": "analytics"}))],
                        {"a": ("webhook", ["consent"]), "b": ("webhook", [])})
    message = track(context={"consent": {"categoryPreferences": {"analytics": False}}})
    assert (await pipeline.run_destination("a", message)).skipped == "consent"
    assert (await pipeline.run_destination("b", message)).skipped is None


async def test_a_router_that_raises_rejects_the_copy() -> None:
    class Broken:
        name, type, version = "broken", "destination", "1"

        def allows(self, destination: str, message: Message) -> bool:
            raise KeyError("x")

    pipeline = Pipeline([loaded(Broken())], {"a": ("webhook", [])})
    result = await pipeline.run_destination("a", track())
    assert result.messages == [] and result.rejected[0].reason == "routing failed: KeyError: 'x'"


def test_passthrough_only_for_a_plain_segment_destination() -> None:
    steps = Pipeline([loaded(Step("tags", "destination"))],
                     {"up": ("segment", []), "tagged": ("segment", ["tags"]), "hook": ("webhook", [])})
    assert steps.passthrough("up") and not steps.passthrough("tagged") and not steps.passthrough("hook")
    routed = Pipeline([loaded(Consent({}))], {"up": ("segment", [])})
    assert not routed.passthrough("up")


@pytest.mark.parametrize(("plugins", "destinations", "error"), [
    ([Step("tags", "destination")], {"a": ("webhook", ["nope"])}, "lists the plugin 'nope'"),
    ([Step("watch", "after")], {"a": ("webhook", ["watch"])}, "an after plugin; only event-path plugins"),
])
def test_bad_placement_is_a_config_error(plugins: list[Any], destinations: Any, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        Pipeline([loaded(p) for p in plugins], destinations)


# --- after plugins and lifecycle ---------------------------------------------------------------


async def test_after_plugins_see_each_delivery_and_their_errors_are_contained() -> None:
    seen: list[Delivery] = []

    class Watch:
        name, type, version = "watch", "after", "1"

        async def delivered(self, delivery: Delivery) -> None:
            seen.append(delivery)

    class Broken:
        name, type, version = "broken", "after", "1"

        async def delivered(self, delivery: Delivery) -> None:
            raise RuntimeError("after failed")

    pipeline = Pipeline([loaded(Broken()), loaded(Watch(), 1)], {})
    assert pipeline.wants_deliveries
    delivery = Delivery("a", [track()], "dead_lettered", "rejected by a: 400")
    await pipeline.run_after(delivery)
    assert seen == [delivery]
    assert pipeline.stats["broken"].errors == 1


class Lifecycle:
    type, version = "before", "1"

    def __init__(self, name: str, log: list[str], fail: bool = False) -> None:
        self.name, self.log, self.fail = name, log, fail

    async def load(self, options: Any) -> None:
        if self.fail:
            raise RuntimeError("cannot connect")
        self.log.append(f"load {self.name} {options}")

    async def unload(self) -> None:
        self.log.append(f"unload {self.name}")

    async def event(self, message: Message) -> Message:
        return message


async def test_plugins_load_in_order_and_unload_in_reverse_once() -> None:
    log: list[str] = []
    pipeline = Pipeline([loaded(Lifecycle("a", log), 0, options={"k": 1}),
                         loaded(Lifecycle("b", log), 1)], {})
    await pipeline.start()
    await pipeline.start()
    await pipeline.stop()
    await pipeline.stop()
    assert log == ["load a {'k': 1}", "load b None", "unload b", "unload a"]


async def test_a_plugin_that_fails_to_load_stops_the_start_and_unloads_the_rest() -> None:
    log: list[str] = []
    pipeline = Pipeline([loaded(Lifecycle("a", log)), loaded(Lifecycle("b", log, fail=True), 1)], {})
    with pytest.raises(ConfigError, match=r"plugins\[1\] \(b\): does not load: RuntimeError: cannot connect"):
        await pipeline.start()
    assert log == ["load a None", "unload a"]


async def test_pipeline_from_config_places_builtins_by_the_destinations_lists() -> None:
    config = msgspec.convert({
        "plugins": [
            {"use": "privacy", "name": "strip-pii", "options": {"remove": ["traits.email"]}},
            {"use": "filter", "name": "no-tests", "options": {"if": 'match(event, "Test *")', "drop": True}},
            {"use": "consent", "options": {"destinations": {"files": ["analytics"]}}},
        ],
        "destinations": [{"name": "files", "type": "file", "path": "/tmp/relay-test-files",
                          "plugins": ["no-tests"]},
                         {"name": "up", "type": "segment", "endpoint": "http://127.0.0.1:1"}],
    }, Config)
    pipeline = Pipeline.from_config(config)
    await pipeline.start()
    try:
        stored = await pipeline.run_ingest({"type": "identify", "userId": "u",
                                            "traits": {"email": "e", "n": 1}, "context": {"ip": "192.0.2.7"}})
        assert stored.messages == [{"type": "identify", "userId": "u", "traits": {"n": 1},
                                    "context": {"ip": "192.0.2.0"}}]
        assert (await pipeline.run_destination("files", track(event="Test run"))).dropped == 1
        assert (await pipeline.run_destination("up", track(event="Test run"))).messages
        no_consent = track(context={"consent": {"categoryPreferences": {"analytics": False}}})
        assert (await pipeline.run_destination("files", no_consent)).skipped == "consent"
        assert (await pipeline.run_destination("up", no_consent)).skipped is None
    finally:
        await pipeline.stop()
