async def test_track_is_stored_before_the_answer(relay):
    status, body, _ = await relay.post("/v1/track", {"userId": "u1", "event": "Signed Up"})
    assert (status, body) == (200, {"success": True})
    [event] = relay.events()
    assert event["event"] == "Signed Up"
