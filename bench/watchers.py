"""Debugger streams for bench/ingest.py --watchers: N viewers of a relay's /debugger/stream,
of which the last ``--stuck`` connect and never read (their socket fills up, the relay drops
records for them). The others read and discard everything. Runs until killed."""

from __future__ import annotations

import argparse
import socket
import threading
import time


def open_stream(port: int, receive_buffer: int | None = None) -> socket.socket:
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /debugger/stream?outcomes=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return sock


def drain(sock: socket.socket, counts: list[int], index: int) -> None:
    """Read and discard into one buffer (no allocation a read: this shares the load
    generator's CPU)."""
    buffer = bytearray(1 << 20)
    while True:
        size = sock.recv_into(buffer)
        if not size:
            return
        counts[index] += size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="the relay's admin port")
    parser.add_argument("--streams", type=int, default=3)
    parser.add_argument("--stuck", type=int, default=1)
    args = parser.parse_args()
    counts = [0] * args.streams
    keep = []
    for i in range(args.streams):
        stuck = i >= args.streams - args.stuck
        sock = open_stream(args.port, 4096 if stuck else None)
        keep.append(sock)
        if not stuck:
            threading.Thread(target=drain, args=(sock, counts, i), daemon=True).start()
    print("watching", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
