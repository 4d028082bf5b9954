"""Room kept aside on the queue's disk, so a full disk can still record progress.

When the disk fills, ingest is refused (503) but deliveries go on, and recording their
progress is itself a write: it deletes the delivered events, which is how the disk gets room
back. The reserve is a file of ``size`` bytes beside the queue; when a progress write finds
the disk full it is released (deleted) and the write tried again, and it is put back once the
disk has room for it again with some to spare.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

RESERVE_BYTES = 8 * 1024 * 1024
SPARE_FACTOR = 4  # the reserve is put back only when the disk has this many times its size free


class Reserve:
    def __init__(self, queue_path: str, size: int = RESERVE_BYTES) -> None:
        self.path = Path(queue_path + ".reserve")
        self.size = size

    @property
    def held(self) -> bool:
        return self.path.exists()

    def restore(self) -> bool:
        """Put the reserve (back) in place when the disk has room to spare; True when it is held."""
        if self.held:
            return True
        try:
            stats = os.statvfs(self.path.parent)
            if stats.f_bavail * stats.f_frsize < SPARE_FACTOR * self.size:
                return False
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            return False
        try:
            os.posix_fallocate(fd, 0, self.size)
            os.fsync(fd)
        except OSError:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            return False
        os.close(fd)
        return True

    def release(self) -> bool:
        """Give the reserve's room back to the disk; False when there was none to give."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        log.warning("the queue's disk is full: released the reserve so that delivered events can "
                    "be deleted", extra={"reserve": str(self.path), "bytes": self.size})
        return True
