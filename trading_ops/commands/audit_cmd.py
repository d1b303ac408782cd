"""`trading-ops audit`: the audit chain of every decision, newest first (--json as GET /api/v1/audit), and
`trading-ops audit verify`: walk the whole chain (exit 0 whole; 1 naming the first edited or deleted entry)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from trading_ops.cli import EXIT_FAILURE, EXIT_OK
from trading_ops.config import Config

DEFAULT_LIMIT = 50


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text[:40]!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "audit",
        help="the audit chain of every decision (who, from where, when, what changed), newest first; "
        "`audit verify` checks it",
        description="List the audit chain's entries from the ledger, newest first: every approval, rejection, ramp "
        "request and other decision, with the principal that authenticated it, its source address, the state before "
        "and after, and the decision it answered. Each entry is hash-chained to the one before it: `trading-ops "
        "audit verify` shows an edited or a deleted entry.",
    )
    parser.add_argument("--limit", type=_positive, default=DEFAULT_LIMIT, help=f"how many (default: {DEFAULT_LIMIT})")
    parser.add_argument("--before", type=_positive, default=None, metavar="SEQ", help="only entries older than SEQ")
    parser.add_argument("--principal", default=None, help="only this principal's entries")
    parser.add_argument(
        "--target",
        default=None,
        help="only entries on this target (a bot of bots: by its name or its instance, as its approvals name it)",
    )
    parser.add_argument("--action", default=None, help="only this action (approve, reject, ramp_request, ...)")
    parser.add_argument("--json", action="store_true", help="print JSON (as GET /api/v1/audit)")
    parser.set_defaults(handler=list_entries)
    inner = parser.add_subparsers(dest="audit_command", metavar="ACTION")
    check = inner.add_parser(
        "verify",
        help="walk the whole chain: exit 0 when whole, 1 naming the first edited or deleted entry",
    )
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.set_defaults(handler=verify_chain)


def _engine(config: Config) -> Any:
    from trading_ops.db.base import make_engine

    return make_engine(config.database_url(), sqlite_synchronous=config.database.sqlite_synchronous)


def list_entries(args: argparse.Namespace, config: Config) -> int:
    from trading_ops import audit

    engine = _engine(config)
    try:
        found = audit.entries(
            engine,
            limit=args.limit,
            before_seq=args.before,
            principal=args.principal,
            target=None
            if args.target is None
            else audit.targets_of(((b.name, b.instance) for b in config.bots), args.target),
            action=args.action,
        )
        seq, digest = audit.head(engine)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps({"entries": [e.to_dict() for e in found], "head": {"seq": seq, "hash": digest}}, indent=2))
        return EXIT_OK
    if not found:
        print("no audit entries")
        return EXIT_OK
    for entry in found:
        print(entry.line())
    return EXIT_OK


def verify_chain(args: argparse.Namespace, config: Config) -> int:
    from trading_ops import audit

    engine = _engine(config)
    started = time.perf_counter()
    try:
        verdict = audit.verify(engine)
    finally:
        engine.dispose()
    seconds = time.perf_counter() - started
    if args.json:
        print(
            json.dumps(
                {
                    "whole": verdict.whole,
                    "checked": verdict.checked,
                    "head": {"seq": verdict.head_seq, "hash": verdict.head_hash},
                    "problem": verdict.problem,
                    "seq": verdict.seq,
                    "seconds": round(seconds, 3),
                },
                indent=2,
            )
        )
        return EXIT_OK if verdict.whole else EXIT_FAILURE
    if not verdict.whole:
        print(f"trading-ops: audit verify: {verdict.problem}", file=sys.stderr)
        return EXIT_FAILURE
    print(
        f"audit chain whole: {verdict.checked} entries, head {verdict.head_seq} {verdict.head_hash} ({seconds:.2f} s)"
    )
    return EXIT_OK
