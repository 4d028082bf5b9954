"""``relay sdk install`` runs npm into the data directory, and the relay serves what it put
there; npm is stood in for by a script (the real one runs in the browser suites' set-up)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from relay.ingest import cdn
from relay.ops import cli

FAKE_NPM = """#!{python}
import pathlib, sys
args = sys.argv[1:]
prefix = pathlib.Path(args[args.index("--prefix") + 1])
pathlib.Path(prefix, "args").write_text(" ".join(args))
umd = prefix / "node_modules" / "@segment" / "analytics-next" / "dist" / "umd"
umd.mkdir(parents=True, exist_ok=True)
(umd / "standalone.js").write_text("/* standalone from npm */")
"""


def _npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text(FAKE_NPM.format(python=sys.executable))
    npm.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


async def test_sdk_install_puts_the_package_beside_the_queue_and_the_relay_serves_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_relay: Any) -> None:
    _npm(tmp_path, monkeypatch)
    path = tmp_path / "relay.toml"
    path.write_text(f'[queue]\npath = "{tmp_path}/data/queue.db"\n')
    assert cli.main(["sdk", "install", "--version", "1.84.3", "--config", str(path)]) == 0
    root = tmp_path / "data" / "sdk"
    assert "@segment/analytics-next@1.84.3" in (root / "args").read_text()
    assert (root / cdn.UMD / "standalone.js").is_file()
    running = await start_relay(queue={"path": str(tmp_path / "data" / "queue.db")})
    async with running.session.get(running.url + "/analytics.js/v1/k/analytics.min.js") as resp:
        assert resp.status == 200
        assert await resp.text() == "/* standalone from npm */"


def test_sdk_install_without_npm_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    path = tmp_path / "relay.toml"
    path.write_text(f'[queue]\npath = "{tmp_path}/queue.db"\n')
    assert cli.main(["sdk", "install", "--config", str(path)]) == 1
    assert "npm is not installed" in capsys.readouterr().err
