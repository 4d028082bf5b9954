"""NATS decentralised auth for tests: an operator, its accounts and users as NKeys and
signed JWTs (the NATS JWT v2 format), a nats-server config block that trusts them with a
memory resolver, and ``.creds`` files as ``nsc generate creds`` writes them.

Every key is made here from random bytes with the ``nkeys`` library; a JWT is
``base64url(header).base64url(claims).base64url(ed25519 signature of the first two)``
without padding, signed by its issuer (an account's by the operator, a user's by its
account), which is what nats-server verifies.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import nkeys

HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
NO_LIMIT = -1
# An account's limits, everything unlimited; JetStream is enabled by a storage limit other than 0.
UNLIMITED = {"subs": NO_LIMIT, "data": NO_LIMIT, "payload": NO_LIMIT, "imports": NO_LIMIT,
             "exports": NO_LIMIT, "wildcards": True, "conn": NO_LIMIT, "leaf": NO_LIMIT}
JETSTREAM = {"mem_storage": NO_LIMIT, "disk_storage": NO_LIMIT, "streams": NO_LIMIT, "consumer": NO_LIMIT}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Key:
    """An NKey pair of one kind (operator, account or user)."""

    def __init__(self, prefix: int) -> None:
        self.seed = nkeys.encode_seed(os.urandom(32), prefix).decode()
        self.public = nkeys.from_seed(bytearray(self.seed.encode())).public_key.decode()

    def sign(self, data: bytes) -> bytes:
        pair = nkeys.from_seed(bytearray(self.seed.encode()))
        try:
            return bytes(pair.sign(data))
        finally:
            pair.wipe()


def encode(issuer: Key, subject: str, name: str, nats: dict[str, Any], expires: int = 0) -> str:
    """A JWT with ``nats`` as its NATS claims, issued (and signed) by ``issuer``; ``expires``:
    a Unix time, 0 for never."""
    claims: dict[str, Any] = {"iat": int(time.time()), "iss": issuer.public, "name": name, "sub": subject}
    if expires:
        claims["exp"] = expires
    # jti: a hash of the claims, as the Go library makes it (the server does not check it)
    claims["jti"] = base64.b32encode(hashlib.new("sha512_256", json.dumps(
        claims, sort_keys=True).encode()).digest()).decode().rstrip("=")
    claims["nats"] = {**nats, "version": 2}
    to_sign = f"{_b64(json.dumps(HEADER).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{to_sign}.{_b64(issuer.sign(to_sign.encode()))}"


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


class Account:
    def __init__(self, name: str, signer: Key, jetstream: bool = True) -> None:
        self.name = name
        self.key = Key(nkeys.PREFIX_BYTE_ACCOUNT)
        limits = {**UNLIMITED, **(JETSTREAM if jetstream else {})}
        self.jwt = encode(signer, self.key.public, name, {"type": "account", "limits": limits})

    def user(self, name: str, pub: dict[str, list[str]] | None = None,
             sub: dict[str, list[str]] | None = None, expires: int = 0) -> User:
        """A user of this account; ``pub``/``sub`` are its permissions ({"allow": [...], "deny": [...]})."""
        return User(name, self, pub or {}, sub or {}, expires)


class User:
    def __init__(self, name: str, account: Account, pub: dict[str, list[str]],
                 sub: dict[str, list[str]], expires: int = 0) -> None:
        self.name = name
        self.key = Key(nkeys.PREFIX_BYTE_USER)
        self.jwt = encode(account.key, self.key.public, name, {
            "type": "user", "pub": pub, "sub": sub,
            "subs": NO_LIMIT, "data": NO_LIMIT, "payload": NO_LIMIT}, expires)

    def creds(self, jwt: str | None = None, seed: str | None = None) -> str:
        """This user's ``.creds`` file as text (another JWT or seed in it to make broken ones)."""
        return creds_text(jwt or self.jwt, seed or self.key.seed)

    def write_creds(self, path: Path, **kwargs: Any) -> Path:
        path.write_text(self.creds(**kwargs))
        path.chmod(0o600)
        return path


def creds_text(jwt: str, seed: str) -> str:
    return (f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n"
            "NKEYs are sensitive and should be treated as secrets.\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n"
            "*************************************************************\n")


class Operator:
    """An operator with a system account and the accounts it signs."""

    def __init__(self, name: str = "relay-tests") -> None:
        self.key = Key(nkeys.PREFIX_BYTE_OPERATOR)
        self.system = Account("SYS", self.key, jetstream=False)  # JetStream is not for the system account
        self.accounts: list[Account] = [self.system]
        self.jwt = encode(self.key, self.key.public, name, {
            "type": "operator", "system_account": self.system.key.public})

    def account(self, name: str, jetstream: bool = True) -> Account:
        account = Account(name, self.key, jetstream)
        self.accounts.append(account)
        return account

    def server_config(self) -> str:
        """The nats-server config that trusts this operator, its accounts preloaded in memory."""
        preload = "\n".join(f"  {a.key.public}: {a.jwt}" for a in self.accounts)
        return "\n".join([f"operator: {self.jwt}", f"system_account: {self.system.key.public}",
                          "resolver: MEMORY", "resolver_preload: {", preload, "}"])
