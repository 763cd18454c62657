"""Cron slots: 5 and 6 fields, time zones across DST, catch-up to the latest missed slot."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from store.schedules import latest_slot, next_slot, validate_cron

NY = ZoneInfo("America/New_York")


def ts(*args: int, tz=UTC) -> float:
    return datetime(*args, tzinfo=tz).timestamp()


def test_daily_new_york_schedule_keeps_local_time_across_spring_forward() -> None:
    # 2026-03-08 02:00 EST becomes 03:00 EDT; 09:00 local is 14:00 UTC before, 13:00 UTC after.
    after = ts(2026, 3, 7, 10, 0, tz=NY)
    first = next_slot("0 9 * * *", "America/New_York", after)
    second = next_slot("0 9 * * *", "America/New_York", first)
    assert first == ts(2026, 3, 8, 9, 0, tz=NY) == ts(2026, 3, 8, 13, 0)
    assert second == ts(2026, 3, 9, 13, 0)
    assert second - first == 24 * 3600


def test_daily_new_york_schedule_across_fall_back() -> None:
    after = ts(2026, 10, 31, 12, 0, tz=NY)
    first = next_slot("0 9 * * *", "America/New_York", after)
    second = next_slot("0 9 * * *", "America/New_York", first)
    assert first == ts(2026, 11, 1, 14, 0)  # 09:00 EST (after the change at 02:00 EDT)
    assert second - first == 24 * 3600
    assert datetime.fromtimestamp(second, tz=NY).hour == 9


def test_slot_in_the_skipped_hour_runs_once_that_day() -> None:
    first = next_slot("30 2 * * *", "America/New_York", ts(2026, 3, 7, 12, 0, tz=NY))
    assert datetime.fromtimestamp(first, tz=NY).date().isoformat() == "2026-03-08"
    second = next_slot("30 2 * * *", "America/New_York", first)
    assert datetime.fromtimestamp(second, tz=NY).isoformat() == "2026-03-09T02:30:00-04:00"


def test_six_fields_have_a_leading_seconds_field() -> None:
    start = ts(2026, 1, 1, 0, 0)
    assert next_slot("*/2 * * * * *", "UTC", start) == start + 2
    assert next_slot("30 * * * * *", "UTC", start) == start + 30
    assert next_slot("*/5 * * * *", "UTC", start) == start + 300
    assert next_slot("0 9 * * THU", "UTC", start) == ts(2026, 1, 1, 9, 0)  # 2026-01-01 is a Thursday
    assert next_slot("0 0 1 MAR *", "UTC", start) == ts(2026, 3, 1, 0, 0)


def test_latest_missed_slot_after_downtime() -> None:
    due = ts(2026, 1, 1, 0, 0)
    now = due + 3600 + 17  # down for an hour
    assert latest_slot("*/5 * * * *", "UTC", now, due) == due + 3600
    assert latest_slot("*/5 * * * *", "UTC", due + 1, due) == due


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.999])
def test_latest_slot_is_never_in_the_future(fraction: float) -> None:
    base = ts(2026, 1, 1, 0, 0)  # an even second
    for offset in range(6):
        at = base + offset + fraction
        got = latest_slot("*/2 * * * * *", "UTC", at, base - 10)
        assert got <= at and got == base + offset - offset % 2
        assert latest_slot("* * * * * *", "UTC", at, base - 10) == base + offset


@pytest.mark.parametrize(
    "cron, tz, field",
    [
        ("not a cron", "UTC", "cron"),
        ("* * * *", "UTC", "cron"),
        ("61 * * * *", "UTC", "cron"),
        ("* * * * * * *", "UTC", "cron"),
        ("0 0 30 2 *", "UTC", "cron"),
        ("R * * * *", "UTC", "cron"),
        ("H H * * *", "UTC", "cron"),
        ("H/15 * * * *", "UTC", "cron"),
        ("* * * * *", "Mars/Olympus", "timezone"),
        ("* * * * *", "../etc/passwd", "timezone"),
    ],
)
def test_bad_cron_or_zone_names_the_field(cron: str, tz: str, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        validate_cron(cron, tz, ts(2026, 1, 1, 0, 0))
