"""`trading-ops rules render`: write the rule files from the rule pack's templates and values."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from trading_ops import logsetup
from trading_ops.cli import EXIT_FAILURE, UsageError
from trading_ops.config import Config

DEFAULT_OUTPUT = Path("prometheus") / "rules"
# Where the local stack (`trading-ops up`, its default state directory var/stack) keeps the rule copies its Prometheus
# reads.
LOCAL_STACK_RULES = Path("var") / "stack" / "prometheus" / "rules"


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "rules",
        help="the Prometheus rule pack: render its rule files from your thresholds",
        description="The alerting and recording rules of prometheus/rules/ are rendered from templates and one file "
        "of values (thresholds, for: durations, selectors, runbook links; docs/monitoring.md).",
    )
    inner = parser.add_subparsers(dest="rules_command", metavar="ACTION", required=True)
    render = inner.add_parser(
        "render",
        help="write the rule files from the defaults and your values file",
        description="Write every rule file into --output from the rule pack's defaults with the keys of --values "
        "over them. Bad values (an unknown key, a wrong type, a selector that is not PromQL) write nothing.",
    )
    render.add_argument(
        "--values", type=Path, default=None, metavar="FILE", help="YAML with the keys to change (default: none)"
    )
    render.add_argument(
        "--output",
        "-o",
        type=Path,
        default=DEFAULT_OUTPUT,
        metavar="DIR",
        help=f"where to write the rule files (default: {DEFAULT_OUTPUT})",
    )
    render.set_defaults(handler=render_rules, without_config=True)


def render_rules(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.rulepack.render import RulePackError, load_values, render, write

    try:
        rendered = render(load_values(args.values))
    except RulePackError as exc:
        raise UsageError(f"rules render: {exc}") from exc
    try:
        written = write(rendered, args.output)
    except RulePackError as exc:
        logsetup.report(f"trading-ops: rules render: {exc}")
        return EXIT_FAILURE
    except OSError as exc:
        logsetup.report(f"trading-ops: rules render: cannot write {args.output}: {exc.strerror or exc}")
        return EXIT_FAILURE
    print(f"wrote {len(written)} rule files to {args.output}")
    stack_rules = LOCAL_STACK_RULES
    if stack_rules.is_dir() and stack_rules.resolve() != Path(args.output).resolve():
        # `up` copies the rules at its start (its profile shortens their `for:`): a reload alone keeps the old copies.
        print(
            f"the local stack (`make run`, `trading-ops up`) reads its own copies in {stack_rules}/, written when it "
            "starts: restart it (Ctrl-C, then make run) for these rules to reach its Prometheus"
        )
    return 0
