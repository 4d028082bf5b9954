"""What to do with an upstream's answer, and how long to wait: pure policies.

| answer                                         | action                              |
|------------------------------------------------|-------------------------------------|
| 2xx                                            | DELIVERED                           |
| 408, 429, 5xx but 501/505, no answer, timeout  | RETRY the same batch, with backoff  |
| 413                                            | SPLIT the batch and send the halves |
| 401, 403, 3xx                                  | PAUSE: keep the events, probe again |
| 400, 404, other 4xx, 501, 505                  | REJECT: bisect, dead-letter the bad |
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

MAX_RETRY_AFTER = 3600.0
MIN_WAIT = 0.01


class Action(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    SPLIT = "split"
    PAUSE = "pause"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Answer:
    """What one attempt to send a batch came back with."""

    status: int | None  # None: no HTTP answer (connection error, timeout, I/O error)
    body: str = ""
    retry_after: float | None = None
    error: str | None = None
    via: str = "HTTP"  # what ``status`` is a status of (a broker maps its answers onto HTTP's)

    def describe(self) -> str:
        if self.status is None:
            return self.error or "no answer"
        text = self.body.strip().replace("\n", " ")[:300]
        return f"{self.via} {self.status}" + (f": {text}" if text else "")


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    counts_as_attempt: bool = True


def classify(answer: Answer) -> Decision:
    status = answer.status
    if status is None or status == 408 or (500 <= status <= 599 and status not in (501, 505)):
        return Decision(Action.RETRY)
    if status == 429:
        return Decision(Action.RETRY, counts_as_attempt=False)
    if 200 <= status <= 299:
        return Decision(Action.DELIVERED)
    if status == 413:
        return Decision(Action.SPLIT)
    if status in (401, 403) or 300 <= status <= 399:
        return Decision(Action.PAUSE)
    return Decision(Action.REJECT)


def backoff(attempt: int, initial: float, cap: float, rand: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, initial * 2**attempt)]."""
    ceiling = min(cap, initial * (2 ** min(attempt, 62)))
    return max(MIN_WAIT, (rand or random).uniform(0, ceiling))


def wait_time(
    attempt: int, initial: float, cap: float, retry_after: float | None,
    rand: random.Random | None = None,
) -> float:
    """The backoff, never shorter than the upstream's ``Retry-After``."""
    wait = backoff(attempt, initial, cap, rand)
    if retry_after is not None:
        wait = max(wait, min(retry_after, MAX_RETRY_AFTER))
    return wait


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
