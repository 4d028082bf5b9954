"""Real SDKs in Debian's Chromium against a relay on loopback: each page's events are stored,
and the page contacts no host but the relay (and, for its own HTML, the site serving it)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.support import browser as support

pytestmark = pytest.mark.slow
WRITE_KEY = "browser-key"

RUDDER_PAGE = """<!doctype html><html><head><title>rudder</title>
<script src="/rudder.js"></script>
<script>
  const rs = new rudderanalytics.RudderAnalytics();
  rs.load("%(key)s", "%(relay)s", Object.assign({configUrl: "%(relay)s"}, %(options)s));
  rs.ready(() => { window.sdkReady = true; });
  %(calls)s
</script></head><body>rudder</body></html>"""

RUDDER_CALLS = """
  rs.page("Docs", "Home", {marker: "rs"});
  rs.identify("rs-user", {email: "rs@example.com"});
  rs.track("Plan Chosen", {marker: "rs", plan: "pro"});
  rs.group("rs-group", {name: "Acme"});
  rs.alias("rs-user-2", "rs-user");
"""

BEACON_CALLS = """
  for (let i = 0; i < 3; i++) rs.track("Beaconed", {marker: "beacon", n: i});
"""

def readme_snippet(relay: str, calls: str = "") -> str:
    """The README's snippet, as a reader would paste it, with the relay's address and key."""
    readme = (support.ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("```html\n", 1)[1].split("```", 1)[0]
    script = block.replace("http://127.0.0.1:8088", relay).replace("WRITE_KEY", WRITE_KEY)
    script = script.replace("</script>", f"</script><script>{calls}</script>")
    return f"<!doctype html><html><head><title>snippet</title>{script}</head><body>snippet</body></html>"


SNIPPET_CALLS = """analytics.identify("sn-user", {plan: "pro"});
  analytics.track("Snippet Clicked", {marker: "snippet"});"""


def _stored(running: Any) -> list[dict[str, Any]]:
    return running.events()


def _only_relay(record: support.Requests, site: str, relay: str) -> None:
    """No foreign host was asked for; everything but the site's own HTML/test files came
    from the relay."""
    assert record.foreign == [], f"the page contacted other hosts: {record.foreign}"
    assert all(url.split(" ", 1)[1].startswith((relay, site)) for url in record.seen), record.seen


async def test_rudderstack_v3_sdk_delivers_every_call_through_the_relay(
        start_relay: Callable[..., Any]) -> None:
    sdk = support.rudderstack_umd()
    pages = {"/rs.html": "", "/beacon.html": ""}
    async with support.page_server(pages, {"/rudder.js": sdk}) as site:
        running = await start_relay(server={"write_keys": [WRITE_KEY], "cors_origins": [site]})
        relay = running.url
        pages["/rs.html"] = RUDDER_PAGE % {"key": WRITE_KEY, "relay": relay, "options": "{}",
                                           "calls": RUDDER_CALLS}
        pages["/beacon.html"] = RUDDER_PAGE % {
            "key": WRITE_KEY, "relay": relay, "calls": BEACON_CALLS,
            "options": json.dumps({"useBeacon": True, "beaconQueueOptions": {"flushQueueInterval": 200}}),
        }
        async with support.chromium() as chromium:
            context, record = await support.guarded_context(chromium, {site, relay})
            page = await context.new_page()
            console: list[str] = []
            page.on("console", lambda m: console.append(m.text))
            await page.goto(f"{site}/rs.html")
            want = {"page", "identify", "track", "group", "alias"}
            await support.wait_for(lambda: want <= {e["type"] for e in _stored(running)},
                                   why=lambda: (console, record.seen, record.foreign))
            beacon = await context.new_page()
            await beacon.goto(f"{site}/beacon.html")
            await support.wait_for(
                lambda: len([e for e in _stored(running)
                             if e.get("properties", {}).get("marker") == "beacon"]) == 3,
                why=lambda: (console, record.seen, record.foreign))
            await context.close()
    events = _stored(running)
    by_type = {e["type"]: e for e in events if e.get("properties", {}).get("marker") != "beacon"}
    assert by_type["identify"]["userId"] == "rs-user"
    assert by_type["track"]["event"] == "Plan Chosen"
    assert by_type["group"]["groupId"] == "rs-group"
    assert by_type["alias"]["previousId"] == "rs-user"
    assert all(e["context"]["library"]["name"].startswith("RudderLabs") for e in events)
    assert any("/beacon/v1/batch?writeKey=" in url for url in record.seen)
    assert any("/sourceConfig/" in url for url in record.seen)
    _only_relay(record, site, relay)


async def test_segment_snippet_loads_analytics_js_from_the_relay_alone(
        start_relay: Callable[..., Any]) -> None:
    pages = {"/snippet.html": ""}
    async with support.page_server(pages) as site:
        running = await start_relay(server={"sdk_dir": str(support.segment_umd())})
        relay = running.url
        pages["/snippet.html"] = readme_snippet(relay, SNIPPET_CALLS)
        async with support.chromium() as chromium:
            context, record = await support.guarded_context(chromium, {site, relay})
            page = await context.new_page()
            await page.goto(f"{site}/snippet.html")
            await support.wait_for(lambda: {"page", "identify", "track"} <= {
                e["type"] for e in _stored(running)}, why=lambda: (record.seen, record.foreign))
            await context.close()
    assert any("/analytics.js/v1/browser-key/analytics.min.js" in url for url in record.seen)
    assert any("/v1/projects/browser-key/settings" in url for url in record.seen)
    _only_relay(record, site, relay)


async def test_querystring_api_loads_its_chunk_from_the_relay_and_delivers(
        start_relay: Callable[..., Any]) -> None:
    pages = {"/qs.html": ""}
    async with support.page_server(pages) as site:
        running = await start_relay(server={"sdk_dir": str(support.segment_umd())})
        relay = running.url
        pages["/qs.html"] = readme_snippet(relay)
        async with support.chromium() as chromium:
            context, record = await support.guarded_context(chromium, {site, relay})
            page = await context.new_page()
            await page.goto(f"{site}/qs.html?ajs_uid=qs-user&ajs_event=Came%20Back&ajs_aid=qs-anon")

            def arrived() -> bool:
                events = _stored(running)
                return (any(e["type"] == "identify" and e.get("userId") == "qs-user" for e in events)
                        and any(e["type"] == "track" and e.get("event") == "Came Back" for e in events))

            await support.wait_for(arrived, why=lambda: (record.seen, record.foreign, _stored(running)))
            await context.close()
    track = next(e for e in _stored(running) if e["type"] == "track")
    assert track["anonymousId"] == "qs-anon"
    assert any("/analytics-next/bundles/queryString" in url for url in record.seen)
    _only_relay(record, site, relay)


# The npm form (here its UMD build, as a bundler would include it): only cdnURL is set.
BROWSER_LOAD_PAGE = """<!doctype html><html><head><title>npm</title>
<script src="/analytics-next.js"></script>
<script>
  const analytics = AnalyticsNext.AnalyticsBrowser.load({writeKey: "%(key)s", cdnURL: "%(relay)s"});
  analytics.identify("npm-user");
  analytics.track("Npm Clicked", {marker: "npm"});
</script></head><body>npm</body></html>"""


async def test_analytics_browser_load_with_only_cdn_url_at_the_relay_delivers(
        start_relay: Callable[..., Any]) -> None:
    pages = {"/npm.html": ""}
    files = {"/analytics-next.js": support.segment_umd() / "index.js"}
    async with support.page_server(pages, files) as site:
        running = await start_relay(server={"sdk_dir": str(support.segment_umd())})
        relay = running.url
        pages["/npm.html"] = BROWSER_LOAD_PAGE % {"key": WRITE_KEY, "relay": relay}
        async with support.chromium() as chromium:
            context, record = await support.guarded_context(chromium, {site, relay})
            page = await context.new_page()
            await page.goto(f"{site}/npm.html")
            await support.wait_for(
                lambda: any(e.get("event") == "Npm Clicked" for e in _stored(running))
                and any(e.get("userId") == "npm-user" for e in _stored(running)),
                why=lambda: (record.seen, record.foreign))
            await context.close()
    assert any("/v1/projects/browser-key/settings" in url for url in record.seen)
    _only_relay(record, site, relay)
