"""user_agent: real user-agent strings become browser, os and device fields."""

from __future__ import annotations

from typing import Any

import pytest

from relay.plugins.builtin.user_agent import UserAgent, UserAgentOptions

CHROME_WINDOWS = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Chrome/120.0.0.0 Safari/537.36")
SAFARI_IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
                 "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1")
CHROME_ANDROID = ("Mozilla/5.0 (Linux; Android 13; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Chrome/116.0.0.0 Mobile Safari/537.36")
FIREFOX_MAC = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:121.0) Gecko/20100101 Firefox/121.0"


@pytest.fixture
async def plugin() -> UserAgent:
    parser = UserAgent()
    await parser.load(UserAgentOptions())
    return parser


@pytest.mark.parametrize(("agent", "expected"), [
    (CHROME_WINDOWS, {"browser": {"name": "Chrome", "version": "120.0.0"},
                      "os": {"name": "Windows", "version": "10"}}),
    (SAFARI_IPHONE, {"browser": {"name": "Mobile Safari", "version": "17.1"},
                     "os": {"name": "iOS", "version": "17.1"},
                     "device": {"manufacturer": "Apple", "model": "iPhone"}}),
    (CHROME_ANDROID, {"browser": {"name": "Chrome Mobile", "version": "116.0.0"},
                      "os": {"name": "Android", "version": "13"},
                      "device": {"manufacturer": "Samsung", "model": "SM-S918B"}}),
    (FIREFOX_MAC, {"browser": {"name": "Firefox", "version": "121.0"},
                   "os": {"name": "Mac OS X", "version": "10.15"},
                   "device": {"manufacturer": "Apple", "model": "Mac"}}),
    ("curl/8.4.0", {"browser": {"name": "curl", "version": "8.4.0"}}),
    ("nonsense", {}),
])
async def test_user_agent_is_parsed_into_context_fields(plugin: UserAgent, agent: str,
                                                        expected: dict[str, Any]) -> None:
    message = await plugin.event({"type": "page", "context": {"userAgent": agent}})
    assert message["context"] == {"userAgent": agent, **expected}


async def test_fields_the_sdk_sent_are_kept(plugin: UserAgent) -> None:
    context = {"userAgent": SAFARI_IPHONE, "os": {"name": "iOS", "version": "17.1.2"},
               "device": {"id": "d1", "model": "iPhone15,2"}}
    message = await plugin.event({"context": context})
    assert message["context"]["os"] == {"name": "iOS", "version": "17.1.2"}
    assert message["context"]["device"] == {"id": "d1", "model": "iPhone15,2", "manufacturer": "Apple"}


async def test_overwrite_replaces_what_the_sdk_sent() -> None:
    plugin = UserAgent()
    await plugin.load(UserAgentOptions(overwrite=True))
    context = {"userAgent": SAFARI_IPHONE, "os": {"name": "x", "version": "1"}}
    message = await plugin.event({"context": context})
    assert message["context"]["os"] == {"name": "iOS", "version": "17.1"}


@pytest.mark.parametrize("message", [{}, {"context": "x"}, {"context": {}}, {"context": {"userAgent": 5}},
                                     {"context": {"userAgent": ""}}])
async def test_messages_without_a_user_agent_pass_unchanged(plugin: UserAgent,
                                                             message: dict[str, Any]) -> None:
    assert await plugin.event(dict(message)) == message


async def test_parsed_fields_are_not_shared_between_messages(plugin: UserAgent) -> None:
    first = await plugin.event({"context": {"userAgent": CHROME_WINDOWS}})
    first["context"]["browser"]["name"] = "changed"
    second = await plugin.event({"context": {"userAgent": CHROME_WINDOWS}})
    assert second["context"]["browser"]["name"] == "Chrome"
