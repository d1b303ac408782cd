"""`trading-ops report weekly [--date D] [--send] [--html]`: the weekly review, a report of the `report` command
(trading_ops.ops.cli) that builds on the readiness criteria, so registered from here: ops never imports readiness."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from trading_ops.config import Config
from trading_ops.ops.cli import EXIT_FAILURE, EXIT_OK, report_day


def register(sub: Any) -> None:
    # The `report` command trading_ops.ops.cli registered before this module (trading_ops.cli.COMMAND_MODULES).
    report = sub.choices["report"]
    reports = next(a for a in report._actions if isinstance(a, argparse._SubParsersAction))
    weekly = reports.add_parser(
        "weekly", help="print (or send) the weekly review: each bot's week against the readiness criteria"
    )
    weekly.add_argument(
        "--date", default=None, help="the week's last day, YYYY-MM-DD (default: the last day that ended)"
    )
    weekly.add_argument("--send", action="store_true", help="send it through notifications.urls instead of printing")
    weekly.add_argument("--html", action="store_true", help="print the HTML version")
    weekly.set_defaults(handler=report_weekly)


def report_weekly(args: argparse.Namespace, config: Config) -> int:
    import asyncio
    import time

    from trading_ops.db.base import make_engine
    from trading_ops.ops.report import ReportError
    from trading_ops.readiness import weekly

    last_day = report_day(config, args.date, "weekly")
    engine = make_engine(config.database_url(), sqlite_synchronous=config.database.sqlite_synchronous)
    started = time.perf_counter()
    try:
        review = asyncio.run(weekly.build(config, engine, last_day))
    finally:
        engine.dispose()
    took = time.perf_counter() - started
    if not args.send:
        print(weekly.render_html(review) if args.html else weekly.render_text(review), end="")
        return EXIT_OK
    try:
        asyncio.run(weekly.send(config, review))
    except ReportError as exc:
        print(f"trading-ops: report: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(
        f"weekly review {review.days[0].isoformat()} to {last_day.isoformat()} sent "
        f"({len(review.bots)} bots, {review.queries} queries, built in {took:.2f} s)"
    )
    return EXIT_OK
