"""A real PostgreSQL server for the tests: Debian's binaries, a fresh cluster in a temporary
folder owned by the ``postgres`` user (initdb refuses root), on a free loopback port with its
unix socket in that folder; stopped by its PID, and the folder removed. TCP connections need
the superuser's password (``PASSWORD``), so the relay's password options are exercised.
``PostgresServer(tls=ca)`` serves TLS with a certificate of that trustme CA naming
``localhost`` only (so that connecting to 127.0.0.1 fails a host-name check), and refuses every
TCP connection that is not encrypted (``hostnossl ... reject``)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

START_TIMEOUT = 60.0
PASSWORD = "s3cret-for-tests"
STOP_TIMEOUT = 15.0


def binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: `make test` installs it "
                           "(apt-get install postgresql)")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    def __init__(self, tls: Any = None) -> None:
        self.tls = tls  # a trustme.CA, or None for a server without TLS
        self.bin = binaries()
        self.user = pwd.getpwnam("postgres")
        self.folder = Path(tempfile.mkdtemp(prefix="relay-pg-"))
        os.chown(self.folder, self.user.pw_uid, self.user.pw_gid)
        self.data = self.folder / "data"
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.folder / "server.log"
        self.databases = 0

    def _as_postgres(self) -> dict[str, object]:
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": [],
                "env": {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(self.folder)}}

    def start(self) -> None:
        pwfile = self.folder / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        os.chown(pwfile, self.user.pw_uid, self.user.pw_gid)
        subprocess.run([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                        "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}",
                        "--no-sync", "-E", "UTF8", "--no-instructions"], check=True, capture_output=True,
                       timeout=START_TIMEOUT, cwd=self.folder, **self._as_postgres())  # type: ignore[call-overload]
        settings = self._tls_settings() if self.tls is not None else []
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(  # type: ignore[call-overload]
                [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port), "-h", "127.0.0.1",
                 "-k", str(self.folder), "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "shared_buffers=16MB", *settings],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.folder, **self._as_postgres())
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log.read_text()[-2000:]}")
            ready = subprocess.run([str(self.bin / "pg_isready"), "-h", str(self.folder),
                                    "-p", str(self.port)],
                                   capture_output=True, timeout=10)
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        self.stop()
        raise TimeoutError("postgres did not accept connections")

    def _tls_settings(self) -> list[str]:
        """The server's certificate and key in its data folder (the key readable by the
        server's user alone, as PostgreSQL demands) and a pg_hba.conf taking TCP logins over
        TLS only."""
        cert = self.tls.issue_cert("localhost")
        for name, blob in (("server.crt", cert.cert_chain_pems[0].bytes()),
                           ("server.key", cert.private_key_pem.bytes())):
            path = self.data / name
            path.write_bytes(blob)
            os.chown(path, self.user.pw_uid, self.user.pw_gid)
            path.chmod(0o600)
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "hostssl all all 127.0.0.1/32 scram-sha-256\n"
            "hostnossl all all 127.0.0.1/32 reject\n")
        return ["-c", "ssl=on", "-c", "ssl_cert_file=server.crt", "-c", "ssl_key_file=server.key"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
        shutil.rmtree(self.folder, ignore_errors=True)

    async def connect(self, database: str = "postgres") -> Any:
        import asyncpg

        return await asyncpg.connect(host="127.0.0.1", port=self.port, user="postgres", password=PASSWORD,
                                     database=database, timeout=10,
                                     ssl="require" if self.tls is not None else "prefer")

    async def fresh_database(self) -> str:
        """A new, empty database of its own for one test."""
        self.databases += 1
        name = f"t{self.databases}"
        conn = await self.connect()
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()
        return name


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the module that asks for one, stopped at its end."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def postgres_ca() -> Any:
    import trustme

    return trustme.CA()


@pytest.fixture(scope="module")
def postgres_tls(postgres_ca: Any) -> Iterator[PostgresServer]:
    """A real PostgreSQL server that takes TCP logins over TLS only, with a certificate of
    ``postgres_ca``."""
    server = PostgresServer(tls=postgres_ca)
    try:
        server.start()
        yield server
    finally:
        server.stop()
