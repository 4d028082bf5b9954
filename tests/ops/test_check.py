"""``relay check`` proves what ``relay run`` would do: every plugin loaded and unloaded,
with ``--connect`` each upstream reached, and every problem listed with a way to fix it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from relay import config
from relay.errors import ConfigError
from relay.ops import cli, connect
from tests.ops.checking import GOOD_KEY, AuthUpstream


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(f'[queue]\npath = "{tmp_path}/q.db"\n' + text)
    return path


def test_a_plugin_that_would_not_load_at_run_fails_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("UNSET_SALT_FOR_CHECK", raising=False)
    path = _write(tmp_path, '[[plugins]]\nuse = "privacy"\n'
                            'options = { hash = ["traits.email"], salt_env = "UNSET_SALT_FOR_CHECK" }\n')
    assert cli.main(["check", "--config", str(path)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "privacy" in err and "UNSET_SALT_FOR_CHECK" in err


def test_every_problem_is_listed_with_the_nearest_key_and_the_allowed_values(tmp_path: Path) -> None:
    path = _write(tmp_path, '[server]\nprot = 1\nhost = 5\n[log]\nlevel = "verbose"\n'
                            '[[destinations]]\nname = "a"\ntype = "file"\npath = "out"\nflush_intervl = 2\n'
                            '[[destinations]]\nname = "b"\ntype = "segment"\nendpoint = "http://h"\n'
                            'max_events = 0\n')
    with pytest.raises(ConfigError) as caught:
        config.load(path, {})
    lines = str(caught.value).splitlines()
    assert all(line.startswith(f"{path}: ") for line in lines)
    text = "\n".join(lines)
    assert "`prot`" in text and "did you mean `port`?" in text
    assert "`flush_intervl`" in text and "did you mean `flush_interval`?" in text
    assert "`$.server.host`" in text
    assert "'verbose'" in text and "allowed: 'debug', 'info', 'warning', 'error'" in text
    assert "`$.destinations[1].max_events`" in text
    assert len(lines) == 5


async def _listener() -> tuple[asyncio.Server, int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


async def test_connect_reaches_each_destination_and_names_the_one_that_is_down(tmp_path: Path) -> None:
    upstream = await AuthUpstream().start()
    closed, dead_port = await _listener()
    closed.close()
    await closed.wait_closed()
    path = _write(tmp_path, f'[[destinations]]\nname = "up"\ntype = "segment"\nendpoint = "{upstream.url}"\n'
                            f'write_key = "{GOOD_KEY}"\n'
                            f'[[destinations]]\nname = "down"\ntype = "webhook"\n'
                            f'options = {{ url = "http://127.0.0.1:{dead_port}/in" }}\n'
                            f'[[destinations]]\nname = "files"\ntype = "file"\npath = "{tmp_path}/out"\n')
    try:
        cfg = config.load(path, {})
        results = {r.name: r for r in await connect.reach_all(cfg.destinations, 5.0)}
    finally:
        await upstream.stop()
    assert results["up"].ok and results["files"].ok
    assert not results["down"].ok and results["down"].verdict == connect.UNREACHABLE
    assert str(dead_port) in results["down"].detail and "Connection refused" in results["down"].detail
    assert upstream.events_sent() == []


def test_check_connect_exits_non_zero_when_an_upstream_is_down(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    closed, dead_port = asyncio.run(_listener_closed())
    del closed
    path = _write(tmp_path, f'[[destinations]]\nname = "down"\ntype = "segment"\n'
                            f'endpoint = "http://127.0.0.1:{dead_port}"\n')
    assert cli.main(["check", "--connect", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "destination down (segment): unreachable:" in err
    assert "1 of 1 destinations failed the connection check: down" in err


async def _listener_closed() -> tuple[None, int]:
    server, port = await _listener()
    server.close()
    await server.wait_closed()
    return None, port


async def test_folders_are_checked_for_writing_without_the_network(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    path = _write(tmp_path, "".join(
        f'[[destinations]]\nname = "{name}"\ntype = "{kind}"\n{where}\n'
        for name, kind, where in (
            ("files", "file", f'path = "{tmp_path}/out"'),
            ("files-blocked", "file", f'path = "{blocker}/out"'),
            ("lake", "parquet", f'options = {{ path = "{tmp_path}/lake" }}'),
            ("lake-blocked", "parquet", f'options = {{ path = "{blocker}/lake" }}'),
            ("db", "duckdb", f'options = {{ path = "{tmp_path}/w/events.duckdb" }}'),
            ("db-blocked", "duckdb", f'options = {{ path = "{blocker}/events.duckdb" }}'),
            ("db-a-folder", "duckdb", f'options = {{ path = "{tmp_path}" }}'),
        )))
    cfg = config.load(path, {})
    results = {r.name: r for r in await connect.reach_all(cfg.destinations, 5.0)}
    assert [n for n, r in results.items() if r.ok] == ["files", "lake", "db"]
    for name in ("files-blocked", "lake-blocked", "db-blocked", "db-a-folder"):
        assert results[name].verdict == connect.CANNOT_WRITE, results[name]
    assert f"{blocker} is not a folder" in results["files-blocked"].detail
    assert not (tmp_path / "out").exists() and not (tmp_path / "w").exists()  # nothing was made


async def test_a_type_without_a_check_of_its_own_is_opened_over_tcp(tmp_path: Path) -> None:
    server, port = await _listener()
    try:
        destination = msgspec.convert({"name": "other", "type": "custom",
                                       "endpoint": f"http://127.0.0.1:{port}"}, config.DestinationConfig)
        result = await connect.reach(destination, 5.0)
    finally:
        server.close()
        await server.wait_closed()
    assert result.ok and "accepts connections (no credentials checked)" in result.detail


def test_an_enum_option_of_a_destination_lists_its_allowed_values(tmp_path: Path) -> None:
    path = _write(tmp_path, '[[destinations]]\nname = "w"\ntype = "webhook"\n'
                            'options = { url = "http://h", mode = "bulk" }\n')
    with pytest.raises(ConfigError, match=r"'bulk'; allowed: 'batch', 'single' - at `options.mode`"):
        config.load(path, {})


def test_every_plugin_problem_is_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, '[[plugins]]\nuse = "no_such_plugin"\n'
                            '[[plugins]]\nuse = "privacy"\noptions = { hsh = ["traits.email"] }\n')
    assert cli.main(["check", "--config", str(path)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "plugins[0]" in err and "plugins[1]" in err
