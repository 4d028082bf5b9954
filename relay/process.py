"""The relay as a process: signals, systemd's notifications, the pid file, uvloop, and serving
until told to stop.

SIGTERM and SIGINT stop the relay gracefully; SIGHUP reloads the config file. systemd is told
READY=1 once the queue is open and the listeners are bound, RELOADING=1 around a reload and
STOPPING=1 at shutdown.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from pathlib import Path

from relay import config as config_module
from relay.app import Relay
from relay.config import Config
from relay.errors import ConfigError, QueueError
from relay.ops import logs, notify

log = logging.getLogger(__name__)


async def _summary(relay: Relay) -> str:
    try:
        return await relay.summary()
    except QueueError as exc:  # the queue answers /ready and /status with the why
        return f"running; queue figures unavailable: {exc}"


async def serve(config: Config, config_path: str | None = None, pid_file: Path | None = None) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully; reload ``config_path`` on SIGHUP;
    tell systemd (when it started us) as each of those happens. ``pid_file`` is written once
    the queue is ours (its lock taken) and removed at exit."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    logs.mask_secrets(logs.secrets(config))
    notifier = notify.Notifier.from_environment()
    relay = Relay(config)
    reloads: set[asyncio.Task[None]] = set()
    phase = "starting"
    reload_asked = False

    def reload_now() -> None:
        task = asyncio.create_task(_reload(relay, notifier, config_path), name="reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    def on_hangup() -> None:
        # Installed before anything else and kept to the end: SIGHUP's default action would
        # kill the relay in the middle of its start or its stop.
        nonlocal reload_asked
        if phase == "running":
            reload_now()
        elif phase == "starting":
            reload_asked = True
            log.warning("reload requested while starting: it runs once the relay is ready")
        else:
            log.warning("reload requested while stopping: ignored")

    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    written = False
    await notifier.start(relay.summary)
    try:
        notifier.status("starting: opening the queue")
        await relay.start()
        if pid_file is not None:
            _write_private(pid_file, f"{os.getpid()}\n")
            written = True
        phase = "running"
        if reload_asked:
            reload_now()
        notifier.ready(await _summary(relay))
        await stopping.wait()
        log.info("stopping")
    finally:
        phase = "stopping"
        await asyncio.gather(*reloads, return_exceptions=True)
        notifier.stopping()
        try:
            await relay.stop()
        finally:
            await notifier.stop()
            if written and pid_file is not None:
                _remove(pid_file)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    log.info("stopped")


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.chmod(path, 0o600)  # an older file of another mode


async def _reload(relay: Relay, notifier: notify.Notifier, config_path: str | None) -> None:
    """Validate the config file first; a bad one is logged and the running one stays."""
    with notifier.reloading():
        log.info("reloading", extra={"config": config_path or "<defaults>"})
        try:
            new = config_module.with_state_directory(config_module.load(config_path), os.environ)
            await relay.reload(new)
        except ConfigError as exc:
            relay.reloads.failed += 1
            log.error("reload refused: the running configuration stays", extra={"error": str(exc)})
            return
        except Exception as exc:
            relay.reloads.failed += 1
            log.exception("reload failed: the running configuration stays", extra={"error": str(exc)})
            return
        logs.mask_secrets(logs.secrets(new))


def run(config: Config, config_path: str | None = None, pid_file: Path | None = None) -> None:
    # SIGHUP ignored until the loop's handler takes over, and again after the loop is gone
    # (the loop restores the default action, which terminates), up to the process's exit.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    gc.freeze()  # what start-up allocated is never garbage: stop scanning it
    gc.set_threshold(100_000, 50, 100)  # fewer young collections under a flood of small dicts
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        asyncio.run(serve(config, config_path, pid_file))
    else:
        uvloop.run(serve(config, config_path, pid_file))
    finally:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
