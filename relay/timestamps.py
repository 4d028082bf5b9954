"""Event times: parsing, formatting and the clock-skew correction (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse(value: object) -> datetime:
    """An ISO-8601 string (or epoch milliseconds) as an aware UTC datetime."""
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        parsed = EPOCH + timedelta(milliseconds=value)
    else:
        raise ValueError(f"expected an ISO-8601 date-time, got {type(value).__name__}")
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def iso(moment: datetime) -> str:
    """Millisecond ISO-8601 in UTC with a ``Z``, as Segment writes times."""
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text[:-6] + "Z"


def corrected(received_at: datetime, sent_at: datetime, original: datetime) -> datetime:
    """``receivedAt - (sentAt - originalTimestamp)``: the event's time on the relay's clock."""
    return received_at - (sent_at - original)


def from_epoch(seconds: float) -> datetime:
    return EPOCH + timedelta(seconds=seconds)
