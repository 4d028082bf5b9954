"""A NATS connection as the ``nats`` destination and the ``nats`` source hold it.

The connection is made in the background and kept forever (nats-py reconnects on its
own), so a relay starts and keeps its events on disk while no server answers. Failures
are remembered as text (``error``); a refused login also sets ``denied`` and a refused
publish ``forbidden``, which the destination answers as a 401 or 403 (pause). Auth is a token,
user/password, an NKey seed or a ``.creds`` file; TLS takes a CA and a client cert. Every
secret can be given inline, as ``<name>_env`` (a variable's name) or as ``<name>_file``.
A ``.creds`` is read and checked here (its user JWT and the seed that signs for it) and
handed to nats-py rewritten in the standard layout: nats-py's own reader loops forever, on
the event loop, on a text without a JWT block, and takes indented lines as they are.

nats-py is imported only here, and only when a connection starts (the ``fleet`` extra).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import ssl
from collections import UserString
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec

from relay.sinks import options as opts

if TYPE_CHECKING:
    from nats.aio.client import Client

log = logging.getLogger(__name__)

DEFAULT_SERVER = "nats://127.0.0.1:4222"
RECONNECT_WAIT = 0.5  # seconds between two tries of one server
CHECK_RETRY_WAIT = 0.1  # the same, for a connection that is not kept (``arguments(reconnect=False)``)
PROBE_TIMEOUT = 1.0
PENDING_BYTES = 8 * 1024 * 1024  # what nats-py buffers while reconnecting
_DENIED = ("authorization violation", "authentication")
_FORBIDDEN = "permissions violation"
_CREDS_JWT, _CREDS_SEED = "NATS USER JWT", "USER NKEY SEED"
_CREDS_BEGIN = re.compile(r"-{3,}\s*BEGIN (.+?)\s*-{3,}")


class ConnectionOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    servers: tuple[str, ...] = (DEFAULT_SERVER,)
    client_name: str = ""
    connect_timeout: float = 5.0
    token: str = ""
    token_env: str = ""
    token_file: str = ""
    user: str = ""
    password: str = ""
    password_env: str = ""
    password_file: str = ""
    nkey_seed: str = ""
    nkey_seed_env: str = ""
    nkey_seed_file: str = ""
    creds: str = ""  # the contents of a .creds file (JWT and seed)
    creds_env: str = ""
    creds_file: str = ""
    tls_ca: str = ""  # PEM files
    tls_cert: str = ""
    tls_key: str = ""


class Credentials:
    """The secrets of ``ConnectionOptions``, read once (at config check and at start)."""

    __slots__ = ("creds", "creds_key", "nkey_seed", "password", "token")

    def __init__(self, options: ConnectionOptions) -> None:
        self.token = opts.secret("token", options.token, options.token_env, options.token_file)
        self.password = opts.secret("password", options.password, options.password_env,
                                    options.password_file)
        self.nkey_seed = opts.secret("nkey_seed", options.nkey_seed, options.nkey_seed_env,
                                     options.nkey_seed_file)
        self.creds = opts.secret("creds", options.creds, options.creds_env, options.creds_file)
        self.creds_key = next((key for key in ("creds", "creds_env", "creds_file")
                               if getattr(options, key)), "creds")
        if self.password and not options.user:
            raise ValueError("`options.password` is set without `options.user`")
        if sum(map(bool, (self.token, options.user, self.nkey_seed, self.creds))) > 1:
            raise ValueError("give one of `options.token`, `options.user`, `options.nkey_seed` "
                             "and `options.creds` (with their _env or _file forms)")

    def __repr__(self) -> str:
        return "Credentials(********)"


def check(options: ConnectionOptions, kind: str) -> Credentials:
    """Validate the options (a ValueError naming the key) and read the secrets."""
    opts.require("nats", "nats-py", kind)
    if not options.servers:
        raise ValueError("`options.servers` is empty")
    for i, server in enumerate(options.servers):
        split = urlsplit(server)
        if split.scheme not in ("nats", "tls") or not split.hostname:
            raise ValueError(f"`options.servers[{i}]` must be a nats:// or tls:// URL, got "
                             f"{opts.shown(server)!r}")
        opts.refuse_credentials(server, f"options.servers[{i}]",
                                "in `options.user` and `options.password` (or their _env/_file forms)")
    for key in ("tls_ca", "tls_cert", "tls_key"):
        path = getattr(options, key)
        if path and not Path(path).is_file():
            raise ValueError(f"`options.{key}`: no file {path}")
    if bool(options.tls_cert) != bool(options.tls_key):
        raise ValueError("`options.tls_cert` and `options.tls_key` go together")
    if options.connect_timeout <= 0:
        raise ValueError("`options.connect_timeout` must be above 0")
    credentials = Credentials(options)
    if credentials.nkey_seed or credentials.creds:
        opts.require("nkeys", "nkeys", kind)
    if credentials.creds:
        credentials.creds = read_creds(credentials.creds, credentials.creds_key)
    return credentials


def read_creds(text: str, key: str) -> str:
    """A ``.creds`` text in the layout ``nsc`` writes, once its user JWT and seed are found and
    the seed is the one the JWT is for; a ValueError naming ``options.<key>`` if not (it never
    repeats the secret). Its lines may be indented (an inline TOML string) or end in CRLF."""
    import nkeys  # type: ignore[import-untyped]

    found: dict[str, str] = {}
    lines = [line.strip() for line in text.splitlines()]
    for i, line in enumerate(lines):
        begin = _CREDS_BEGIN.fullmatch(line)
        if begin is not None and begin.group(1) in (_CREDS_JWT, _CREDS_SEED):
            found.setdefault(begin.group(1), next((v for v in lines[i + 1:] if v), ""))
    where = f"`options.{key}`: not a NATS .creds file"
    for block in (_CREDS_JWT, _CREDS_SEED):
        if not found.get(block) or found[block].startswith("-"):
            raise ValueError(f"{where}: no {block} block (-----BEGIN {block}----- and a line after it)")
    jwt, seed = found[_CREDS_JWT], found[_CREDS_SEED]
    try:
        pair = nkeys.from_seed(bytearray(seed.encode()))
        public = pair.public_key.decode()
        pair.wipe()
    except Exception:  # nkeys raises its own errors, and others on a short or garbled seed
        raise ValueError(f"{where}: its USER NKEY SEED is not an NKey seed") from None
    if not public.startswith("U"):
        raise ValueError(f"{where}: its USER NKEY SEED is not a user seed (it makes {public[:1]}... keys)")
    claims = _jwt_claims(jwt)
    if claims is None:
        raise ValueError(f"{where}: its NATS USER JWT is not a JWT")
    nats = claims.get("nats")
    kind = nats.get("type") if isinstance(nats, dict) else claims.get("type")
    if kind != "user":
        raise ValueError(f"{where}: its NATS USER JWT is not a user JWT (type {kind!r})")
    if claims.get("sub") != public:
        raise ValueError(f"{where}: its USER NKEY SEED is not the JWT's (the JWT is for "
                         f"{claims.get('sub')!r}, the seed makes {public!r})")
    return (f"-----BEGIN {_CREDS_JWT}-----\n{jwt}\n------END {_CREDS_JWT}------\n\n"
            f"-----BEGIN {_CREDS_SEED}-----\n{seed}\n------END {_CREDS_SEED}------\n")


def _jwt_claims(jwt: str) -> dict[str, Any] | None:
    """The claims of a JWT (its signature is the server's to check), None when it is not one."""
    parts = jwt.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


def denied(text: str) -> bool:
    """Whether a server's error says the credentials or permissions are wrong."""
    lowered = text.lower()
    return any(word in lowered for word in _DENIED)


class Connection:
    """One nats-py client, connecting in the background and reconnecting forever."""

    def __init__(self, options: ConnectionOptions, kind: str, name: str) -> None:
        self.options = options
        self.name = name
        self._credentials = check(options, kind)
        self.client: Client | None = None
        self.error: str | None = None
        self.denied: str | None = None  # the server's words when it refused the credentials
        self.forbidden: str | None = None  # the server's words when it refused a publish
        self._connecting: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Connection({[opts.shown(s) for s in self.options.servers]!r})"

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.is_connected

    def describe_down(self) -> str:
        return f"not connected to NATS ({', '.join(map(opts.shown, self.options.servers))})" + (
            f": {self.error}" if self.error else "")

    async def start(self) -> None:
        if self.client is not None:
            return
        from nats.aio.client import Client

        self.client = Client()
        self._connecting = asyncio.create_task(self._connect(self.client), name=f"nats-{self.name}")

    async def wait_connected(self, timeout: float) -> bool:
        """Whether the connection is up within ``timeout`` seconds."""
        task = self._connecting
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=timeout)
        return self.connected

    async def stop(self) -> None:
        """Close the connection (safe to call twice)."""
        task, self._connecting = self._connecting, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        client, self.client = self.client, None
        if client is not None and not client.is_closed:
            try:
                await client.close()
            except Exception as exc:  # closing a half-open client: nothing left to save
                log.debug("closing the NATS connection: %s", exc)

    async def probe(self) -> bool:
        """Whether the connection is up, or any server accepts TCP connections again."""
        if self.connected:
            return True
        for server in self.options.servers:
            split = urlsplit(server)
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(split.hostname, split.port or 4222), PROBE_TIMEOUT)
            except (OSError, TimeoutError):
                continue
            writer.close()
            return True
        return False

    async def _connect(self, client: Client) -> None:
        try:
            await client.connect(**self.arguments())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bad option nats-py found: remembered and reported per send
            self.error = f"cannot connect: {type(exc).__name__}: {exc}"
            log.error("NATS connection failed", extra={"connection": self.name, "error": self.error})
            return
        self.error = self.denied = None
        url = client.connected_url  # a urllib ParseResult
        log.info("connected to NATS", extra={"connection": self.name,
                                             "server": opts.shown(url.geturl() if url else "")})

    def arguments(self, reconnect: bool = True) -> dict[str, Any]:
        """nats-py's ``connect`` arguments: the servers, credentials and TLS; with ``reconnect``
        False, a server is given up after a second attempt and there are no callbacks (``relay
        check --connect`` sets its own). nats-py keeps trying a server that refuses TCP
        connections for ever when ``max_reconnect_attempts`` is 0, so it is 1 there."""
        options, secrets = self.options, self._credentials
        arguments: dict[str, Any] = {
            "servers": list(options.servers),
            "name": options.client_name or f"relay {self.name}",
            "connect_timeout": options.connect_timeout,
            "reconnect_time_wait": RECONNECT_WAIT if reconnect else CHECK_RETRY_WAIT,
            "max_reconnect_attempts": -1 if reconnect else 1,
            "allow_reconnect": reconnect,
            "pending_size": PENDING_BYTES,
        }
        if reconnect:
            arguments.update(error_cb=self._on_error, disconnected_cb=self._on_disconnected,
                             reconnected_cb=self._on_reconnected)
        if secrets.token:
            arguments["token"] = secrets.token
        if options.user:
            arguments["user"], arguments["password"] = options.user, secrets.password
        if secrets.nkey_seed:
            arguments["nkeys_seed_str"] = secrets.nkey_seed
        if secrets.creds:
            arguments["user_credentials"] = UserString(secrets.creds)
        if options.tls_ca or options.tls_cert or any(s.startswith("tls://") for s in options.servers):
            context = ssl.create_default_context(cafile=options.tls_ca or None)
            if options.tls_cert:
                context.load_cert_chain(options.tls_cert, options.tls_key)
            arguments["tls"] = context
        return arguments

    async def _on_error(self, exc: Exception) -> None:
        text = str(exc) or type(exc).__name__
        if isinstance(exc, OSError | TimeoutError):
            text = f"{type(exc).__name__}: {text}"
        self.error = text
        if _FORBIDDEN in text.lower():
            self.forbidden = text
        elif denied(text) or type(exc).__name__ == "AuthorizationError":
            self.denied = text
        log.warning("NATS error", extra={"connection": self.name, "error": text})

    async def _on_disconnected(self) -> None:
        if self.client is not None and not self.client.is_closed:
            log.warning("disconnected from NATS", extra={"connection": self.name})

    async def _on_reconnected(self) -> None:
        self.error = self.denied = None
        log.info("reconnected to NATS", extra={"connection": self.name})
