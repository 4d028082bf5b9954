"""The routes browsers call besides the Segment API: CORS preflights that echo the requested
headers, RudderStack's beacon and source config, and analytics.js served by the relay."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

KEY = "k1"
ORIGIN = "http://shop.example"


async def test_preflight_from_an_allowed_origin_echoes_the_requested_headers(
        start_relay: Callable[..., Any]) -> None:
    running = await start_relay(server={"cors_origins": [ORIGIN]})
    asked = "anonymousid, content-type, rsa-retry-attempt, rsa-recovered"
    async with running.session.options(running.url + "/v1/track", headers={
            "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": asked}) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Headers"] == asked
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    async with running.session.options(running.url + "/v1/track", headers={
            "Origin": "http://elsewhere.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": asked}) as resp:
        assert "Access-Control-Allow-Headers" not in resp.headers
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_a_malformed_header_list_is_not_echoed(start_relay: Callable[..., Any]) -> None:
    running = await start_relay()
    async with running.session.options(running.url + "/v1/track", headers={
            "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-a, (bad)"}) as resp:
        assert "(bad)" not in resp.headers["Access-Control-Allow-Headers"]


async def test_beacon_batch_takes_its_write_key_from_the_query(start_relay: Callable[..., Any]) -> None:
    running = await start_relay(server={"write_keys": [KEY]})
    body = {"batch": [{"type": "track", "event": "B", "anonymousId": "a1", "messageId": "m-b1"}],
            "sentAt": "2026-01-01T00:00:00Z"}
    status, answer, _ = await running.post(f"/beacon/v1/batch?writeKey={KEY}", body,
                                           headers={"Content-Type": "text/plain"})
    assert status == 200 and answer["accepted"] == 1
    status, _, _ = await running.post("/beacon/v1/batch?writeKey=nope", body)
    assert status == 401
    assert [e["messageId"] for e in running.events()] == ["m-b1"]


async def test_source_config_enables_the_source_without_device_mode_destinations(
        start_relay: Callable[..., Any]) -> None:
    running = await start_relay(server={"write_keys": [KEY]})
    auth = {"Authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()}
    async with running.session.get(running.url + "/sourceConfig/?p=npm&v=3&writeKey=" + KEY,
                                   headers=auth) as resp:
        assert resp.status == 200
        config = await resp.json()
    assert config["source"]["enabled"] is True
    assert config["source"]["destinations"] == []
    assert config["source"]["config"]["statsCollection"]["metrics"]["enabled"] is False
    async with running.session.get(running.url + "/sourceConfig/?writeKey=other") as resp:
        assert resp.status == 401


def _fake_umd(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "standalone.js").write_text("/* standalone */")
    (folder / "queryString.bundle.0123abcd.js").write_text("/* chunk */")
    return folder


async def test_analytics_js_is_served_with_js_type_caching_and_cors(
        start_relay: Callable[..., Any], tmp_path: Path) -> None:
    umd = _fake_umd(tmp_path / "umd")
    running = await start_relay(server={"sdk_dir": str(umd)})
    async with running.session.get(running.url + f"/analytics.js/v1/{KEY}/analytics.min.js",
                                   headers={"Origin": ORIGIN}) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/javascript"
        assert "max-age=300" in resp.headers["Cache-Control"]
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert await resp.text() == "/* standalone */"
    async with running.session.get(running.url + "/analytics-next/bundles/queryString.bundle.0123abcd.js"
                                   ) as resp:
        assert resp.status == 200
        assert "immutable" in resp.headers["Cache-Control"]
    for bad in ("..%2Fsecret.js", "nope.js", "standalone.txt"):
        async with running.session.get(running.url + "/analytics-next/bundles/" + bad) as resp:
            assert resp.status == 404


async def test_without_the_package_the_answer_says_how_to_install_it(
        start_relay: Callable[..., Any], tmp_path: Path) -> None:
    running = await start_relay(server={"sdk_dir": str(tmp_path / "absent")})
    async with running.session.get(running.url + f"/analytics.js/v1/{KEY}/analytics.min.js") as resp:
        assert resp.status == 404
        assert "relay sdk install" in (await resp.json())["message"]
