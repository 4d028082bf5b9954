"""Cross-cutting HTTP behaviour: CORS for browsers, and JSON bodies for every error."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from aiohttp import web
from aiohttp.typedefs import Handler

from relay.ingest import responses
from relay.ingest.responses import Rejection

log = logging.getLogger(__name__)
ALLOWED_HEADERS = "Content-Type, Authorization, X-Retry-Count, Content-Encoding"
# What a preflight may ask for and be echoed: header names (RFC 9110 tokens), as SDKs send
# their own (RudderStack: AnonymousId, SentAt, Rsa-Retry-*, Rsa-Recovered).
_HEADER_LIST = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+(\s*,\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+)*$")
ALLOWED_METHODS = "GET, POST, OPTIONS"
PREFLIGHT_MAX_AGE = "86400"
_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


class Cors:
    def __init__(self, origins: Sequence[str]) -> None:
        self.update(origins)

    def update(self, origins: Sequence[str]) -> None:
        self.any = "*" in origins
        self.origins = frozenset(origins)

    def allow(self, origin: str | None) -> str | None:
        if not origin:
            return None
        if self.any:
            return "*"
        return origin if origin in self.origins else None

    def preflight(self, request: web.Request, allowed: str | None) -> web.StreamResponse | None:
        """The answer to a CORS preflight (OPTIONS on a known path), or None for any other request."""
        if request.method != "OPTIONS":
            return None
        unmatched = request.match_info.http_exception
        if unmatched is not None and unmatched.status != 405:
            return None
        response = web.Response(status=204)
        if allowed:
            response.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
            response.headers["Access-Control-Allow-Headers"] = allowed_headers(
                request.headers.get("Access-Control-Request-Headers"))
            response.headers["Vary"] = "Access-Control-Request-Headers"  # the answer echoes them
            response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
        return response

    @staticmethod
    def refusal(request: web.Request, allowed: str | None) -> web.StreamResponse | None:
        """403 for a write from a browser origin that ``cors_origins`` does not allow (a
        text/plain POST needs no preflight, so CORS alone would not stop it); requests
        without an Origin (servers, SDKs) are not affected."""
        if allowed or request.method != "POST" or not request.headers.get("Origin"):
            return None
        response = responses.error(403, "origin_not_allowed",
                                   "this origin is not in the relay's cors_origins")
        response.force_close()  # its body is not read
        return response

    @staticmethod
    def decorate(response: web.StreamResponse, allowed: str) -> None:
        response.headers["Access-Control-Allow-Origin"] = allowed
        if allowed != "*":
            vary = response.headers.get("Vary")
            response.headers["Vary"] = f"{vary}, Origin" if vary else "Origin"


def allowed_headers(requested: str | None) -> str:
    """The headers a preflight from an allowed origin may send: what it asks for (a
    well-formed list of names), else the ones the Segment SDKs use."""
    if requested and _HEADER_LIST.match(requested.strip()):
        return requested.strip()
    return ALLOWED_HEADERS


def error_response(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The JSON answer for an exception a handler raised (re-raised when it is not an error)."""
    if isinstance(exc, Rejection):
        return exc.response()
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        code = _CODES.get(exc.status, "http_error")
        return responses.error(exc.status, code, f"{exc.reason}: {request.method} {request.path}",
                               headers)
    log.exception("unexpected error handling a request", extra={"path": request.path})
    return responses.error(500, "internal_error", "the relay failed to handle this request; see its log")


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Exception as exc:
        return error_response(request, exc)
