"""The weekly review: each bot's week against the success criteria (a value a day), its ramp's stages and demotions,
its readiness records, and the week's alerts and recoveries; text and HTML, sent like the daily summary."""

from __future__ import annotations

import asyncio
import html
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, func, inspect, select

from trading_ops.clients.notify import Notifier
from trading_ops.clients.prometheus import PrometheusClient, PrometheusError
from trading_ops.config import Config, ConfigError, resolve_secret
from trading_ops.cron import zone
from trading_ops.db.base import make_engine, utcnow
from trading_ops.db.models.ledger import Episode
from trading_ops.db.models.readiness import ReadinessRecord
from trading_ops.ops.report import ReportError, day_of_slot, period
from trading_ops.readiness.criteria import CRITERIA, Op, PromCriterion, compare, instances_selector, whole

log = logging.getLogger(__name__)

TITLE = "Trading weekly review"
WEEK_DAYS = 7
DAY_SECONDS = 86400.0
# The criteria a day is judged by: those over the verdict's window (the others have windows of their own).
DAILY_CRITERIA: tuple[PromCriterion, ...] = tuple(c for c in CRITERIA if c.window is None)
# The criteria whose absence reads as a value (no critical alert fired: 0): they say nothing of whether the bot was
# there to measure.
COUNTED_WHEN_ABSENT = frozenset(c.name for c in DAILY_CRITERIA if c.when_absent is not None)
STAGE_QUERY = "last_over_time(tradingbot_ramp_stage{{{sel}}}[1d])"
DEMOTIONS_QUERY = "sum by (instance, cause) (increase(tradingbot_ramp_demotions_total{{{sel}}}[{w}]))"
# ISO weekday numbers of report.weekly_on.
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@dataclass
class Trend:
    """One criterion of one bot: a value per day of the week (None: no data that day), against its threshold."""

    name: str
    op: Op
    threshold: float
    unit: str
    values: list[float | None]

    @property
    def failing_days(self) -> int:
        return sum(1 for v in self.values if v is not None and not compare(self.op, v, self.threshold))

    @property
    def status(self) -> str:
        if self.failing_days:
            return "fail"
        return "unknown" if all(v is None for v in self.values) else "pass"


@dataclass
class BotWeek:
    bot: str
    instance: str
    trends: list[Trend] = field(default_factory=list)
    stages: list[float | None] = field(default_factory=list)  # the ramp's stage at each day's end
    demotions: dict[str, int] = field(default_factory=dict)  # by cause
    records: list[str] = field(default_factory=list)  # readiness records of the week, one line each

    @property
    def failing(self) -> list[str]:
        return [t.name for t in self.trends if t.status == "fail"]


@dataclass
class WeeklyReview:
    last_day: date
    timezone: str
    start: datetime
    end: datetime
    days: list[date]
    bots: list[BotWeek]
    alerts: dict[str, int]
    recoveries: dict[str, int]
    prometheus_problem: str = ""
    queries: int = 0

    @property
    def title(self) -> str:
        return f"{TITLE} {self.days[0].isoformat()} to {self.last_day.isoformat()}"


def cron_of(config: Config) -> str:
    """The review's slot: report.daily_at on report.weekly_on."""
    hour, minute = config.report.daily_at.split(":")
    return f"{int(minute)} {int(hour)} * * {(WEEKDAYS.index(config.report.weekly_on) + 1) % 7}"


def week_days(config: Config, last_day: date) -> list[date]:
    return [last_day - timedelta(days=WEEK_DAYS - 1 - i) for i in range(WEEK_DAYS)]


async def build(config: Config, engine: Engine, last_day: date) -> WeeklyReview:
    """The review of the seven report days ending with `last_day`: Prometheus for the criteria and the ramp (one
    range query per criterion for every bot), the ledger for the readiness records, alerts and recoveries."""
    days = week_days(config, last_day)
    start, end = period(config.report, days[0])[0], period(config.report, last_day)[1]
    day_ends = [period(config.report, d)[1].timestamp() for d in days]
    bots = [BotWeek(b.name, b.instance) for b in config.bots]
    review = WeeklyReview(last_day, config.report.time_zone, start, end, days, bots, {}, {})
    await asyncio.to_thread(_ledger, review, engine)
    if bots:
        await _prometheus(config, review, day_ends)
    return review


def _ledger(review: WeeklyReview, engine: Engine) -> None:
    tables = set(inspect(engine).get_table_names())
    if not {"reconciler_episodes", "readiness_records"} <= tables:
        raise ConfigError("database.url", "the ledger's tables are missing: run `trading-ops db upgrade` first")
    start, end = review.start, review.end
    by_name = {b.bot: b for b in review.bots}
    with engine.connect() as conn:
        review.alerts = {
            str(k): int(v)
            for k, v in sorted(
                conn.execute(
                    select(Episode.alertname, func.count())
                    .where(Episode.starts_at >= start, Episode.starts_at < end)
                    .group_by(Episode.alertname)
                ).all()
            )
        }
        review.recoveries = {
            str(k): int(v)
            for k, v in sorted(
                conn.execute(
                    select(Episode.state, func.count())
                    .where(Episode.closed_at >= start, Episode.closed_at < end)
                    .group_by(Episode.state)
                ).all()
            )
        }
        rows = conn.execute(
            select(
                ReadinessRecord.bot,
                ReadinessRecord.verdict,
                ReadinessRecord.window,
                ReadinessRecord.recorded_by,
                ReadinessRecord.recorded_at,
                ReadinessRecord.approved_by,
            )
            .where(ReadinessRecord.recorded_at >= start, ReadinessRecord.recorded_at < end)
            .order_by(ReadinessRecord.id)
        ).all()
    local = zone(review.timezone)
    for bot, verdict, window, by, at, approved in rows:
        if bot in by_name:
            approval = f", live start approved by {approved}" if approved else ""
            by_name[bot].records.append(
                f"{at.astimezone(local):%Y-%m-%d %H:%M} {verdict} over {window}, recorded by {by}{approval}"
            )


async def _prometheus(config: Config, review: WeeklyReview, day_ends: list[float]) -> None:
    sel = instances_selector([b.instance for b in review.bots])
    by_instance = {b.instance: b for b in review.bots}
    first, last = day_ends[0], day_ends[-1]

    def index_of(t: float) -> int | None:
        i = round((t - first) / DAY_SECONDS)
        return i if 0 <= i < len(day_ends) else None

    async with aiohttp.ClientSession() as session:
        prometheus = PrometheusClient(session, config.reconciler.prometheus_urls)
        queries = [c.expr(sel, "1d") for c in DAILY_CRITERIA]
        queries.append(STAGE_QUERY.format(sel=sel))
        week = f"{int(last - first + DAY_SECONDS)}s"
        review.queries = len(queries) + 1
        try:
            answers = await asyncio.gather(*(prometheus.query_range(q, first, last, DAY_SECONDS) for q in queries))
            demotions = await prometheus.query_range(DEMOTIONS_QUERY.format(sel=sel, w=week), last, last, DAY_SECONDS)
        except PrometheusError as exc:  # nothing measured: said so, never read as a good week
            review.prometheus_problem = str(exc)[:300]
            return
    n = len(day_ends)
    for c, series in zip(DAILY_CRITERIA, answers[:-1], strict=True):
        per = _by_day(series, index_of, n)
        threshold = float(c.threshold(config.readiness))
        for instance, bot in by_instance.items():
            values = [_reduce(c, day) for day in per.get(instance, [[] for _ in range(n)])]
            bot.trends.append(Trend(c.name, c.op, threshold, c.unit, values))
    for instance, days in _by_day(answers[-1], index_of, n).items():
        if instance in by_instance:
            by_instance[instance].stages = [max(day) if day else None for day in days]
    for s in demotions:
        metric = s.get("metric") or {}
        bot_week = by_instance.get(str(metric.get("instance", "")))
        points = s.get("values") or []
        count = _float(points[-1][1]) if points else None
        if bot_week is not None and count is not None and whole(count) > 0:
            cause = str(metric.get("cause", "loss_limit"))
            bot_week.demotions[cause] = bot_week.demotions.get(cause, 0) + int(whole(count))


def _by_day(
    series: list[dict[str, Any]], index_of: Callable[[float], int | None], n: int
) -> dict[str, list[list[float]]]:
    """A range query's answer as, per instance, the values of each day (every series of the instance)."""
    per: dict[str, list[list[float]]] = {}
    for s in series:
        instance = str((s.get("metric") or {}).get("instance", ""))
        days = per.setdefault(instance, [[] for _ in range(n)])
        for t, v in s.get("values") or []:
            i = index_of(float(t))
            value = _float(v)
            if i is not None and value is not None:
                days[i].append(value)
    return per


def _reduce(c: PromCriterion, day: list[float]) -> float | None:
    """One day's value of a criterion from its series, as the verdict reduces them; None: no data that day."""
    values = day or ([c.when_absent] if c.when_absent is not None else [])
    if not values:
        return None
    value = float(len(day)) if c.reduce == "count" else min(values) if c.reduce == "min" else max(values)
    return whole(value) if c.whole else value


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _show(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ratio":
        return f"{value * 100:.3g}%"
    if unit in ("bytes", "bytes/day"):
        return f"{value / 1e6:.3g}MB"
    if unit == "seconds":
        return f"{value * 1000:.3g}ms"
    return f"{value:g}"


def _stages(stages: list[float | None]) -> str:
    """The stage at each day's end; "no ramp" only where the bot said so (its stage 0), "no data" where no day has
    one (a bot never scraped that week is not a bot without a ramp)."""
    if all(s is None for s in stages):
        return "no data"
    if all(s in (None, 0) for s in stages):
        return "no ramp"
    return " ".join("-" if s is None else f"{s:g}" for s in stages)


def _verdict(b: BotWeek) -> str:
    """The bot's headline: never "held" on a week without its data. A count that reads 0 when nothing is found (its
    critical alerts) is no data about the bot: a bot Prometheus never scraped has none of its own."""
    if b.failing:
        return f"failing: {', '.join(b.failing)}"
    measured = [t for t in b.trends if t.status != "unknown" and t.name not in COUNTED_WHEN_ABSENT]
    if not measured:
        return "not measured: no data"
    missing = [t.name for t in b.trends if t.status == "unknown"]
    if missing:
        return f"every criterion measured held; no data: {', '.join(missing)}"
    return "every criterion held on every day measured"


def render_text(review: WeeklyReview) -> str:
    local = zone(review.timezone)
    out = [
        review.title,
        f"Period: {review.start.astimezone(local):%Y-%m-%d %H:%M} to {review.end.astimezone(local):%Y-%m-%d %H:%M} "
        f"{review.timezone}",
        f"Days: {' '.join(d.strftime('%a') for d in review.days)}",
    ]
    if review.prometheus_problem:
        out.append(f"Prometheus could not be asked: {review.prometheus_problem}")
    out.append("")
    if not review.bots:
        out.append("No bot in the configuration's bots: list.")
    for b in review.bots:
        verdict = _verdict(b)
        out += [f"Bot {b.bot} ({b.instance}): {verdict}", f"  stage by day: {_stages(b.stages)}"]
        if b.demotions:
            out.append("  fell back: " + ", ".join(f"{c} {n}" for c, n in sorted(b.demotions.items())))
        for t in b.trends:
            values = " ".join(f"{_show(v, t.unit):>8}" for v in t.values)
            flag = "FAIL" if t.status == "fail" else "    "
            out.append(f"  {flag} {t.name:20} {values}  {t.op} {_show(t.threshold, t.unit)}")
        out += [f"  readiness recorded: {line}" for line in b.records] or ["  readiness recorded: none this week"]
    out += ["", "Alerts fired:"]
    out += [f"  {name}: {count}" for name, count in review.alerts.items()] or ["  none"]
    out += ["Recoveries by outcome:"]
    out += [f"  {state}: {count}" for state, count in review.recoveries.items()] or ["  none"]
    return "\n".join(out) + "\n"


def render_html(review: WeeklyReview) -> str:
    e = html.escape
    local = zone(review.timezone)
    head = "".join(f"<th>{e(d.strftime('%a %d'))}</th>" for d in review.days)
    parts = [
        f"<html><body><h2>{e(review.title)}</h2>",
        f"<p>Period: {review.start.astimezone(local):%Y-%m-%d %H:%M} to "
        f"{review.end.astimezone(local):%Y-%m-%d %H:%M} {e(review.timezone)}</p>",
    ]
    if review.prometheus_problem:
        parts.append(f"<p><strong>Prometheus could not be asked:</strong> {e(review.prometheus_problem)}</p>")
    if not review.bots:
        parts.append("<p>No bot in the configuration's bots: list.</p>")
    for b in review.bots:
        verdict = _verdict(b)
        parts.append(f"<h3>{e(b.bot)} ({e(b.instance)})</h3><p>{e(verdict)}</p>")
        demoted = ", ".join(f"{c} {n}" for c, n in sorted(b.demotions.items())) or "none"
        parts.append(f"<p>Stage by day: {e(_stages(b.stages))}; fell back: {e(demoted)}</p>")
        rows = []
        for t in b.trends:
            cells = "".join(
                f'<td class="{"fail" if v is not None and not compare(t.op, v, t.threshold) else "ok"}">'
                f"{e(_show(v, t.unit))}</td>"
                for v in t.values
            )
            threshold = f"{t.op} {_show(t.threshold, t.unit)}"
            rows.append(f'<tr class="{e(t.status)}"><td>{e(t.name)}</td>{cells}<td>{e(threshold)}</td></tr>')
        parts.append(
            f'<table border="1" cellpadding="3"><tr><th>Criterion</th>{head}<th>Threshold</th></tr>'
            + "".join(rows)
            + "</table>"
        )
        parts.append(
            "<p>Readiness recorded:</p><ul>" + "".join(f"<li>{e(r)}</li>" for r in b.records) + "</ul>"
            if b.records
            else "<p>Readiness recorded: none this week</p>"
        )

    def counts(items: dict[str, int]) -> str:
        if not items:
            return "<p>none</p>"
        return "<ul>" + "".join(f"<li>{e(k)}: {v}</li>" for k, v in items.items()) + "</ul>"

    parts += ["<h3>Alerts fired</h3>", counts(review.alerts), "<h3>Recoveries by outcome</h3>"]
    parts += [counts(review.recoveries), "</body></html>"]
    return "".join(parts)


async def send(config: Config, review: WeeklyReview) -> None:
    """Send the HTML review (e-mail gets a text part beside it) to every notifications URL; ReportError if not."""
    notifier = Notifier.from_text(resolve_secret(config, config.notifications, "urls", "notifications.urls"))
    if not notifier.urls:
        raise ReportError("no notification URLs configured (notifications.urls_file or urls_env)")
    if not await notifier.notify(review.title, render_html(review), body_format="html"):
        raise ReportError("at least one notification URL did not accept the weekly review (see the log)")


def last_day_of_slot(config: Config, slot: datetime) -> date:
    """The last report day a review sent at `slot` covers: the day that ended at it."""
    return day_of_slot(config.report, slot)


async def run_weekly_review(config: Config, registry: CollectorRegistry, slot: datetime) -> None:
    """The scheduled job: the review of the week that ended at `slot`, sent (exceptions are retried)."""
    engine = make_engine(config.database_url(), sqlite_synchronous=config.database.sqlite_synchronous)
    try:
        review = await build(config, engine, last_day_of_slot(config, slot))
    finally:
        engine.dispose()
    await send(config, review)
    log.info("weekly review to %s sent (%s)", review.last_day.isoformat(), utcnow().isoformat())
