"""The weekly review: a real Prometheus holding eight days of three bots' history (promtool-backfilled), a ledger with
the week's episodes and readiness records, printed and sent by e-mail to a real SMTP server (aiosmtpd, apprise's
mailto://). The days are UTC days ending at midnight (report.daily_at 00:00): each event of a history is placed in a
given day of the week, whatever the time the test runs."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from ports import free_port
from readiness_history import DAY, History, backfill, openmetrics, started_prometheus
from smtp_sink import SMTPServer
from sqlalchemy.orm import Session

from trading_ops.cli import main
from trading_ops.db import migrate
from trading_ops.db.base import make_engine
from trading_ops.db.models import Episode, ReadinessRecord
from trading_ops.readiness import weekly
from trading_ops.readiness.criteria import CRITERIA

STEP = 300
TODAY = datetime.now(UTC).date()
LAST_DAY = TODAY - timedelta(days=1)  # the last day that ended (at midnight UTC)
MIDNIGHT = datetime(TODAY.year, TODAY.month, TODAY.day, tzinfo=UTC).timestamp()
# The end of each day of the week, oldest first (Unix seconds).
ENDS = [MIDNIGHT - (6 - i) * DAY for i in range(7)]
NOW = time.time()


def during(day: int, hours_before_its_end: float = 6) -> float:
    """Seconds ago (as History counts) of a moment inside the week's day `day` (0 the oldest)."""
    return NOW - (ENDS[day] - hours_before_its_end * 3600)


def bots() -> dict[str, History]:
    """steady: promoted from stage 1 to 2 on day 2, every criterion held; shaky: at stage 2, crashes twice on day 4 and
    falls back (crash_loop); a third bot that logs 15 MB a day."""
    return {
        "steady": History("steady:9101", days=8.5, ramp=((8.5 * DAY, 1), (during(2), 2))),
        "shaky": History(
            "shaky:9101",
            days=8.5,
            crashes_at=(during(4, 8), during(4, 7)),
            ramp=((8.5 * DAY, 2), (during(4, 7), 1)),
            demotions=((during(4, 7), "crash_loop"),),
        ),
        "chatty": History("chatty:9101", days=8.5, log_mb_per_day=15),
    }


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("weekly")
    backfill(openmetrics(list(bots().values()), NOW, STEP), tmp / "data", tmp)
    with started_prometheus(tmp, tmp / "data", free_port(), "30d") as url:
        yield url


def seed(url: str) -> None:
    migrate.upgrade(url)
    engine = make_engine(url)
    at = datetime.fromtimestamp(ENDS[4] - 5 * 3600, UTC)
    before = datetime.fromtimestamp(ENDS[0] - 2 * DAY, UTC)  # the week before: not counted

    def episode(n: int, alertname: str, state: str, starts: datetime) -> Episode:
        return Episode(
            fingerprint=f"f{n}",
            starts_at=starts,
            alertname=alertname,
            target="shaky:9101",
            rule="r",
            labels="{}",
            annotations="{}",
            state=state,
            closed_at=starts + timedelta(minutes=3),
        )

    with Session(engine) as db, db.begin():
        db.add_all(
            [
                episode(1, "TradingBotDown", "recovered", at),
                episode(2, "TradingBotDown", "recovered", at + timedelta(minutes=40)),
                episode(3, "TradingBotRampDemoted", "escalated", at + timedelta(minutes=61)),
                episode(4, "TradingBotDown", "recovered", before),
                ReadinessRecord(
                    bot="steady",
                    instance="steady:9101",
                    verdict="ready",
                    window="5d",
                    failing="[]",
                    missing="[]",
                    recorded_by="alice",
                    recorded_at=datetime.fromtimestamp(ENDS[1] - 3600, UTC),
                    approved_by=None,
                    reason="",
                ),
            ]
        )
    engine.dispose()


def write_config(tmp_path: Path, url: str, prometheus: str, notify: str = "") -> Path:
    data: dict[str, Any] = {
        "database": {"url": url},
        "report": {"daily_at": "00:00", "time_zone": "UTC"},
        "reconciler": {"prometheus_url": prometheus},
        "bots": [{"name": name, "instance": h.instance, "url": f"http://{h.instance}"} for name, h in bots().items()],
    }
    if notify:
        (tmp_path / "urls").write_text(notify)
        data["notifications"] = {"urls_file": str(tmp_path / "urls")}
    path = tmp_path / "trading-ops.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def test_the_week_of_each_bot_against_the_criteria_its_stages_and_the_alerts(
    tmp_path: Path, migrated_sqlite: str, prometheus: str
) -> None:
    from trading_ops.config import load_config

    seed(migrated_sqlite)
    config = load_config(write_config(tmp_path, migrated_sqlite, prometheus))
    engine = make_engine(migrated_sqlite)
    try:
        started = time.perf_counter()
        review = await weekly.build(config, engine, LAST_DAY)
        print(json.dumps({"weekly_review_3_bots_seconds": round(time.perf_counter() - started, 3)}))
    finally:
        engine.dispose()
    assert review.prometheus_problem == "" and review.days[-1] == LAST_DAY and len(review.days) == 7
    assert review.queries == len(weekly.DAILY_CRITERIA) + 2  # one range query per criterion, the stage, the falls
    found = {b.bot: b for b in review.bots}
    steady, shaky, chatty = found["steady"], found["shaky"], found["chatty"]
    assert [t.name for t in steady.trends] == [c.name for c in CRITERIA if c.window is None]
    assert steady.failing == [] and all(None not in t.values for t in steady.trends), steady.trends
    assert steady.stages == [1, 1, 2, 2, 2, 2, 2] and steady.demotions == {}
    assert steady.records and steady.records[0].endswith("ready over 5d, recorded by alice")
    # The crashes of day 4 fail that day alone (the crash and restart counts of every other day are 0).
    trends = {t.name: t for t in shaky.trends}
    assert set(shaky.failing) == {"crashes", "restarts"}
    assert trends["crashes"].values == [0, 0, 0, 0, 2, 0, 0] and trends["crashes"].failing_days == 1
    assert shaky.stages == [2, 2, 2, 2, 1, 1, 1] and shaky.demotions == {"crash_loop": 1}
    assert chatty.failing == ["log_size"]
    assert all(v == pytest.approx(15e6, rel=0.05) for v in {t.name: t for t in chatty.trends}["log_size"].values)
    # The ledger's week: the episode of the week before is not counted.
    assert review.alerts == {"TradingBotDown": 2, "TradingBotRampDemoted": 1}
    assert review.recoveries == {"escalated": 1, "recovered": 2}
    text = weekly.render_text(review)
    assert re.search(r"FAIL crashes\s+0\s+0\s+0\s+0\s+2\s+0\s+0\s+<= 0", text), text
    assert "  fell back: crash_loop 1" in text and "stage by day: 2 2 2 2 1 1 1" in text


async def test_the_cli_prints_it_and_sends_it_by_email(
    tmp_path: Path, migrated_sqlite: str, prometheus: str, smtp_server: SMTPServer, capsys: Any
) -> None:
    seed(migrated_sqlite)
    config = write_config(tmp_path, migrated_sqlite, prometheus, smtp_server.mailto("desk@example.com"))
    argv = ["-c", str(config), "report", "weekly", "--date", LAST_DAY.isoformat()]
    assert await asyncio.to_thread(main, argv) == 0
    out = capsys.readouterr().out
    first = (LAST_DAY - timedelta(days=6)).isoformat()
    assert out.startswith(f"Trading weekly review {first} to {LAST_DAY.isoformat()}\n"), out[:200]
    assert "Bot shaky (shaky:9101): failing: restarts, crashes" in out
    assert await asyncio.to_thread(main, [*argv, "--send"]) == 0
    sent = capsys.readouterr().out
    assert sent.startswith(f"weekly review {first} to {LAST_DAY.isoformat()} sent (3 bots, "), sent
    (message,) = await smtp_server.mailbox.await_messages(1)
    assert message["Subject"] == f"Trading weekly review {first} to {LAST_DAY.isoformat()}"
    assert message["To"] == "desk@example.com" and message.get_content_type() == "multipart/alternative"
    page = message.get_body(preferencelist=("html",)).get_content()
    plain = message.get_body(preferencelist=("plain",)).get_content()
    assert '<tr class="fail"><td>crashes</td>' in page and "fell back: crash_loop 1" in page
    assert "<li>TradingBotRampDemoted: 1</li>" in page and "<li>recovered: 2</li>" in page
    assert "shaky" in plain and "<td" not in plain and "crash_loop 1" in plain


def test_bad_input_is_one_line(tmp_path: Path, migrated_sqlite: str, capsys: Any) -> None:
    config = write_config(tmp_path, migrated_sqlite, "http://127.0.0.1:9")
    assert main(["-c", str(config), "report", "weekly", "--date", "last-week"]) == 2
    assert capsys.readouterr().err.strip() == (
        "trading-ops: report weekly: --date: expected YYYY-MM-DD, got 'last-week'"
    )
    assert main(["-c", str(config), "report", "weekly", "--send", "--date", "2026-06-10"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["trading-ops: report: no notification URLs configured (notifications.urls_file or urls_env)"]


def test_a_prometheus_that_does_not_answer_is_said_never_read_as_a_good_week(
    tmp_path: Path, migrated_sqlite: str, capsys: Any
) -> None:
    config = write_config(tmp_path, migrated_sqlite, "http://127.0.0.1:9")
    assert main(["-c", str(config), "report", "weekly", "--date", "2026-06-10"]) == 0
    out = capsys.readouterr().out
    assert "Prometheus could not be asked: " in out
    assert "every criterion held" not in out and "Bot steady (steady:9101)" in out


def test_a_week_without_the_bot_s_data_never_headlines_that_every_criterion_held(
    tmp_path: Path, migrated_sqlite: str, prometheus: str, capsys: Any
) -> None:
    """A bot Prometheus answers nothing about (never scraped): its critical alerts count 0 (none found), which is no
    data about it. Its headline says so, never "every criterion held" (the CLI, as a user runs it)."""
    config = write_config(tmp_path, migrated_sqlite, prometheus)
    data = yaml.safe_load(config.read_text())
    data["bots"].append({"name": "ghost", "instance": "ghost:9101", "url": "http://ghost:9101"})
    config.write_text(yaml.safe_dump(data))
    assert main(["-c", str(config), "report", "weekly", "--date", LAST_DAY.isoformat()]) == 0
    out = capsys.readouterr().out
    assert "Bot ghost (ghost:9101): not measured: no data\n  stage by day: no data\n" in out, out
    assert "Bot steady (steady:9101): every criterion held on every day measured\n" in out, out


def test_the_review_is_scheduled_beside_the_daily_summary(tmp_path: Path, migrated_sqlite: str) -> None:
    from trading_ops.config import load_config
    from trading_ops.reconciler.jobs import configured_jobs

    config = load_config(write_config(tmp_path, migrated_sqlite, "http://127.0.0.1:9"))
    jobs = {j.name: j for j in configured_jobs(config)}
    assert {"daily_summary", "weekly_review"} <= set(jobs)
    slot = jobs["weekly_review"].schedule.latest_at_or_before(datetime(2026, 6, 12, 9, 0, tzinfo=UTC))
    assert slot == datetime(2026, 6, 8, 0, 0, tzinfo=UTC)  # the Monday before, at daily_at
    assert weekly.last_day_of_slot(config, slot) == date(2026, 6, 7)
