"""The baseline for bench/ingest.py: a bare aiohttp + uvloop server that reads the body and answers
200 ``{"success": true}`` on every POST path, doing nothing else (no parsing, no queue).

    .venv/bin/python bench/bare.py [--host 127.0.0.1] [--port 0] [--parse]

With ``--parse`` it also parses each body with orjson (``orjson.loads(await request.read())``)
before answering: the least any server that looks at the events must do, and the reference
issue 15's batch target is set against. Without it the body is only read (the reference for
single-event requests).

Its first stdout line is ``{"message": "listening", "port": N, "pid": P}`` (as the relay's is);
SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop
from aiohttp import web

SUCCESS = b'{"success": true}'


async def handle(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=SUCCESS, content_type="application/json")


def parsing_handler() -> Callable[[web.Request], Awaitable[web.Response]]:
    """The --parse handler. orjson is imported only here (it comes with the test extra), so
    that the read-only server, which bench/drain.py also uses as its upstream, needs no more
    than the relay's own dependencies."""
    import orjson

    loads = orjson.loads

    async def handle_parsing(request: web.Request) -> web.Response:
        loads(await request.read())
        return web.Response(body=SUCCESS, content_type="application/json")

    return handle_parsing


async def serve(host: str, port: int, parse: bool = False) -> None:
    app = web.Application(client_max_size=2**31)
    app.router.add_post("/{tail:.*}", parsing_handler() if parse else handle)
    runner = web.AppRunner(app, access_log=None, auto_decompress=False, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048, reuse_address=True)
    await site.start()
    server: Any = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = int(sockets[0].getsockname()[1]) if sockets else port
    print(json.dumps({"message": "listening", "port": bound, "pid": os.getpid(), "parse": parse}),
          flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
    finally:
        await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--parse", action="store_true", help="parse each body with orjson before answering")
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port, args.parse))
    return 0


if __name__ == "__main__":
    sys.exit(main())
