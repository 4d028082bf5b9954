"""The JSON bodies the ingest API answers with."""

from __future__ import annotations

import base64
from typing import Any

import msgspec
from aiohttp import web

# A 1x1 transparent GIF, the answer to every pixel request.
PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
_encode = msgspec.json.Encoder().encode
SUCCESS = _encode({"success": True})


def ok(body: dict[str, Any] | None = None) -> web.Response:
    payload = SUCCESS if body is None else _encode({"success": True, **body})
    return web.Response(body=payload, content_type="application/json")


def error_body(code: str, message: str) -> bytes:
    """``code`` and ``message`` for analytics-python, ``error`` for analytics-ruby."""
    return _encode({"success": False, "code": code, "message": message, "error": message})


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=error_body(code, message), content_type="application/json",
                        headers=headers)


def pixel(headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=PIXEL_GIF,
        content_type="image/gif",
        headers={"Cache-Control": "no-cache, no-store, must-revalidate", **(headers or {})},
    )


class Rejection(Exception):
    """An answer to send instead of going on with the request."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers

    def response(self) -> web.Response:
        response = error(self.status, self.code, self.message, self.headers)
        if self.headers and self.headers.get("Connection") == "close":
            response.force_close()  # the rest of a half-sent body must not be read as a request
        return response
