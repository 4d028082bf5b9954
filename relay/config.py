"""Configuration: TOML decoded into frozen, validated value objects.

Precedence: embedded defaults < the TOML file < environment variables named
``RELAY_<SECTION>_<KEY>`` (for example ``RELAY_SERVER_PORT=9000``). A value in an
environment variable is read as a TOML value when it parses as one (numbers, booleans,
arrays) and as a plain string otherwise.

Any string of the TOML file may take secrets from outside it, as Vector and the OTel
Collector do: ``${VAR}`` or ``${env:VAR}`` is the environment variable's value,
``${file:/path}`` a file's content (one trailing newline dropped), ``$${`` a literal
``${``. An unset variable or an unreadable file is a config error naming the key; every
value taken this way is masked wherever the config is shown.

A value that names a file or folder on this machine (``queue.path``, ``server.sdk_dir``, a
file destination's ``path``, a warehouse's ``options.path``, every ``*_file`` and ``tls_*``
option, a plugin's ``use`` path, ``${file:...}``) may begin with ``~`` or ``~user``: the home
folder, expanded once here, as a shell would; a home folder that is not known is a config
error naming the key.
"""

from __future__ import annotations

import copy
import difflib
import ipaddress
import os
import re
import tomllib
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

import msgspec

from relay.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8088
DEFAULT_QUEUE_PATH = "relay-data/queue.db"
DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_DEDUP_WINDOW = 86_400
DEFAULT_SHUTDOWN_TIMEOUT = 10.0
MAX_DESTINATION_EVENTS = 2500
ENV_PREFIX = "RELAY_"
MASK = "********"

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    def __repr__(self) -> str:
        """Every secret masked, as ``relay check`` prints them: a config can be logged."""
        shown = ", ".join(f"{name}={_masked_field(name, getattr(self, name))!r}"
                          for name in self.__struct_fields__)
        return f"{type(self).__name__}({shown})"


class ServerConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    host: str = DEFAULT_HOST
    port: Port = DEFAULT_PORT
    write_keys: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ("*",)
    shutdown_timeout: PositiveFloat = DEFAULT_SHUTDOWN_TIMEOUT
    header_timeout: PositiveFloat = 10.0    # seconds for a client to send its request headers
    body_timeout: PositiveFloat = 30.0      # seconds for a client to send its request body
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 1024
    # analytics.js served by the relay: a folder of @segment/analytics-next's dist/umd files;
    # empty: the one `relay sdk install` puts next to the queue (<queue folder>/sdk/...)
    sdk_dir: str = ""

    def __post_init__(self) -> None:
        for i, proxy in enumerate(self.trusted_proxies):
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(
                    f"trusted_proxies[{i}]: expected an IP address or CIDR network, got {proxy!r}"
                ) from None


class QueueConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    path: str = DEFAULT_QUEUE_PATH
    durability: Literal["fsync", "os"] = "fsync"
    max_bytes: Annotated[int, msgspec.Meta(ge=1 << 20)] = DEFAULT_MAX_BYTES
    when_full: Literal["reject", "drop_oldest"] = "reject"
    dedup_window: NonNegativeInt = DEFAULT_DEDUP_WINDOW


class AdminConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    host: str = DEFAULT_HOST
    port: Port = 8089
    token: str = ""  # when set: Authorization: Bearer <token> on every admin route but /health


class LogConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "text"] = "auto"  # auto: JSON lines unless stdout is a terminal


class PluginConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    use: Annotated[str, msgspec.Meta(min_length=1)]  # built-in, entry point, or "path.py:Class"
    name: str = ""  # instance name (defaults to the plugin's own name)
    options: dict[str, Any] = msgspec.field(default_factory=dict)


DestinationType = str  # "segment", "file", or a type a sink module provides


class DestinationConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, msgspec.Meta(min_length=1, pattern=r"^[A-Za-z0-9_.\- ]+$")]
    type: DestinationType
    endpoint: str = ""
    write_key: str = ""
    gzip: bool = True
    max_events: Annotated[int, msgspec.Meta(ge=1, le=MAX_DESTINATION_EVENTS)] = 500
    max_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 500_000
    flush_interval: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    timeout: PositiveFloat = 15.0
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    retry_initial: PositiveFloat = 1.0
    retry_max: PositiveFloat = 60.0
    max_age: Annotated[float, msgspec.Meta(ge=0)] = 0
    max_events_per_second: Annotated[float, msgspec.Meta(ge=0)] = 0
    # type = "file"
    path: str = ""
    rotate_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 64 * 1024 * 1024
    rotate_hourly: bool = True
    # other types: their own options, validated by the type (a bad one names the key)
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    plugins: tuple[str, ...] = ()  # destination-scoped plugin instances, in order

    def __post_init__(self) -> None:
        if self.type == "segment":
            if not self.endpoint.startswith(("http://", "https://")):
                raise ValueError(f"destination {self.name!r}: `endpoint` must be an http(s) URL")
            if "@" in urlsplit(self.endpoint).netloc:
                raise ValueError(f"destination {self.name!r}: `endpoint` must not carry credentials "
                                 "(user:password@): the upstream's key goes in `write_key`")
        elif self.type == "file" and not self.path:
            raise ValueError(f"destination {self.name!r}: `path` (a folder) is required for type file")
        if self.retry_max < self.retry_initial:
            raise ValueError(f"destination {self.name!r}: `retry_max` is below `retry_initial`")


class SourceConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where the relay takes events from besides HTTP (``[[sources]]``): a stream's consumer."""

    name: Annotated[str, msgspec.Meta(min_length=1, pattern=r"^[A-Za-z0-9_.\- ]+$")]
    type: str  # a type relay.sources provides ("nats")
    options: dict[str, Any] = msgspec.field(default_factory=dict)  # validated by the type


class Config(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True, weakref=True):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    queue: QueueConfig = msgspec.field(default_factory=QueueConfig)
    admin: AdminConfig = msgspec.field(default_factory=AdminConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    destinations: tuple[DestinationConfig, ...] = ()
    plugins: tuple[PluginConfig, ...] = ()
    sources: tuple[SourceConfig, ...] = ()

    def __post_init__(self) -> None:
        tables: tuple[tuple[str, list[str]], ...] = (
            ("destinations", [d.name for d in self.destinations]),
            ("sources", [s.name for s in self.sources]),
        )
        for table, names in tables:
            seen: set[str] = set()
            for i, name in enumerate(names):
                if name in seen:
                    raise ValueError(f"{table}[{i}]: the name {name!r} is used twice")
                seen.add(name)


SECTIONS: dict[str, type[_Section]] = {
    "server": ServerConfig, "queue": QueueConfig, "admin": AdminConfig, "log": LogConfig,
}
SECRET_KEYS = frozenset({("server", "write_keys"), ("admin", "token")})
SECRET_OPTION_WORDS = ("key", "secret", "token", "password", "salt", "seed", "creds")


def load(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (or only the defaults when None), apply the environment, validate."""
    env = os.environ if environ is None else environ
    source = str(path) if path is not None else "<defaults>"
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{source}: file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{source}: cannot read: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    taken: set[str] = set()
    raw = _interpolate(raw, env, source, "$", taken)
    from_env = _apply_environment(raw, env)
    problems = [_describe(p, source, from_env) for p in _expand_home(raw) + _problems(raw)]
    if problems:
        raise ConfigError("\n".join(problems))
    config = msgspec.convert(raw, Config, strict=True)
    problems = _check_queue_path(config, source) + _check_destinations(config, source)
    if problems:
        raise ConfigError("\n".join(problems))
    _check_sources(config, source)
    _remember(config, frozenset(v for v in taken if v))
    return config


_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# id(Config) -> the values ${...} put in it (secrets by where they came from, whatever the
# key), forgotten with the Config (a Struct holding dicts has no hash for a WeakKeyDictionary).
_INTERPOLATED: dict[int, frozenset[str]] = {}


def _remember(config: Config, values: frozenset[str]) -> None:
    if values:
        _INTERPOLATED[id(config)] = values
        weakref.finalize(config, _INTERPOLATED.pop, id(config), None)


def interpolated(config: Config) -> frozenset[str]:
    """The values that ``${VAR}`` / ``${file:...}`` put into ``config``."""
    return _INTERPOLATED.get(id(config), frozenset())


def carry_secrets(old: Config, new: Config) -> Config:
    """``new`` (a copy of ``old`` with changes) masks what ``old`` masks."""
    _remember(new, interpolated(old))
    return new


def _interpolate(value: Any, env: Mapping[str, str], source: str, where: str, taken: set[str]) -> Any:
    """``value`` with every ``${...}`` in its strings replaced; ``taken`` collects the values."""
    if isinstance(value, dict):
        return {k: _interpolate(v, env, source, f"{where}.{k}", taken) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env, source, f"{where}[{i}]", taken) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(1) is None:
            return "${"
        reference = match.group(1).strip()
        kind, _, name = reference.partition(":") if ":" in reference else ("env", "", reference)
        key = f"`{where}`"
        if kind == "env" and _VARIABLE.match(name):
            if name not in env:
                raise ConfigError(f"{source}: {key}: environment variable {name} is not set")
            found = env[name]
        elif kind == "file" and name:
            path = os.path.expanduser(name)
            if path.startswith("~"):
                raise ConfigError(f"{source}: {key}: `${{{reference}}}`: {_no_home(name)}")
            try:
                found = Path(path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{source}: {key}: cannot read the file {name}: "
                                  f"{getattr(exc, 'strerror', None) or exc}") from None
            found = found[:-1] if found.endswith("\n") else found
            found = found[:-1] if found.endswith("\r") else found
        else:
            raise ConfigError(f"{source}: {key}: `${{{reference}}}` is not a reference: use "
                              "${VAR}, ${env:VAR} or ${file:/path} (and $${ for a literal ${)")
        taken.add(found)
        return found

    return _REFERENCE.sub(replace, value)


# where a value names a file or folder: a leading ~ is a home folder (see the module's text)
PATH_OPTIONS: dict[str, tuple[str, ...]] = {"duckdb": ("path",), "parquet": ("path",)}  # type -> path options
FILE_OPTIONS = ("tls_ca", "tls_cert", "tls_key")  # of any type, besides every "*_file"


def _expand_home(raw: dict[str, Any]) -> list[str]:
    """Expand ``~`` at the start of every value of ``raw`` that names a file or folder, in
    place; a problem for each whose home folder is not known."""
    problems: list[str] = []

    def expand(table: Any, key: str, where: str) -> None:
        value = table.get(key) if isinstance(table, dict) else None
        if isinstance(value, str) and value.startswith("~"):
            expanded = os.path.expanduser(value)
            if expanded.startswith("~"):
                problems.append(f"`{where}`: {value!r}: {_no_home(value)}")
            else:
                table[key] = expanded

    expand(raw.get("queue"), "path", "$.queue.path")
    expand(raw.get("server"), "sdk_dir", "$.server.sdk_dir")
    for section in ("destinations", "plugins", "sources"):
        entries = raw.get(section)
        for i, entry in enumerate(entries if isinstance(entries, list) else ()):
            if not isinstance(entry, dict):
                continue
            at = f"$.{section}[{i}]"
            if section == "plugins":
                expand(entry, "use", f"{at}.use")
                continue  # a plugin's options are its own
            if section == "destinations":
                expand(entry, "path", f"{at}.path")
            options = entry.get("options")
            kind = entry.get("type")
            paths: tuple[str, ...] = PATH_OPTIONS.get(kind, ()) if isinstance(kind, str) else ()
            for key in list(options) if isinstance(options, dict) else ():
                if key in paths or key in FILE_OPTIONS or key.endswith("_file"):
                    expand(options, key, f"{at}.options.{key}")
    return problems


def _no_home(value: str) -> str:
    user = value[1:].split("/", 1)[0].split(os.sep, 1)[0]
    if user:
        return f"it begins with ~{user}, and there is no user {user!r} to take the home folder of"
    return "it begins with ~, and the home folder is not known (HOME is not set, and the account has none)"


def _apply_environment(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """Fold ``RELAY_<SECTION>_<KEY>`` variables into ``raw``; return key path -> variable."""
    applied: dict[str, str] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section = next((s for s in SECTIONS if rest.startswith(s + "_")), None)
        if section is None:
            continue
        key = rest[len(section) + 1 :]
        if key not in SECTIONS[section].__struct_fields__:
            raise ConfigError(f"environment variable {name}: unknown key `{section}.{key}`")
        table = raw.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"environment variable {name}: `{section}` is not a table")
        text_field = _TEXT_FIELDS.get(section, frozenset())
        table[key] = _parse_env_value(value, as_text=key in text_field)
        applied[f"$.{section}.{key}"] = name
    return applied


def _text_fields(section: type[_Section]) -> frozenset[str]:
    return frozenset(f.name for f in msgspec.structs.fields(section) if f.type is str)


_TEXT_FIELDS = {name: _text_fields(section) for name, section in SECTIONS.items()}


def _parse_env_value(value: str, as_text: bool = False) -> Any:
    """A TOML value when it parses as one; a text key keeps ``123`` or ``true`` as text."""
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value
    return value if as_text and not isinstance(parsed, str) else parsed


def _describe(message: str, source: str, from_env: dict[str, str]) -> str:
    for key_path, variable in from_env.items():
        section_path, _, key = key_path.rpartition(".")
        # A check across a section's keys reports the section's path and names the key first.
        whole_section = (message.endswith(f"- at `{section_path}`")
                         and message.startswith((f"{key}[", f"{key}:")))
        if f"`{key_path}`" in message or f"`{key_path}[" in message or whole_section:
            return f"environment variable {variable}: {message}"
    return f"{source}: {message}"


MAX_PROBLEMS = 50
_AT = re.compile(r" - at `(\$[^`]*)`$")


def _problems(raw: dict[str, Any]) -> list[str]:
    """Every problem of ``raw`` (not only the first msgspec meets): unknown keys with the
    nearest valid one, then each bad value, taken out and the rest checked again."""
    data: dict[str, Any] = copy.deepcopy(raw)
    problems = _unknown_keys(data)
    for _ in range(MAX_PROBLEMS):
        try:
            msgspec.convert(data, Config, strict=True)
            break
        except msgspec.ValidationError as exc:
            message = str(exc)
            match = _AT.search(message)
            problems.append(_with_allowed_values(message, match.group(1) if match else None))
            if match is None or not _take_out(data, match.group(1)):
                break
    return problems


def _suggest(key: str, known: Sequence[str]) -> str:
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean `{near[0]}`?" if near else f"; known keys: {', '.join(known)}"


def _unknown_keys(data: dict[str, Any]) -> list[str]:
    found: list[str] = []

    def check(table: object, kind: type[msgspec.Struct], where: str) -> None:
        if not isinstance(table, dict):
            return
        for key in [k for k in table if k not in kind.__struct_fields__]:
            found.append(f"Object contains unknown field `{key}` - at `{where}`"
                         f"{_suggest(key, kind.__struct_fields__)}")
            del table[key]

    check(data, Config, "$")
    for name, kind in SECTIONS.items():
        check(data.get(name), kind, f"$.{name}")
    for name, kind in (("destinations", DestinationConfig), ("plugins", PluginConfig)):
        items = data.get(name)
        if isinstance(items, list):
            for i, item in enumerate(items):
                check(item, kind, f"$.{name}[{i}]")
    return found


def _field_type(path: str) -> Any:
    """The declared type at ``$.section.key`` or ``$.destinations[i].key``, if known."""
    parts = re.findall(r"\.(\w+)", path)
    kinds: dict[str, type[msgspec.Struct]] = {**SECTIONS, "destinations": DestinationConfig,
                                              "plugins": PluginConfig}
    if len(parts) != 2 or parts[0] not in kinds:
        return None
    for f in msgspec.structs.fields(kinds[parts[0]]):
        if f.name == parts[1]:
            return f.type
    return None


def _with_allowed_values(message: str, path: str | None) -> str:
    if path is None or not message.startswith("Invalid enum value"):
        return message
    kind = _field_type(path)
    if get_origin(kind) is Literal:
        return f"{message}; allowed: {', '.join(repr(v) for v in get_args(kind))}"
    return message


def _take_out(data: dict[str, Any], path: str) -> bool:
    """Remove what ``path`` points at (a whole destination or plugin becomes a placeholder
    so later indexes still match); False when nothing can be removed."""
    steps = re.findall(r"\.(\w+)|\[(\d+)\]", path)
    if not steps:
        return False
    node: Any = data
    for name, index in steps[:-1]:
        node = node[name] if name else node[int(index)]
        if not isinstance(node, dict | list):
            return False
    name, index = steps[-1]
    if index and isinstance(node, list):
        i = int(index)
        if len(steps) == 2 and steps[0][0] == "destinations":
            node[i] = {"name": f"placeholder {i}", "type": "file", "path": "placeholder"}
        elif len(steps) == 2 and steps[0][0] == "plugins":
            node[i] = {"use": "placeholder"}
        else:
            del node[i]
        return True
    if name and isinstance(node, dict) and name in node:
        if len(steps) == 1 and name in SECTIONS and isinstance(node[name], dict) and not node[name]:
            return False
        if len(steps) == 1 and name in SECTIONS:
            node[name] = {}
        else:
            del node[name]
        return True
    return False


def _check_queue_path(config: Config, source: str) -> list[str]:
    if not config.queue.path.strip():
        return [f"{source}: Expected a file path - at `$.queue.path`"]
    return []


# destination types whose `options.path` no other of the type may share, and why
SHARED_NOTHING = {
    "duckdb": "each keeps the newest time of its tables to itself, so one would load again what "
              "the other loaded",
    "parquet": "each clears the temporary files it finds under its path when it starts, another's "
               "as well, which may hold a load that was committed but not yet renamed",
}


def _check_destinations(config: Config, source: str) -> list[str]:
    """Each destination's type exists and takes its options; its plugins are defined; no two
    duckdb or parquet destinations write to one path."""
    from relay.sinks import make_sink

    problems: list[str] = []
    plugin_names = {p.name or p.use for p in config.plugins}
    files: dict[tuple[str, str], tuple[str, str]] = {}  # (type, path) -> (destination, its spelling)
    for i, destination in enumerate(config.destinations):
        where = f"{source}: destinations[{i}] ({destination.name})"
        try:
            make_sink(destination)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
        path = destination.options.get("path") if destination.type in SHARED_NOTHING else None
        if isinstance(path, str) and path.strip():
            # as written (not resolved: the relay and a command run elsewhere see one answer)
            key = (destination.type, os.path.normpath(path))
            if key in files:
                other, spelled = files[key]
                problems.append(f"{where}: `options.path`: {path!r} is also the path of destination "
                                f"{other!r} ({spelled!r}); two {destination.type} destinations cannot "
                                f"share one ({SHARED_NOTHING[destination.type]})")
            files.setdefault(key, (destination.name, path))
        for plugin in destination.plugins:
            if plugin not in plugin_names:
                problems.append(f"{where}: `plugins` names {plugin!r}, which no [[plugins]] defines")
    return problems


def _check_sources(config: Config, source: str) -> None:
    """Each source's type exists and takes its options."""
    from relay.sources import check_source

    for i, entry in enumerate(config.sources):
        try:
            check_source(entry)
        except ValueError as exc:
            raise ConfigError(f"{source}: sources[{i}] ({entry.name}): {exc}") from None


def with_state_directory(config: Config, environ: Mapping[str, str]) -> Config:
    """Under systemd, a relative queue path lives in ``$STATE_DIRECTORY``."""
    state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if not state or Path(config.queue.path).is_absolute():
        return config
    queue = msgspec.structs.replace(config.queue, path=str(Path(state) / Path(config.queue.path).name))
    return carry_secrets(config, msgspec.structs.replace(config, queue=queue))


def masked(config: Config) -> dict[str, Any]:
    """The effective configuration as plain data, secrets replaced by a mask."""
    data: dict[str, Any] = msgspec.to_builtins(config)
    for section, key in SECRET_KEYS:
        value = data.get(section, {}).get(key)
        if isinstance(value, list | tuple):
            data[section][key] = [MASK for _ in value]
        elif value:
            data[section][key] = MASK
    for destination in data.get("destinations", []):
        if destination.get("write_key"):
            destination["write_key"] = MASK
        _mask_options(destination.get("options", {}))
    for plugin in [*data.get("plugins", []), *data.get("sources", [])]:
        _mask_options(plugin.get("options", {}))
    secrets = interpolated(config)
    return _mask_values(data, secrets) if secrets else data


def _mask_values(data: Any, secrets: frozenset[str]) -> Any:
    """Whatever holds a value taken from the environment or a file, masked."""
    if isinstance(data, dict):
        return {k: _mask_values(v, secrets) for k, v in data.items()}
    if isinstance(data, list):
        return [_mask_values(v, secrets) for v in data]
    if isinstance(data, str) and data != MASK and (
            data in secrets or any(len(secret) >= 4 and secret in data for secret in secrets)):
        return MASK
    return data


SECRET_FIELDS = frozenset({"write_keys", "token", "write_key"})


def _masked_field(name: str, value: Any) -> Any:
    if name in SECRET_FIELDS and value:
        return tuple(MASK for _ in value) if isinstance(value, tuple) else MASK
    if name == "options" and isinstance(value, dict):
        options = msgspec.to_builtins(value)
        _mask_options(options)
        return options
    return value


# A key that says where a secret is (``salt_env``: a variable's name, ``key_file``: a path)
# holds no secret itself.
REFERENCE_SUFFIXES = ("_env", "_file", "_path", "_var", "_variable")


def _mask_options(options: dict[str, Any]) -> None:
    for key, value in options.items():
        if key.lower().endswith(REFERENCE_SUFFIXES):
            continue
        if value and any(word in key.lower() for word in SECRET_OPTION_WORDS):
            options[key] = MASK
        elif key == "headers" and isinstance(value, dict):  # e.g. Authorization for a webhook
            options[key] = {name: MASK for name in value}
        elif key == "url" and isinstance(value, str) and "?" in value:  # tokens ride in query strings
            options[key] = value.split("?", 1)[0] + "?" + MASK
