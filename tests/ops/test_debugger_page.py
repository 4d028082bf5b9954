"""The debugger page in a real headless Chromium (Debian's, driven by Playwright; no browser
download): events sent with the real segment-analytics-python SDK appear with the right
fields, their JSON and delivery outcome open on a click (delivered; dead-lettered with the
upstream's reason), filters and pause work, the token is required, and the page asks no
host but the relay."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from segment.analytics import Client

from relay.ops.tap import mask_key
from tests.support.forwarding import dest
from tests.support.upstream import FakeUpstream

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TOKEN = "debugger-test-token"
WRITE_KEY = "wk-browser-7731"
APPEAR = 2000  # ms an event may take to appear on the page
OUTCOME = 10_000  # ms a destination's outcome may take (batching, the fake upstream)


def _answer(batch: list[dict[str, Any]]) -> int:
    """The fake upstream refuses (400) any batch holding a "Bad Event"; the relay bisects it
    down to that event and dead-letters it."""
    return 400 if any(e.get("event") == "Bad Event" for e in batch) else 200


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def watched(start_relay: Callable[..., Any]) -> AsyncIterator[tuple[Any, FakeUpstream]]:
    upstream = FakeUpstream(default=_answer)
    await upstream.start()
    relay = await start_relay(server={"write_keys": [WRITE_KEY]}, admin={"token": TOKEN},
                              destinations=[dest("seg", upstream.url, max_events=10)])
    yield relay, upstream
    await upstream.stop()


class Sdk:
    """The real SDK, in sync mode (each call is one request, answered before it returns)."""

    def __init__(self, url: str) -> None:
        self.client = Client(WRITE_KEY, host=url, sync_mode=True, max_retries=1, timeout=10)

    async def track(self, user: str, event: str, **properties: Any) -> str:
        ok, msg = await asyncio.to_thread(self.client.track, user, event, properties)
        assert ok
        return str(msg["messageId"])

    async def identify(self, user: str, **traits: Any) -> str:
        ok, msg = await asyncio.to_thread(self.client.identify, user, traits)
        assert ok
        return str(msg["messageId"])

    async def page(self, anonymous_id: str, name: str) -> str:
        ok, msg = await asyncio.to_thread(self.client.page, None, None, name, {"path": "/" + name.lower()},
                                          anonymous_id=anonymous_id)
        assert ok
        return str(msg["messageId"])


def row(page: Page, message_id: str) -> Any:
    return page.locator(f'tr[data-message-id="{message_id}"]')


async def sign_in(page: Page, admin_url: str) -> None:
    await page.goto(admin_url + "/debugger")
    await expect(page.locator("#token")).to_be_visible()
    await page.fill("#token", "not-the-token")
    await page.click("#sign-in")
    await expect(page.locator(".error")).to_contain_text("not the admin token")
    await page.fill("#token", TOKEN)
    await page.click("#sign-in")
    await expect(page.locator("#connection")).to_have_text("live", timeout=5000)


async def test_the_debugger_page_shows_sdk_events_their_json_and_outcomes_filters_and_pause(
        watched: tuple[Any, FakeUpstream], browser: Browser, tmp_path: Path) -> None:
    relay, _ = watched
    admin = urlsplit(relay.admin_url)
    requested: list[str] = []
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    page.on("request", lambda request: requested.append(request.url))
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        await sign_in(page, relay.admin_url)
        sdk = Sdk(relay.url)

        # each event appears within 2 s, with its fields
        ordered = await sdk.track("user-1", "Order Completed", revenue=42)
        await expect(row(page, ordered)).to_be_visible(timeout=APPEAR)
        identified = await sdk.identify("user-2", plan="pro")
        await expect(row(page, identified)).to_be_visible(timeout=APPEAR)
        viewed = await sdk.page("anon-3", "Home")
        await expect(row(page, viewed)).to_be_visible(timeout=APPEAR)
        for message_id, kind, name, user in ((ordered, "track", "Order Completed", "user-1"),
                                             (identified, "identify", "", "user-2"),
                                             (viewed, "page", "Home", "anon-3")):
            line = row(page, message_id)
            await expect(line.locator(".type")).to_have_text(kind)
            await expect(line.locator(".name")).to_have_text(name)
            await expect(line.locator(".user")).to_have_text(user)
            await expect(line.locator(".key")).to_have_text(mask_key(WRITE_KEY))
        # newest first
        assert await page.locator("#events tbody tr").first.get_attribute("data-message-id") == viewed

        # open one: its JSON as stored, and its delivery
        await row(page, ordered).click()
        await expect(page.locator("#detail-title")).to_contain_text(ordered)
        await expect(page.locator("#detail-json")).to_contain_text('"Order Completed"')
        await expect(page.locator("#detail-json")).to_contain_text('"revenue": 42')
        await expect(page.locator('#detail-outcomes li[data-destination="seg"]')).to_contain_text(
            "delivered (status 200", timeout=OUTCOME)
        await expect(row(page, ordered)).to_have_class(re.compile(r"\boutcome-delivered\b"))

        # dead-lettered by the upstream (400), with the reason
        bad = await sdk.track("user-1", "Bad Event")
        await expect(row(page, bad)).to_be_visible(timeout=APPEAR)
        await row(page, bad).click()
        outcome = page.locator('#detail-outcomes li[data-destination="seg"]')
        await expect(outcome).to_contain_text("dead-lettered: rejected by seg", timeout=OUTCOME)
        await expect(outcome).to_contain_text("400")
        await expect(row(page, bad)).to_have_class(re.compile(r"\boutcome-dead_lettered\b"))

        # refused at ingest: shown with its reason
        async with aiohttp.ClientSession() as session:
            refused_id = str(uuid.uuid4())
            async with session.post(relay.url + "/v1/batch", json={"writeKey": WRITE_KEY, "batch": [
                    {"type": "track", "userId": "user-9", "messageId": refused_id}]}) as resp:
                assert resp.status == 200
        await expect(row(page, refused_id)).to_have_class(re.compile(r"\boutcome-refused\b"), timeout=APPEAR)
        await row(page, refused_id).click()
        await expect(page.locator("#detail-outcomes")).to_contain_text("refused at ingest")

        # filters: by type, by event name, by search
        await page.select_option("#f-type", "identify")
        await expect(row(page, identified)).to_be_visible()
        await expect(row(page, ordered)).to_be_hidden()
        await page.select_option("#f-type", "")
        await page.fill("#f-event", "Order Completed")
        await expect(row(page, ordered)).to_be_visible()
        await expect(row(page, viewed)).to_be_hidden()
        await page.fill("#f-event", "")
        await page.select_option("#f-outcome", "dead_lettered")
        await expect(row(page, bad)).to_be_visible()
        await expect(row(page, ordered)).to_be_hidden()
        await page.select_option("#f-outcome", "")
        await page.fill("#search", "anon-3")
        await expect(row(page, viewed)).to_be_visible()
        await expect(row(page, identified)).to_be_hidden()
        await page.fill("#search", "")
        await expect(page.locator("#connection")).to_have_text("live", timeout=5000)
        # the server-side filter too: a new event of another type is not sent to the page
        await page.select_option("#f-type", "track")
        await page.wait_for_timeout(600)  # the page reconnects with the filter after a pause in typing
        await expect(page.locator("#connection")).to_have_text("live", timeout=5000)
        filtered_out = await sdk.identify("user-5")
        kept = await sdk.track("user-5", "Kept")
        await expect(row(page, kept)).to_be_visible(timeout=APPEAR)
        assert await row(page, filtered_out).count() == 0
        await page.select_option("#f-type", "")
        await page.wait_for_timeout(600)
        await expect(page.locator("#connection")).to_have_text("live", timeout=5000)

        # pause: nothing new is listed, what was skipped is counted; resume lists again
        await page.click("#pause")
        await expect(page.locator("#pause")).to_have_text("Resume")
        skipped = [await sdk.track("user-6", "While Paused"), await sdk.identify("user-6")]
        await expect(page.locator("#skipped")).to_have_text("2 skipped while paused", timeout=APPEAR)
        for message_id in skipped:
            assert await row(page, message_id).count() == 0
        await page.click("#pause")
        after = await sdk.track("user-6", "After Resume")
        await expect(row(page, after)).to_be_visible(timeout=APPEAR)

        # the charts are drawn by the page from the relay's series
        await expect(page.locator('#chart-received polyline[data-series="received"]')).to_have_count(1,
                                                                                                     timeout=5000)
        await expect(page.locator('#chart-delivered polyline[data-series="seg"]')).to_have_count(1)

        screenshot = tmp_path / "debugger.png"
        await row(page, bad).click()
        await page.screenshot(path=str(screenshot), full_page=True)
        print(f"debugger screenshot: {screenshot}")
        assert screenshot.stat().st_size > 0
    finally:
        await context.close()
    assert errors == []
    foreign = [url for url in requested if urlsplit(url).netloc != admin.netloc]
    assert foreign == [], f"the page asked other hosts: {foreign}"
    assert any("/debugger/assets/debugger.js" in url for url in requested)


async def test_the_debugger_wants_the_token_and_never_takes_it_in_a_url(
        watched: tuple[Any, FakeUpstream], browser: Browser) -> None:
    relay, _ = watched
    async with aiohttp.ClientSession() as session:
        for path in ("/debugger/stream", "/debugger/series", "/debugger"):
            async with session.get(relay.admin_url + path) as resp:
                assert resp.status == 401, path
        async with session.get(relay.admin_url + f"/debugger?token={TOKEN}") as resp:
            assert resp.status == 401
        async with session.get(relay.admin_url + "/debugger/series",
                               headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 200
            assert "destinations" in json.loads(await resp.read())
    context = await browser.new_context()
    page = await context.new_page()
    try:
        await page.goto(relay.admin_url + "/debugger")
        assert await page.locator("#events").count() == 0  # the login form, not the page
        await expect(page.locator("#token")).to_be_visible()
        answer = await page.request.get(relay.admin_url + "/debugger/stream")
        assert answer.status == 401
        await sign_in(page, relay.admin_url)
        assert TOKEN not in page.url
        cookies = await context.cookies()
        assert cookies and all(TOKEN not in c["value"] for c in cookies)
    finally:
        await context.close()
