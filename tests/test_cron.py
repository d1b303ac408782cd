"""Cron-like schedules in a time zone: fields, lists, ranges, steps, names, and the New York DST changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time

from trading_ops.cron import CronSchedule, ScheduleError
from trading_ops.db.base import utcnow

NEW_YORK = "America/New_York"
# 2026: clocks go forward at 02:00 EST on March 8 (07:00 UTC) and back at 02:00 EDT on November 1 (06:00 UTC).
SPRING_FORWARD = datetime(2026, 3, 8, tzinfo=UTC)
FALL_BACK = datetime(2026, 11, 1, tzinfo=UTC)


def fires(schedule: CronSchedule, start: datetime, end: datetime) -> list[datetime]:
    out, t = [], start
    while (t := schedule.next_after(t)) < end:
        out.append(t)
    return out


def local(moments: list[datetime], tz: str = NEW_YORK) -> list[str]:
    return [m.astimezone(CronSchedule.parse("* * * * *", tz).tz).strftime("%m-%d %H:%M %Z") for m in moments]


def test_lists_ranges_steps_and_names() -> None:
    s = CronSchedule.parse("0,30 9-17/4 * jan-mar mon-fri", "UTC")
    assert s.minutes == {0, 30} and s.hours == {9, 13, 17} and s.months == {1, 2, 3}
    assert s.weekdays == {1, 2, 3, 4, 5}
    assert CronSchedule.parse("*/15 * * * 0", "UTC").weekdays == {7} == CronSchedule.parse("0 0 * * 7").weekdays
    assert CronSchedule.parse("5/20 * * * *").minutes == {5, 25, 45}
    # 2026-01-05 is a Monday: the next fire after Monday 17:30 is Tuesday 09:00.
    assert s.next_after(datetime(2026, 1, 5, 17, 30, tzinfo=UTC)) == datetime(2026, 1, 6, 9, 0, tzinfo=UTC)


def test_day_of_month_or_day_of_week_as_cron() -> None:
    # Both restricted: the 13th or any Friday.
    s = CronSchedule.parse("0 12 13 * fri", "UTC")
    days = [t.day for t in fires(s, datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))]
    assert days == [6, 13, 20, 27]  # Feb 13 2026 is itself a Friday
    # Only day of month restricted: the 13th only.
    s = CronSchedule.parse("0 12 13 * *", "UTC")
    assert len(fires(s, datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))) == 2


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("* * * *", "expected 5 fields"),
        ("60 * * * *", "minute: 60 is outside 0-59"),
        ("* 24 * * *", "hour: 24 is outside 0-23"),
        ("* * 0 * *", "day of month: 0 is outside 1-31"),
        ("* * * 13 *", "month: 13 is outside 1-12"),
        ("* * * * 8", "day of week: 8 is outside 0-7"),
        ("*/0 * * * *", "step '0' must be a positive number"),
        ("5-1 * * * *", "runs backwards"),
        ("x * * * *", "'x' is not a number"),
        ("0 0 30 feb *", "never fires"),
        ("0;rm * * * *", "is not a number"),
        ("; rm -rf / * * *", "got 7"),
    ],
)
def test_bad_expressions_name_the_problem(expression: str, problem: str) -> None:
    with pytest.raises(ScheduleError, match=problem.replace("*", r"\*").replace("(", r"\(")):
        CronSchedule.parse(expression)


@pytest.mark.parametrize("tz", ["Mars/Olympus", "", "../etc/passwd", "America/New_York\x00"])
def test_unknown_time_zone(tz: str) -> None:
    with pytest.raises(ScheduleError, match="unknown time zone"):
        CronSchedule.parse("* * * * *", tz)


def test_local_time_in_the_zone() -> None:
    s = CronSchedule.parse("30 16 * * *", NEW_YORK)
    # 16:30 in New York is 21:30 UTC in winter and 20:30 UTC in summer.
    assert s.next_after(datetime(2026, 1, 10, tzinfo=UTC)) == datetime(2026, 1, 10, 21, 30, tzinfo=UTC)
    assert s.next_after(datetime(2026, 7, 10, tzinfo=UTC)) == datetime(2026, 7, 10, 20, 30, tzinfo=UTC)


def test_spring_forward_a_skipped_time_fires_once() -> None:
    s = CronSchedule.parse("30 2 * * *", NEW_YORK)
    got = fires(s, SPRING_FORWARD - timedelta(days=1), SPRING_FORWARD + timedelta(days=2))
    # 02:30 does not exist on March 8: it fires once, an hour past the jump (03:30 EDT), and at 02:30 after.
    assert local(got) == ["03-07 02:30 EST", "03-08 03:30 EDT", "03-09 02:30 EDT"]


def test_fall_back_a_repeated_time_fires_once() -> None:
    s = CronSchedule.parse("30 1 * * *", NEW_YORK)
    got = fires(s, FALL_BACK - timedelta(days=1), FALL_BACK + timedelta(days=2))
    assert local(got) == ["10-31 01:30 EDT", "11-01 01:30 EDT", "11-02 01:30 EST"]


def test_hourly_job_follows_the_clock_through_both_changes() -> None:
    s = CronSchedule.parse("30 * * * *", NEW_YORK)
    spring = fires(s, datetime(2026, 3, 8, 5, tzinfo=UTC), datetime(2026, 3, 8, 9, tzinfo=UTC))
    assert local(spring) == ["03-08 00:30 EST", "03-08 01:30 EST", "03-08 03:30 EDT", "03-08 04:30 EDT"]
    fall = fires(s, datetime(2026, 11, 1, 4, tzinfo=UTC), datetime(2026, 11, 1, 8, tzinfo=UTC))
    # The repeated hour is a real hour of the clock: an hourly job runs in both.
    assert local(fall) == ["11-01 00:30 EDT", "11-01 01:30 EDT", "11-01 01:30 EST", "11-01 02:30 EST"]
    assert len(set(spring)) == len(spring) and len(set(fall)) == len(fall)


def test_latest_at_or_before_under_a_frozen_clock() -> None:
    s = CronSchedule.parse("0 0 * * *", NEW_YORK)
    with freeze_time("2026-03-08 12:00:00"):
        now = utcnow()
        assert s.latest_at_or_before(now) == datetime(2026, 3, 8, 5, 0, tzinfo=UTC)  # midnight EST
        assert s.next_after(now) == datetime(2026, 3, 9, 4, 0, tzinfo=UTC)  # midnight EDT: 23 hours later
    with freeze_time("2026-03-08 05:00:00"):
        assert s.latest_at_or_before(utcnow()) == utcnow()  # a slot exactly now is due now


def test_a_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        CronSchedule.parse("* * * * *").next_after(datetime(2026, 1, 1))
