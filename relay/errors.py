"""The relay's own exceptions.

    RelayError
    ├── ConfigError          a config file or environment variable is wrong (names the key)
    ├── QueueError           the queue cannot be used
    │   ├── QueueFull        the byte cap or the disk is reached; retry later
    │   ├── QueueClosed      the queue has been stopped
    │   └── QueueLocked      another relay owns the queue file (names its pid)
    ├── ListenError          a listener cannot bind (names the address and the key)
    └── InvalidMessage       one message breaks the protocol (names the problem)

Errors from the SQLite driver (in relay.queue.connection), msgspec and aiohttp are mapped to
these where they enter.
"""


class RelayError(Exception):
    pass


class ConfigError(RelayError):
    pass


class QueueError(RelayError):
    pass


class QueueFull(QueueError):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QueueClosed(QueueError):
    pass


class QueueLocked(QueueError):
    def __init__(self, message: str, owner: str) -> None:
        super().__init__(message)
        self.owner = owner


class ListenError(RelayError):
    pass


class InvalidMessage(RelayError):
    pass
