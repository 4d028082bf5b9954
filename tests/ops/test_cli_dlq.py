"""`relay dlq list|show|replay|purge` and `relay export` against a real queue file."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.upstream import FakeUpstream

BAD = {"m3", "m7"}


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=60)


def write_config(tmp_path: Path, queue: str, endpoint: str) -> Path:
    path = tmp_path / "cli.toml"
    path.write_text(f'[queue]\npath = "{queue}"\n[[destinations]]\nname = "seg"\ntype = "segment"\n'
                    f'endpoint = "{endpoint}"\n')
    return path


def reject_bad(batch: list[dict[str, Any]]) -> Any:
    bad = [e["messageId"] for e in batch if e["messageId"] in BAD]
    return (400, {}, json.dumps({"rejected": bad})) if bad else 200


async def wait_until(predicate: Any, timeout: float = 20.0) -> None:
    async def loop() -> None:
        while not predicate():
            await asyncio.sleep(0.05)
    await asyncio.wait_for(loop(), timeout)


async def test_rejected_events_are_listed_shown_replayed_and_purged(start_relay, tmp_path):
    upstream = FakeUpstream(default=reject_bad)
    await upstream.start()
    try:
        relay = await start_relay(destinations=[{
            "name": "seg", "type": "segment", "endpoint": upstream.url, "flush_interval": 0.02,
            "retry_initial": 0.02, "retry_max": 0.1}])
        batch = [{"type": "track", "userId": "u", "event": "E", "messageId": f"m{i}"} for i in range(10)]
        assert (await relay.post("/v1/batch", {"batch": batch, "writeKey": "wk"}))[0] == 200
        await wait_until(lambda: len(relay.dead_letters()) == 2 and len(upstream.delivered) == 8)
        config = write_config(tmp_path, relay.db_path, upstream.url)

        listed = json.loads(cli(config, "dlq", "list", "--destination", "seg", "--json").stdout)
        assert sorted(r["message_id"] for r in listed) == sorted(BAD)
        assert all(r["status"] == 400 and "rejected" in r["response"] for r in listed)
        assert all("write_key" not in r for r in listed)
        assert json.loads(cli(config, "dlq", "list", "--ingest", "--json").stdout) == []

        shown = json.loads(cli(config, "dlq", "show", str(listed[0]["id"])).stdout)
        assert shown["event"]["messageId"] == listed[0]["message_id"]

        status = json.loads(cli(config, "status", "--json").stdout)
        [dest] = status["destinations"]
        assert (dest["name"], dest["delivered"], dest["dead_lettered"]) == ("seg", 8, 2)

        refused = cli(config, "dlq", "purge")
        assert refused.returncode != 0 and "--all" in refused.stderr

        upstream.default = 200  # the upstream was fixed: replay goes through
        replayed = json.loads(cli(config, "dlq", "replay", "--destination", "seg", "--json").stdout)
        assert replayed == {"queued": 2, "still_invalid": 0}
        await wait_until(lambda: len(upstream.delivered) == 10)
        assert sorted(upstream.delivered_ids()[8:]) == sorted(BAD)
        assert relay.dead_letters() == []
    finally:
        await upstream.stop()


async def test_purge_and_export_dead_letters_from_ingest(relay, tmp_path):
    batch = [{"type": "track", "userId": "u", "messageId": "no-event"},
             {"type": "track", "userId": "u", "event": "ok", "messageId": "fine"}]
    assert (await relay.post("/v1/batch", {"batch": batch}))[0] == 200
    config = tmp_path / "plain.toml"
    config.write_text(f'[queue]\npath = "{relay.db_path}"\n')

    out = tmp_path / "dead.ndjson"
    assert cli(config, "export", "dead-letters", "--output", str(out)).returncode == 0
    [line] = out.read_text().splitlines()
    assert json.loads(line)["event"]["messageId"] == "no-event"
    assert "track needs event" in json.loads(line)["reason"]

    events = cli(config, "export", "events")
    assert [json.loads(x)["messageId"] for x in events.stdout.splitlines()] == ["fine"]

    replay = json.loads(cli(config, "dlq", "replay", "--ingest", "--json").stdout)
    assert replay == {"queued": 0, "still_invalid": 1}  # still breaks the protocol: kept

    purged = json.loads(cli(config, "dlq", "purge", "--reason", "needs event", "--json").stdout)
    assert purged == {"deleted": 1}
    assert relay.dead_letters() == []


async def test_replaying_ingest_dead_letters_runs_the_ingest_plugins_of_the_new_config(start_relay, tmp_path):
    plan = {"use": "tracking_plan", "options": {"events": {"Known": {}}, "unplanned_events": "block"}}
    relay = await start_relay(plugins=[plan])
    batch = [{"type": "track", "userId": "u", "event": "Legacy Name", "messageId": "legacy"},
             {"type": "track", "userId": "u", "event": "Unheard Of", "messageId": "unheard"}]
    status, body, _ = await relay.post("/v1/batch", {"batch": batch})
    assert (status, body["accepted"], body["rejected"]) == (200, 0, 2)
    await relay.relay.stop()

    config = tmp_path / "new.toml"
    config.write_text(
        f'[queue]\npath = "{relay.db_path}"\n'
        '[[plugins]]\nuse = "rename"\noptions = { events = { "Legacy Name" = "Known" } }\n'
        '[[plugins]]\nuse = "tracking_plan"\n'
        'options = { events = { Known = {} }, unplanned_events = "block" }\n'
    )
    replayed = json.loads(cli(config, "dlq", "replay", "--ingest", "--json").stdout)
    assert replayed == {"queued": 1, "still_invalid": 1}  # the plan still blocks "Unheard Of"
    [event] = relay.events()
    assert (event["messageId"], event["event"]) == ("legacy", "Known")  # rename ran on the replay
    assert [r[2] for r in relay.dead_letters()] == ["unheard"]
