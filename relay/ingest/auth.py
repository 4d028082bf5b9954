"""Who sent a request: the source write key and the client's address (pure functions)."""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def basic_username(header: str | None) -> str | None:
    """The username of ``Authorization: Basic``; a missing colon still counts."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=False).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0] or None


def write_key(header_key: str | None, body_key: object) -> str | None:
    """Basic auth first, else the body's ``writeKey``."""
    if header_key:
        return header_key
    if isinstance(body_key, str) and body_key:
        return body_key
    return None


def networks(specs: Sequence[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(s, strict=False) for s in specs)


def client_ip(peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]) -> str | None:
    """The peer address, or, when the peer is a trusted proxy, the nearest untrusted hop
    of ``X-Forwarded-For`` (read from the right, as each proxy appends)."""
    if peer is None or not trusted or not forwarded_for:
        return peer
    if not _is_trusted(peer, trusted):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            return hop if _parse(hop) is not None else peer
    return hops[0] if hops else peer


def _parse(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None


def _is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    ip = _parse(address)
    return ip is not None and any(ip in net for net in trusted)
