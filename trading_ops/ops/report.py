"""The daily summary: trades, P&L, fees, positions, drawdown, alerts, remediations, uptime, backups; text and HTML."""

from __future__ import annotations

import asyncio
import html
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, func, inspect, select

from trading_ops.clients.notify import Notifier
from trading_ops.config import Config, ConfigError, ReportConfig, resolve_secret
from trading_ops.cron import to_utc, zone
from trading_ops.db.base import make_engine, utcnow
from trading_ops.db.models.journal import Fill, Position
from trading_ops.db.models.ledger import Episode
from trading_ops.db.models.recovery import BotRun
from trading_ops.ops.backup import Catalog

log = logging.getLogger(__name__)

ZERO = Decimal(0)
TITLE = "Trading daily summary"
# After downtime the summaries of the missed days are sent, oldest first, each once: at most a week of them (past
# that, `trading-ops report daily --date D --send` sends any day on demand).
CATCH_UP_DAYS = 7


class ReportError(Exception):
    """The summary could not be built or sent."""


def cron_of(report: ReportConfig) -> str:
    """The report's time of day as a daily cron expression."""
    hour, minute = report.daily_at.split(":")
    return f"{int(minute)} {int(hour)} * * *"


def period(report: ReportConfig, day: date) -> tuple[datetime, datetime]:
    """The 24 hours (local days, so 23 or 25 across DST) the report of `day` covers: up to daily_at on `day`, or to
    the end of `day` when daily_at is 00:00."""
    tz = zone(report.time_zone)
    hour, minute = (int(p) for p in report.daily_at.split(":"))
    cutoff = time(hour, minute)
    end_day = day + timedelta(days=1) if cutoff == time(0, 0) else day
    return to_utc(end_day - timedelta(days=1), cutoff, tz)[0], to_utc(end_day, cutoff, tz)[0]


def day_of_slot(report: ReportConfig, slot: datetime) -> date:
    """The day a scheduled run at `slot` reports on: the local day that ends at (or includes the end of) it."""
    return (slot - timedelta(microseconds=1)).astimezone(zone(report.time_zone)).date()


@dataclass
class PositionLine:
    symbol: str
    quantity: Decimal
    average_price: Decimal
    mark: Decimal | None

    @property
    def unrealized(self) -> Decimal | None:
        return None if self.mark is None else (self.mark - self.average_price) * self.quantity


@dataclass
class BotDay:
    bot: str
    trades: int = 0
    realized_pnl: Decimal = ZERO
    fees: dict[str, Decimal] = field(default_factory=dict)
    wins: int = 0
    losses: int = 0
    worst_drawdown: Decimal = ZERO
    positions: list[PositionLine] = field(default_factory=list)
    uptime: float | None = None

    @property
    def win_rate(self) -> float | None:
        closed = self.wins + self.losses
        return None if closed == 0 else self.wins / closed


@dataclass
class DailySummary:
    day: date
    timezone: str
    start: datetime
    end: datetime
    bots: list[BotDay]
    alerts: dict[str, int]
    remediations: dict[str, int]
    backups: list[str]

    @property
    def title(self) -> str:
        return f"{TITLE} {self.day.isoformat()}"


def _money(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{value:,.2f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _fees(fees: dict[str, Decimal]) -> str:
    return ", ".join(f"{_money(v)} {k}" for k, v in sorted(fees.items())) or "0"


def _union_seconds(intervals: list[tuple[datetime, datetime]]) -> float:
    total, current_end = 0.0, None
    for start, end in sorted(intervals):
        if current_end is not None and start < current_end:
            if end > current_end:
                total += (end - current_end).total_seconds()
                current_end = end
            continue
        total += (end - start).total_seconds()
        current_end = end
    return total


def build(config: Config, engine: Engine, day: date, now: datetime | None = None) -> DailySummary:
    """Read the journal, the bots' heartbeats and the reconciler's ledger for `day`."""
    now = now or utcnow()
    start, end = period(config.report, day)
    tables = set(inspect(engine).get_table_names())
    if not {"fills", "positions", "reconciler_episodes", "bot_runs"} <= tables:
        raise ConfigError(
            "database.url", "the journal and ledger tables are missing: run `trading-ops db upgrade` first"
        )
    bots: dict[str, BotDay] = {}

    def bot(name: str) -> BotDay:
        return bots.setdefault(name, BotDay(name))

    with engine.connect() as conn:
        fills = conn.execute(
            select(Fill.bot, Fill.quantity, Fill.price, Fill.fee, Fill.fee_asset, Fill.realized_pnl)
            .where(Fill.executed_at >= start, Fill.executed_at < end)
            .order_by(Fill.bot, Fill.executed_at, Fill.id)
        ).all()
        running: dict[str, tuple[Decimal, Decimal]] = {}  # bot -> (cumulative realized, its peak)
        for name, _qty, _price, fee, fee_asset, stored in fills:
            day_of = bot(name)
            day_of.trades += 1
            day_of.fees[fee_asset] = day_of.fees.get(fee_asset, ZERO) + fee
            realized = stored if stored is not None else ZERO
            day_of.realized_pnl += realized
            if realized + fee != 0:  # it closed (part of) a position: a win or a loss
                if realized > 0:
                    day_of.wins += 1
                else:
                    day_of.losses += 1
            value, peak = running.get(name, (ZERO, ZERO))
            value += realized
            peak = max(peak, value)
            running[name] = (value, peak)
            day_of.worst_drawdown = max(day_of.worst_drawdown, peak - value)
        positions = conn.execute(
            select(Position.bot, Position.symbol, Position.quantity, Position.average_price)
            .where(Position.quantity != 0)
            .order_by(Position.bot, Position.symbol)
        ).all()
        for name, symbol, quantity, average in positions:
            if quantity == 0:  # a flat position journaled as 0.000 (text on SQLite) is not open
                continue
            mark = conn.execute(
                select(Fill.price)
                .where(Fill.symbol == symbol, Fill.executed_at < end)
                .order_by(Fill.executed_at.desc(), Fill.id.desc())
                .limit(1)
            ).scalar()
            bot(name).positions.append(PositionLine(symbol, quantity, average, mark))
        runs = conn.execute(
            select(BotRun.bot, BotRun.started_at, BotRun.stopped_at, BotRun.last_heartbeat_at).where(
                BotRun.started_at < end, BotRun.last_heartbeat_at >= start
            )
        ).all()
        alerts = dict(
            conn.execute(
                select(Episode.alertname, func.count())
                .where(Episode.starts_at >= start, Episode.starts_at < end)
                .group_by(Episode.alertname)
            ).all()
        )
        outcomes = dict(
            conn.execute(
                select(Episode.state, func.count())
                .where(Episode.closed_at >= start, Episode.closed_at < end)
                .group_by(Episode.state)
            ).all()
        )
    # Uptime: the share of the period (so far) covered by runs whose loop was beating.
    observed_end = min(end, now)
    if observed_end > start:
        by_bot: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
        for name, started, stopped, beat in runs:
            lo, hi = max(started, start), min(min(stopped, beat) if stopped else beat, observed_end)
            if hi > lo:
                by_bot[name].append((lo, hi))
        seconds = (observed_end - start).total_seconds()
        for name in {r[0] for r in runs}:
            bot(name).uptime = _union_seconds(by_bot[name]) / seconds
    return DailySummary(
        day=day,
        timezone=config.report.time_zone,
        start=start,
        end=end,
        bots=sorted(bots.values(), key=lambda b: b.bot),
        alerts={str(k): int(v) for k, v in sorted(alerts.items())},
        remediations={str(k): int(v) for k, v in sorted(outcomes.items())},
        backups=backup_lines(config, start, end),
    )


def backup_lines(config: Config, start: datetime, end: datetime) -> list[str]:
    """The backups part, from the manifests of the backup catalog in `backup.directory`."""
    section = config.backup
    try:
        manifests = list(Catalog(section.directory).manifests())
    except Exception as exc:  # a summary without its backup part beats no summary
        log.warning("backup catalog not readable for the daily summary: %s", exc)
        return [f"backup catalog not readable: {exc}"]
    if not manifests:
        return [f"no backups in {section.directory}"]
    in_period = [m for m in manifests if start <= m.created_at < end]
    latest = max(manifests, key=lambda m: m.created_at)
    size = sum(m.size_bytes for m in in_period)
    return [
        f"{len(in_period)} backup(s) in the period, {size / 1e6:.1f} MB",
        f"latest: {latest.id} at {latest.created_at:%Y-%m-%d %H:%M}Z, {latest.size_bytes / 1e6:.1f} MB",
    ]


def render_text(summary: DailySummary) -> str:
    local = zone(summary.timezone)
    out = [
        summary.title,
        f"Period: {summary.start.astimezone(local):%Y-%m-%d %H:%M} to {summary.end.astimezone(local):%Y-%m-%d %H:%M} "
        f"{summary.timezone}",
        "",
    ]
    if not summary.bots:
        out.append("No bot traded or ran in this period.")
    for b in summary.bots:
        out += [
            f"Bot {b.bot}",
            f"  trades: {b.trades}",
            f"  realized P&L: {_money(b.realized_pnl)}",
            f"  fees: {_fees(b.fees)}",
            f"  win rate: {_pct(b.win_rate)} ({b.wins} won, {b.losses} lost)",
            f"  worst drawdown: {_money(b.worst_drawdown)}",
            f"  uptime: {_pct(b.uptime) if b.uptime is not None else 'no heartbeats'}",
        ]
        if b.positions:
            out.append("  open positions:")
            for p in b.positions:
                out.append(
                    f"    {p.symbol} {p.quantity.normalize():f} @ {_money(p.average_price)}, "
                    f"mark {_money(p.mark)}, unrealized {_money(p.unrealized)}"
                )
        else:
            out.append("  open positions: none")
    out += ["", "Alerts fired:"]
    out += [f"  {name}: {count}" for name, count in summary.alerts.items()] or ["  none"]
    out += ["Remediations by outcome:"]
    out += [f"  {state}: {count}" for state, count in summary.remediations.items()] or ["  none"]
    out += ["Backups:"] + [f"  {line}" for line in summary.backups]
    return "\n".join(out) + "\n"


def render_html(summary: DailySummary) -> str:
    e = html.escape
    local = zone(summary.timezone)
    rows = []
    for b in summary.bots:
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{e(str(v))}</td>"
                for v in (
                    b.bot,
                    b.trades,
                    _money(b.realized_pnl),
                    _fees(b.fees),
                    _pct(b.win_rate),
                    _money(b.worst_drawdown),
                    _pct(b.uptime) if b.uptime is not None else "no heartbeats",
                )
            )
            + "</tr>"
        )
    positions = [
        f"<tr><td>{e(b.bot)}</td><td>{e(p.symbol)}</td><td>{e(f'{p.quantity.normalize():f}')}</td>"
        f"<td>{e(_money(p.average_price))}</td><td>{e(_money(p.mark))}</td><td>{e(_money(p.unrealized))}</td></tr>"
        for b in summary.bots
        for p in b.positions
    ]

    def counts(items: dict[str, int]) -> str:
        if not items:
            return "<p>none</p>"
        return "<ul>" + "".join(f"<li>{e(k)}: {v}</li>" for k, v in items.items()) + "</ul>"

    return (
        f"<html><body><h2>{e(summary.title)}</h2>"
        f"<p>Period: {summary.start.astimezone(local):%Y-%m-%d %H:%M} to "
        f"{summary.end.astimezone(local):%Y-%m-%d %H:%M} {e(summary.timezone)}</p>"
        '<table border="1" cellpadding="4"><tr><th>Bot</th><th>Trades</th><th>Realized P&amp;L</th><th>Fees</th>'
        "<th>Win rate</th><th>Worst drawdown</th><th>Uptime</th></tr>"
        + ("".join(rows) or '<tr><td colspan="7">No bot traded or ran in this period.</td></tr>')
        + "</table><h3>Open positions</h3>"
        + (
            '<table border="1" cellpadding="4"><tr><th>Bot</th><th>Symbol</th><th>Quantity</th><th>Average</th>'
            "<th>Mark</th><th>Unrealized</th></tr>" + "".join(positions) + "</table>"
            if positions
            else "<p>none</p>"
        )
        + "<h3>Alerts fired</h3>"
        + counts(summary.alerts)
        + "<h3>Remediations by outcome</h3>"
        + counts(summary.remediations)
        + "<h3>Backups</h3><ul>"
        + "".join(f"<li>{e(line)}</li>" for line in summary.backups)
        + "</ul></body></html>"
    )


async def send(config: Config, summary: DailySummary) -> None:
    """Send the HTML summary (e-mail gets a text part beside it) to every notifications URL; ReportError if not."""
    notifier = Notifier.from_text(resolve_secret(config, config.notifications, "urls", "notifications.urls"))
    if not notifier.urls:
        raise ReportError("no notification URLs configured (notifications.urls_file or urls_env)")
    if not await notifier.notify(summary.title, render_html(summary), body_format="html"):
        raise ReportError("at least one notification URL did not accept the summary (see the log)")


async def run_daily_summary(config: Config, registry: CollectorRegistry, slot: datetime) -> None:
    """The scheduled job: the summary of the day that ended at `slot`, sent (exceptions are retried). After downtime
    the scheduler runs it for each missed day (at most CATCH_UP_DAYS), oldest first."""
    day = day_of_slot(config.report, slot)
    engine = make_engine(config.database_url(), sqlite_synchronous=config.database.sqlite_synchronous)
    try:
        summary = await asyncio.to_thread(build, config, engine, day, utcnow())
    finally:
        engine.dispose()
    await send(config, summary)
    log.info("daily summary for %s sent", day.isoformat())
