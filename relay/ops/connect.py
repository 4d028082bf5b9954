"""``relay check --connect``: each destination opened as ``relay run`` would open it, with its
real credentials, and asked something that changes nothing upstream (as ``vector validate``
runs each sink's healthcheck).

| type            | what is sent                                      | refused when                   |
|-----------------|---------------------------------------------------|--------------------------------|
| segment         | ``POST /v1/batch`` ``{"batch": [], "writeKey"}``, | 401/403; after another 4xx,    |
|                 | Basic auth; after another 4xx (a relay's 400),    | that GET's 401/403 (200 says   |
|                 | ``GET /v1/projects/<key>/settings``               | accepted)                      |
| webhook         | ``HEAD`` of the URL with the configured headers   | 401/403                        |
|                 | (and ``X-Signature`` of the empty body)           |                                |
| amplitude       | ``POST /2/httpapi`` ``{"api_key", "events": []}`` | 400 "Invalid API key", 401/403 |
| posthog         | ``POST /batch/`` ``{"api_key", "batch": []}``     | 401/403                        |
| nats            | a login, then JetStream's stream info (``stream`` | the login is refused, or       |
|                 | set) or account info                              | JetStream's request forbidden  |
| kafka           | a connection (TLS, SASL), then a metadata request | the SASL login fails           |
|                 | for all topics (naming one may create it)         |                                |
| postgres        | a login, then ``SELECT 1``                        | the login fails                |
| duckdb, parquet | nothing on the network: the path is checked for   |                                |
| and file        | writing                                           |                                |

No request carries an event: every list sent is empty, HEAD has no body. An answer is one of
``reachable`` (with what proved it), ``credentials refused``, ``unreachable``, ``TLS failed``
(with the reason), ``upstream error``, ``cannot write`` or ``cannot check``; all but the first
fail the check.
Texts never carry a credential: URLs are shown without query or user info, and each secret
of the destination is masked wherever an answer might echo it.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import os
import ssl
import string
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from relay import __version__
from relay.config import MASK, DestinationConfig

REACHABLE = "reachable"
REFUSED = "credentials refused"
UNREACHABLE = "unreachable"
TLS_FAILED = "TLS failed"
UPSTREAM_ERROR = "upstream error"
CANNOT_WRITE = "cannot write"
CANNOT_CHECK = "cannot check"
MAX_BODY_SHOWN = 200
GRACE = 2.0  # seconds past --connect-timeout before a destination's check is cut short
HTTP_TLS_HINT = ("the relay trusts the system's CA certificates; for a private CA, set SSL_CERT_FILE "
                 "to a bundle that holds it")


@dataclass(frozen=True)
class Reached:
    """What checking one destination came to."""

    name: str
    type: str
    verdict: str  # REACHABLE or what failed
    detail: str

    @property
    def ok(self) -> bool:
        return self.verdict == REACHABLE

    def line(self) -> str:
        """``destination <name> (<type>): <what proved it>``, or ``...: <verdict>: <why>``."""
        head = f"destination {self.name} ({self.type}): "
        return head + (self.detail if self.ok else f"{self.verdict}: {self.detail}")


class _Outcome(Exception):
    """A verdict reached inside a check (raised to leave it at once)."""

    def __init__(self, verdict: str, detail: str) -> None:
        super().__init__(detail)
        self.verdict = verdict
        self.detail = detail


Check = Callable[[DestinationConfig, "_Clock", list[str]], Awaitable[str]]  # secrets: appended as read


class _Clock:
    """Seconds left of the destination's budget."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._end = asyncio.get_running_loop().time() + timeout

    def left(self) -> float:
        return max(0.1, self._end - asyncio.get_running_loop().time())


async def reach(destination: DestinationConfig, timeout: float) -> Reached:
    """Check one destination within about ``timeout`` seconds."""
    check = CHECKS.get(destination.type, _tcp)
    secrets: list[str] = []
    verdict = REACHABLE
    try:
        async with asyncio.timeout(timeout + GRACE):
            detail = await check(destination, _Clock(timeout), secrets)
    except _Outcome as outcome:
        verdict, detail = outcome.verdict, outcome.detail
    except TimeoutError:
        verdict, detail = UNREACHABLE, f"no answer within {timeout:g} s"
    except Exception as exc:  # one destination's surprise leaves the others' checks standing
        verdict, detail = CANNOT_CHECK, f"{type(exc).__name__}: {exc}"
    return Reached(destination.name, destination.type, verdict, _scrub(detail, secrets))


async def reach_all(destinations: tuple[DestinationConfig, ...], timeout: float) -> list[Reached]:
    return list(await asyncio.gather(*(reach(d, timeout) for d in destinations)))


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in sorted((s for s in secrets if len(s) >= 3), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def _shown(url: str) -> str:
    from relay.sinks.options import shown

    return shown(url)


# --- HTTP upstreams -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Http:
    status: int
    reason: str
    body: str
    location: str
    tls: bool

    def says(self) -> str:
        text = " ".join(self.body.split())[:MAX_BODY_SHOWN]
        return f"{self.status} {self.reason}".strip() + (f" {text}" if text else "")


async def _request(destination: DestinationConfig, clock: _Clock, method: str, url: str,
                   headers: Mapping[str, str], body: Any = None) -> _Http:
    """One request as the destination's sink sends it (aiohttp, its default TLS context, no
    redirects followed, gzip when the destination gzips); a failure to get an answer is an
    ``_Outcome`` naming why."""
    import aiohttp

    sent = {"User-Agent": f"relay/{__version__}", **headers}
    data: bytes | None = None
    if body is not None:
        data = json.dumps(body).encode()
        sent["Content-Type"] = "application/json"
        if destination.gzip:
            data = gzip.compress(data, compresslevel=1)
            sent["Content-Encoding"] = "gzip"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=clock.left())) as session, \
                session.request(method, url, data=data, headers=sent, allow_redirects=False) as resp:
            text = (await resp.content.read(4096)).decode("utf-8", "replace")
            return _Http(resp.status, resp.reason or "", text, resp.headers.get("Location", ""),
                         url.startswith("https:"))  # an answer over https: the handshake passed
    except TimeoutError:
        raise _Outcome(UNREACHABLE, f"{method} {_shown(url)}: no answer within {clock.timeout:g} s") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise _failure(exc, f"{method} {_shown(url)}", HTTP_TLS_HINT) from None


def _failure(exc: BaseException, where: str, tls_hint: str) -> _Outcome:
    """No answer: TLS (with its reason) or the connection (with the system's words)."""
    import aiohttp

    reason = tls_reason(exc)
    if reason is not None:
        return _Outcome(TLS_FAILED, f"{where}: {_with_hint(reason, tls_hint)}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _Outcome(UNREACHABLE, f"{where}: {_os_words(exc.os_error)}")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return _Outcome(UNREACHABLE, f"{where}: the server closed the connection without an answer")
    if isinstance(exc, OSError) and exc.strerror:
        return _Outcome(UNREACHABLE, f"{where}: {_os_words(exc)}")
    return _Outcome(UNREACHABLE, f"{where}: {type(exc).__name__}: {exc}")


def _os_words(exc: OSError) -> str:
    """The system's words for a failed connection ("Connection refused"), not asyncio's."""
    if exc.errno:
        return os.strerror(exc.errno)
    return exc.strerror or str(exc) or type(exc).__name__


def _with_hint(reason: str, hint: str) -> str:
    """A certificate problem says where the relay's trusted CAs come from."""
    return f"{reason} ({hint})" if reason.startswith("certificate") else reason


def tls_reason(exc: BaseException | None) -> str | None:
    """Why a TLS handshake failed, if ``exc`` (or what caused it) is a TLS failure."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "certificate_error", None) or getattr(exc, "os_error", None)
        if inner is not None and inner is not exc:  # aiohttp's wrapper of the ssl module's error
            exc = inner
            continue
        if isinstance(exc, ssl.SSLCertVerificationError):
            message = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
            return f"certificate verify failed: {message}"
        if isinstance(exc, ssl.SSLError):
            reason = (exc.reason or str(exc)).lower().replace("_", " ")
            hint = " (is it plain text, not TLS?)" if "wrong version" in reason else ""
            return f"handshake failed: {reason}{hint}"
        exc = exc.__cause__ or exc.__context__
    return None


def _http_verdict(answer: _Http, what: str, refused: bool = False) -> str | None:
    """The verdict every HTTP type shares, or None when the type must read the answer itself."""
    over = " over TLS" if answer.tls else ""
    if refused or answer.status in (401, 403):
        raise _Outcome(REFUSED, f"{what} was answered {answer.says()}")
    if 300 <= answer.status <= 399:
        raise _Outcome(UPSTREAM_ERROR, f"{what} was answered {answer.status} (to {_shown(answer.location)}): "
                       "the relay does not follow redirects, so it would deliver nothing; use that address")
    if answer.status >= 500:
        raise _Outcome(UPSTREAM_ERROR, f"{what} was answered {answer.says()}")
    if 200 <= answer.status <= 299:
        return f"reachable{over}; {what} was answered {answer.status}: credentials not refused"
    if answer.status == 429:
        return f"reachable{over}; {what} was answered 429 (throttled): credentials not refused"
    return None


def _basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode("ascii")}


SEGMENT_HOSTS = (".segment.io", ".segmentapis.com", ".segment.com")


async def _segment(destination: DestinationConfig, clock: _Clock, secrets: list[str]) -> str:
    """An empty batch with the write key, as the sink authenticates (Basic auth and ``writeKey``).
    A relay (and any other collector that reads the body before the key) answers an empty
    batch 400; the write key's settings (``GET /v1/projects/<key>/settings``, the route
    analytics.js loads) then say whether the key is accepted."""
    key = destination.write_key
    base = destination.endpoint.rstrip("/")
    url = base + "/v1/batch"
    if not key:
        answer = await _request(destination, clock, "POST", url, {}, {"batch": []})
        _http_verdict(answer, "an empty batch")
        over = " over TLS" if answer.tls else ""
        return (f"reachable{over} (answered {answer.status}); no `write_key`: each event goes with its own "
                "write key, so no credentials are checked")
    secrets.append(key)
    what = "an empty batch with the write key"
    answer = await _request(destination, clock, "POST", url, _basic(key), {"batch": [], "writeKey": key})
    shared = _http_verdict(answer, what)
    host = (urlsplit(base).hostname or "").lower()
    if shared is not None:
        note = ""
        if host.endswith(SEGMENT_HOSTS) and 200 <= answer.status <= 299:
            note = " (Segment's API answers 200 even to a wrong write key: this proves reachability only)"
        return shared + note
    settings = await _request(destination, clock, "GET", f"{base}/v1/projects/{quote(key, safe='')}/settings",
                              _basic(key))
    if settings.status in (401, 403):
        raise _Outcome(REFUSED, f"{what} was answered {answer.status}; the write key's settings were "
                       f"answered {settings.says()}")
    over = " over TLS" if answer.tls else ""
    if settings.status == 200:
        return f"reachable{over}; credentials accepted: the write key's settings were answered 200"
    return (f"reachable{over}; {what} was answered {answer.says()} and the write key's settings "
            f"{settings.status}: credentials not checked by this upstream")


async def _webhook(destination: DestinationConfig, clock: _Clock, secrets: list[str]) -> str:
    """HEAD of the URL (a safe method: no body, nothing delivered) with the configured headers,
    and ``X-Signature`` of the empty body when the webhook signs."""
    from relay.sinks import options as opts
    from relay.sinks import webhook

    options = opts.parse(destination.options, webhook.WebhookOptions)
    headers = dict(options.headers)
    if options.hmac_secret:
        headers[webhook.SIGNATURE_HEADER] = webhook.signature(options.hmac_secret.encode(), b"")
    secrets += [*options.headers.values(), options.hmac_secret, *_query_values(options.url)]
    what = "HEAD with the configured headers" if options.headers else "HEAD"
    answer = await _request(destination, clock, "HEAD", options.url, headers)
    shared = _http_verdict(answer, what)
    if shared is not None:
        return shared
    over = " over TLS" if answer.tls else ""
    return (f"reachable{over}; {what} was answered {answer.status} (the receiver takes no HEAD there): "
            "credentials not checked")


def _query_values(url: str) -> list[str]:
    from urllib.parse import parse_qsl

    return [value for _, value in parse_qsl(urlsplit(url).query)]


async def _amplitude(destination: DestinationConfig, clock: _Clock, secrets: list[str]) -> str:
    """An empty ``events`` list with the API key; Amplitude's 400 "Invalid API key" refuses it
    (the sink pauses on that same answer)."""
    from relay.forward.retry import Action, Answer
    from relay.sinks import amplitude
    from relay.sinks import options as opts

    options = opts.parse(destination.options, amplitude.AmplitudeOptions)
    secrets.append(options.api_key)
    url = (destination.endpoint or amplitude.DEFAULT_ENDPOINT).rstrip("/") + amplitude.PATH
    what = "an empty list of events with the API key"
    answer = await _request(destination, clock, "POST", url, {},
                            {"api_key": options.api_key, "events": []})
    refused = answer.status == 400 and \
        amplitude.classify(Answer(400, answer.body)).action is Action.PAUSE
    shared = _http_verdict(answer, what, refused)
    if shared is not None:
        return shared
    over = " over TLS" if answer.tls else ""
    return f"reachable{over}; {what} was answered {answer.says()}: the API key is not refused"


async def _posthog(destination: DestinationConfig, clock: _Clock, secrets: list[str]) -> str:
    """An empty batch with the project API key; PostHog answers a key it refuses with 401."""
    from relay.sinks import options as opts
    from relay.sinks import posthog

    options = opts.parse(destination.options, posthog.PostHogOptions)
    secrets.append(options.api_key)
    url = (destination.endpoint or posthog.DEFAULT_ENDPOINT).rstrip("/") + posthog.PATH
    what = "an empty batch with the API key"
    answer = await _request(destination, clock, "POST", url, {}, {"api_key": options.api_key, "batch": []})
    shared = _http_verdict(answer, what)
    if shared is not None:
        return shared
    over = " over TLS" if answer.tls else ""
    return f"reachable{over}; {what} was answered {answer.says()}: the API key is not refused"


# --- brokers and databases ----------------------------------------------------------------------

BROKER_TLS_HINT = "set `options.tls_ca` to the CA that signed the server's certificate"


async def _nats(destination: DestinationConfig, clock: _Clock, secrets: list[str]) -> str:
    """Log in to each server in turn until one takes the credentials, then ask JetStream for
    the stream's info (``stream`` set) or the account's: both authenticated reads."""
    from nats.aio.client import Client
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.errors import NotFoundError, ServiceUnavailableError

    from relay import jetstream
    from relay.sinks import nats as nats_sink
    from relay.sinks import options as opts

    options = opts.parse(destination.options, nats_sink.NatsOptions)
    connection = jetstream.Connection(options, "nats", destination.name)
    credentials = jetstream.Credentials(options)
    secrets += [credentials.token, credentials.password, credentials.nkey_seed, credentials.creds]
    problems: list[_Outcome] = []
    for server in options.servers:
        errors: list[Exception] = []  # what nats-py reported while connecting

        async def collect(exc: Exception, errors: list[Exception] = errors) -> None:
            errors.append(exc)

        arguments = connection.arguments(reconnect=False)
        arguments.update(servers=[server], error_cb=collect,
                         connect_timeout=min(options.connect_timeout, clock.left()))
        client = Client()
        try:
            await client.connect(**arguments)
        except Exception as exc:
            problems.append(_nats_failure(exc, errors, opts.shown(server)))
            await _close_quietly(client)
            continue
        try:
            js = client.jetstream(timeout=clock.left())
            over = " over TLS" if server.startswith("tls://") or options.tls_ca else ""
            logged_in = f"logged in to {opts.shown(server)}{over}"
            if options.stream:
                try:
                    info = await js.stream_info(options.stream)
                except NotFoundError:
                    if options.create_stream:
                        return (f"{logged_in}; credentials accepted; the stream {options.stream!r} does not "
                                "exist yet (the relay creates it: `create_stream`)")
                    raise _Outcome(UPSTREAM_ERROR, f"{logged_in}, but there is no stream {options.stream!r} "
                                   "(and `create_stream` is off)") from None
                return (f"{logged_in}; credentials accepted: JetStream's info on the stream "
                        f"{options.stream!r} ({info.state.messages} messages)")
            account = await js.account_info()
            return (f"{logged_in}; credentials accepted: JetStream's account info ({account.streams} "
                    "streams)")
        except (NoRespondersError, ServiceUnavailableError):
            raise _Outcome(UPSTREAM_ERROR, f"{opts.shown(server)}: JetStream does not answer (no "
                           "responders): is it enabled for this account?") from None
        except NatsTimeout:
            forbidden = next((str(e) for e in errors if "permissions violation" in str(e).lower()), None)
            if forbidden:
                raise _Outcome(REFUSED, f"{opts.shown(server)}: {forbidden}") from None
            raise _Outcome(UPSTREAM_ERROR, f"{opts.shown(server)}: JetStream did not answer within "
                           f"{clock.timeout:g} s") from None
        finally:
            await _close_quietly(client)
    raise _worst(problems)


def _nats_failure(exc: Exception, errors: list[Exception], where: str) -> _Outcome:
    """Why a connection failed, from what nats-py raised and what it reported before."""
    from relay import jetstream

    seen = [*errors, exc]
    denied = next((str(e) for e in seen if jetstream.denied(str(e))), None)
    if denied is not None or any(type(e).__name__ == "AuthorizationError" for e in seen):
        return _Outcome(REFUSED, f"{where}: the server refused the login: {denied or exc}")
    reason = next((r for r in map(tls_reason, seen) if r is not None), None)
    if reason is not None:
        return _Outcome(TLS_FAILED, f"{where}: {_with_hint(reason, BROKER_TLS_HINT)}")
    last = next((e for e in reversed(seen) if isinstance(e, OSError)), None)
    if last is not None:
        return _Outcome(UNREACHABLE, f"{where}: {_os_words(last)}")
    return _Outcome(UNREACHABLE, f"{where}: {type(exc).__name__}: {exc}")


_SEVERITY = (REFUSED, TLS_FAILED, UPSTREAM_ERROR, UNREACHABLE)


def _worst(problems: list[_Outcome]) -> _Outcome:
    """One outcome for servers that all failed: the most telling verdict, every server's words."""
    verdict = min((p.verdict for p in problems), key=_SEVERITY.index)
    return _Outcome(verdict, "; ".join(p.detail for p in problems))


CLOSE_TIMEOUT = 0.5  # nats-py's close() of a client whose TLS handshake failed never returns


async def _close_quietly(client: Any) -> None:
    try:
        await asyncio.wait_for(client.close(), CLOSE_TIMEOUT)
    except Exception:  # a client that never connected: nothing to flush
        pass


async def _kafka(destination: DestinationConfig, clock: _Clock, secrets: list[str]) -> str:
    """A connection to each bootstrap server in turn (TLS, then SASL as configured) and a
    metadata request for every topic: it names no topic, so no broker creates one."""
    from aiokafka.cluster import ClusterMetadata  # type: ignore[import-untyped]
    from aiokafka.conn import create_conn  # type: ignore[import-untyped]
    from aiokafka.errors import KafkaError  # type: ignore[import-untyped]
    from aiokafka.protocol.metadata import MetadataRequest  # type: ignore[import-untyped]

    from relay.sinks import kafka
    from relay.sinks import options as opts

    o = opts.parse(destination.options, kafka.KafkaOptions)
    password = opts.secret("sasl_password", o.sasl_password, o.sasl_password_env, o.sasl_password_file)
    secrets.append(password)
    context: ssl.SSLContext | None = None
    if o.tls:
        context = ssl.create_default_context(cafile=o.tls_ca or None)
        if o.tls_cert:
            context.load_cert_chain(o.tls_cert, o.tls_key)
    protocol = ("SASL_" if o.sasl_mechanism else "") + ("SSL" if o.tls else "PLAINTEXT")
    problems: list[_Outcome] = []
    for server in o.bootstrap_servers:
        host, _, port = server.rpartition(":")
        try:
            conn = await asyncio.wait_for(create_conn(
                host.strip("[]"), int(port), client_id=o.client_id or f"relay-{destination.name}",
                request_timeout_ms=int(clock.left() * 1000), ssl_context=context, security_protocol=protocol,
                sasl_mechanism=o.sasl_mechanism or "PLAIN", sasl_plain_username=o.sasl_user or None,
                sasl_plain_password=password or None), clock.left())
        except TimeoutError:
            problems.append(_Outcome(UNREACHABLE, f"{server}: no answer within {clock.timeout:g} s"))
            continue
        except (KafkaError, OSError, ValueError) as exc:
            problems.append(_kafka_failure(exc, server))
            continue
        try:
            metadata = await asyncio.wait_for(conn.send(MetadataRequest(None)), clock.left())
        except (KafkaError, TimeoutError) as exc:
            problems.append(_kafka_failure(exc, server))
            continue
        finally:
            conn.close()
        cluster = ClusterMetadata()
        cluster.update_metadata(metadata)
        login = f"; SASL {o.sasl_mechanism} login accepted" if o.sasl_mechanism else ""
        over = " over TLS" if o.tls else ""
        text = (f"reachable{over} at {server}{login}: metadata of {len(cluster.brokers())} broker(s), "
                f"{len(cluster.topics())} topic(s)")
        fields = [f for _, f, _, _ in string.Formatter().parse(o.topic) if f is not None]
        if not fields:
            text += (f"; the topic {o.topic!r} exists" if o.topic in cluster.topics() else
                     f"; the topic {o.topic!r} does not exist yet (a broker that creates topics on "
                     "first use makes it)")
        return text
    raise _worst(problems)


def _kafka_failure(exc: BaseException, server: str) -> _Outcome:
    name = type(exc).__name__
    if "Authentication" in name or "Authorization" in name or "Sasl" in name:
        return _Outcome(REFUSED, f"{server}: {name}: {exc}")
    reason = tls_reason(exc)
    if reason is not None:
        return _Outcome(TLS_FAILED, f"{server}: {_with_hint(reason, BROKER_TLS_HINT)}")
    if isinstance(exc, OSError):
        return _Outcome(UNREACHABLE, f"{server}: {_os_words(exc)}")
    return _Outcome(UNREACHABLE, f"{server}: {name}: {exc}")


async def _postgres(destination: DestinationConfig, clock: _Clock, secrets: list[str]) -> str:
    """A login with the configured password (``password_env`` / ``password_file``), then
    ``SELECT 1``."""
    import asyncpg  # type: ignore[import-untyped]

    from relay.sinks import options as opts
    from relay.sinks.warehouse import postgres

    o = opts.parse(destination.options, postgres.PostgresOptions)
    secret = postgres.password(o)
    secrets.append(secret or "")
    where = f"{o.host}:{o.port}/{o.database} as {o.user}"
    try:
        conn = await postgres.connect(o, clock.left(), secret)
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
        raise _Outcome(REFUSED, f"{where}: PostgreSQL refused the login: {exc}") from None
    except asyncpg.InvalidCatalogNameError as exc:
        raise _Outcome(UPSTREAM_ERROR, f"{where}: {exc}") from None
    except TimeoutError:
        raise _Outcome(UNREACHABLE, f"{where}: no answer within {clock.timeout:g} s") from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        reason = tls_reason(exc)
        if (reason is None and isinstance(exc, asyncpg.ClientConfigurationError)
                and "root certificate" in str(exc)):
            reason = str(exc)  # verify-ca/verify-full with no CA to verify against
        if reason is not None:
            hint = f"`options.ssl` is {o.ssl!r}; the CA comes from PGSSLROOTCERT or ~/.postgresql/root.crt"
            raise _Outcome(TLS_FAILED, f"{where}: {_with_hint(reason, hint)}") from None
        if isinstance(exc, OSError):
            raise _Outcome(UNREACHABLE, f"{where}: {_os_words(exc)}") from None
        raise _Outcome(UPSTREAM_ERROR, f"{where}: {type(exc).__name__}: {exc}") from None
    try:
        await conn.fetchval("SELECT 1", timeout=clock.left())
        version = ".".join(str(part) for part in conn.get_server_version()[:2])
    finally:
        await conn.close()
    return f"logged in to {where}; credentials accepted: SELECT 1 answered (PostgreSQL {version})"


# --- files ----------------------------------------------------------------------------------------


def _writable_folder(folder: Path) -> str:
    """Where the relay would write under ``folder`` (made if missing); an ``_Outcome`` if it cannot."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise _Outcome(CANNOT_WRITE, f"{existing} is not a folder, so {folder} cannot be made")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _Outcome(CANNOT_WRITE, f"cannot write in {existing}")
    return f"writable: {folder}" if existing == folder else f"writable: {folder} can be made in {existing}"


def _duckdb_file(path: Path) -> str:
    if path.exists():
        if not path.is_file() or not os.access(path, os.R_OK | os.W_OK):
            raise _Outcome(CANNOT_WRITE, f"{path} is not a file the relay can write")
        return f"writable: {path}"
    return _writable_folder(path.parent) + f" (for {path.name})"


async def _file(destination: DestinationConfig, clock: _Clock, secrets: list[str]) -> str:
    return await asyncio.to_thread(_writable_folder, Path(destination.path))


async def _parquet(destination: DestinationConfig, clock: _Clock, secrets: list[str]) -> str:
    return await asyncio.to_thread(_writable_folder, Path(str(destination.options.get("path", ""))))


async def _duckdb(destination: DestinationConfig, clock: _Clock, secrets: list[str]) -> str:
    return await asyncio.to_thread(_duckdb_file, Path(str(destination.options.get("path", ""))))


async def _tcp(destination: DestinationConfig, clock: _Clock, secrets: list[str]) -> str:
    """A type without a check of its own: a TCP connection (with TLS for https) to its address."""
    url = destination.endpoint or str(destination.options.get("url", ""))
    split = urlsplit(url)
    if not split.hostname:
        raise _Outcome(UNREACHABLE, "no upstream address to reach")
    tls = split.scheme == "https"
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(
            split.hostname, split.port or (443 if tls else 80),
            ssl=ssl.create_default_context() if tls else None), clock.left())
    except TimeoutError:
        raise _Outcome(UNREACHABLE, f"{_shown(url)}: no answer within {clock.timeout:g} s") from None
    except OSError as exc:
        raise _failure(exc, _shown(url), HTTP_TLS_HINT) from None
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    over = " over TLS" if tls else ""
    return f"reachable{over}: {_shown(url)} accepts connections (no credentials checked)"


CHECKS: dict[str, Check] = {
    "segment": _segment,
    "webhook": _webhook,
    "amplitude": _amplitude,
    "posthog": _posthog,
    "nats": _nats,
    "kafka": _kafka,
    "postgres": _postgres,
    "duckdb": _duckdb,
    "parquet": _parquet,
    "file": _file,
}
