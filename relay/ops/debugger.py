"""The debugger's routes on the admin listener.

    /debugger               the page (a login form first when [admin] token is set)
    /debugger/login         POST token=...: sets the session cookie, back to /debugger
    /debugger/assets/NAME   the page's own script and style sheet (no data in them; no token)
    /debugger/stream        Server-Sent Events: one JSON record per ``data:`` line; filters
                            type, event, user, writeKey, destination, outcome, outcomes=0|1
    /debugger/series        the last 15 minutes per second, and each destination's counters

The token never rides in a URL: scripts send ``Authorization: Bearer``, the page a cookie
holding an HMAC of the token (so a new token at reload ends every session).
"""

from __future__ import annotations

import hashlib
import hmac
from importlib import resources
from typing import Any

import msgspec
from aiohttp import web

from relay.ops.series import Series
from relay.ops.tap import Filter, Tap

COOKIE = "relay_debugger"
HEARTBEAT = 5.0  # seconds between comments on an idle stream (finds viewers that left)
ASSETS = {"debugger.js": "text/javascript", "debugger.css": "text/css"}
_encode = msgspec.json.Encoder().encode
# The page may load only what the relay serves, and nothing may frame it.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def session_value(token: bytes) -> str:
    return hmac.new(token, b"relay debugger session", hashlib.sha256).hexdigest()


def has_session(request: web.Request, token: bytes) -> bool:
    given = request.cookies.get(COOKIE, "")
    return bool(given) and hmac.compare_digest(given.encode(), session_value(token).encode())


def is_open_route(path: str) -> bool:
    """Routes of the debugger that never want the token (they hold no data)."""
    return path.startswith("/debugger/assets/") or path == "/debugger/login"


def _asset(name: str) -> bytes:
    return resources.files("relay.ops").joinpath("debugger_assets", name).read_bytes()


class Debugger:
    def __init__(self, tap: Tap, series: Series, token: Any) -> None:
        self.tap = tap
        self.series = series
        self._token = token  # a callable returning the admin token's bytes (it changes at reload)
        self._assets = {name: _asset(name) for name in ASSETS}
        self._page = _asset("debugger.html")

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/debugger", self.page),
            web.post("/debugger/login", self.login),
            web.get("/debugger/assets/{name}", self.asset),
            web.get("/debugger/stream", self.stream),
            web.get("/debugger/series", self.series_json),
        ]

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(body=self._page, content_type="text/html", charset="utf-8",
                            headers=SECURITY_HEADERS)

    def login_page(self, failed: bool = False) -> web.Response:
        note = '<p class="error">That token is not the admin token.</p>' if failed else ""
        body = LOGIN.format(note=note)
        return web.Response(status=401, text=body, content_type="text/html", headers=SECURITY_HEADERS)

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        given = str(form.get("token", "")).encode()
        token: bytes = self._token()
        if not token or not hmac.compare_digest(given, token):
            return self.login_page(failed=bool(token))
        response = web.HTTPSeeOther("/debugger")
        response.set_cookie(COOKIE, session_value(token), httponly=True, samesite="Strict", path="/debugger")
        raise response

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self._assets:
            raise web.HTTPNotFound()
        return web.Response(body=self._assets[name], content_type=ASSETS[name],
                            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})

    async def series_json(self, request: web.Request) -> web.Response:
        report = {**self.series.report(), "viewers": self.tap.viewers}
        return web.Response(body=_encode(report), content_type="application/json")

    async def stream(self, request: web.Request) -> web.StreamResponse:
        flt = Filter.from_query(request.query)
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        await response.prepare(request)
        viewer = self.tap.open(flt)
        try:
            await response.write(b": relay tap\nretry: 1000\n\n")
            while True:  # one write for all that waits: frames encoded once for every viewer
                frames = await viewer.take_sse(HEARTBEAT)
                if frames is None:
                    break
                await response.write(frames or b": idle\n\n")
        except ConnectionError:  # the viewer left
            pass
        finally:
            self.tap.close(viewer)
        return response


LOGIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>relay debugger: sign in</title>
<link rel="stylesheet" href="/debugger/assets/debugger.css"></head>
<body class="login"><form method="post" action="/debugger/login" class="login-form">
<h1>relay debugger</h1>{note}
<label>Admin token
<input type="password" name="token" id="token" autocomplete="current-password" autofocus></label>
<button type="submit" id="sign-in">Sign in</button></form></body></html>
"""
