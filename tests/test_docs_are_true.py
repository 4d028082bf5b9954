"""The docs are true: every TOML block in README.md and docs/*.md passes ``relay check``,
and relay.toml names every key the config takes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import msgspec
import pytest

from relay import config

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```toml[^\n]*\n(.*?)^```", re.S | re.M)
VARIABLE = re.compile(r"\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)\}")


def _blocks() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for n, match in enumerate(BLOCK.finditer(text)):
            first = match.group(1).split("\n", 1)[0]
            if re.match(r"#.*\b(?!relay\.toml)[\w-]+\.toml\b", first):
                continue  # a block of another file (a plugin package's pyproject.toml)
            line = text[: match.start()].count("\n") + 1
            found.append((f"{doc.relative_to(ROOT)}:{line}#{n}", match.group(1)))
    return found


BLOCKS = _blocks()


def test_the_docs_have_toml_blocks_to_check() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize(("where", "block"), BLOCKS, ids=[w for w, _ in BLOCKS])
def test_every_toml_block_in_the_docs_passes_relay_check(where: str, block: str, tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(block, encoding="utf-8")
    for reference in re.findall(r"\$\{file:([^}]+)\}", block):  # a file the example reads
        block = block.replace(reference, str(tmp_path / Path(reference).name))
        (tmp_path / Path(reference).name).write_text("example-secret\n")
    for reference in re.findall(r'_file\s*=\s*"([^"]+)"', block):  # a `*_file` option's secret file
        block = block.replace(f'"{reference}"', f'"{tmp_path / Path(reference).name}"')
        (tmp_path / Path(reference).name).write_text("example-secret\n")
    path.write_text(block, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update({name: "example-value" for name in VARIABLE.findall(block)})
    named = re.findall(r'_env\s*=\s*"([A-Za-z_][A-Za-z0-9_]*)"', block)  # a `*_env` option's variable
    env.update({name: "example-value" for name in named})
    env["PII_SALT"] = "example-salt"
    done = subprocess.run([sys.executable, "-m", "relay", "check", "--config", str(path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{where}: relay check failed:\n{done.stderr}\n--- block ---\n{block}"


def _keys(struct: type[msgspec.Struct]) -> set[str]:
    return set(struct.__struct_fields__)


def test_relay_toml_names_every_key() -> None:
    text = (ROOT / "relay.toml").read_text(encoding="utf-8")
    # commented-out keys count: the file documents them (`# key = value`)
    uncommented = "\n".join(re.sub(r"^#\s?", "", line) for line in text.splitlines())
    named = set(re.findall(r"^\s*([A-Za-z_]+)\s*=", uncommented, re.M))
    sections = {name: _keys(kind) for name, kind in config.SECTIONS.items()}
    sections["destinations"] = _keys(config.DestinationConfig)
    sections["plugins"] = _keys(config.PluginConfig)
    missing = {f"{s}.{k}" for s, keys in sections.items() for k in keys if k not in named}
    assert not missing, f"relay.toml does not name: {sorted(missing)}"


def test_relay_toml_is_valid_as_shipped() -> None:
    tomllib.loads((ROOT / "relay.toml").read_text(encoding="utf-8"))
    config.load(ROOT / "relay.toml", {})
