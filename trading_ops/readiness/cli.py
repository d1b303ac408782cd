"""`trading-ops readiness BOT... [--window 5d] [--json]`: may these paper bots go live? Exit 0 ready, 1 not."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trading_ops import logsetup
from trading_ops.cli import UsageError
from trading_ops.clients.reconciler import add_token_options
from trading_ops.config import BotEntryConfig, Config

if TYPE_CHECKING:
    from trading_ops.readiness.verdict import Verdict

EXIT_READY, EXIT_NOT_READY = 0, 1
# Actions of this command written as a word where an option is meant (`readiness stop-drill BOT`, an older form some
# notes still give): the refusal of the "bot" says which option it is.
ACTIONS_AS_OPTIONS = {"stop-drill": "--stop-drill", "stop_drill": "--stop-drill", "record": "--record"}
# Longest reason of a live start request (what the reconciler takes).
REASON_MAX = 500


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
        help="instead, ask the reconciler with your own token (scope destructive) to exercise the emergency stop on "
        "one active paper bot: halt, flatten, wait until flat, clear the halt, resume (what the emergency_stop "
        "criterion counts; an audit entry under your token's name); refused on a bot halted, paused or reduce-only, or "
        "with an approval pending",
    )
    rd.add_argument(
        "--record",
        action="store_true",
        help="instead, ask the reconciler with your own token that each BOT go live (POST "
        "/api/v1/requests/live_start/BOT, with --reason): it records the request under your token's name with the "
        "bot's verdict; once reconciler.approvals.live_start other people approved it (trading-ops reconciler "
        "approve), it records the readiness record with those principals and signs the live_start decision for it",
    )
    rd.add_argument("--reason", default="", help="with --record: why the bot may go live (what approvers read)")
    rd.add_argument(
        "--decision-out",
        metavar="FILE",
        default=None,
        help="instead, fetch with your own token the live_start decision the reconciler signed for one BOT's approved "
        "request (GET /api/v1/requests/live_start/BOT) and write it to FILE, what the live bot's "
        "bot.live_start_decision_file names (docs/readiness.md, paper to live)",
    )
    add_token_options(rd)
    rd.set_defaults(handler=readiness)


def resolve_bots(config: Config, names: list[str]) -> list[BotEntryConfig]:
    """The bots named, in order; UsageError naming an unknown one."""
    known = {b.name: b for b in config.bots}
    chosen = []
    for name in names:
        if name not in known:
            listed = ", ".join(sorted(known)) or "none: the configuration has no bots: list"
            option = ACTIONS_AS_OPTIONS.get(name)
            hint = f"; {name} is an option: readiness BOT {option}" if option else stack_hint(config)
            raise UsageError(f"readiness: unknown bot {name[:64]!r} (known: {listed}){hint}")
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
    if args.record and args.decision_out is not None:
        raise UsageError(
            "readiness: --record asks for a live start, --decision-out fetches its decision: one at a time"
        )
    if args.reason and not args.record:
        raise UsageError("readiness: --reason goes with --record")
    if args.stop_drill:
        return stop_drill(config, args, bots)
    if args.record:
        return ask_live_start(config, args, bots)
    if args.decision_out is not None:
        return fetch_live_start_decision(config, args, bots)
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
    return EXIT_READY if all(v.verdict == "ready" for v in verdicts) else EXIT_NOT_READY


def ask_live_start(config: Config, args: argparse.Namespace, bots: list[BotEntryConfig]) -> int:
    """`--record`: ask the reconciler that each bot go live, with the person's own token; exit 0 when every request
    was taken (each printed as JSON), 1 when one was refused or no reconciler answered (one line each)."""
    from trading_ops.clients.reconciler import Unreachable, call, person_token, reconciler_url

    reason = " ".join(args.reason.split())
    if not reason or len(reason) > REASON_MAX:
        raise UsageError(f"readiness: --record needs --reason, a text of {REASON_MAX} characters at most")
    token = person_token(args, "readiness")
    base = reconciler_url(config, args.url)
    code = EXIT_READY
    for bot in bots:
        body = {"reason": reason, **({"window": args.window} if args.window else {})}
        try:
            status, answer = call("POST", f"{base}/api/v1/requests/live_start/{bot.name}", token, body)
        except Unreachable as exc:
            logsetup.report(f"trading-ops: readiness: --record: {exc}")
            return EXIT_NOT_READY
        if status != 200:
            logsetup.report(f"trading-ops: readiness: --record: {answer.get('error') or f'HTTP {status}'}")
            code = EXIT_NOT_READY
            continue
        print(json.dumps(answer))
        print(
            f"{bot.name}: live start asked by {answer.get('requested_by')} (request {answer.get('request')}, verdict "
            f"{answer.get('verdict')}): {answer.get('required')} other person(s) approve it with trading-ops "
            "reconciler approve and their own token; then fetch its decision with --decision-out FILE",
            file=sys.stderr,
        )
    return code


def fetch_live_start_decision(config: Config, args: argparse.Namespace, bots: list[BotEntryConfig]) -> int:
    """`--decision-out FILE`: the live_start decision signed for the bot's approved request, written to FILE; exit 1
    (one line) when there is none yet or the file cannot be written."""
    from trading_ops.clients.reconciler import Unreachable, call, person_token, reconciler_url

    if len(bots) != 1:
        raise UsageError("readiness: --decision-out FILE goes with one bot")
    (bot,) = bots
    token = person_token(args, "readiness")
    try:
        status, answer = call("GET", f"{reconciler_url(config, args.url)}/api/v1/requests/live_start/{bot.name}", token)
    except Unreachable as exc:
        logsetup.report(f"trading-ops: readiness: --decision-out: {exc}")
        return EXIT_NOT_READY
    if status != 200 or not isinstance(answer.get("decision"), str):
        logsetup.report(f"trading-ops: readiness: --decision-out: {answer.get('error') or f'HTTP {status}'}")
        return EXIT_NOT_READY
    target = Path(args.decision_out)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        tmp.write_text(answer["decision"] + "\n", encoding="utf-8")
        os.replace(tmp, target)
    except OSError as exc:
        logsetup.report(f"trading-ops: readiness: --decision-out: cannot write {target}: {exc.strerror}")
        return EXIT_NOT_READY
    record = answer.get("record") or {}
    print(
        f"{bot.name}: the live_start decision for readiness record {record.get('id')} ({record.get('verdict')}, asked "
        f"by {record.get('recorded_by')}, approved by {record.get('approved_by')}) written to {target}",
        file=sys.stderr,
    )
    return EXIT_READY


def stop_drill(config: Config, args: argparse.Namespace, bots: list[BotEntryConfig]) -> int:
    """`--stop-drill`: the reconciler runs the emergency stop on one paper bot (POST /api/v1/bots/BOT/stop_drill) for
    the person's own token (scope destructive), which its audit entry names; each step printed; exit 1 when it was
    refused, a step failed or no reconciler answered."""
    from trading_ops.clients.reconciler import ask

    if len(bots) != 1:
        raise UsageError("readiness: --stop-drill: name one bot")
    bot = bots[0]
    if bot.kind != "paper":
        raise UsageError(f"readiness: --stop-drill: runs on a paper bot only; {bot.name} is of kind {bot.kind}")
    answer = ask(config, args, "readiness", "POST", f"/api/v1/bots/{bot.name}/stop_drill")
    if answer is None:
        return EXIT_NOT_READY
    for step in answer.get("steps") or []:
        print(f"{bot.name}: {step}")
    print(f"{bot.name}: emergency stop exercised (by {answer.get('by')})")
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
