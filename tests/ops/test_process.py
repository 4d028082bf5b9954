"""The relay as a process: one owner per queue, SIGHUP at any time, private files."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relay.errors import QueueLocked
from relay.queue import Queue
from tests.conftest import make_config


def config_text(tmp_path: Path) -> str:
    return (f'[server]\nhost = "127.0.0.1"\nport = 0\n[admin]\nhost = "127.0.0.1"\nport = 0\n'
            f'[queue]\npath = "{tmp_path / "queue.db"}"\n')


def test_two_relays_cannot_own_one_queue_the_second_names_the_first_pid(relay_process, tmp_path):
    first = relay_process(config_text(tmp_path))
    first.start()
    assert first.proc is not None
    pid_file = tmp_path / "queue.db.pid"
    assert pid_file.read_text().strip() == str(first.proc.pid)
    second = subprocess.run(
        [sys.executable, "-m", "relay", "run", "--config", str(first.config_path)],
        capture_output=True, text=True, timeout=30, env={**os.environ, "RELAY_ADMIN_PORT": "0"},
    )
    assert second.returncode == 1
    message = second.stderr.strip().splitlines()
    assert message[-1] == (f"relay: the queue {tmp_path / 'queue.db'} is in use by another relay "
                           f"(pid {first.proc.pid})"), second.stderr
    assert "Traceback" not in second.stderr
    assert pid_file.read_text().strip() == str(first.proc.pid)  # the first one's pid file stays
    assert first.proc.poll() is None
    assert first.terminate() == 0


async def test_a_second_queue_on_the_same_file_in_one_process_is_refused(tmp_path):
    config = make_config(tmp_path).queue
    owner, other = Queue(config), Queue(config)
    await owner.start()
    try:
        with pytest.raises(QueueLocked, match=f"pid {os.getpid()}"):
            await other.start()
    finally:
        await other.stop()
        await owner.stop()
    await other.start()  # free again once the owner stopped
    await other.stop()


def test_sighup_while_starting_and_stopping_never_kills_the_relay(relay_process, tmp_path):
    proc = relay_process(config_text(tmp_path))
    started = proc.launch()
    deadline = time.monotonic() + 20
    while not ignores_sighup(started.pid):  # from its first statement on; the interpreter's own
        assert time.monotonic() < deadline  # start-up before that is the service manager's to wait out
        time.sleep(0.001)
    hups = 0
    port = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # SIGHUP as fast as it goes, through the whole start
        started.send_signal(signal.SIGHUP)
        hups += 1
        time.sleep(0.005)
        if '"message":"listening"' in proc.log_path.read_text():
            port = True
            break
        assert started.poll() is None, proc.log_path.read_text()[-2000:]
    assert port and hups > 1
    started.send_signal(signal.SIGTERM)
    for _ in range(200):  # and through the stop
        if started.poll() is not None:
            break
        started.send_signal(signal.SIGHUP)
        time.sleep(0.005)
    assert started.wait(timeout=20) == 0, proc.log_path.read_text()[-2000:]
    log = proc.log_path.read_text()
    assert "reload requested while starting" in log
    assert '"message":"reloaded"' in log  # the reload asked for during start ran once ready


def ignores_sighup(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGHUP - 1)))
    return False


def test_queue_lock_and_pid_files_are_private_outside_systemd(relay_process, tmp_path):
    old = os.umask(0o022)  # a usual shell's umask: without care, files would be world-readable
    try:
        proc = relay_process(config_text(tmp_path))
        proc.start()
    finally:
        os.umask(old)
    try:
        for name in ("queue.db", "queue.db-wal", "queue.db-shm", "queue.db.pid", "queue.db.lock"):
            mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
            assert mode == 0o600, f"{name}: {oct(mode)}"
    finally:
        assert proc.terminate() == 0
