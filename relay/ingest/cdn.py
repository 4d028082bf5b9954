"""The relay as its own analytics.js CDN: Segment's snippet script and its lazily loaded chunks.

The files are not part of the relay's sources: they come from the ``@segment/analytics-next``
npm package, installed by ``relay sdk install`` next to the queue (or found at ``[server]
sdk_dir``). analytics.js takes the origin of the script it was loaded from as its CDN, so once
a page loads ``/analytics.js/v1/<writeKey>/analytics.min.js`` from the relay, its settings
and every chunk (``/analytics-next/bundles/...``) come from the relay too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from aiohttp import web

from relay.config import Config
from relay.ingest.responses import Rejection

PACKAGE = "@segment/analytics-next"
UMD = Path("node_modules", "@segment", "analytics-next", "dist", "umd")
SNIPPET_FILE = "standalone.js"  # what Segment's CDN serves as analytics.min.js
JS = "application/javascript; charset=utf-8"
# The snippet's URL names no version: a short cache, revalidated. Chunk names carry a hash.
SNIPPET_CACHE = "public, max-age=300, must-revalidate"
CHUNK_CACHE = "public, max-age=31536000, immutable"
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*\.js(\.map)?$")
NPM_TIMEOUT = 300.0


def install_root(config: Config) -> Path:
    """Where ``relay sdk install`` puts the package: ``sdk/`` beside the queue file."""
    return Path(config.queue.path).parent / "sdk"


def sdk_dir(config: Config) -> Path:
    if config.server.sdk_dir:
        return Path(config.server.sdk_dir)
    return install_root(config) / UMD


def install(config: Config, version: str | None = None, npm: str | None = None,
            timeout: float = NPM_TIMEOUT) -> Path:
    """Run npm to fetch the package into the data directory; the folder of its files."""
    binary = npm or shutil.which("npm")
    if binary is None:
        raise RuntimeError("npm is not installed (Debian: apt-get install npm)")
    root = install_root(config)
    root.mkdir(parents=True, exist_ok=True)
    spec = f"{PACKAGE}@{version}" if version else PACKAGE
    done = subprocess.run(
        [binary, "install", "--prefix", str(root), "--no-audit", "--no-fund", "--no-save",
         "--ignore-scripts", spec],
        capture_output=True, text=True, timeout=timeout, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"npm install {spec} failed: {done.stderr.strip()[-2000:]}")
    folder = root / UMD
    if not (folder / SNIPPET_FILE).is_file():
        raise RuntimeError(f"npm installed {spec} but {folder / SNIPPET_FILE} is missing")
    return folder


class Cdn:
    """The routes serving the files; ``apply`` takes a new config on reload."""

    def __init__(self, config: Config) -> None:
        self.apply(config)

    def apply(self, config: Config) -> None:
        self.folder = sdk_dir(config)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/analytics.js/v1/{write_key}/analytics.min.js", self.snippet),
            web.get("/analytics.js/v1/{write_key}/analytics.js", self.snippet),
            web.get("/analytics-next/bundles/{name}", self.chunk),
        ]

    async def snippet(self, request: web.Request) -> web.StreamResponse:
        return self._file(SNIPPET_FILE, SNIPPET_CACHE)

    async def chunk(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if not _FILE_NAME.match(name) or name == SNIPPET_FILE:
            raise Rejection(404, "not_found", f"no analytics.js file {name!r}")
        return self._file(name, CHUNK_CACHE)

    def _file(self, name: str, cache: str) -> web.StreamResponse:
        path = self.folder / name
        if not path.is_file():
            if not (self.folder / SNIPPET_FILE).is_file():
                raise Rejection(404, "sdk_not_installed",
                                f"analytics.js is not installed in {self.folder}: run `relay sdk "
                                "install`, or set [server] sdk_dir")
            raise Rejection(404, "not_found", f"no analytics.js file {name!r}")
        content_type = "application/json; charset=utf-8" if name.endswith(".map") else JS
        # aiohttp sends the package's precompressed .gz beside a file to a client that takes gzip.
        return web.FileResponse(path, headers={"Content-Type": content_type, "Cache-Control": cache})
