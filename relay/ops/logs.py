"""Logging: JSON lines when stdout is not a terminal (journald, files), text when it is.

Secrets (write keys, the admin token, destinations' keys) are masked in every record the
handlers write: ``mask_secrets`` installs the mask for the running configuration.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

import msgspec

from relay import config as config_module

_encode = msgspec.json.Encoder(enc_hook=str).encode  # an odd `extra` value is logged as its str()
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
MASK = config_module.MASK
# syslog priorities, for journald's "<N>" line prefix
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return _encode(entry).decode()


class TextFormatter(logging.Formatter):
    """One readable line: time, level, logger, message, then the ``extra`` fields as key=value."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        extras = [f"{key}={value}" for key, value in record.__dict__.items()
                  if key not in _STANDARD and not key.startswith("_")]
        return " ".join([line, *extras])


class JournalPrefix(logging.Formatter):
    """Prefix each line with its syslog priority, which journald reads and strips."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        return f"<{priority}>" + self.inner.format(record)


class SecretFilter(logging.Filter):
    """Replaces every configured secret with a mask: in the message and its arguments, the
    ``extra`` fields, the traceback and the stack. Installed on handlers, so that records
    of every logger pass through it."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = frozenset(s for s in secrets if s)
        ordered = sorted(self.secrets, key=len, reverse=True)  # longest first
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def mask(self, text: str) -> str:
        return self._pattern.sub(MASK, text) if self._pattern is not None else text

    def filter(self, record: logging.LogRecord) -> bool:
        if self._pattern is None:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: the handler reports it as such
            return True
        record.msg, record.args = self.mask(message), None
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and not key.startswith("_"):
                record.__dict__[key] = self._mask_value(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
        return True

    def _mask_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, dict):
            return {k: self._mask_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._mask_value(v) for v in value]
        if isinstance(value, int | float | bool) or value is None:
            return value
        text = str(value)
        masked = self.mask(text)
        return masked if masked != text else value


def secrets(cfg: config_module.Config) -> set[str]:
    """Every value that ``config.masked`` hides: the same rule decides what logs hide."""
    found: set[str] = set()

    def strings(value: Any) -> Iterable[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list | tuple):
            for item in value:
                yield from strings(item)

    def walk(plain: Any, shown: Any) -> None:
        if isinstance(plain, dict) and isinstance(shown, dict):
            for key, value in plain.items():
                walk(value, shown.get(key))
        elif isinstance(plain, list | tuple) and isinstance(shown, list | tuple):
            for item, shown_item in zip(plain, shown, strict=False):
                walk(item, shown_item)
        elif shown == MASK and plain != MASK:
            found.update(s for s in strings(plain) if s)

    walk(msgspec.to_builtins(cfg), config_module.masked(cfg))
    return found | config_module.interpolated(cfg)


def mask_secrets(values: Iterable[str]) -> None:
    """Mask ``values``, and whatever was masked before, in everything the root logger's
    handlers write from now on (call it again with a reloaded config's secrets)."""
    for handler in logging.getLogger().handlers:
        known: set[str] = set(values)
        for old in [f for f in handler.filters if isinstance(f, SecretFilter)]:
            known |= old.secrets
            handler.removeFilter(old)
        handler.addFilter(SecretFilter(known))


def _is_journal(stream: TextIO) -> bool:
    """True when ``stream`` is the journald stream systemd connected (``$JOURNAL_STREAM``)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        stat = os.fstat(stream.fileno())
        return (stat.st_dev, stat.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError):
        return False


def setup(level: str = "info", json: bool | None = None, stream: TextIO | None = None) -> None:
    """Log to ``stream`` (stdout) at ``level``; JSON lines unless ``json`` is False or, when
    it is None, the stream is a terminal."""
    out = sys.stdout if stream is None else stream
    use_json = not out.isatty() if json is None else json
    formatter: logging.Formatter = JsonFormatter() if use_json else TextFormatter()
    if _is_journal(out):
        formatter = JournalPrefix(formatter)
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [f for h in root.handlers for f in h.filters if isinstance(f, SecretFilter)][:1]:
        handler.addFilter(old)  # a new handler keeps the secrets already masked
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
