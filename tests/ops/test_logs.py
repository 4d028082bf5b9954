"""Logs: the configured level and format, and no secret in any line."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import msgspec
import pytest

from relay.config import Config
from relay.ops import logs
from tests.conftest import free_port
from tests.support.upstream import FakeUpstream

INGEST_KEY = "ingest-key-SECRET-1"
DEST_KEY = "dest-key-SECRET-2"
TOKEN = "admin-token-SECRET-3"
OPTION_SECRET = "option-SECRET-4"
WAIT = 20.0


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def config(endpoint: str = "http://127.0.0.1:9", tmp_path: Path | None = None) -> Config:
    return msgspec.convert({
        "server": {"host": "127.0.0.1", "port": 0, "write_keys": [INGEST_KEY, "another-ingest-key"]},
        "admin": {"host": "127.0.0.1", "port": 0, "token": TOKEN},
        "queue": {"path": str((tmp_path or Path("/nonexistent")) / "q.db")},
        "destinations": [{"name": "seg", "type": "segment", "endpoint": endpoint, "write_key": DEST_KEY,
                          "options": {}, "flush_interval": 0.01, "retry_initial": 0.05, "retry_max": 0.1}],
        "plugins": [{"use": "x", "options": {"api_token": OPTION_SECRET, "region": "eu"}}],
    }, Config)


def test_the_secrets_are_every_value_relay_check_masks() -> None:
    assert logs.secrets(config()) == {INGEST_KEY, "another-ingest-key", TOKEN, DEST_KEY, OPTION_SECRET}


def test_a_config_without_secrets_masks_nothing() -> None:
    assert logs.secrets(msgspec.convert({}, Config)) == set()


def captured(json_lines: bool | None, level: str = "debug") -> io.StringIO:
    stream = io.StringIO()
    logs.setup(level, json_lines, stream=stream)
    logs.mask_secrets([INGEST_KEY, DEST_KEY, TOKEN])
    return stream


@pytest.mark.parametrize("json_lines", [True, False])
def test_secrets_are_masked_in_messages_arguments_extras_and_tracebacks(json_lines: bool) -> None:
    stream = captured(json_lines)
    log = logging.getLogger("relay.somewhere")
    log.warning("key %s refused", INGEST_KEY, extra={"error": f"HTTP 401: bad key {DEST_KEY}",
                                                     "detail": {"keys": [TOKEN, "fine"]}})
    try:
        raise ValueError(f"token {TOKEN} in an exception")
    except ValueError:
        log.exception("failed with %r", {"writeKey": DEST_KEY})
    log.info("stack", stack_info=True, extra={"token": TOKEN})
    out = stream.getvalue()
    for secret in (INGEST_KEY, DEST_KEY, TOKEN):
        assert secret not in out
    assert out.count(logs.MASK) == 6  # message, error, detail, argument, exception, token
    assert "fine" in out and "ValueError" in out and "refused" in out
    lines = out.splitlines()
    if json_lines:
        first = json.loads(lines[0])
        assert first["message"] == f"key {logs.MASK} refused"
        assert first["detail"] == {"keys": [logs.MASK, "fine"]}
    else:
        assert lines[0].endswith(f"key {logs.MASK} refused error=HTTP 401: bad key {logs.MASK} "
                                 f"detail={{'keys': ['{logs.MASK}', 'fine']}}")


def test_masking_again_after_a_reload_keeps_the_old_secrets_masked() -> None:
    stream = captured(True)
    logs.mask_secrets(["rotated-in-key"])
    logging.getLogger("relay").warning("%s %s", INGEST_KEY, "rotated-in-key")
    assert json.loads(stream.getvalue())["message"] == f"{logs.MASK} {logs.MASK}"


def test_setup_honours_the_level_and_the_format() -> None:
    stream = captured(False, level="warning")
    logging.getLogger("relay").info("not shown")
    logging.getLogger("relay").warning("shown", extra={"port": 8088})
    [line] = stream.getvalue().splitlines()
    assert " WARNING relay: shown port=8088" in line

    stream = captured(None, level="info")  # not a terminal: JSON lines
    logging.getLogger("relay").info("listening", extra={"port": 8088})
    entry = json.loads(stream.getvalue())
    assert (entry["level"], entry["message"], entry["port"]) == ("info", "listening", 8088)


async def test_a_secret_an_upstream_echoes_is_masked_in_the_delivery_log(start_relay, tmp_path: Path) -> None:
    upstream = FakeUpstream(default=(500, {}, f'{{"message": "bad write key {DEST_KEY}"}}'))
    await upstream.start()
    stream = io.StringIO()
    logs.setup("debug", True, stream=stream)
    try:
        cfg = msgspec.structs.replace(config(upstream.url, tmp_path), plugins=())  # "x" is not a plugin
        logs.mask_secrets(logs.secrets(cfg))
        relay = await start_relay(cfg)
        status, _, _ = await relay.post("/v1/track", {"userId": "u", "event": "E", "writeKey": INGEST_KEY})
        assert status == 200
        deadline = time.monotonic() + WAIT
        while "destination state" not in stream.getvalue() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    finally:
        await upstream.stop()
    out = stream.getvalue()
    assert "destination state" in out
    assert f"bad write key {logs.MASK}" in out
    assert DEST_KEY not in out and INGEST_KEY not in out


async def test_relay_run_logs_text_at_the_configured_level_without_secrets(relay_process, tmp_path: Path):
    """`relay run` with [log] format = "text", level = "warning": readable lines, no info, no secret."""
    upstream = FakeUpstream(default=(500, {}, f"bad write key {DEST_KEY}"))
    await upstream.start()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "n.sock"))
    notify.setblocking(False)
    proc = relay_process(f"""
[server]
host = "127.0.0.1"
port = 0
write_keys = ["{INGEST_KEY}"]
[admin]
token = "{TOKEN}"
[queue]
path = "{tmp_path / 'q.db'}"
[log]
level = "warning"
format = "text"
[[destinations]]
name = "seg"
type = "segment"
endpoint = "{upstream.url}"
write_key = "{DEST_KEY}"
flush_interval = 0.01
retry_initial = 0.05
retry_max = 0.1
""", env={"NOTIFY_SOCKET": str(tmp_path / "n.sock"), "RELAY_SERVER_PORT": str(free_port())})
    try:
        proc.launch()
        await wait_for_datagram(notify, b"READY=1")  # text logs: the notification says it is up
        port = int(proc.env["RELAY_SERVER_PORT"])
        async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{port}/v1/track", json={"userId": "u", "event": "E"},
            headers={"Authorization": "Basic " + base64.b64encode(f"{INGEST_KEY}:".encode()).decode()},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as resp:
            assert resp.status == 200
        deadline = time.monotonic() + WAIT
        while "destination state" not in proc.log_path.read_text() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await asyncio.to_thread(proc.terminate) == 0
    finally:
        notify.close()
        await upstream.stop()
    out = proc.log_path.read_text()
    lines = out.splitlines()
    assert any(" WARNING relay.forward.forwarder: destination state " in line
               and f"bad write key {logs.MASK}" in line for line in lines), out
    assert not any(" INFO " in line for line in lines), out
    assert not any(line.startswith("{") for line in lines), out
    for secret in (INGEST_KEY, DEST_KEY, TOKEN):
        assert secret not in out


async def wait_for_datagram(sock: socket.socket, wanted: bytes) -> None:
    loop = asyncio.get_running_loop()

    async def receive() -> None:
        while wanted not in (await loop.sock_recv(sock, 4096)).split(b"\n"):
            pass
    await asyncio.wait_for(receive(), WAIT)
