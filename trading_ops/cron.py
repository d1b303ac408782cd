"""Cron-like schedules ("M H DOM MON DOW") in an IANA time zone: the next and the latest fire times, across DST."""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# Field name, smallest and largest value; day of week 0-7 with both 0 and 7 meaning Sunday (as cron).
FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))
MONTH_NAMES = {m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())}
DAY_NAMES = {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}
# A schedule that matches nothing (30 2 31 2 *) is refused when parsed, so a search never needs to go further
# than the longest gap a valid one can have: Feb 29 on a given weekday comes back within 28 years.
SEARCH_DAYS = 366 * 28


class ScheduleError(ValueError):
    """A schedule or time zone that cannot be used, with the reason."""


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name` (America/New_York, UTC); ScheduleError when there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ScheduleError(
            f"unknown time zone {name[:40]!r} (expected an IANA name such as America/New_York)"
        ) from exc


def _value(text: str, low: int, high: int, names: dict[str, int], what: str) -> int:
    key = text.lower()
    if key in names:
        return names[key]
    if not text.isdigit():
        raise ScheduleError(f"{what}: {text[:20]!r} is not a number")
    number = int(text)
    if not low <= number <= high:
        raise ScheduleError(f"{what}: {number} is outside {low}-{high}")
    return number


def _field(text: str, low: int, high: int, names: dict[str, int], what: str) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        rng, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ScheduleError(f"{what}: step {step_text[:20]!r} must be a positive number")
            step = int(step_text)
        if rng == "*":
            start, end = low, high
        elif "-" in rng:
            first, _, last = rng.partition("-")
            start, end = _value(first, low, high, names, what), _value(last, low, high, names, what)
            if start > end:
                raise ScheduleError(f"{what}: range {rng!r} runs backwards")
        else:
            start = _value(rng, low, high, names, what)
            end = high if step_text else start
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class CronSchedule:
    """A five-field cron expression in a time zone.

    Days match as in cron: when both day of month and day of week are restricted, either one matching is enough.
    Daylight saving time: a local time that does not exist on the day the clocks go forward (02:30 in New York in
    March) fires once, at the same distance past the jump (03:30); a local time that happens twice when they go back
    fires once, the first time, unless the hour field is `*` (or a step of it), which fires in both hours as the
    clock reads them. A fire time is a UTC instant: two local times that land on the same instant fire once."""

    expression: str
    timezone: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool
    any_weekday: bool
    every_hour: bool

    @classmethod
    def parse(cls, expression: str, timezone: str = "UTC") -> CronSchedule:
        zone(timezone)
        parts = expression.split()
        if len(parts) != 5:
            raise ScheduleError(f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}")
        parsed = []
        for text, (what, low, high) in zip(parts, FIELDS, strict=True):
            names = MONTH_NAMES if what == "month" else DAY_NAMES if what == "day of week" else {}
            parsed.append(_field(text, low, high, names, what))
        minutes, hours, days, months, weekdays = parsed
        weekdays = frozenset(7 if d == 0 else d for d in weekdays)  # ISO: Monday 1 .. Sunday 7
        schedule = cls(
            expression=" ".join(parts),
            timezone=timezone,
            minutes=minutes,
            hours=hours,
            days=days,
            months=months,
            weekdays=weekdays,
            any_day=parts[2].startswith("*"),
            any_weekday=parts[4].startswith("*"),
            every_hour=parts[1] == "*" or parts[1].startswith("*/"),
        )
        if not any(schedule._day_matches(date(2000, 1, 1) + timedelta(days=n)) for n in range(366 * 4)):
            raise ScheduleError(f"{expression!r} never fires (no such day)")
        return schedule

    @property
    def tz(self) -> ZoneInfo:
        return zone(self.timezone)

    def _day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        by_day, by_weekday = day.day in self.days, day.isoweekday() in self.weekdays
        if self.any_day or self.any_weekday:
            return by_day and by_weekday
        return by_day or by_weekday

    def fire_times(self, day: date) -> list[datetime]:
        """The UTC instants this schedule fires on local date `day`, in order (empty when the day does not match)."""
        return list(_fire_times(self, day))

    def next_after(self, moment: datetime) -> datetime:
        """The first fire time strictly after `moment` (aware), in UTC."""
        moment = _aware(moment)
        day = moment.astimezone(self.tz).date() - timedelta(days=1)
        for n in range(SEARCH_DAYS):
            times = _fire_times(self, day + timedelta(days=n))
            i = bisect.bisect_right(times, moment)
            if i < len(times):
                return times[i]
        raise ScheduleError(f"{self.expression!r} does not fire after {moment.isoformat()}")  # pragma: no cover

    def latest_at_or_before(self, moment: datetime) -> datetime:
        """The last fire time at or before `moment` (aware), in UTC."""
        moment = _aware(moment)
        day = moment.astimezone(self.tz).date() + timedelta(days=1)
        for n in range(SEARCH_DAYS):
            times = _fire_times(self, day - timedelta(days=n))
            i = bisect.bisect_right(times, moment)
            if i > 0:
                return times[i - 1]
        raise ScheduleError(f"{self.expression!r} did not fire before {moment.isoformat()}")  # pragma: no cover


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("a naive datetime given to a schedule; give a timezone-aware one")
    return moment.astimezone(UTC)


def to_utc(day: date, at: time, tz: ZoneInfo, *, both_folds: bool = False) -> list[datetime]:
    """The UTC instants local wall time `at` on `day` stands for: one normally; for a time the clocks skip, the
    instant as far past the jump as the time was past its start; for a repeated time, the first one (or both)."""
    first = datetime.combine(day, at, tzinfo=tz).replace(fold=0)
    instant = first.astimezone(UTC)
    if instant.astimezone(tz).replace(tzinfo=None) != first.replace(tzinfo=None):
        # Does not exist: fold=0 reads it with the offset before the jump, which lands as far past the jump.
        return [instant]
    second = first.replace(fold=1).astimezone(UTC)
    if second != instant and both_folds:
        return [instant, second]
    return [instant]


@functools.lru_cache(maxsize=4096)
def _fire_times(schedule: CronSchedule, day: date) -> list[datetime]:
    if not schedule._day_matches(day):
        return []
    tz = schedule.tz
    instants = {
        instant
        for hour in schedule.hours
        for minute in schedule.minutes
        for instant in to_utc(day, time(hour, minute), tz, both_folds=schedule.every_hour)
    }
    return sorted(instants)
