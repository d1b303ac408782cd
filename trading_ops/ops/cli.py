"""`trading-ops maintenance start|end|status|list` and `trading-ops report daily [--date D] [--send]` (`report weekly`:
trading_ops.readiness.weekly_cli)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from typing import TYPE_CHECKING, Any

from trading_ops.cli import UsageError
from trading_ops.clients.reconciler import add_token_options
from trading_ops.config import Config, ConfigError
from trading_ops.durations import parse_duration

if TYPE_CHECKING:
    from trading_ops.db.models.ops import MaintenanceWindow

EXIT_OK, EXIT_FAILURE = 0, 1
TOKEN_WORDS = "--token-file, $TRADING_OPS_TOKEN_FILE or $TRADING_OPS_TOKEN"


def register(sub: Any) -> None:
    mt = sub.add_parser("maintenance", help="maintenance windows: silence alerts, pause bots, record the window")
    inner = mt.add_subparsers(dest="maintenance_command", metavar="ACTION", required=True)
    start = inner.add_parser(
        "start",
        help="open a window now: Alertmanager silence, matched bots paused",
        description="Open a window through the reconciler's API (POST /api/v1/maintenance) with your own token of "
        f"scope operate ({TOKEN_WORDS}; destructive for a window that would silence the alerting pipeline's own "
        "pages): the window and its audit entry name that token. Exit 0 opened, 1 refused, not all done or no "
        "reconciler answered, 2 bad usage.",
    )
    start.add_argument("--duration", required=True, help="how long, e.g. 30m, 2h")
    start.add_argument("--reason", required=True, help="why (shown on the silence and in the record)")
    start.add_argument(
        "--matcher",
        action="append",
        default=[],
        metavar="LABEL=VALUE",
        help="alerts (and bots) the window covers; repeatable; default service=tradingbot (every bot)",
    )
    add_token_options(start)
    start.set_defaults(handler=maintenance_start)
    end = inner.add_parser(
        "end",
        help="end a window now: silence expired, the bots it paused resumed",
        description="End a window through the reconciler's API (POST /api/v1/maintenance/ID/end) with your own token "
        f"of scope operate ({TOKEN_WORDS}): its audit entry names that token. Exit 0 ended, 1 refused, not all "
        "done or no reconciler answered, 2 bad usage.",
    )
    end.add_argument("--id", type=int, default=None, help="the window (default: the only open one)")
    add_token_options(end)
    end.set_defaults(handler=maintenance_end)
    inner.add_parser("status", help="open windows with their silence and paused bots").set_defaults(
        handler=maintenance_status
    )
    lst = inner.add_parser("list", help="windows, newest first, open and closed")
    lst.add_argument("--limit", type=int, default=20, help="show at most this many windows (default 20)")
    lst.set_defaults(handler=maintenance_list)

    rp = sub.add_parser("report", help="reports: the daily summary, the weekly review")
    rinner = rp.add_subparsers(dest="report_command", metavar="REPORT", required=True)
    daily = rinner.add_parser("daily", help="print (or send) the daily summary")
    daily.add_argument("--date", default=None, help="the day, YYYY-MM-DD (default: the last day that ended)")
    daily.add_argument("--send", action="store_true", help="send it through notifications.urls instead of printing")
    daily.add_argument("--html", action="store_true", help="print the HTML version")
    daily.set_defaults(handler=report_daily)
    # `report weekly`: trading_ops.readiness.weekly_cli (the weekly review builds on the readiness criteria).


# ---- maintenance ---------------------------------------------------------------------------------------------


def _run(config: Config, work: Any) -> Any:
    import asyncio

    from sqlalchemy import inspect

    from trading_ops.ops.maintenance import with_maintenance

    async def go() -> Any:
        maintenance, session, engine = await with_maintenance(config)
        try:
            tables = await asyncio.to_thread(lambda: set(inspect(engine).get_table_names()))
            if "ops_maintenance_windows" not in tables:
                raise ConfigError(
                    "database.url", "the maintenance tables are missing: run `trading-ops db upgrade` first"
                )
            return await work(maintenance)
        finally:
            await session.close()
            engine.dispose()

    return asyncio.run(go())


def _fail(message: str) -> int:
    print(f"trading-ops: maintenance: {message}", file=sys.stderr)
    return EXIT_FAILURE


def _describe(w: MaintenanceWindow) -> str:
    paused = json.loads(w.paused_bots)
    return (
        f"window {w.id} [{w.state}] {w.matchers} {w.starts_at:%Y-%m-%d %H:%M:%S}Z -> {w.ends_at:%Y-%m-%d %H:%M:%S}Z "
        f"silence {w.silence_id or 'none'}; paused {', '.join(paused) or 'none'}; by {w.created_by}: {w.reason}"
    )


def maintenance_start(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.clients.reconciler import ask
    from trading_ops.ops.maintenance import MAX_DURATION_SECONDS, MaintenanceError, parse_matchers

    try:
        seconds = parse_duration(args.duration)
        matchers = parse_matchers(args.matcher)
    except (ValueError, MaintenanceError) as exc:
        raise UsageError(f"maintenance start: {exc}") from exc
    if not 0 < seconds <= MAX_DURATION_SECONDS:
        raise UsageError(
            f"maintenance start: duration must be more than 0s and at most {MAX_DURATION_SECONDS / 86400:g}d"
        )
    reason = " ".join(args.reason.split())
    if not reason:
        raise UsageError("maintenance start: --reason must not be empty")
    body = {"duration": args.duration, "reason": reason, "matchers": matchers}
    answer = ask(config, args, "maintenance", "POST", "/api/v1/maintenance", body)
    if answer is None:
        return EXIT_FAILURE
    w = answer["window"]
    ends = _hms(w["ends_at"])
    if answer["problems"]:
        # One line: what was done, and what was not (recorded on the window, see `maintenance status`).
        return _fail(f"window {w['id']} recorded until {ends[11:]}Z, but: " + "; ".join(answer["problems"]))
    print(f"maintenance window {w['id']} open until {ends}Z: " + "; ".join(answer["done"] or ["no bots matched"]))
    return EXIT_OK


def _hms(iso: str) -> str:
    """An answer's UTC timestamp as the CLI prints one (YYYY-mm-dd HH:MM:SS)."""
    from datetime import UTC, datetime

    return f"{datetime.fromisoformat(iso).astimezone(UTC):%Y-%m-%d %H:%M:%S}"


def maintenance_end(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.clients.reconciler import ask

    window_id = args.id
    if window_id is None:
        listed = ask(config, args, "maintenance", "GET", "/api/v1/maintenance?open=1&limit=200")
        if listed is None:
            return EXIT_FAILURE
        open_windows = [w for w in listed["windows"] if w["state"] == "active"]
        if len(open_windows) != 1:
            ids = ", ".join(str(w["id"]) for w in open_windows)
            return _fail(
                "no open maintenance window" if not open_windows else f"several windows are open ({ids}): give --id"
            )
        window_id = open_windows[0]["id"]
    elif window_id < 1:
        raise UsageError("maintenance end: --id must be a window's number (1 or more)")
    answer = ask(config, args, "maintenance", "POST", f"/api/v1/maintenance/{window_id}/end")
    if answer is None:
        return EXIT_FAILURE
    if answer["problems"]:
        return _fail(f"window {window_id} ended, but: " + "; ".join(answer["problems"]))
    print(f"maintenance window {window_id} ended: " + "; ".join(answer["done"] or ["nothing to undo"]))
    return EXIT_OK


def maintenance_status(args: argparse.Namespace, config: Config) -> int:
    import asyncio

    from trading_ops.db.base import utcnow

    async def work(m: Any) -> list[str]:
        lines = []
        for w in await asyncio.to_thread(m.windows, open_only=True):
            left = (w.ends_at - utcnow()).total_seconds()
            lines.append(
                _describe(w)
                + f"; silence state {await m.silence_state(w)}; "
                + (f"{left / 60:.0f} min left" if left > 0 else "past its end")
            )
            lines += [f"  problem: {p}" for p in w.problems.splitlines()]
        return lines

    lines = _run(config, work)
    print("\n".join(lines) if lines else "no open maintenance window")
    return EXIT_OK


def maintenance_list(args: argparse.Namespace, config: Config) -> int:
    import asyncio

    lines = _run(
        config,
        lambda m: asyncio.to_thread(
            lambda: [_describe(w) for w in m.windows(open_only=False, limit=max(1, args.limit))]
        ),
    )
    print("\n".join(lines) if lines else "no maintenance windows recorded")
    return EXIT_OK


# ---- report --------------------------------------------------------------------------------------------------


def report_day(config: Config, text: str | None, command: str) -> date:
    """The day of --date, or the last report day that ended; UsageError naming `command` for a bad date."""
    from trading_ops.cron import CronSchedule
    from trading_ops.db.base import utcnow
    from trading_ops.ops import report

    if text:
        try:
            day = date.fromisoformat(text)
        except ValueError as exc:
            raise UsageError(f"report {command}: --date: expected YYYY-MM-DD, got {text[:40]!r}") from exc
        if not 1970 <= day.year <= 9000:
            raise UsageError(f"report {command}: --date: {text} is out of range")
        return day
    slot = CronSchedule.parse(report.cron_of(config.report), config.report.time_zone).latest_at_or_before(utcnow())
    return report.day_of_slot(config.report, slot)


def report_daily(args: argparse.Namespace, config: Config) -> int:
    import asyncio

    from trading_ops.db.base import make_engine
    from trading_ops.ops import report

    day = report_day(config, args.date, "daily")
    engine = make_engine(config.database_url(), sqlite_synchronous=config.database.sqlite_synchronous)
    try:
        summary = report.build(config, engine, day)
    except report.ReportError as exc:
        print(f"trading-ops: report: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        engine.dispose()
    if not args.send:
        print(report.render_html(summary) if args.html else report.render_text(summary), end="")
        return EXIT_OK
    try:
        asyncio.run(report.send(config, summary))
    except report.ReportError as exc:
        print(f"trading-ops: report: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"daily summary for {day.isoformat()} sent")
    return EXIT_OK
