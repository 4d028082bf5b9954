"""The durable queue: the only package that touches SQLite.

    facade.py      Queue: appends (group commit), reads, progress, status for the running relay
    connection.py  the connection's own thread; sqlite3's errors become QueueError here
    schema.py      the file's tables and how a connection to it is set up
    store.py       every statement on events, progress and status
    sightings.py   dedup memory
    deadletters.py the dead-letter table: listing, replay, purge
    salvage.py     corrupt files: detection, moving aside, recovery
    pages.py       the file format read page by page, without SQLite (what recovery reads)
    files.py       QueueFile: the same file from the command line, with no relay running
"""

from relay.queue.facade import Queue

__all__ = ["Queue"]
