"""Warehouse options: a wrong one stops the config with its key named; a missing library names
the extra to install; ``relay sql`` runs queries only."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest

from relay import config
from relay.errors import ConfigError
from tests.sinks.warehouse import destination, toml_for


def load(tmp_path: Path, dest: dict[str, Any]) -> config.Config:
    return config.load(toml_for(tmp_path, [dest]), environ={})


@pytest.mark.parametrize(("kind", "options", "message"), [
    ("duckdb", {"path": "x.duckdb", "schemas": {"k": "Web Prod"}}, "`options.schemas`"),
    ("duckdb", {"path": "x.duckdb", "default_schema": "select"}, "`options.default_schema`"),
    ("duckdb", {"path": "x.duckdb", "colour": "red"}, "colour"),
    ("duckdb", {}, "path"),
    ("duckdb", {"path": "x.duckdb", "row_group_size": 3000}, "`options.row_group_size`"),
    ("duckdb", {"path": "x.duckdb", "threads": 0}, "`options.threads`"),
    ("parquet", {"path": "lake", "compression": "lzma"}, "`options.compression`"),
    ("postgres", {"password_env": "A", "password_file": "/b"},
     "`options.password_env` and `options.password_file` are both set"),
    ("postgres", {"password_env": "RELAY_TEST_UNSET_VARIABLE"}, "`options.password_env`"),
    ("postgres", {"password_file": "/nonexistent/pg-password"}, "`options.password_file`"),
    ("postgres", {"port": "5432"}, "`options.port`"),
])
def test_a_wrong_option_stops_the_config_naming_its_key(tmp_path, kind, options, message):
    dest = destination(kind, **options)
    dest["options"] = {k: v for k, v in dest["options"].items() if k != "schemas"} | options
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, dest)
    assert message in str(caught.value) and "destinations[0] (wh)" in str(caught.value)


@pytest.mark.parametrize(("kind", "first", "second", "refused"), [
    ("duckdb", "wh.duckdb", "wh.duckdb", True),
    ("duckdb", "wh.duckdb", "./sub/../wh.duckdb", True),  # the same file by another name
    ("parquet", "lake", "lake/", True),
    ("duckdb", "wh.duckdb", "other.duckdb", False),
])
def test_two_duckdb_or_parquet_destinations_cannot_share_a_path(tmp_path, monkeypatch, kind, first, second,
                                                               refused):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    destinations = [destination(kind, name="a", path=first), destination(kind, name="b", path=second)]
    path = toml_for(tmp_path, destinations)
    if not refused:
        assert [d.name for d in config.load(path, environ={}).destinations] == ["a", "b"]
        return
    with pytest.raises(ConfigError) as caught:
        config.load(path, environ={})
    assert "destinations[1] (b): `options.path`" in str(caught.value) and "'a'" in str(caught.value)


@pytest.mark.parametrize(("kind", "library"), [("duckdb", "duckdb"), ("parquet", "pyarrow"),
                                               ("postgres", "asyncpg")])
def test_a_missing_library_names_the_extra_to_install(tmp_path, monkeypatch, kind, library):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == library else real(name, *a))
    with pytest.raises(ConfigError, match=rf"needs the Python package\(s\) {library}.*relay\[warehouse\]"):
        load(tmp_path, destination(kind, path=str(tmp_path / "x")) if kind != "postgres"
             else destination(kind))


def sql(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay", "sql", "--config", str(config_path), *args],
                          capture_output=True, text=True, timeout=60)


def test_relay_sql_prints_a_table_or_json_and_refuses_to_write(tmp_path):
    path = tmp_path / "wh.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE SCHEMA web_prod;"
                " CREATE TABLE web_prod.tracks AS SELECT 'm-1' AS id, 'signed_up' AS event")
    con.close()
    config_path = toml_for(tmp_path, [destination("duckdb", path=str(path))])
    text = sql(config_path, "SELECT id, event FROM web_prod.tracks")
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines() == ["id  | event    ", "----+----------", "m-1 | signed_up", "(1 row)"]
    as_json = sql(config_path, "--json", "SELECT * FROM web_prod.tracks")
    assert json.loads(as_json.stdout) == [{"id": "m-1", "event": "signed_up"}]
    for statement in ("DROP TABLE web_prod.tracks", "INSERT INTO web_prod.tracks VALUES ('m-2', 'x')",
                      "COPY web_prod.tracks TO 'out.csv'"):
        refused = sql(config_path, statement)
        assert refused.returncode == 1 and "relay: sql:" in refused.stderr, statement
    still = sql(config_path, "--json", "SELECT count(*) AS n FROM web_prod.tracks")
    assert json.loads(still.stdout) == [{"n": 1}]
    missing = sql(config_path, "--destination", "nope", "SELECT 1")
    assert missing.returncode == 2 and "no warehouse destination named 'nope'" in missing.stderr


def test_the_configuration_in_docs_warehouses_md_is_valid(tmp_path):
    docs = (Path(__file__).resolve().parents[2] / "docs" / "warehouses.md").read_text()
    example = docs.split("```toml\n", 1)[1].split("```", 1)[0]
    secret = tmp_path / "pg-password"  # read when the config loads: it must exist
    secret.write_text("secret\n")
    assert "/etc/relay/pg-password" in example
    path = tmp_path / "relay.toml"
    path.write_text(example.replace("/etc/relay/pg-password", str(secret)))
    cfg = config.load(path, environ={})
    assert [(d.name, d.type) for d in cfg.destinations] == [("warehouse", "duckdb"), ("pg", "postgres"),
                                                            ("lake", "parquet")]
    assert cfg.destinations[0].options["schemas"] == {"WRITE_KEY_OF_THE_WEB_APP": "web_prod",
                                                      "WRITE_KEY_OF_THE_IOS_APP": "ios_prod"}
