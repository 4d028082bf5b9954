"""A write from a browser origin that cors_origins does not allow is refused (a text/plain
POST needs no preflight, so the browser alone would send it); servers and SDKs send no
Origin and are not affected."""

from __future__ import annotations

import pytest

ALLOWED = "https://shop.example"
EVENT = {"userId": "u", "event": "E"}


@pytest.fixture
async def shop(start_relay):
    return await start_relay(server={"cors_origins": [ALLOWED]})


@pytest.mark.parametrize(("path", "body"), [("/v1/t", EVENT), ("/v1/track", EVENT),
                                            ("/v1/batch", {"batch": [EVENT]})])
async def test_a_text_plain_write_from_an_origin_not_allowed_is_refused_403_and_not_stored(
        shop, path, body):
    status, answer, headers = await shop.post(path, body, headers={
        "Origin": "https://evil.example", "Content-Type": "text/plain"})
    assert status == 403
    assert answer == {"success": False, "code": "origin_not_allowed",
                      "message": answer["message"], "error": answer["message"]}
    assert "Access-Control-Allow-Origin" not in headers
    assert shop.events() == [] and shop.dead_letters() == []


async def test_writes_without_an_origin_are_not_affected_by_cors_origins(shop):
    status, answer, _ = await shop.post("/v1/track", EVENT)
    assert (status, answer) == (200, {"success": True})
    assert len(shop.events()) == 1


async def test_a_write_from_an_allowed_origin_is_stored(shop):
    status, answer, headers = await shop.post("/v1/t", EVENT, headers={
        "Origin": ALLOWED, "Content-Type": "text/plain"})
    assert (status, answer) == (200, {"success": True})
    assert headers["Access-Control-Allow-Origin"] == ALLOWED
    assert len(shop.events()) == 1


async def test_a_star_in_cors_origins_allows_writes_from_every_origin(relay):
    status, answer, headers = await relay.post("/v1/t", EVENT, headers={
        "Origin": "https://anywhere.example", "Content-Type": "text/plain"})
    assert (status, answer) == (200, {"success": True})
    assert headers["Access-Control-Allow-Origin"] == "*"


async def test_a_pixel_from_an_origin_not_allowed_still_answers_its_image(shop):
    async with shop.session.get(shop.url + "/v1/pixel/track?userId=u&event=E",
                                headers={"Origin": "https://evil.example"}) as resp:
        assert (resp.status, resp.content_type) == (200, "image/gif")
