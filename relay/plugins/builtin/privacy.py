"""``privacy``: remove or hash fields by dotted path, and anonymise ``context.ip``.

Run as a ``before`` plugin (its type), what it removes is never written to disk, not even in
the dead-letter table: it is a scrubber, applied also to a message refused at ingest (one that
breaks the protocol, or that a plugin ahead of it refused). Listed by a destination, it
changes only that destination's copies.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from typing import Any

import msgspec

from relay import __version__
from relay.plugins import Message, paths

IPV4_PREFIX = 24
IPV6_PREFIX = 48
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # 0-255, no leading zero
_IPV4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}").fullmatch
_encode = msgspec.json.Encoder().encode


class PrivacyOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    remove: tuple[str, ...] = ()  # dotted paths, `*` for any key or item
    hash: tuple[str, ...] = ()
    salt: str = ""
    salt_env: str = ""  # or read the salt from this environment variable
    anonymise_ip: bool = True

    def __post_init__(self) -> None:
        paths.check_lists(self, "remove", "hash")
        if self.hash and not (self.salt or self.salt_env):
            raise ValueError("`hash` needs a `salt` (or `salt_env`) - at `$.salt`")


def anonymise_ip(value: object) -> str | None:
    """The address with its host part zeroed (IPv4 /24, IPv6 /48); None when not an address."""
    if not isinstance(value, str):
        return None
    if _IPV4(value) is not None:  # the common case, without ipaddress
        return value[: value.rindex(".")] + ".0"
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv4Address):
        return str(ipaddress.IPv4Address(int(address) >> (32 - IPV4_PREFIX) << (32 - IPV4_PREFIX)))
    return str(ipaddress.IPv6Address(int(address) >> (128 - IPV6_PREFIX) << (128 - IPV6_PREFIX)))


def salted_sha256(salt: bytes, value: Any) -> Any:
    """Hex SHA-256 of the salt followed by the value (a string as UTF-8, anything else as
    JSON); null stays null."""
    if value is None:
        return None
    data = value.encode() if isinstance(value, str) else _encode(value)
    return hashlib.sha256(salt + data).hexdigest()


class Privacy:
    name = "privacy"
    type = "before"
    version = __version__
    Options = PrivacyOptions
    scrubs = True  # also applied to what is dead-lettered at ingest (see relay.plugins.pipeline)

    def __init__(self) -> None:
        self._remove: list[paths.Path] = []
        self._hash: list[paths.Path] = []
        self._salt = b""
        self._anonymise_ip = False

    async def load(self, options: PrivacyOptions) -> None:
        salt = options.salt
        if not salt and options.salt_env:
            salt = os.environ.get(options.salt_env, "")
        if options.hash and not salt:
            raise ValueError(f"the environment variable {options.salt_env} (the salt) is empty or not set")
        self._salt = salt.encode()
        self._remove = [paths.split(p) for p in options.remove]
        self._hash = [paths.split(p) for p in options.hash]
        self._anonymise_ip = options.anonymise_ip

    async def event(self, message: Message) -> Message:
        for path in self._remove:
            paths.remove(message, path)
        for path in self._hash:
            paths.replace(message, path, self._digest)
        if self._anonymise_ip:
            context = message.get("context")
            if isinstance(context, dict) and context.get("ip") is not None:
                masked = anonymise_ip(context["ip"])
                if masked is None:
                    del context["ip"]  # not an address: nothing safe to keep
                else:
                    context["ip"] = masked
        return message

    def _digest(self, value: Any) -> Any:
        return salted_sha256(self._salt, value)
