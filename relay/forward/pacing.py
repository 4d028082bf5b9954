"""Delivery pace: at most ``rate`` events a second, so a drain after an outage does not
knock over the upstream that just recovered. A pure schedule; the caller sleeps."""

from __future__ import annotations


class Pacer:
    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._next = 0.0

    def delay(self, events: int, now: float) -> float:
        """Seconds to wait before sending ``events``; reserves their share of the pace."""
        if self.rate <= 0:
            return 0.0
        start = max(now, self._next)
        self._next = start + events / self.rate
        return start - now
