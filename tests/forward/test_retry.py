"""The retry policy as a table: what each upstream answer means, how long to wait."""

import random
from datetime import UTC, datetime, timedelta

import pytest

from relay.forward.retry import (
    MAX_RETRY_AFTER,
    MIN_WAIT,
    Action,
    Answer,
    backoff,
    classify,
    parse_retry_after,
    wait_time,
)

# Every row of "How failures from an upstream are classified" in docs/reliability.md.
TABLE = [
    # 2xx: delivered
    (200, Action.DELIVERED, True),
    (201, Action.DELIVERED, True),
    (202, Action.DELIVERED, True),
    (204, Action.DELIVERED, True),
    (299, Action.DELIVERED, True),
    # transient: 408, 429, 5xx except 501/505, no answer (connection error, timeout)
    (408, Action.RETRY, True),
    (429, Action.RETRY, False),  # a 429 does not count as a failed attempt
    (500, Action.RETRY, True),
    (502, Action.RETRY, True),
    (503, Action.RETRY, True),
    (504, Action.RETRY, True),
    (507, Action.RETRY, True),
    (599, Action.RETRY, True),
    (None, Action.RETRY, True),
    # too large: split
    (413, Action.SPLIT, True),
    # permanent for this batch: bisect and dead-letter the rejected events
    (400, Action.REJECT, True),
    (404, Action.REJECT, True),
    (405, Action.REJECT, True),
    (409, Action.REJECT, True),
    (410, Action.REJECT, True),
    (415, Action.REJECT, True),
    (422, Action.REJECT, True),
    (451, Action.REJECT, True),
    (499, Action.REJECT, True),
    (501, Action.REJECT, True),
    (505, Action.REJECT, True),
    # a wrong key: keep the events, pause and probe, never dead-letter the backlog
    (401, Action.PAUSE, True),
    (403, Action.PAUSE, True),
]


@pytest.mark.parametrize(("status", "action", "counts"), TABLE)
def test_each_answer_is_classified_as_the_table_says(status, action, counts):
    decision = classify(Answer(status, error="connection refused" if status is None else None))
    assert decision.action is action
    if action is Action.RETRY:
        assert decision.counts_as_attempt is counts


def test_a_timeout_is_transient():
    assert classify(Answer(None, error="no answer within 15.0 s")).action is Action.RETRY


@pytest.mark.parametrize(
    ("answer", "text"),
    [
        (Answer(None, error="ClientConnectorError: refused"), "ClientConnectorError: refused"),
        (Answer(None), "no answer"),
        (Answer(400, '{"message": "bad\\nthing"}'), 'HTTP 400: {"message": "bad\\nthing"}'),
        (Answer(503, "  \n"), "HTTP 503"),
        (Answer(500, "x" * 1000), "HTTP 500: " + "x" * 300),
    ],
)
def test_an_answer_describes_itself_on_one_short_line(answer, text):
    assert answer.describe() == text
    assert "\n" not in answer.describe()


# --- backoff ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "initial", "cap", "ceiling"),
    [
        (0, 1.0, 60.0, 1.0),
        (1, 1.0, 60.0, 2.0),
        (2, 1.0, 60.0, 4.0),
        (5, 1.0, 60.0, 32.0),
        (6, 1.0, 60.0, 60.0),  # 64 capped
        (30, 1.0, 60.0, 60.0),
        (10_000, 1.0, 60.0, 60.0),  # no overflow however many attempts
        (0, 0.05, 0.2, 0.05),
        (3, 0.05, 0.2, 0.2),
    ],
)
def test_backoff_is_full_jitter_below_the_capped_exponential(attempt, initial, cap, ceiling):
    rand = random.Random(1234)
    waits = [backoff(attempt, initial, cap, rand) for _ in range(2000)]
    assert all(MIN_WAIT <= w <= max(ceiling, MIN_WAIT) for w in waits)
    # full jitter: the waits spread over the whole range, not clustered near the ceiling
    assert min(waits) < 0.05 * ceiling + MIN_WAIT
    assert max(waits) > 0.95 * ceiling
    mean = sum(waits) / len(waits)
    assert 0.4 * ceiling < mean < 0.6 * ceiling


def test_backoff_is_reproducible_with_a_seeded_random():
    first = [backoff(a, 0.5, 30.0, random.Random(7)) for a in range(10)]
    again = [backoff(a, 0.5, 30.0, random.Random(7)) for a in range(10)]
    assert first == again


def test_backoff_never_returns_a_busy_loop_wait():
    class Zero(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return a

    assert backoff(0, 1.0, 60.0, Zero()) == MIN_WAIT > 0


@pytest.mark.parametrize(
    ("retry_after", "lower"),
    [
        (None, 0.0),
        (0.0, 0.0),
        (5.0, 5.0),
        (120.0, 120.0),  # longer than retry_max: the upstream's word wins
        (10 * MAX_RETRY_AFTER, MAX_RETRY_AFTER),  # but an absurd header is capped
        (float("inf"), MAX_RETRY_AFTER),
    ],
)
def test_retry_after_is_a_lower_bound_of_the_wait(retry_after, lower):
    rand = random.Random(99)
    for attempt in range(8):
        wait = wait_time(attempt, 0.05, 0.2, retry_after, rand)
        assert wait >= lower
        assert wait <= max(lower, 0.2)


# --- Retry-After ----------------------------------------------------------------------------

NOW = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("soon", None),
        ("Wed, 99 Foo 2015", None),
        ("0", 0.0),
        ("1", 1.0),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("-3", 0.0),  # never negative
        # HTTP dates, in the three formats RFC 9110 lets a server send
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wednesday, 21-Oct-15 07:29:00 GMT", 60.0),
        ("Wed Oct 21 07:30:00 2015", 120.0),
        ("Wed, 21 Oct 2015 09:28:00 +0200", 0.0),  # an offset is applied: that is NOW
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past: retry now
    ],
)
def test_retry_after_as_seconds_or_http_date(header, seconds):
    assert parse_retry_after(header, NOW) == seconds


def test_retry_after_date_defaults_to_the_current_time():
    header = (datetime.now(UTC) + timedelta(seconds=100)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    seconds = parse_retry_after(header)
    assert seconds is not None and 90 <= seconds <= 100
