import asyncio

from tests.support.upstream import FakeUpstream


async def test_events_reach_the_upstream_in_order_and_leave_the_queue(start_relay):
    upstream = FakeUpstream()
    await upstream.start()
    try:
        relay = await start_relay(destinations=[{
            "name": "seg", "type": "segment", "endpoint": upstream.url, "flush_interval": 0.05,
            "max_events": 7,
        }])
        ids = []
        for i in range(30):
            status, _, _ = await relay.post("/v1/track", {"userId": "u", "event": "E", "messageId": f"m{i}",
                                                         "writeKey": "wk"})
            assert status == 200
            ids.append(f"m{i}")
        await upstream.wait_for(30)
        assert upstream.delivered_ids() == ids
        assert all(r.write_key == "wk" and r.auth_user == "wk" for r in upstream.requests)
        for _ in range(50):
            if not relay.rows("SELECT id FROM events"):
                break
            await asyncio.sleep(0.05)
        assert relay.rows("SELECT count(*) FROM events") == [(0,)]
        assert relay.rows("SELECT delivered FROM progress WHERE destination = 'seg'") == [(30,)]
    finally:
        await upstream.stop()

