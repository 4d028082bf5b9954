"""Configuration: defaults, the TOML file, RELAY_<SECTION>_<KEY> overrides, errors that name the
key and the file, and ``relay check`` with secrets masked."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from relay import config
from relay.app import Relay
from relay.config import MASK, Config, load
from relay.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "relay.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    return {**env, **extra}


def relay_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay", *args], cwd=cwd, env=env or clean_env(),
                          capture_output=True, text=True, timeout=60)


# --- defaults and the file ---------------------------------------------------------------------------


def test_without_a_file_or_environment_the_embedded_defaults_apply():
    loaded = config.load(None, environ={})
    assert loaded == Config()
    assert (loaded.server.host, loaded.server.port) == ("127.0.0.1", 8088)
    assert loaded.server.write_keys == () and loaded.server.trusted_proxies == ()
    assert loaded.server.cors_origins == ("*",)
    assert (loaded.queue.path, loaded.queue.durability) == ("relay-data/queue.db", "fsync")
    assert (loaded.queue.max_bytes, loaded.queue.when_full, loaded.queue.dedup_window) == (
        1073741824, "reject", 86400)


def test_a_file_sets_the_keys_it_names_and_leaves_the_rest_at_their_defaults(tmp_path):
    path = write(tmp_path, '[server]\nport = 9001\nwrite_keys = ["a", "b"]\n'
                           'trusted_proxies = ["10.0.0.0/8", "127.0.0.1"]\ncors_origins = ["https://x.example"]\n'
                           '[queue]\npath = "q/queue.db"\ndurability = "os"\nwhen_full = "drop_oldest"\n'
                           'dedup_window = 0\nmax_bytes = 2097152\n')
    loaded = config.load(path, environ={})
    assert loaded.server.port == 9001
    assert loaded.server.host == "127.0.0.1"
    assert loaded.server.write_keys == ("a", "b")
    assert loaded.server.trusted_proxies == ("10.0.0.0/8", "127.0.0.1")
    assert loaded.server.cors_origins == ("https://x.example",)
    assert loaded.queue == config.QueueConfig(path="q/queue.db", durability="os", max_bytes=2097152,
                                              when_full="drop_oldest", dedup_window=0)


def test_the_loaded_config_is_frozen(tmp_path):
    loaded = config.load(None, environ={})
    with pytest.raises(AttributeError):
        loaded.server.port = 1  # type: ignore[misc]


def test_the_shipped_relay_toml_is_valid():
    loaded = config.load(REPO / "relay.toml", environ={})
    assert (loaded.server.host, loaded.server.port) == ("127.0.0.1", 8088)
    assert loaded.queue.durability == "fsync"


BAD_FILES = [
    ("unknown key", "[server]\nprot = 8080\n", ["prot", "$.server"]),
    ("unknown section", "[srever]\nport = 8080\n", ["srever"]),
    ("wrong type", '[server]\nport = "8080"\n', ["$.server.port", "int"]),
    ("wrong type in a list", "[server]\nwrite_keys = [1]\n", ["$.server.write_keys[0]"]),
    ("a list given as text", '[server]\ncors_origins = "*"\n', ["$.server.cors_origins", "array"]),
    ("port out of range", "[server]\nport = 70000\n", ["$.server.port", "65535"]),
    ("bad durability", '[queue]\ndurability = "sometimes"\n', ["$.queue.durability", "sometimes"]),
    ("bad when_full", '[queue]\nwhen_full = "explode"\n', ["$.queue.when_full", "explode"]),
    ("cap too small", "[queue]\nmax_bytes = 10\n", ["$.queue.max_bytes"]),
    ("negative dedup window", "[queue]\ndedup_window = -1\n", ["$.queue.dedup_window"]),
    ("bad trusted proxy", '[server]\ntrusted_proxies = ["proxy.local"]\n',
     ["trusted_proxies[0]", "proxy.local"]),
    ("empty queue path", '[queue]\npath = ""\n', ["$.queue.path"]),
    ("not TOML", "[server\nport = 1\n", ["not valid TOML"]),
]


@pytest.mark.parametrize(("text", "names"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_a_bad_file_is_an_error_naming_the_key_and_the_file(tmp_path, text, names):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        config.load(path, environ={})
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    for name in names:
        assert name in message


def test_a_missing_file_is_an_error_naming_the_file(tmp_path):
    with pytest.raises(ConfigError) as caught:
        config.load(tmp_path / "absent.toml", environ={})
    assert str(caught.value) == f"{tmp_path / 'absent.toml'}: file not found"


# --- the environment --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "section", "key", "expected"),
    [
        ("RELAY_SERVER_PORT", "9000", "server", "port", 9000),
        ("RELAY_SERVER_HOST", "0.0.0.0", "server", "host", "0.0.0.0"),
        ("RELAY_SERVER_HOST", "::1", "server", "host", "::1"),
        ("RELAY_SERVER_WRITE_KEYS", '["k1", "k2"]', "server", "write_keys", ("k1", "k2")),
        ("RELAY_SERVER_TRUSTED_PROXIES", '["10.0.0.0/8"]', "server", "trusted_proxies", ("10.0.0.0/8",)),
        ("RELAY_SERVER_CORS_ORIGINS", '["https://a.example"]', "server", "cors_origins",
         ("https://a.example",)),
        ("RELAY_QUEUE_PATH", "/var/lib/relay/q.db", "queue", "path", "/var/lib/relay/q.db"),
        ("RELAY_QUEUE_PATH", "2024", "queue", "path", "2024"),
        ("RELAY_QUEUE_PATH", '"quoted.db"', "queue", "path", "quoted.db"),
        ("RELAY_QUEUE_DURABILITY", "os", "queue", "durability", "os"),
        ("RELAY_QUEUE_MAX_BYTES", "2097152", "queue", "max_bytes", 2097152),
        ("RELAY_QUEUE_WHEN_FULL", "drop_oldest", "queue", "when_full", "drop_oldest"),
        ("RELAY_QUEUE_DEDUP_WINDOW", "0", "queue", "dedup_window", 0),
        ("RELAY_ADMIN_TOKEN", "123456", "admin", "token", "123456"),
    ],
)
def test_an_environment_variable_overrides_its_key(variable, value, section, key, expected):
    loaded = config.load(None, environ={variable: value})
    assert getattr(getattr(loaded, section), key) == expected


def test_the_environment_wins_over_the_file(tmp_path):
    path = write(tmp_path, '[server]\nport = 9001\nhost = "127.0.0.2"\n[queue]\ndurability = "fsync"\n')
    loaded = config.load(path, environ={"RELAY_SERVER_PORT": "9002", "RELAY_QUEUE_DURABILITY": "os",
                                        "RELAY_CONFIG": "ignored", "HOME": "/root"})
    assert (loaded.server.port, loaded.server.host, loaded.queue.durability) == (9002, "127.0.0.2", "os")


@pytest.mark.parametrize(
    ("variable", "value", "names"),
    [
        ("RELAY_SERVER_PORT", "eighty", ["$.server.port"]),
        ("RELAY_SERVER_PORT", "99999", ["$.server.port", "65535"]),
        ("RELAY_SERVER_NOPE", "1", ["server.nope"]),
        ("RELAY_QUEUE_DURABILITY", "always", ["$.queue.durability"]),
        ("RELAY_SERVER_WRITE_KEYS", "k1", ["$.server.write_keys"]),
        ("RELAY_SERVER_TRUSTED_PROXIES", '["not-an-ip"]', ["trusted_proxies[0]", "not-an-ip"]),
    ],
)
def test_a_bad_environment_variable_is_an_error_naming_the_variable_and_the_key(
        tmp_path, variable, value, names):
    path = write(tmp_path, "[server]\nport = 9001\n")
    with pytest.raises(ConfigError) as caught:
        config.load(path, environ={variable: value})
    message = str(caught.value)
    assert message.startswith(f"environment variable {variable}: ")
    for name in names:
        assert name in message


async def test_the_relay_runs_on_defaults_and_environment_alone(tmp_path, start_relay):
    loaded = config.load(None, environ={"RELAY_SERVER_PORT": "0", "RELAY_ADMIN_ENABLED": "false",
                                        "RELAY_QUEUE_PATH": str(tmp_path / "env" / "queue.db"),
                                        "RELAY_SERVER_WRITE_KEYS": '["env-key"]'})
    relay = await start_relay(loaded)
    assert isinstance(relay.relay, Relay)
    status, body, _ = await relay.post("/v1/track", {"userId": "u", "event": "E", "writeKey": "env-key"})
    assert (status, body) == (200, {"success": True})
    status, _, _ = await relay.post("/v1/track", {"userId": "u", "event": "E", "writeKey": "other"})
    assert status == 401
    assert relay.rows("SELECT write_key FROM events") == [("env-key",)]
    assert (tmp_path / "env" / "queue.db").is_file()


# --- paths under the home folder ---------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME pointed at a folder of the test's own, and the working folder elsewhere, so that a
    ``~`` taken literally would show as a folder named ``~`` in it."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return folder


HOME_PATHS = [  # (TOML, where the value lands in the Config, the value as written)
    ('[queue]\npath = "~/q/queue.db"', lambda c: c.queue.path, "~/q/queue.db"),
    ('[server]\nsdk_dir = "~/sdk"', lambda c: c.server.sdk_dir, "~/sdk"),
    ('[[destinations]]\nname = "f"\ntype = "file"\npath = "~/out"',
     lambda c: c.destinations[0].path, "~/out"),
    ('[[destinations]]\nname = "w"\ntype = "duckdb"\noptions = { path = "~/w.duckdb" }',
     lambda c: c.destinations[0].options["path"], "~/w.duckdb"),
    ('[[destinations]]\nname = "l"\ntype = "parquet"\noptions = { path = "~/lake" }',
     lambda c: c.destinations[0].options["path"], "~/lake"),
    ('[[destinations]]\nname = "p"\ntype = "postgres"\noptions = { password_file = "~/pw" }',
     lambda c: c.destinations[0].options["password_file"], "~/pw"),
    ('[[destinations]]\nname = "n"\ntype = "nats"\noptions = { tls_ca = "~/ca.pem" }',
     lambda c: c.destinations[0].options["tls_ca"], "~/ca.pem"),
    ('[[sources]]\nname = "s"\ntype = "nats"\noptions = { stream = "S", durable = "d", tls_ca = "~/ca.pem" }',
     lambda c: c.sources[0].options["tls_ca"], "~/ca.pem"),
    ('[[plugins]]\nuse = "~/mine.py:Mine"', lambda c: c.plugins[0].use, "~/mine.py:Mine"),
]


@pytest.mark.parametrize(("text", "value", "written"), HOME_PATHS)
def test_a_path_may_begin_with_a_tilde_for_the_home_folder(home, text, value, written):
    (home / "pw").write_text("secret\n")
    (home / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    loaded = load(write(home.parent, text), environ={})
    assert value(loaded) == str(home) + written[1:]


def test_a_file_reference_may_begin_with_a_tilde_and_other_tildes_are_kept(home):
    (home / "token").write_text("t0ken\n")
    loaded = load(write(home.parent, '[admin]\ntoken = "${file:~/token}"\n'
                                     '[queue]\npath = "data/~/queue.db"\n'
                                     '[[destinations]]\nname = "h"\ntype = "webhook"\n'
                                     'options = { url = "http://127.0.0.1:9/~/x" }\n'
                                     '[[plugins]]\nuse = "filter"\noptions = { sample = 0.5, path = "~x" }'),
                  environ={})
    assert loaded.admin.token == "t0ken"
    assert loaded.queue.path == "data/~/queue.db"  # only a leading ~ is a home folder
    assert loaded.destinations[0].options["url"] == "http://127.0.0.1:9/~/x"  # not a path
    assert loaded.plugins[0].options["path"] == "~x"  # a plugin's options are its own


def test_an_environment_variable_s_path_is_expanded_as_the_file_s(home):
    loaded = load(None, environ={"RELAY_QUEUE_PATH": "~/env/queue.db"})
    assert loaded.queue.path == str(home / "env" / "queue.db")


@pytest.mark.parametrize(("text", "environ", "names"), [
    ('[queue]\npath = "~no-such-user-of-relay/queue.db"', {},
     ["relay.toml: `$.queue.path`", "~no-such-user-of-relay", "no user 'no-such-user-of-relay'"]),
    ("", {"RELAY_QUEUE_PATH": "~no-such-user-of-relay/q.db"},
     ["environment variable RELAY_QUEUE_PATH: `$.queue.path`", "no user"]),
    ('[[destinations]]\nname = "l"\ntype = "parquet"\noptions = { path = "~no-such-user-of-relay/lake" }', {},
     ["`$.destinations[0].options.path`", "no user"]),
    ('[admin]\ntoken = "${file:~no-such-user-of-relay/t}"', {}, ["`$.admin.token`", "no user"]),
])
def test_a_home_folder_that_is_not_known_is_an_error_naming_the_key(tmp_path, text, environ, names):
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text), environ=environ)
    for name in names:
        assert name in str(caught.value)


async def test_the_relay_keeps_its_queue_and_files_under_the_home_folder(home, start_relay):
    loaded = load(write(home.parent, '[server]\nport = 0\n[admin]\nenabled = false\n'
                                     '[queue]\npath = "~/state/queue.db"\n'
                                     '[[destinations]]\nname = "f"\ntype = "file"\npath = "~/delivered"\n'
                                     'gzip = false\nflush_interval = 0'),
                  environ={})
    relay = await start_relay(loaded)
    status, _, _ = await relay.post("/v1/track", {"userId": "u", "event": "Home", "messageId": "m-home"})
    assert status == 200
    deadline = asyncio.get_running_loop().time() + 15
    while not list((home / "delivered").glob("*.ndjson")) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    [delivered] = (home / "delivered").glob("*.ndjson")
    assert json.loads(delivered.read_text().splitlines()[0])["messageId"] == "m-home"
    assert (home / "state" / "queue.db").is_file()
    assert not (Path.cwd() / "~").exists()


# --- relay check ------------------------------------------------------------------------------------


def test_relay_check_prints_the_effective_config_with_write_keys_masked(tmp_path):
    path = write(tmp_path, '[server]\nport = 9005\nwrite_keys = ["sk_live_AAA", "sk_live_BBB"]\n'
                           '[admin]\ntoken = "adm1n-secret"\n'
                           '[[destinations]]\nname = "seg"\ntype = "segment"\n'
                           'endpoint = "http://127.0.0.1:9/"\nwrite_key = "dest-secret"\n')
    done = relay_cli("check", "--config", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for secret in ("sk_live_AAA", "sk_live_BBB", "adm1n-secret", "dest-secret"):
        assert secret not in done.stdout and secret not in done.stderr
    printed: dict[str, Any] = json.loads(done.stdout)
    assert printed["server"]["write_keys"] == [MASK, MASK]
    assert printed["admin"]["token"] == MASK
    assert printed["destinations"][0]["write_key"] == MASK
    assert printed["server"]["port"] == 9005
    assert printed["queue"]["path"] == "relay-data/queue.db"
    assert f"config OK ({path})" in done.stderr


def test_relay_check_masks_write_keys_that_come_from_the_environment(tmp_path):
    env = clean_env(RELAY_SERVER_WRITE_KEYS='["from-env-secret"]', RELAY_SERVER_PORT="9006")
    done = relay_cli("check", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "from-env-secret" not in done.stdout
    printed = json.loads(done.stdout)
    assert printed["server"]["write_keys"] == [MASK]
    assert printed["server"]["port"] == 9006


def test_relay_check_without_a_file_prints_the_embedded_defaults(tmp_path):
    done = relay_cli("check", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["server"] == {**printed["server"], "host": "127.0.0.1", "port": 8088, "write_keys": [],
                                 "trusted_proxies": [], "cors_origins": ["*"]}
    assert printed["queue"] == {"path": "relay-data/queue.db", "durability": "fsync",
                                "max_bytes": 1073741824, "when_full": "reject", "dedup_window": 86400}
    assert "config OK (embedded defaults)" in done.stderr


def test_relay_check_reads_relay_toml_in_the_working_directory(tmp_path):
    write(tmp_path, "[server]\nport = 9007\n")
    done = relay_cli("check", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["server"]["port"] == 9007


def test_relay_check_fails_with_exit_2_naming_the_key_and_the_file(tmp_path):
    path = write(tmp_path, '[queue]\ndurability = "sometimes"\n', name="bad.toml")
    done = relay_cli("check", "--config", str(path), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert str(path) in done.stderr
    assert "$.queue.durability" in done.stderr


def test_relay_check_fails_with_exit_2_naming_a_bad_environment_variable(tmp_path):
    done = relay_cli("check", cwd=tmp_path, env=clean_env(RELAY_SERVER_PORT="http"))
    assert done.returncode == 2
    assert "RELAY_SERVER_PORT" in done.stderr and "$.server.port" in done.stderr


def test_repr_of_a_config_masks_every_secret_as_relay_check_does() -> None:
    config = msgspec.convert({
        "server": {"write_keys": ["source-key-123"]},
        "admin": {"token": "admin-token-456"},
        "destinations": [{"name": "s", "type": "segment", "endpoint": "http://127.0.0.1:9/",
                          "write_key": "upstream-key-789", "options": {"api_key": "vendor-key-000"}}],
        "plugins": [{"use": "privacy", "options": {"salt": "salt-value-111"}}],
    }, Config)
    shown = repr(config)
    secrets = ("source-key-123", "admin-token-456", "upstream-key-789", "vendor-key-000", "salt-value-111")
    for secret in secrets:
        assert secret not in shown
    assert MASK in shown and "127.0.0.1:9" in shown


@pytest.mark.parametrize(("destination", "key", "where"), [
    ('type = "segment"\nendpoint = "https://user:s3cret-pass@api.example.test"', "endpoint", "`write_key`"),
    ('type = "webhook"\noptions = { url = "https://hook:s3cret-pass@hooks.example.test/in" }', "options.url",
     "`headers`"),
])
def test_credentials_in_a_url_are_refused_naming_the_key_and_where_they_go(tmp_path, destination, key, where):
    path = write(tmp_path, f'[[destinations]]\nname = "up"\n{destination}\n')
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert f"`{key}`" in message and where in message and "credentials" in message
    assert "s3cret-pass" not in message
    checked = relay_cli("check", "--config", str(path), cwd=tmp_path)
    assert checked.returncode != 0 and "s3cret-pass" not in checked.stdout + checked.stderr
