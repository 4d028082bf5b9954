"""Chromium (Debian's, driven by Playwright) and the npm SDK packages, for the browser suites.

No browser is downloaded: Playwright drives /usr/bin/chromium. The SDKs come from the npm
registry into ``.cache/npm`` at the repository's root (git-ignored), once, with a timeout;
``make test`` installs both beforehand.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]
NPM_CACHE = ROOT / ".cache" / "npm"
PACKAGES = ("@segment/analytics-next", "@rudderstack/analytics-js")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 # no name resolves but loopback's: a page cannot reach another host
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"]
NPM_TIMEOUT = 300


def node_modules() -> Path:
    """``.cache/npm/node_modules`` with both SDK packages, installed once (bounded)."""
    modules = NPM_CACHE / "node_modules"
    wanted = [modules / name / "package.json" for name in PACKAGES]
    if all(p.is_file() for p in wanted):
        return modules
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed for the browser suites (apt-get install npm)")
    NPM_CACHE.mkdir(parents=True, exist_ok=True)
    with (NPM_CACHE / ".lock").open("w") as lock:  # parallel sessions install once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not all(p.is_file() for p in wanted):
            subprocess.run([npm, "install", "--prefix", str(NPM_CACHE), "--no-audit", "--no-fund",
                            "--ignore-scripts", *PACKAGES],
                           check=True, timeout=NPM_TIMEOUT, capture_output=True)
    return modules


def segment_umd() -> Path:
    return node_modules() / "@segment" / "analytics-next" / "dist" / "umd"


def rudderstack_umd() -> Path:
    return (node_modules() / "@rudderstack" / "analytics-js" / "dist" / "npm" / "modern" / "bundled"
            / "umd" / "index.js")


@dataclass
class Requests:
    """Every request the browser made, and the ones to a host not allowed (aborted)."""

    allowed: set[str]
    seen: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    if not os.path.exists(CHROMIUM):
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install -y chromium (make test does)")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                           headless=True, timeout=30_000)
        try:
            yield browser
        finally:
            await browser.close()


async def guarded_context(browser: Any, allowed_origins: set[str]) -> tuple[Any, Requests]:
    """A browser context that records every request the pages make and notes any to
    another origin. Requests are watched, not intercepted (interception would answer CORS
    preflights itself); other hosts do not resolve (``--host-resolver-rules``)."""
    context = await browser.new_context()
    record = Requests(allowed_origins)

    def seen(request: Any) -> None:
        url = request.url
        record.seen.append(f"{request.method} {url}")
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}" not in allowed_origins and parts.scheme not in ("data", "blob"):
            record.foreign.append(url)

    context.on("request", seen)
    return context, record


@asynccontextmanager
async def page_server(pages: dict[str, str], files: dict[str, Path] | None = None
                      ) -> AsyncIterator[str]:
    """A web site on a loopback port of its own (another origin than the relay's)."""
    app = web.Application()

    async def page(request: web.Request) -> web.StreamResponse:
        # read at request time: a test fills a page in once it knows the relay's address
        return web.Response(text=pages[request.path], content_type="text/html")

    for path in pages:
        app.router.add_get(path, page)
    def serve(file: Path) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            return web.FileResponse(file)
        return handler

    for path, file in (files or {}).items():
        app.router.add_get(path, serve(file))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def wait_for(predicate: Any, timeout: float = 20.0, why: Any = None) -> None:
    """Poll ``predicate`` until it is true; bounded, and on timeout says what ``why()`` says."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {why() if why else ''}") from None
