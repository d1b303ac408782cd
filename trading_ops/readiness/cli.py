"""`trading-ops readiness BOT... [--window 5d] [--json]`: may these paper bots go live? Exit 0 ready, 1 not."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trading_ops import logsetup
from trading_ops.cli import UsageError
from trading_ops.config import BotEntryConfig, Config

if TYPE_CHECKING:
    from trading_ops.readiness.verdict import Verdict

EXIT_READY, EXIT_NOT_READY = 0, 1


def register(sub: Any) -> None:
    rd = sub.add_parser(
        "readiness",
        help="the readiness verdict of paper bots: every criterion of the checklist with its value and threshold",
        description="Evaluate the checklist of docs/readiness.md for each BOT (a name of the bots: list): exit 0 when "
        "every one is ready, 1 when one is not ready or its data is missing (unknown), 2 on bad usage.",
    )
    rd.add_argument("bots", nargs="+", metavar="BOT", help="a bot's name (bots[].name)")
    rd.add_argument("--window", default=None, help="the Prometheus criteria's window (default: readiness.window)")
    rd.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    rd.add_argument(
        "--stop-drill",
        action="store_true",
        help="instead, exercise the emergency stop on one active paper bot: halt, flatten, wait until flat, clear the "
        "halt, resume (what the emergency_stop criterion counts); refused on a bot halted, paused or reduce-only, or "
        "with an approval pending",
    )
    rd.add_argument(
        "--record",
        action="store_true",
        help="also record each verdict in the ledger (the reconciler's database), attributed and timestamped: what a "
        "live start of the bot requires to be ready (docs/readiness.md, paper to live)",
    )
    rd.add_argument("--by", metavar="NAME", default=None, help="with --record: who records (default: your login name)")
    rd.add_argument(
        "--approved-by",
        metavar="NAME",
        default=None,
        help="with --record: a person approves the live start whatever the verdict (attributed, with --reason)",
    )
    rd.add_argument("--reason", default="", help="with --approved-by: why")
    rd.add_argument(
        "--decision-out",
        metavar="FILE",
        default=None,
        help="with --record and one bot: also write the live_start decision the reconciler's key "
        "(reconciler.decision_key_file) signs for the record to FILE, what the bot's bot.live_start_decision_file "
        "names: a live start needs it (docs/readiness.md, paper to live)",
    )
    rd.set_defaults(handler=readiness)


def default_by() -> str:
    """The login name of who runs the command, what a record is attributed to without --by."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def resolve_bots(config: Config, names: list[str]) -> list[BotEntryConfig]:
    """The bots named, in order; UsageError naming an unknown one."""
    known = {b.name: b for b in config.bots}
    chosen = []
    for name in names:
        if name not in known:
            listed = ", ".join(sorted(known)) or "none: the configuration has no bots: list"
            raise UsageError(f"readiness: unknown bot {name[:64]!r} (known: {listed}){stack_hint(config)}")
        if known[name] not in chosen:
            chosen.append(known[name])
    return chosen


def stack_hint(config: Config) -> str:
    """For a configuration without bots, where the local stack's is (what `trading-ops up` writes, with its bots and
    its Prometheus): `up` runs on `trading-ops.yaml`, the commands of docs/readiness.md on the stack's copy."""
    from pathlib import Path

    from trading_ops.config import STACK_STATE_DIR as DEFAULT_STATE_DIR

    if config.bots:
        return ""
    for base in (Path.cwd(), config.base_dir):
        stack = base / DEFAULT_STATE_DIR / "trading-ops.yaml"
        if stack.is_file():
            shown = stack if base != Path.cwd() else Path(DEFAULT_STATE_DIR) / "trading-ops.yaml"
            return f"; the local stack's configuration, with its bots, is {shown}: pass --config {shown}"
    return ""


def resolve_window(text: str, given: str = "--window") -> float:
    """The window in seconds; UsageError for a bad duration or one too short to judge, naming where it came from
    (`given`: the option, or the configuration's key)."""
    from trading_ops.readiness.criteria import parse_window

    try:
        return parse_window(text)
    except ValueError as exc:
        raise UsageError(f"readiness: {given}: {exc}") from None


def readiness(args: argparse.Namespace, config: Config) -> int:
    import asyncio

    bots = resolve_bots(config, args.bots)
    if args.approved_by is not None:
        if not args.record:
            raise UsageError("readiness: --approved-by goes with --record")
        if not args.approved_by.strip() or not args.reason.strip():
            raise UsageError("readiness: --approved-by needs a person's name and --reason")
    if args.by is not None and (not args.record or not args.by.strip()):
        raise UsageError("readiness: --by NAME goes with --record")
    if args.decision_out is not None:
        live_start_signer(config, args, bots)
    if args.stop_drill:
        return stop_drill(config, bots)
    if args.record:
        unmigrated = ledger_schema_problem(config)
        if unmigrated is not None:
            raise UsageError(f"readiness: --record: {unmigrated}")
    window_text = args.window or config.readiness.window
    # What a refusal names: what the user gave, the option or (without it) the configuration's default.
    given = "--window" if args.window else "readiness.window"
    seconds = resolve_window(window_text, given)
    verdicts = asyncio.run(run(config, bots, seconds, window_text, given))
    if args.json:
        json.dump([v.to_dict() for v in verdicts], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print("\n\n".join(v.text() for v in verdicts))
    by = args.by or default_by()
    if args.record and record(config, verdicts, args.approved_by, args.reason, by, args.decision_out) != EXIT_READY:
        return EXIT_NOT_READY
    return EXIT_READY if all(v.verdict == "ready" for v in verdicts) else EXIT_NOT_READY


def live_start_signer(config: Config, args: argparse.Namespace, bots: list[BotEntryConfig]) -> None:
    """UsageError (one line) when `--decision-out` cannot be honoured: not with --record and one bot, no person's
    approval other than the recorder, or no signing key in this configuration."""
    from trading_ops.decisions import config_signer

    if not args.record or len(bots) != 1:
        raise UsageError("readiness: --decision-out FILE goes with --record and one bot")
    recorder = (args.by or default_by()).strip()
    required = config.reconciler.approvals.live_start
    if required > 1:
        raise UsageError(
            f"readiness: --decision-out: a live start needs {required} approvers other than its requester "
            "(reconciler.approvals.live_start); --record takes one"
        )
    if required == 1 and (args.approved_by is None or args.approved_by.strip() == recorder):
        raise UsageError(
            "readiness: --decision-out: a live start is approved by a person other than who records it "
            f"(--approved-by NAME, not {recorder})"
        )
    if config_signer(config) is None:
        raise UsageError("readiness: --decision-out: no key to sign with (reconciler.decision_key_file)")


def write_live_start_decision(config: Config, row: Any, path: str) -> None:
    """Sign the live_start decision of record `row` (its recorder asked, its approver approved) into `path`."""
    from trading_ops.decisions import config_signer
    from trading_ops.durations import parse_duration

    key = config_signer(config)
    assert key is not None  # live_start_signer checked
    decision, token = key.issue(
        "live_start",
        row.bot,
        requested_by=row.recorded_by,
        approvers=[row.approved_by or row.recorded_by],
        required=config.reconciler.approvals.live_start,
        ttl_seconds=parse_duration(config.reconciler.live_start_decision_ttl),
        record=row.id,
    )
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(token + "\n", encoding="utf-8")
    os.replace(tmp, target)
    until = datetime.fromtimestamp(decision.expires_at, UTC)
    print(f"{row.bot}: {decision.summary()}, until {until:%Y-%m-%d %H:%M} UTC, written to {target}", file=sys.stderr)


def record(
    config: Config,
    verdicts: list[Verdict],
    approved_by: str | None,
    reason: str,
    by: str,
    decision_out: str | None = None,
) -> int:
    """Write each verdict to the ledger, where a live start of the bot reads it (trading_ops.bot.live_gate): attributed
    to `by`, timestamped; with `decision_out`, the live_start decision signed for the record there. Exit 1 (one line)
    when the ledger cannot take them or the file cannot be written."""
    from trading_ops.db import readiness_records as records
    from trading_ops.db.base import make_engine

    engine = make_engine(config.database_url(), sqlite_synchronous=config.database.sqlite_synchronous)
    try:
        for v in verdicts:
            row = records.write(
                engine,
                bot=v.bot,
                instance=v.instance,
                verdict=v.verdict,
                window=v.window,
                failing=v.failing,
                missing=v.missing,
                recorded_by=by,
                approved_by=approved_by,
                reason=reason if approved_by is not None else "",
            )
            approved = f", approved by {json.dumps(row.approved_by)}" if row.approved_by else ""
            print(
                f"{v.bot}: recorded {v.verdict}{approved} in the ledger (record {row.id}, by {row.recorded_by}, "
                f"{row.recorded_at:%Y-%m-%d %H:%M:%S} UTC)",
                file=sys.stderr,
            )
            if decision_out is not None:
                write_live_start_decision(config, row, decision_out)
    except records.LedgerUnreachable as exc:
        logsetup.report(f"trading-ops: readiness: --record: {exc}")
        return EXIT_NOT_READY
    except OSError as exc:
        logsetup.report(f"trading-ops: readiness: --decision-out: cannot write {decision_out}: {exc.strerror}")
        return EXIT_NOT_READY
    finally:
        engine.dispose()
    return EXIT_READY


def stop_drill(config: Config, bots: list[BotEntryConfig]) -> int:
    """`--stop-drill`: the emergency stop on one paper bot, each step printed; exit 1 when a step failed."""
    import asyncio

    from trading_ops.readiness.stop_drill import DrillFailed, DrillRefused, run_drill

    if len(bots) != 1:
        raise UsageError("readiness: --stop-drill: name one bot")
    bot = bots[0]
    if bot.kind != "paper":
        raise UsageError(f"readiness: --stop-drill: runs on a paper bot only; {bot.name} is of kind {bot.kind}")
    try:
        steps = asyncio.run(run_drill(config, bot))
    except DrillFailed as exc:
        logsetup.report(f"trading-ops: readiness: stop drill of {bot.name} failed at {exc}")
        return EXIT_NOT_READY
    except DrillRefused as exc:
        logsetup.report(f"trading-ops: readiness: stop drill of {bot.name} refused, nothing changed: {exc}")
        return EXIT_NOT_READY
    for step in steps:
        print(f"{bot.name}: {step}")
    print(f"{bot.name}: emergency stop exercised")
    return EXIT_READY


async def run(
    config: Config, bots: list[BotEntryConfig], seconds: float, window_text: str, given: str = "--window"
) -> list[Verdict]:
    """The verdicts, the window first checked against Prometheus's retention (when Prometheus answers); a refusal
    names the window as `given` (the option, or the configuration's key)."""
    import aiohttp

    from trading_ops.clients.alertmanager import AlertmanagerClient
    from trading_ops.clients.prometheus import PrometheusClient, PrometheusError
    from trading_ops.durations import format_duration
    from trading_ops.readiness.criteria import retention_problem
    from trading_ops.readiness.verdict import evaluate

    async with aiohttp.ClientSession() as session:
        prometheus = PrometheusClient(session, config.reconciler.prometheus_urls)
        try:
            retention = await prometheus.retention_seconds()
        except PrometheusError:
            retention = None  # every Prometheus criterion says so: the verdict is unknown
        problem = retention_problem(seconds, window_text, retention)
        if problem is not None:
            raise UsageError(f"readiness: {given} {problem}")
        alertmanager = AlertmanagerClient(session, config.reconciler.alertmanager_urls)
        verdicts = await evaluate(config, bots, format_duration(seconds), prometheus, alertmanager)
    for verdict in verdicts:
        verdict.queries += 1  # the retention
    return verdicts


def ledger_schema_problem(config: Config) -> str | None:
    """Before anything is judged: why the ledger cannot hold a record (never migrated, or behind this version: run
    `trading-ops db upgrade`), as one line; None when it can, or when the database does not answer (`record` says so
    after the verdict)."""
    from sqlalchemy.exc import SQLAlchemyError

    from trading_ops.db.base import make_engine
    from trading_ops.db.revisions import schema_problem

    engine = make_engine(config.database_url(), sqlite_synchronous=config.database.sqlite_synchronous)
    try:
        return schema_problem(engine)
    except SQLAlchemyError:
        return None
    finally:
        engine.dispose()
