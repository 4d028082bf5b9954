"""Secrets from the environment or a file (``${VAR}``, ``${env:VAR}``, ``${file:/path}``) in
every credential position; an unset variable names the key; ``relay check`` masks what is
secret (whatever its key), and shows a key that only names where a secret is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay import config
from relay.app import Relay
from relay.config import MASK
from relay.errors import ConfigError
from relay.ops import cli, logs

SECRETS = {
    "SOURCE_KEY": "src-key-1111", "ADMIN_TOKEN": "admin-tok-2222", "SEGMENT_KEY": "seg-key-3333",
    "POSTHOG_KEY": "phc_4444", "HMAC": "hmac-5555", "HOOK_TOKEN": "hook-tok-6666",
    "QUERY_TOKEN": "q-tok-7777",
}
FILE_SECRETS = {"second-source-key": "src-key-8888", "amplitude": "amp-key-9999", "salt": "salt-0000"}

CONFIG = """
[server]
write_keys = ["${SOURCE_KEY}", "${file:%(dir)s/second-source-key}"]

[queue]
path = "%(dir)s/queue.db"

[admin]
port = 0
token = "${env:ADMIN_TOKEN}"

[[destinations]]
name = "segment"
type = "segment"
endpoint = "http://127.0.0.1:9"
write_key = "${SEGMENT_KEY}"

[[destinations]]
name = "amplitude"
type = "amplitude"
endpoint = "http://127.0.0.1:9"
options = { api_key = "${file:%(dir)s/amplitude}" }

[[destinations]]
name = "posthog"
type = "posthog"
endpoint = "http://127.0.0.1:9"
options = { api_key = "${POSTHOG_KEY}" }

[[destinations]]
name = "hook"
type = "webhook"
[destinations.options]
url = "http://127.0.0.1:9/in?token=${QUERY_TOKEN}"
hmac_secret = "${HMAC}"
headers = { Authorization = "Bearer ${HOOK_TOKEN}" }

[[plugins]]
use = "privacy"
options = { hash = ["traits.email"], salt = "${file:%(dir)s/salt}" }

[[plugins]]
use = "privacy"
name = "by-env"
options = { hash = ["traits.email"], salt_env = "PII_SALT" }
"""


def _write(tmp_path: Path) -> Path:
    for name, value in FILE_SECRETS.items():
        (tmp_path / name).write_text(value + "\n")
    path = tmp_path / "relay.toml"
    path.write_text(CONFIG % {"dir": tmp_path})
    return path


def _env(**extra: str) -> dict[str, str]:
    return {**SECRETS, "PII_SALT": "pii", **extra}


def test_every_credential_position_takes_its_value_from_the_environment_or_a_file(tmp_path: Path) -> None:
    cfg = config.load(_write(tmp_path), _env())
    assert cfg.server.write_keys == ("src-key-1111", "src-key-8888")
    assert cfg.admin.token == "admin-tok-2222"
    segment, amplitude, posthog, hook = cfg.destinations
    assert segment.write_key == "seg-key-3333"
    assert amplitude.options["api_key"] == "amp-key-9999"  # the file's trailing newline dropped
    assert posthog.options["api_key"] == "phc_4444"
    assert hook.options["hmac_secret"] == "hmac-5555"
    assert hook.options["headers"]["Authorization"] == "Bearer hook-tok-6666"
    assert hook.options["url"].endswith("?token=q-tok-7777")
    assert cfg.plugins[0].options["salt"] == "salt-0000"


def test_relay_check_masks_every_secret_and_shows_the_name_of_a_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path)
    for name, value in _env().items():
        monkeypatch.setenv(name, value)
    assert cli.main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    for secret in [*SECRETS.values(), *FILE_SECRETS.values()]:
        assert secret not in out
    shown = json.loads(out)
    assert shown["plugins"][1]["options"]["salt_env"] == "PII_SALT"  # a name, not a secret
    assert shown["admin"]["token"] == MASK
    # what check hides, the logs hide
    assert set(SECRETS.values()) | set(FILE_SECRETS.values()) <= logs.secrets(config.load(path, _env()))


def test_a_value_taken_from_outside_is_masked_whatever_its_key(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('[[plugins]]\nuse = "rename"\noptions = { properties = { "${OLD}" = "new" } }\n'
                    '[log]\nlevel = "${LEVEL}"\n')
    cfg = config.load(path, {"LEVEL": "debug", "OLD": "unused"})
    assert cfg.log.level == "debug"
    assert config.masked(cfg)["log"]["level"] == MASK


@pytest.mark.parametrize(("line", "key"), [
    ('[admin]\ntoken = "${NOT_SET}"', "`$.admin.token`"),
    ('[server]\nwrite_keys = ["ok", "${NOT_SET}"]', "`$.server.write_keys[1]`"),
    ('[[destinations]]\nname = "s"\ntype = "segment"\nendpoint = "http://h"\nwrite_key = "${NOT_SET}"',
     "`$.destinations[0].write_key`"),
    ('[[destinations]]\nname = "w"\ntype = "webhook"\noptions = { url = "http://h", '
     'headers = { X-Key = "${NOT_SET}" } }', "`$.destinations[0].options.headers.X-Key`"),
])
def test_an_unset_variable_is_a_config_error_naming_the_key(tmp_path: Path, line: str, key: str) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError) as caught:
        config.load(path, {})
    assert key in str(caught.value) and "NOT_SET" in str(caught.value)


def test_a_missing_file_and_a_bad_reference_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(f'[admin]\ntoken = "${{file:{tmp_path}/absent}}"\n')
    with pytest.raises(ConfigError, match=r"`\$\.admin\.token`: cannot read the file"):
        config.load(path, {})
    path.write_text('[admin]\ntoken = "${vault:x}"\n')
    with pytest.raises(ConfigError, match=r"`\$\.admin\.token`: .*not a reference"):
        config.load(path, {})


def test_a_doubled_dollar_is_a_literal(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('[admin]\ntoken = "a$${B}c"\n')
    assert config.load(path, {}).admin.token == "a${B}c"


async def test_a_running_relay_uses_the_token_and_write_key_taken_from_outside(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-a-file-token\n")
    path = tmp_path / "relay.toml"
    path.write_text(f'[server]\nport = 0\nwrite_keys = ["${{KEY}}"]\n[queue]\npath = "{tmp_path}/q.db"\n'
                    f'[admin]\nport = 0\ntoken = "${{file:{tmp_path}/token}}"\n')
    relay = Relay(config.load(path, {"KEY": "env-write-key"}))
    await relay.start()
    try:
        async with aiohttp.ClientSession() as session:
            metrics = f"http://127.0.0.1:{relay.admin.port}/metrics"
            async with session.get(metrics) as resp:
                assert resp.status == 401
            async with session.get(metrics, headers={"Authorization": "Bearer from-a-file-token"}) as resp:
                assert resp.status == 200
            body: Any = {"userId": "u", "event": "e", "writeKey": "env-write-key"}
            async with session.post(f"http://127.0.0.1:{relay.port}/v1/track", json=body) as resp:
                assert resp.status == 200
    finally:
        await relay.stop()
