"""One owner per queue file: an exclusive ``flock`` on ``<queue>.lock``, held while the queue is open.

A second relay (or a second Queue in one process) started on the same queue file is refused
with QueueLocked, which names the pid that holds the lock: two writers on one queue would
each deliver the other's events. The lock file holds the owner's pid; it is created 0600 and
left in place at close (unlinking a lock file that another process may be opening would let
two owners lock two different files).
"""

from __future__ import annotations

import fcntl
import os

from relay.errors import QueueLocked

PRIVATE = 0o600


class QueueLock:
    def __init__(self, queue_path: str) -> None:
        self.path = queue_path + ".lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock (a no-op when held); QueueLocked naming the owner's pid if another has it."""
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, PRIVATE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise QueueLocked(f"the queue {self.path.removesuffix('.lock')} is in use by another relay "
                              f"(pid {owner})", owner) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor releases the flock
