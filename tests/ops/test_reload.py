"""Reload: a new config is validated first; write keys, destinations and plugins change
without dropping the listener or any queued event; fixed keys say so."""

from __future__ import annotations

import asyncio
import gzip
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from relay.errors import ConfigError
from tests.conftest import make_config
from tests.support.upstream import FakeUpstream

FAST = {"flush_interval": 0.02, "retry_initial": 0.05, "retry_max": 0.2}


def track(i: int, key: str = "k1", **extra: object) -> dict[str, object]:
    return {"userId": "u", "event": "E", "messageId": f"m{i}", "writeKey": key, **extra}


async def test_write_keys_destinations_and_plugins_change_live(start_relay, tmp_path):
    upstream = FakeUpstream()
    await upstream.start()
    try:
        relay = await start_relay(server={"write_keys": ["k1"]})
        port = relay.relay.port
        for i in range(3):  # queued before any destination exists
            assert (await relay.post("/v1/track", track(i)))[0] == 200

        new = make_config(
            tmp_path, server={"write_keys": ["k2"]},
            destinations=[{"name": "up", "type": "segment", "endpoint": upstream.url, **FAST}],
            plugins=[{"use": "privacy", "name": "strip", "options": {"remove": ["properties.email"]}}],
        )
        assert await relay.relay.reload(new) == []
        assert relay.relay.port == port  # the same listener
        assert (await relay.post("/v1/track", track(9, "k1")))[0] == 401
        status, _, _ = await relay.post("/v1/track", track(3, "k2", properties={"email": "a@b.c", "x": 1}))
        assert status == 200
        await upstream.wait_for(4)
        assert upstream.delivered_ids() == ["m0", "m1", "m2", "m3"]  # the backlog, then the new one
        assert upstream.delivered[-1]["properties"] == {"x": 1}  # the new plugin ran
    finally:
        await upstream.stop()


async def test_fixed_keys_keep_their_running_values_and_say_so(start_relay, tmp_path):
    relay = await start_relay()
    running = relay.relay.config
    new = make_config(tmp_path, server={"port": 1, "cors_origins": ["https://shop.example"]},
                      queue={"path": str(tmp_path / "elsewhere.db")})
    kept = await relay.relay.reload(new)
    assert kept == ["server.port", "queue.path"]
    assert relay.relay.config.server.port == running.server.port
    assert relay.relay.config.queue.path == running.queue.path
    assert relay.relay.config.server.cors_origins == ("https://shop.example",)  # the rest applied
    assert (await relay.post("/v1/track", track(1)))[0] == 200


async def test_a_plugin_that_does_not_load_leaves_the_running_config(start_relay, tmp_path):
    relay = await start_relay(server={"write_keys": ["k1"]})
    bad = make_config(tmp_path, server={"write_keys": ["k2"]},
                      plugins=[{"use": "privacy", "options": {"no_such_option": 1}}])
    with pytest.raises(ConfigError, match="no_such_option"):
        await relay.relay.reload(bad)
    assert (await relay.post("/v1/track", track(1, "k1")))[0] == 200
    assert (await relay.post("/v1/track", track(2, "k2")))[0] == 401


def write_config(path: Path, queue: Path, out: Path, keys: list[str]) -> None:
    path.write_text(
        f'[server]\nport = 0\nwrite_keys = {json.dumps(keys)}\n[queue]\npath = "{queue}"\n'
        f'[admin]\nenabled = false\n'
        f'[[destinations]]\nname = "files"\ntype = "file"\npath = "{out}"\nflush_interval = 0.05\n'
    )


async def post(port: int, body: dict[str, object]) -> int:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.post(
        f"http://127.0.0.1:{port}/v1/track", json=body, timeout=aiohttp.ClientTimeout(total=10)
    ) as resp:
        return resp.status


async def wait_for_log(proc, text: str, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while text not in proc.log_path.read_text():
            await asyncio.sleep(0.05)


async def test_sighup_and_relay_reload_apply_a_good_file_and_refuse_a_bad_one(relay_process, tmp_path):
    queue, out = tmp_path / "q.db", tmp_path / "out"
    proc = relay_process("")
    write_config(proc.config_path, queue, out, ["k1"])
    port = await asyncio.to_thread(proc.start)
    assert await post(port, track(1, "k1")) == 200

    proc.config_path.write_text("[server\nbroken = ")  # a bad edit
    proc.proc.send_signal(signal.SIGHUP)
    await wait_for_log(proc, "reload refused")
    assert await post(port, track(2, "k1")) == 200  # still running on the old config

    write_config(proc.config_path, queue, out, ["k2"])
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "relay", "reload", "--config",
                                                    str(proc.config_path)], capture_output=True, text=True,
                                   timeout=30)
    assert done.returncode == 0, done.stderr
    await wait_for_log(proc, '"message":"reloaded"')
    assert await post(port, track(3, "k1")) == 401
    assert await post(port, track(4, "k2")) == 200

    def delivered() -> list[str]:
        return sorted(json.loads(line)["messageId"] for f in sorted(out.glob("*.ndjson.gz"))
                      for line in gzip.decompress(f.read_bytes()).splitlines())

    async with asyncio.timeout(15):  # the swapped destination goes on delivering; nothing was lost
        while delivered() != ["m1", "m2", "m4"]:
            await asyncio.sleep(0.05)
    assert await asyncio.to_thread(proc.terminate) == 0


async def test_admin_token_and_cors_origins_change_live(start_relay, tmp_path):
    import aiohttp

    relay = await start_relay(admin={"token": "old-token"}, server={"cors_origins": ["https://a.example"]})

    async def admin_status(token: str) -> int:
        async with relay.session.get(f"{relay.admin_url}/status",
                                     headers={"Authorization": f"Bearer {token}"},
                                     timeout=aiohttp.ClientTimeout(total=10)) as resp:
            return resp.status

    async def allowed_origin(origin: str) -> str | None:
        async with relay.session.options(f"{relay.url}/v1/t", headers={
                "Origin": origin, "Access-Control-Request-Method": "POST"},
                timeout=aiohttp.ClientTimeout(total=10)) as resp:
            return resp.headers.get("Access-Control-Allow-Origin")

    assert (await admin_status("old-token"), await admin_status("new-token")) == (200, 401)
    assert (await allowed_origin("https://a.example"), await allowed_origin("https://b.example")) == (
        "https://a.example", None)
    new = make_config(tmp_path, admin={"token": "new-token"},
                      server={"cors_origins": ["https://b.example"]})
    assert await relay.relay.reload(new) == []
    assert (await admin_status("old-token"), await admin_status("new-token")) == (401, 200)
    assert (await allowed_origin("https://a.example"), await allowed_origin("https://b.example")) == (
        None, "https://b.example")
