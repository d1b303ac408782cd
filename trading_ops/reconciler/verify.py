"""Verification: query the alert's condition in Prometheus until the alert's own series clear or a deadline passes.

A query only learns something new once Prometheus has scraped the target again; when the alert names one target
(its `instance`), the queries are timed just after its scrapes: the first right after the first scrape that began
after the action, the next ones after the last scrape within each `interval`. Without a schedule, every `interval`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from trading_ops.clients.prometheus import PrometheusClient, PrometheusError, ScrapeSchedule


@dataclass
class Verdict:
    outcome: str  # clear, deadline, resolved
    detail: str


# What a verdict's detail says, in these words (the operator console reads them back: console_text.outcome).
UNVERIFIED = "steps succeeded (verification disabled by the rule)"


def clear_detail(expr: str, resolved: bool) -> str:
    return f"{expr} returned nothing for this alert{'; the alert resolved too' if resolved else ''}"


def resolved_detail(last: str) -> str:
    return f"alert resolved during verification ({last})"


def deadline_detail(deadline: float, last: str, expr: str) -> str:
    return f"not clear after {deadline:g}s ({last}): {expr}"


def with_source(detail: str, source: str) -> str:
    """A verdict's detail with where its expression came from (the playbook, or Prometheus's rules)."""
    return f"{detail} [expression from {source}]"


def belongs_to(series: Mapping[str, Any], alert_labels: Mapping[str, str]) -> bool:
    """Whether a result series is the alert's own: none of its labels contradicts the alert's.

    An alert carries its series' labels (plus the rule's and external ones), so another bot's or symbol's
    series differs in at least one label; an aggregated series with fewer labels still counts."""
    metric = series.get("metric") or {}
    return all(alert_labels.get(name, value) == value for name, value in metric.items() if name != "__name__")


async def verify(
    prometheus: PrometheusClient,
    expr: str,
    deadline: float,
    interval: float,
    resolved: Callable[[], Awaitable[bool]],
    alert_labels: Mapping[str, str] | None = None,
    wake: asyncio.Event | None = None,
    scrapes: ScrapeSchedule | None = None,
) -> Verdict:
    """Poll `expr` (an alerting condition: a result means still failing) until the alert's series are gone.

    Only series that belong to the alert (`alert_labels`) count: another bot failing the same condition does
    not keep this one's recovery unverified. A resolved notification ends the verification: one last query
    tells a recovery (clear) from a condition that went away on its own while still matching here. With the target's
    scrape schedule, that query waits for the first scrape that began after the action: an alert resolved by the
    action itself (a restart takes the target down, and its series go stale) is no word on what came back. `wake`,
    when set, cuts the wait between polls short (the resolved notification arrived). `scrapes`, the alert's target's
    scrape schedule, times the polls just after its scrapes (never further apart than `interval`) while the member of
    the Prometheus pair it was read from answers; when another member answers instead, polls go every `interval` and
    a resolution waits a full scrape interval after the action."""
    labels = alert_labels or {}
    end = time.monotonic() + deadline
    began = time.time()
    # When a query first shows the target as the action left it; a resolution seen before then says nothing.
    fresh_at = began if scrapes is None else scrapes.first_done(began, began)
    last = "not queried"
    polls = 0
    while True:
        was_resolved = await resolved()
        try:
            result = [s for s in await prometheus.query(expr) if belongs_to(s, labels)]
        except PrometheusError as exc:
            last = f"query failed: {exc}"
        else:
            if scrapes is not None and scrapes.member and prometheus.member != scrapes.member:
                # The member whose scrapes timed the polls stopped answering and its twin did: the twin scrapes at
                # its own offset, so a resolution counts only once any scrape begun after the action is in.
                fresh_at = max(fresh_at, scrapes.any_first_done(began))
                scrapes = None
            if not result:
                return Verdict("clear", clear_detail(expr, was_resolved))
            last = f"{len(result)} series of this alert still match"
        remaining = end - time.monotonic()
        if was_resolved and (time.time() >= fresh_at or remaining <= 0):
            return Verdict("resolved", resolved_detail(last))
        if remaining <= 0:
            return Verdict("deadline", deadline_detail(deadline, last, expr))
        polls += 1
        if was_resolved:  # resolved before the action's effect could be scraped: query once that scrape is in
            await asyncio.sleep(min(remaining, max(0.0, fresh_at - time.time())))
            continue
        pause = next_poll(min(interval, remaining), scrapes, began, time.time(), first=polls == 1)
        if wake is None:
            await asyncio.sleep(pause)
            continue
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(pause):
                await wake.wait()


def next_poll(most: float, scrapes: ScrapeSchedule | None, began: float, now: float, first: bool) -> float:
    """Seconds from `now` until the next query, at most `most`: after the first (failed) query, until the first scrape
    that began after the verification did (at `began`) can be queried; later, until the last scrape that can be
    within `most`."""
    if scrapes is None:
        return most
    if first:
        return min(most, max(0.0, scrapes.first_done(began, now) - now))
    latest = scrapes.last_done(now, now + most)
    return most if latest is None else max(0.0, latest - now)
