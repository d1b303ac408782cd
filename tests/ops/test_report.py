"""The daily summary: numbers from the journal, heartbeats and ledger; local days across DST; print and send.

Sending goes to a real SMTP server (aiosmtpd on a free loopback port) through apprise's mailto://."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from freezegun import freeze_time
from ops_setup import ops_config
from ports import free_port
from prometheus_client import CollectorRegistry
from smtp_sink import Mailbox, SMTPServer
from sqlalchemy import select
from sqlalchemy.orm import Session

from trading_ops.cli import main
from trading_ops.config import Config
from trading_ops.db.base import make_engine
from trading_ops.db.models import BotRun, Episode, Fill, Position
from trading_ops.db.models.ops import JobRun
from trading_ops.ops import report
from trading_ops.ops.scheduler import Scheduler
from trading_ops.reconciler.jobs import DAILY_SUMMARY_METRIC, configured_jobs

NY_1630 = {"daily_at": "16:30", "time_zone": "America/New_York"}
DAY = date(2026, 6, 10)
# 16:30 EDT on June 9 to 16:30 EDT on June 10.
START, END = datetime(2026, 6, 9, 20, 30, tzinfo=UTC), datetime(2026, 6, 10, 20, 30, tzinfo=UTC)


def fill(n: int, bot: str, symbol: str, side: str, qty: str, price: str, fee: str, realized: str, at: datetime) -> Fill:
    return Fill(
        bot=bot,
        venue="paper",
        trade_id=f"t{n}",
        client_order_id=f"c{n}",
        venue_order_id=f"v{n}",
        symbol=symbol,
        side=side,
        quantity=Decimal(qty),
        price=Decimal(price),
        fee=Decimal(fee),
        fee_asset="USD",
        liquidity="taker",
        executed_at=at,
        realized_pnl=Decimal(realized),
    )


def episode(n: int, alertname: str, state: str, starts: datetime, closed: datetime | None) -> Episode:
    return Episode(
        fingerprint=f"f{n}",
        starts_at=starts,
        alertname=alertname,
        target="bot-1",
        rule="r",
        labels="{}",
        annotations="{}",
        state=state,
        closed_at=closed,
    )


def seed(url: str) -> None:
    engine = make_engine(url)
    h = timedelta(hours=1)
    with Session(engine) as db, db.begin():
        db.add_all(
            [
                fill(0, "bot-1", "BTC-USD", "buy", "1", "90", "0.1", "-0.1", START - h),  # the day before: not counted
                fill(1, "bot-1", "BTC-USD", "buy", "1", "100", "0.1", "-0.1", START + h),  # opens
                fill(2, "bot-1", "BTC-USD", "sell", "0.5", "110", "0.1", "4.9", START + 2 * h),  # wins 5
                fill(3, "bot-1", "BTC-USD", "sell", "0.5", "90", "0.1", "-5.1", START + 3 * h),  # loses 5
                fill(4, "bot-2", "ETH-USD", "buy", "1", "55", "0.05", "-0.05", START + 4 * h),  # opens
                fill(5, "bot-2", "ETH-USD", "buy", "1", "70", "0.05", "-0.05", END + h),  # the day after: not counted
                Position(bot="bot-1", venue="paper", symbol="ETH-USD", quantity=Decimal(2), average_price=Decimal(50)),
                Position(bot="bot-1", venue="paper", symbol="BTC-USD", quantity=Decimal(0), average_price=Decimal(0)),
                # bot-1 ran the first 12 hours of the day and stopped; bot-2 ran 6 hours, then crashed.
                BotRun(
                    bot="bot-1",
                    venue="paper",
                    pid=1,
                    hostname="h",
                    started_at=START - h,
                    last_heartbeat_at=START + 12 * h,
                    stopped_at=START + 12 * h,
                    clean_shutdown=True,
                ),
                BotRun(
                    bot="bot-2",
                    venue="paper",
                    pid=2,
                    hostname="h",
                    started_at=START + 3 * h,
                    last_heartbeat_at=START + 9 * h,
                ),
                episode(1, "TradingBotDown", "recovered", START + 5 * h, START + 5.1 * h),
                episode(2, "TradingBotDown", "escalated", START + 6 * h, START + 7 * h),
                episode(3, "TradingBotDiskAlmostFull", "recovered", START - 2 * h, START + h),  # fired the day before
                episode(4, "TradingBotClockSkew", "pending", START + 8 * h, None),
            ]
        )
    engine.dispose()


def config_for(tmp_path: Path, url: str, notify: list[str] | None = None, **report_section: Any) -> Config:
    return ops_config(tmp_path, url, notify_urls=notify, report=report_section or NY_1630)


def test_the_period_is_a_local_day_across_dst(tmp_path: Path) -> None:
    ny = config_for(tmp_path, "sqlite://").report
    assert report.period(ny, DAY) == (START, END)
    start, end = report.period(ny, date(2026, 3, 8))  # clocks go forward: a 23-hour day
    assert end - start == timedelta(hours=23)
    start, end = report.period(ny, date(2026, 11, 1))  # and back: 25 hours
    assert end - start == timedelta(hours=25)
    utc = config_for(tmp_path, "sqlite://", daily_at="00:00", time_zone="UTC").report
    assert report.period(utc, DAY) == (datetime(2026, 6, 10, tzinfo=UTC), datetime(2026, 6, 11, tzinfo=UTC))
    # The run at midnight UTC reports the day that just ended; the one at 16:30 New York, the day it ends.
    assert report.day_of_slot(utc, datetime(2026, 6, 11, tzinfo=UTC)) == DAY
    assert report.day_of_slot(ny, END) == DAY


def test_the_summary_counts_the_day_from_journal_heartbeats_and_ledger(tmp_path: Path, database_url: str) -> None:
    from trading_ops.db import migrate

    migrate.upgrade(database_url)
    seed(database_url)
    config = config_for(tmp_path, database_url)
    engine = make_engine(database_url)
    try:
        summary = report.build(config, engine, DAY, now=END + timedelta(days=1))
    finally:
        engine.dispose()
    one, two = summary.bots
    assert (one.bot, one.trades, one.realized_pnl, one.fees) == ("bot-1", 3, Decimal("-0.3"), {"USD": Decimal("0.3")})
    assert (one.wins, one.losses, one.win_rate) == (1, 1, 0.5)
    assert one.worst_drawdown == Decimal("5.1")  # from +4.8 down to -0.3
    (eth,) = one.positions  # the flat BTC position is not open
    assert (eth.symbol, eth.mark, eth.unrealized) == ("ETH-USD", Decimal(55), Decimal(10))
    assert one.uptime == 0.5 and two.uptime == 0.25
    assert (two.trades, two.win_rate, two.positions) == (1, None, [])
    assert summary.alerts == {"TradingBotClockSkew": 1, "TradingBotDown": 2}
    assert summary.remediations == {"escalated": 1, "recovered": 2}
    assert summary.backups == [f"no backups in {config.backup.directory}"]  # none taken in this test

    text = report.render_text(summary)
    assert text.startswith("Trading daily summary 2026-06-10\nPeriod: 2026-06-09 16:30 to 2026-06-10 16:30 America/")
    for line in (
        "  realized P&L: -0.30",
        "  fees: 0.30 USD",
        "  win rate: 50.0% (1 won, 1 lost)",
        "  worst drawdown: 5.10",
        "  uptime: 50.0%",
        "    ETH-USD 2 @ 50.00, mark 55.00, unrealized 10.00",
        "  TradingBotDown: 2",
        "  recovered: 2",
    ):
        assert line + "\n" in text, line
    page = report.render_html(summary)
    assert "<td>bot-1</td><td>3</td><td>-0.30</td>" in page and "Realized P&amp;L" in page


def test_label_text_is_escaped_in_html(tmp_path: Path, migrated_sqlite: str) -> None:
    engine = make_engine(migrated_sqlite)
    with Session(engine) as db, db.begin():
        db.add(
            episode(1, "<script>alert(1)</script>", "recovered", START + timedelta(hours=1), END - timedelta(hours=1))
        )
    summary = report.build(config_for(tmp_path, migrated_sqlite), engine, DAY)
    engine.dispose()
    page = report.render_html(summary)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;: 1" in page


async def test_cli_prints_and_sends_it(
    tmp_path: Path, migrated_sqlite: str, smtp_server: SMTPServer, capsys: Any
) -> None:
    import yaml

    seed(migrated_sqlite)
    (tmp_path / "urls").write_text(smtp_server.mailto("desk@example.com"))
    path = tmp_path / "trading-ops.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "database": {"url": migrated_sqlite},
                "report": NY_1630,
                "notifications": {"urls_file": str(tmp_path / "urls")},
            }
        )
    )
    assert await asyncio.to_thread(main, ["-c", str(path), "report", "daily", "--date", "2026-06-10"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Trading daily summary 2026-06-10") and "TradingBotDown: 2" in out
    assert await asyncio.to_thread(main, ["-c", str(path), "report", "daily", "--date", "2026-06-10", "--send"]) == 0
    assert capsys.readouterr().out == "daily summary for 2026-06-10 sent\n"
    (message,) = await smtp_server.mailbox.await_messages(1)
    assert message["Subject"] == "Trading daily summary 2026-06-10" and message["To"] == "desk@example.com"
    assert message.get_content_type() == "multipart/alternative"
    plain = message.get_body(preferencelist=("plain",)).get_content()
    page = message.get_body(preferencelist=("html",)).get_content()
    assert "bot-1" in plain and "-0.30" in plain and "<" not in plain
    assert "<td>bot-1</td><td>3</td><td>-0.30</td>" in page and "ETH-USD" in page


@pytest.mark.parametrize(
    ("argv", "code", "problem"),
    [
        (["--date", "yesterday"], 2, "--date: expected YYYY-MM-DD, got 'yesterday'"),
        (["--date", "0001-01-01"], 2, "out of range"),
        (["--date", "2026-06-10", "--send"], 1, "no notification URLs configured"),
    ],
)
def test_cli_bad_input_is_one_line(
    tmp_path: Path, migrated_sqlite: str, argv: list[str], code: int, problem: str, capsys: Any
) -> None:
    path = tmp_path / "trading-ops.yaml"
    path.write_text(f"database:\n  url: {migrated_sqlite}\n")
    assert main(["-c", str(path), "report", "daily", *argv]) == code
    _, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("trading-ops:")]
    assert len(lines) == 1 and problem in lines[0] and "Traceback" not in err


def test_cli_without_the_tables_says_so(tmp_path: Path, sqlite_url: str, capsys: Any) -> None:
    path = tmp_path / "trading-ops.yaml"
    path.write_text(f"database:\n  url: {sqlite_url}\n")
    assert main(["-c", str(path), "report", "daily"]) == 2
    assert "run `trading-ops db upgrade` first" in capsys.readouterr().err
    assert main(["-c", str(path), "maintenance", "status"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert (
        line
        == "trading-ops: config: database.url: the maintenance tables are missing: run `trading-ops db upgrade` first"
    )


async def test_scheduled_summary_is_retried_until_mail_gets_through(tmp_path: Path, migrated_sqlite: str) -> None:
    """The SMTP server is down at 16:30: the attempt fails and is counted; it is up for the retry, which sends."""
    seed(migrated_sqlite)
    port = free_port()
    mailbox = Mailbox()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=port)
    url = SMTPServer("127.0.0.1", port, mailbox, smtp).mailto()
    config = config_for(tmp_path, migrated_sqlite, notify=[url], **NY_1630)
    config.scheduler.retry_initial_seconds = 30.0
    registry = CollectorRegistry()
    scheduler = Scheduler(config, make_engine(migrated_sqlite), configured_jobs(config), registry, "replica")
    waits: list[float] = []

    async def wait(seconds: float) -> None:  # the backoff: the mail server comes back meanwhile
        waits.append(seconds)
        await asyncio.to_thread(smtp.start)

    scheduler.sleep = wait
    try:
        with freeze_time("2026-06-10 20:29:00", real_asyncio=True) as clock:
            assert await scheduler.tick() == []
            clock.move_to("2026-06-10 20:30:00")
            started = [t for t in await scheduler.tick() if t.get_name() == "job:daily_summary"]
            await asyncio.gather(*started)
            clock.move_to("2026-06-10 20:45:00")
            assert [t for t in await scheduler.tick() if t.get_name() == "job:daily_summary"] == []  # once a day
    finally:
        smtp.stop()
    assert waits == [30.0]
    assert registry.get_sample_value("tradingops_scheduled_task_failures_total", {"task": "daily_summary"}) == 1
    assert registry.get_sample_value(DAILY_SUMMARY_METRIC) == datetime(2026, 6, 10, 20, 30, tzinfo=UTC).timestamp()
    (message,) = mailbox.messages
    assert message["Subject"] == "Trading daily summary 2026-06-10"


async def test_after_downtime_every_missed_day_is_sent_oldest_first_each_once(
    tmp_path: Path, migrated_sqlite: str, smtp_server: SMTPServer
) -> None:
    """Down for five days: the five missed summaries go out in order, once; down for ten: the last CATCH_UP_DAYS
    (a week) go out, each once although two replicas start together, and the older ones are left to
    `trading-ops report daily --date D --send`."""
    config = config_for(tmp_path, migrated_sqlite, notify=[smtp_server.mailto()], **NY_1630)

    def replica(name: str) -> Scheduler:
        return Scheduler(config, make_engine(migrated_sqlite), configured_jobs(config), CollectorRegistry(), name)

    async def tick(*schedulers: Scheduler) -> None:
        started = await asyncio.gather(*(s.tick() for s in schedulers))
        await asyncio.gather(*(t for ts in started for t in ts if t.get_name() == "job:daily_summary"))

    def days_sent() -> list[str]:
        return [m["Subject"].removeprefix("Trading daily summary ") for m in smtp_server.mailbox.messages]

    with freeze_time("2026-06-05 20:29:00", real_asyncio=True) as clock:
        first = replica("first-life")
        await tick(first)
        clock.move_to("2026-06-05 20:30:00")  # 16:30 in New York
        await tick(first)
        assert days_sent() == ["2026-06-05"]
        # Down from June 5 to June 10 after 16:30: the summaries of June 6 to 10 were missed.
        clock.move_to("2026-06-10 21:15:00")
        second = replica("second-life")
        await tick(second)
        await tick(second)  # a second look finds every slot done
        assert days_sent() == ["2026-06-05", "2026-06-06", "2026-06-07", "2026-06-08", "2026-06-09", "2026-06-10"]
        # Down for ten days this time; two replicas start at once.
        clock.move_to("2026-06-20 22:00:00")
        await tick(replica("third-a"), replica("third-b"))
    week = [f"2026-06-{day}" for day in range(14, 21)]
    assert len(week) == report.CATCH_UP_DAYS
    caught_up = days_sent()[6:]
    assert sorted(caught_up) == week, "each of the last seven days once, none older"
    # One recorded run per day sent, each a success: the claim on (task, slot) is what makes it once.
    engine = make_engine(migrated_sqlite)
    with engine.connect() as conn:
        runs = conn.execute(
            select(JobRun.scheduled_for, JobRun.state)
            .where(JobRun.job == "daily_summary")
            .order_by(JobRun.scheduled_for)
        ).all()
    engine.dispose()
    sent_days = ["2026-06-05", "2026-06-06", "2026-06-07", "2026-06-08", "2026-06-09", "2026-06-10", *week]
    assert [report.day_of_slot(config.report, slot.replace(tzinfo=UTC)).isoformat() for slot, _ in runs] == sent_days
    assert {state for _, state in runs} == {"success"}
