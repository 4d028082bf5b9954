"""A destination type's own ``options``: decoded into its Struct, or a ValueError naming the key."""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin
from urllib.parse import urlsplit

import msgspec

T = TypeVar("T")


def parse(options: dict[str, Any], kind: type[T]) -> T:
    """``options`` as ``kind`` (a Struct with ``forbid_unknown_fields``); errors name the key as
    ``options.<key>``."""
    try:
        return msgspec.convert(options, kind, strict=True)
    except msgspec.ValidationError as exc:
        message = _with_allowed_values(str(exc), kind).replace("`$.", "`options.").replace("`$`", "`options`")
        if " - at `" not in message:  # missing or unknown field: msgspec names the key alone
            message = f"options: {message}"
        raise ValueError(message) from None


def _with_allowed_values(message: str, kind: type[Any]) -> str:
    """An enum error lists the values the option takes."""
    match = re.match(r"Invalid enum value .* - at `\$\.(\w+)`$", message)
    if match is None or not issubclass(kind, msgspec.Struct):
        return message
    for f in msgspec.structs.fields(kind):
        if f.name == match.group(1) and get_origin(f.type) is Literal:
            return f"{message.split(' - at ')[0]}; allowed: {', '.join(map(repr, get_args(f.type)))}" \
                   f" - at `$.{f.name}`"
    return message


def http_url(value: str, name: str, credentials_go: str = "in the `headers` option") -> str:
    """``value`` when it is an absolute http(s) URL with a host and no credentials; a
    ValueError naming ``name`` if not (``credentials_go`` says where they belong instead)."""
    split = urlsplit(value)
    if split.scheme not in ("http", "https") or not split.hostname:
        raise ValueError(f"`{name}` must be an http(s) URL, got {shown(value)!r}")
    refuse_credentials(value, name, credentials_go)
    try:
        split.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError(f"`{name}` has an invalid port: {shown(value)!r}") from None
    return value


def shown(url: str) -> str:
    """``url`` without its query, fragment or user info, which may hold credentials."""
    split = urlsplit(url)
    host = split.hostname or ""
    try:
        port = split.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    return f"{split.scheme}://{netloc}{split.path}" if split.scheme else split.path


def refuse_credentials(url: str, name: str, credentials_go: str) -> None:
    """A URL's ``user:password@`` is printed wherever the URL is, and aiohttp refuses to send it
    beside an Authorization header (so it could never deliver): refuse it, saying where the
    credentials go, without repeating them."""
    split = urlsplit(url)
    if split.username is not None or split.password is not None:
        raise ValueError(f"`{name}` must not carry credentials (user:password@ in {shown(url)!r}): "
                         f"put them {credentials_go}")


def secret(name: str, value: str, env: str = "", file: str = "",
           environ: Mapping[str, str] | None = None) -> str:
    """A secret given inline (``options.<name>``), in the environment variable named by
    ``<name>_env`` or in the file named by ``<name>_file`` (surrounding whitespace trimmed);
    "" when none is given. More than one, an unset variable or an unreadable file is a
    ValueError naming the key."""
    given = [key for key, v in ((name, value), (f"{name}_env", env), (f"{name}_file", file)) if v]
    if len(given) > 1:
        raise ValueError(f"`options.{given[0]}` and `options.{given[1]}` are both set; give one")
    if env:
        found = (os.environ if environ is None else environ).get(env)
        if not found:
            raise ValueError(f"`options.{name}_env`: the environment variable {env} is not set")
        return found.strip()
    if file:
        try:
            return Path(file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"`options.{name}_file`: cannot read {file}: {exc}") from None
    return value


def require(module: str, package: str, kind: str) -> None:
    """A ValueError naming the ``fleet`` extra when ``module`` (from ``package``) is missing."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise ValueError(f"type {kind} needs {package}: install the relay with its `fleet` extra "
                         f"(pip install 'relay[fleet]')") from None
