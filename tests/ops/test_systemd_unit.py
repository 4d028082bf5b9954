"""The systemd unit: what the relay relies on is in it, and systemd accepts it."""

from __future__ import annotations

import configparser
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from relay.config import DEFAULT_SHUTDOWN_TIMEOUT

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "relay.service"
INSTALLED_RELAY = "/opt/relay/.venv/bin/relay"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd); "
                                    "the unit's directives are still checked without it")


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",),
                                       comment_prefixes=("#", ";"), empty_lines_in_values=False)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "min": 60}
    for suffix, factor in sorted(units.items(), key=lambda u: -len(u[0])):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


def test_the_unit_has_the_directives_the_relay_relies_on() -> None:
    service = unit()["Service"]
    expected = {
        "Type": "notify", "NotifyAccess": "main", "Restart": "on-failure",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "DynamicUser": "yes", "StateDirectory": "relay", "ConfigurationDirectory": "relay",
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
        "PrivateDevices": "yes", "LockPersonality": "yes",
    }
    assert {key: service.get(key) for key in expected} == expected
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert service["ExecStart"] == f"{INSTALLED_RELAY} run --config /etc/relay/relay.toml"
    assert seconds(service["WatchdogSec"]) == 30
    # listener drain and delivery drain each take up to shutdown_timeout before the queue closes
    assert seconds(service["TimeoutStopSec"]) > 2 * DEFAULT_SHUTDOWN_TIMEOUT
    assert int(service["LimitNOFILE"]) >= 4096
    assert service.get("MemoryDenyWriteExecute", "no") == "no"  # see the note in the unit
    filters = [line.partition("=")[2] for line in UNIT.read_text().splitlines()
               if line.startswith("SystemCallFilter=")]
    assert "@system-service" in filters
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def runnable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's installed entry point, which
    systemd-analyze requires to exist."""
    relay = Path(sys.executable).parent / "relay"
    assert relay.exists(), "the relay entry point is not installed in this environment"
    copy = tmp_path / "relay.service"
    copy.write_text(UNIT.read_text().replace(INSTALLED_RELAY, str(relay)))
    return copy


@needs_systemd_analyze
def test_systemd_analyze_verify_accepts_the_unit_without_a_warning(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    done = subprocess.run([SYSTEMD_ANALYZE, "verify", str(runnable_copy(tmp_path))],
                          capture_output=True, text=True, timeout=60)
    # verify exits 0 even for unknown keys and unparsable values; those are printed
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@needs_systemd_analyze
def test_the_unit_is_hardened_to_an_exposure_of_at_most_2(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    done = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=true", "--threshold=20", "--no-pager",
                           str(runnable_copy(tmp_path))], capture_output=True, text=True, timeout=60)
    if "--offline" in done.stderr and "unrecognized" in done.stderr:
        pytest.skip("this systemd-analyze cannot assess a unit file offline (systemd < 250)")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr


def test_under_systemd_the_queue_lives_in_the_state_directory(relay_process, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    proc = relay_process('[server]\nhost = "127.0.0.1"\nport = 0\n',  # the default, relative queue path
                         env={"STATE_DIRECTORY": str(state)})
    proc.start()
    assert proc.terminate() == 0
    listening = [json.loads(line) for line in proc.log_path.read_text().splitlines()
                 if '"message":"listening"' in line]
    assert [entry["queue"] for entry in listening] == [str(state / "queue.db")]
    assert (state / "queue.db").exists()
