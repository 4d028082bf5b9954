"""Raw-socket clients for what an HTTP library will not send: slow heads, odd framings."""

from __future__ import annotations

import asyncio
import json
from typing import Any


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float = 10.0) -> bytes:
    """Read until the relay closes the connection (bounded); return what it sent."""
    data = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(4096):
                data += chunk
    except ConnectionResetError:
        pass
    return data


async def dribble(writer: asyncio.StreamWriter, stop: asyncio.Event) -> None:
    """A header line every 50 ms, the head never finished: a slowloris."""
    while not stop.is_set():
        try:
            writer.write(b"X-Slow: y\r\n")
            await writer.drain()
        except (ConnectionError, RuntimeError):
            return
        await asyncio.sleep(0.05)


async def exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a new connection and return all the relay answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await closed_by_peer(reader, timeout)
    finally:
        writer.close()


def answer(raw: bytes) -> tuple[int, dict[str, str], Any]:
    """The status, headers (lower-case names) and JSON body of one raw HTTP answer."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(body)))
    return int(lines[0].split(" ")[1]), headers, json.loads(body[:length]) if body else None
