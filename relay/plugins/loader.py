"""Find, configure and check plugins named in ``[[plugins]]``.

``use`` is, in the order tried:
- ``"path/to/file.py:ClassName"`` or ``"path/to/folder:ClassName"`` (a folder is a package
  with an ``__init__.py``); a relative path is taken from ``base`` (the current directory
  unless the caller passes the config file's folder);
- ``"package.module:ClassName"``, an importable module;
- a built-in's name (``privacy``, ``tracking_plan`` or ``tracking-plan``, ...);
- the name of an entry point in the group ``relay.plugins`` of an installed distribution.

The object found is a class, called with no arguments, or a ready plugin object. Its options
are decoded into its ``Options`` type (a msgspec Struct or a dataclass) when it declares one,
else passed on as a dict; a bad option raises ConfigError naming the instance and the key.
Every problem here is a ConfigError: the relay does not start with a broken plugin.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, cast

import msgspec

from relay.errors import ConfigError
from relay.plugins.api import CATCH_ALL, MESSAGE_HOOKS, PLUGIN_TYPES, Plugin, PluginType
from relay.plugins.builtin import BUILTINS

ENTRY_POINT_GROUP = "relay.plugins"
DEFAULT_BUDGET_MS = 50.0
EVENT_PATH_TYPES = frozenset({"before", "enrichment", "destination"})


class Spec(Protocol):
    """One ``[[plugins]]`` table (``relay.config.PluginConfig`` is one).

    A spec may also carry ``type`` (to run a plugin as another type) and ``budget_ms``;
    both are read when present."""

    @property
    def use(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def options(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Loaded:
    """A plugin instance ready for the pipeline (``load`` not yet awaited)."""

    index: int
    name: str  # the instance name: the spec's name, else its `use`
    plugin: Plugin
    type: PluginType
    options: Any
    budget: float  # seconds one call may take

    @property
    def where(self) -> str:
        return f"plugins[{self.index}] ({self.name})"


def load_all(specs: Sequence[Spec], base: Path | None = None) -> list[Loaded]:
    """Every spec as a Loaded plugin; instance names must be unique. Every plugin's problem
    is reported (one line each), not only the first."""
    loaded: list[Loaded] = []
    problems: list[str] = []
    seen: set[str] = set()
    for index, spec in enumerate(specs):
        try:
            plugin = load_one(index, spec, base)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        if plugin.name in seen:
            problems.append(f"{plugin.where}: the instance name {plugin.name!r} is used twice; "
                            "give one of them a `name`")
        seen.add(plugin.name)
        loaded.append(plugin)
    if problems:
        raise ConfigError("\n".join(problems))
    return loaded


def load_one(index: int, spec: Spec, base: Path | None = None) -> Loaded:
    name = spec.name or spec.use
    where = f"plugins[{index}] ({name})"
    factory = resolve(spec.use, base or Path.cwd(), where)
    options = _options(factory, spec.options, where)
    try:
        plugin = factory() if isinstance(factory, type) else factory
    except Exception as exc:
        raise ConfigError(f"{where}: cannot create the plugin: {type(exc).__name__}: {exc}") from exc
    plugin_type = _check(plugin, where, getattr(spec, "type", "") or "")
    budget_ms = getattr(spec, "budget_ms", 0) or getattr(plugin, "budget_ms", 0) or DEFAULT_BUDGET_MS
    if not isinstance(budget_ms, int | float) or budget_ms <= 0:
        raise ConfigError(f"{where}: `budget_ms` must be a positive number of milliseconds")
    return Loaded(index, name, cast(Plugin, plugin), plugin_type, options, float(budget_ms) / 1000)


def resolve(use: str, base: Path, where: str) -> Any:
    """The class or object that ``use`` names."""
    if ":" in use:
        location, _, attribute = use.rpartition(":")
        if not location or not attribute:
            raise ConfigError(f"{where}: `use` {use!r} should read \"path/to/file.py:ClassName\"")
        module = _import_location(location, base, where)
        try:
            return getattr(module, attribute)
        except AttributeError:
            raise ConfigError(f"{where}: {location} has no attribute {attribute!r}") from None
    builtin = BUILTINS.get(use.replace("-", "_"))
    if builtin is not None:
        module_name, _, attribute = builtin.partition(":")
        return getattr(importlib.import_module(module_name), attribute)
    found = entry_points(group=ENTRY_POINT_GROUP, name=use)
    for entry_point in found:
        try:
            return entry_point.load()
        except Exception as exc:
            raise ConfigError(
                f"{where}: the entry point {entry_point.value!r} does not load: {type(exc).__name__}: {exc}"
            ) from exc
    raise ConfigError(
        f"{where}: no plugin {use!r}: not a built-in ({', '.join(sorted(BUILTINS))}), not an entry point "
        f"in the group {ENTRY_POINT_GROUP!r}, and not a \"path/to/file.py:ClassName\""
    )


def _import_location(location: str, base: Path, where: str) -> ModuleType:
    path_like = location.endswith(".py") or "/" in location or "\\" in location
    path = Path(location) if Path(location).is_absolute() else base / location
    if not path_like and not path.is_dir():
        try:
            return importlib.import_module(location)
        except ImportError as exc:
            raise ConfigError(f"{where}: cannot import {location!r}: {exc}") from exc
    return _import_path(path.resolve(), where)


def _import_path(path: Path, where: str) -> ModuleType:
    if path.is_dir():
        init, search = path / "__init__.py", [str(path)]
    else:
        init, search = path, None
    if not init.is_file():
        raise ConfigError(f"{where}: {init} does not exist")
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", path.stem)
    module_name = f"relay_plugin_{stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, init, submodule_search_locations=search)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{where}: cannot import {init}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # before running it: its annotations resolve through it
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise ConfigError(f"{where}: {init} fails to import: {type(exc).__name__}: {exc}") from exc
    return module


def _options(factory: Any, raw: dict[str, Any], where: str) -> Any:
    options_type = getattr(factory, "Options", None)
    if options_type is None:
        return dict(raw)
    try:
        return msgspec.convert(raw, options_type, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _check(plugin: Any, where: str, override: str) -> PluginType:
    for attribute in ("name", "type", "version"):
        if not isinstance(getattr(plugin, attribute, None), str):
            raise ConfigError(f"{where}: not a plugin: it needs a string `{attribute}`")
    plugin_type = override or plugin.type
    if plugin_type not in PLUGIN_TYPES:
        raise ConfigError(f"{where}: type {plugin_type!r} is not one of {', '.join(PLUGIN_TYPES)}")
    if plugin_type in EVENT_PATH_TYPES and not (hooks(plugin) or callable(getattr(plugin, "allows", None))):
        raise ConfigError(
            f"{where}: a {plugin_type} plugin needs a hook ({', '.join((*MESSAGE_HOOKS, CATCH_ALL))})"
        )
    if plugin_type == "after" and not callable(getattr(plugin, "delivered", None)):
        raise ConfigError(f"{where}: an after plugin needs a `delivered` hook")
    return cast(PluginType, plugin_type)


def hooks(plugin: Any) -> dict[str, Any]:
    """Message type -> the bound hook that handles it (its own, else the catch-all)."""
    catch_all = getattr(plugin, CATCH_ALL, None)
    found: dict[str, Any] = {}
    for message_type in MESSAGE_HOOKS:
        hook = getattr(plugin, message_type, None)
        hook = hook if callable(hook) else catch_all
        if callable(hook):
            found[message_type] = hook
    return found
