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


async def serve(config: Config, config_path: str | None = None) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully; reload ``config_path`` on SIGHUP;
    tell systemd (when it started us) as each of those happens."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    logs.mask_secrets(logs.secrets(config))
    notifier = notify.Notifier.from_environment()
    relay = Relay(config)
    reloads: set[asyncio.Task[None]] = set()

    def on_hangup() -> None:
        task = asyncio.create_task(_reload(relay, notifier, config_path), name="reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    await notifier.start(relay.summary)
    try:
        notifier.status("starting: opening the queue")
        await relay.start()
        loop.add_signal_handler(signal.SIGHUP, on_hangup)
        notifier.ready(await _summary(relay))
        await stopping.wait()
        log.info("stopping")
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        await asyncio.gather(*reloads, return_exceptions=True)
        notifier.stopping()
        try:
            await relay.stop()
        finally:
            await notifier.stop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    log.info("stopped")


async def _reload(relay: Relay, notifier: notify.Notifier, config_path: str | None) -> None:
    """Validate the config file first; a bad one is logged and the running one stays."""
    with notifier.reloading():
        log.info("reloading", extra={"config": config_path or "<defaults>"})
        try:
            new = config_module.with_state_directory(config_module.load(config_path), os.environ)
            await relay.reload(new)
        except ConfigError as exc:
            log.error("reload refused: the running configuration stays", extra={"error": str(exc)})
            return
        except Exception as exc:
            log.exception("reload failed: the running configuration stays", extra={"error": str(exc)})
            return
        logs.mask_secrets(logs.secrets(new))


def run(config: Config, config_path: str | None = None) -> None:
    gc.freeze()  # what start-up allocated is never garbage: stop scanning it
    gc.set_threshold(100_000, 50, 100)  # fewer young collections under a flood of small dicts
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        asyncio.run(serve(config, config_path))
    else:
        uvloop.run(serve(config, config_path))
