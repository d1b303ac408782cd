"""What the operator console says in words: one time format (absolute UTC beside "in 12 min" / "3 min ago"), an
episode's outcome without the PromQL behind it, and amounts of money."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from trading_ops.reconciler.verify import UNVERIFIED

# Every time the console shows, in one format (the ledger's times are UTC; so is Alertmanager's `startsAt`).
TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"
# Below this many seconds either way, a time is "now".
NOW_SECONDS = 5
MINUTE, HOUR, DAY = 60, 3600, 86400

# What the verification writes (trading_ops.reconciler.verify, verification): the query's outcome and where the
# query came from; the console says the outcome in words and keeps the query behind a <details>.
SOURCE_RE = re.compile(r"\s*\[expression from (?P<source>[^\]]+)\]")
CLEAR_RE = re.compile(
    r"^(?P<query>.+?) returned nothing for this alert(?P<resolved>; the alert resolved too)?(?:; (?P<rest>.*))?$", re.S
)
RESOLVED_RE = re.compile(r"^alert resolved during verification \((?P<last>[^)]*)\)$", re.S)
# A time the reconciler wrote into a detail (ISO 8601): said in the console's format.
ISO_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d:\d\d|Z)")
DEADLINE_RE = re.compile(r"not clear after (?P<seconds>[0-9.]+)s \((?P<last>[^)]*)\): (?P<query>.+)$", re.S)


def as_utc(value: datetime | str | None) -> datetime | None:
    """A time as an aware UTC datetime: a naive one is the ledger's UTC; a string is read as ISO 8601 (None when it is
    not one)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def absolute(value: datetime) -> str:
    """`2026-11-26 20:58:30 UTC`."""
    return value.astimezone(UTC).strftime(TIME_FORMAT)


def span(seconds: float) -> str:
    """A length of time as a person says it: `40 s`, `12 min`, `2 h 5 min`, `3 d 4 h`."""
    s = round(abs(seconds))
    if s < MINUTE:
        return f"{s} s"
    minutes = round(s / MINUTE)
    if minutes < MINUTE:
        return f"{minutes} min"
    if s < DAY:
        hours, rest = divmod(minutes, MINUTE)
        return f"{hours} h {rest} min" if rest else f"{hours} h"
    days, hours = divmod(round(s / HOUR), 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def relative(value: datetime, now: datetime) -> str:
    """`in 12 min`, `3 min ago`, or `just now`."""
    seconds = (value - now).total_seconds()
    if abs(seconds) < NOW_SECONDS:
        return "just now"
    return f"in {span(seconds)}" if seconds > 0 else f"{span(seconds)} ago"


@dataclass(frozen=True)
class Outcome:
    """An episode's or attempt's outcome in words, and the query behind it (empty: none) with where it came from."""

    words: str
    query: str = ""
    source: str = ""


def times_said(text: str, now: datetime | None) -> str:
    """Every ISO 8601 time in `text` in the console's format, with how far from `now` (when given)."""

    def say(found: re.Match[str]) -> str:
        at = as_utc(found[0])
        if at is None:
            return found[0]
        return f"{absolute(at)} ({relative(at, now)})" if now is not None else absolute(at)

    return ISO_RE.sub(say, text)


def outcome(detail: str | None, now: datetime | None = None) -> Outcome:
    """What a verification's detail says, in words (a detail that is not one is shown as it is, its times in the
    console's format)."""
    text = times_said((detail or "").strip(), now)
    found = SOURCE_RE.search(text)
    source = found["source"] if found else ""
    core = (text[: found.start()] + text[found.end() :]).strip() if found else text
    if m := CLEAR_RE.match(core):
        also = " and the alert resolved" if m["resolved"] else ""
        rest = f" Then: {m['rest']}." if m["rest"] else ""
        words = f"Recovered: after the action, Prometheus no longer finds the alert's condition{also}.{rest}"
        return Outcome(words, m["query"].strip(), source)
    if m := RESOLVED_RE.match(core):
        return Outcome(
            f"The alert resolved while the reconciler was checking its action ({m['last']} at the last check).",
            "",
            source,
        )
    if m := DEADLINE_RE.search(core):
        before = core[: m.start()].strip().rstrip(":").strip()
        lead = f"{before}: " if before else ""
        return Outcome(
            f"{lead}Not recovered: the alert's condition still held {span(float(m['seconds']))} after the action "
            f"({m['last']}).",
            m["query"].strip(),
            source,
        )
    if core == UNVERIFIED:
        return Outcome("Done: every step succeeded (this rule does not check the result in Prometheus).")
    return Outcome(core, "", source)


def number(value: Any) -> Decimal | None:
    """A decimal from what a bot's status gives (a string or a number), or None."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        return None
    return result if result.is_finite() else None


def amount(value: Decimal) -> str:
    """Money as it is read: `1,234.56`, `-0.40`."""
    return f"{value:,.2f}"


def quantity(value: Decimal) -> str:
    """A position's size as the bot gives it, without trailing zeros: `-0.4065`."""
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def quote_of(symbol: str) -> str:
    """The quote asset of a symbol (`ETH-USD`, `BTC/USD`, `BTC/USD:USD`): what its value is counted in; "" when the
    symbol does not say."""
    for sep in ("/", "-"):
        if sep in symbol:
            return symbol.rsplit(sep, 1)[1].split(":", 1)[0]
    return ""
