"""`trading-ops up`: the local stack (paper bot, reconciler, Prometheus, Alertmanager) as child processes."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import Any

from trading_ops.cli import UsageError
from trading_ops.config import Config
from trading_ops.stack.layout import BASE_PORT_ORDER, DEFAULT_PORTS, DEFAULT_STATE_DIR, Ports
from trading_ops.stack.profiles import FAST, PROFILES, STANDARD

DEFAULT_READY_TIMEOUT = 60.0

DESCRIPTION = """\
Start the paper bot (paper-bot --chaos), the reconciler (with the configured playbook, by default the packaged
one), Prometheus and Alertmanager (Debian binaries) with the repo's prometheus/ and alertmanager/ configurations
adapted to local ports and to files under the state directory; wait until each is healthy; print the URLs and a
live status line (alerts firing, open episodes, last action). Ctrl-C or SIGTERM stops them all (SIGTERM, then
SIGKILL after a deadline). A missing Prometheus or Alertmanager binary is reported with how to install it and the
rest starts. Everything listens on 127.0.0.1.

The bot and the reconciler run with a generated copy of --config (STATE_DIR/trading-ops.yaml: the stack's ports,
token files var/secrets/control-token, var/secrets/reconciler-token and var/secrets/reconciler-read-token (the
episode API's, which the status line reads with), created when missing, and the local Prometheus and
Alertmanager). In alertmanager.yml the reconciler webhook points at the local reconciler with its
token as credentials_file; the other receivers (pager, chat, dead-man) stay in the routing tree but notify nobody,
as they need accounts and the internet: their alerts are visible in the Alertmanager UI.
"""

PROFILE_INDENT = " " * 18
EPILOG = f"""\
profiles:
{textwrap.fill(FAST.summary, 110, initial_indent="  fast (default)  ", subsequent_indent=PROFILE_INDENT)}
{textwrap.fill(STANDARD.summary, 110, initial_indent="  standard        ", subsequent_indent=PROFILE_INDENT)}

ports: --base-port N puts the bot, the reconciler, Prometheus and Alertmanager on N, N+1, N+2, N+3
(default {", ".join(f"{name} {DEFAULT_PORTS[name]}" for name in BASE_PORT_ORDER)}).

If the bot dies (e.g. `trading-ops chaos crash`), the rest keeps running so its alert, the reconciler's attempt
and the escalation can be watched; if Prometheus, Alertmanager or the reconciler dies, everything stops.
exit status: 0 after Ctrl-C with every child stopped on SIGTERM, 1 if a child failed (to start, to become
healthy, during the run, or to stop on SIGTERM), 2 for bad usage or configuration.
"""


def register(sub: Any) -> None:
    up = sub.add_parser(
        "up",
        help="run the local stack: paper bot, reconciler, Prometheus and Alertmanager",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.add_argument("--profile", choices=sorted(PROFILES), default=FAST.name, help="timing profile (default: fast)")
    up.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help=f"generated configurations, server data and logs (default: ./{DEFAULT_STATE_DIR})",
    )
    up.add_argument(
        "--repo",
        default=None,
        metavar="DIR",
        help="directory with prometheus/ and alertmanager/ (default: the current directory, else the checkout "
        "trading_ops runs from)",
    )
    up.add_argument("--base-port", type=int, default=None, metavar="N", help="ports N..N+3 (see below)")
    for name in BASE_PORT_ORDER:
        up.add_argument(
            f"--{name}-port",
            type=int,
            default=None,
            metavar="PORT",
            help=f"port of the {name} (default {DEFAULT_PORTS[name]})",
        )
    up.add_argument(
        "--node-exporter",
        default=None,
        metavar="HOST:PORT",
        help="node exporter to scrape (default: 127.0.0.1:9100 when one answers there; else the job is left out)",
    )
    up.add_argument(
        "--ready-timeout",
        type=float,
        default=DEFAULT_READY_TIMEOUT,
        metavar="SECONDS",
        help=f"how long each child may take to become healthy (default {DEFAULT_READY_TIMEOUT:g})",
    )
    up.add_argument(
        "--status-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="status refresh (default 1 on a terminal, 2 otherwise)",
    )
    up.add_argument(
        "--bot",
        default="paper",
        metavar="KIND",
        help="the bot to run: paper (default: the paper bot with --chaos) or a kind of bot_kinds: in the "
        "configuration (KIND -> its command line; {python} and {config} are filled in)",
    )
    up.set_defaults(handler=handle)


def handle(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.stack.up import UpOptions, UsageProblem, run  # the stack's dependencies only when it runs

    if args.ready_timeout <= 0 or (args.status_interval is not None and args.status_interval <= 0):
        raise UsageError("--ready-timeout and --status-interval must be positive")
    options = UpOptions(
        state_dir=Path(args.state_dir),
        repo=args.repo,
        ports=Ports.choose(args.base_port, **{name: getattr(args, f"{name}_port") for name in BASE_PORT_ORDER}),
        profile=PROFILES[args.profile],
        ready_timeout=args.ready_timeout,
        status_interval=args.status_interval,
        node_exporter=args.node_exporter,
        config_path=args.config,
        log_level=args.log_level,
        bot_kind=args.bot,
    )
    try:
        return run(options)
    except UsageProblem as exc:
        raise UsageError(f"up: {exc}") from exc
