"""`trading-ops up`: the local stack (paper bot, reconciler, Prometheus, Alertmanager) as child processes."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any

from trading_ops.cli import UsageError
from trading_ops.config import Config
from trading_ops.stack.layout import (
    BASE_PORT_ORDER,
    DEFAULT_PORTS,
    DEFAULT_STATE_DIR,
    FLEET_START_SECONDS,
    FREQTRADE_PORTS,
    MAX_BOTS,
    PAIR_PORTS,
    PORT_ORDER,
    Ports,
    port_option,
)
from trading_ops.stack.profiles import FAST, FLOOR, PROFILES, STANDARD, Profile
from trading_ops.stack.stackctl import (
    DEFAULT_TIMEOUT_SECONDS,
    SHOW_PROPERTIES,
    VERBS,
    call,
    format_show,
    format_status,
)

DEFAULT_READY_TIMEOUT = 60.0

STACKCTL_DESCRIPTION = """\
Talk to a running `trading-ops up` the way systemctl talks to systemd. `up` runs each child as production's
systemd unit would: the bot as Type=notify with a watchdog (a hung trading loop stops its pings and is killed
with SIGABRT), every child restarted on failure after RestartSec, and a crash loop stopped by the start limit
(the unit stays failed until `stackctl reset-failed`). The reconciler's systemd steps call `stackctl restart`
in the local stack, so the packaged playbook restarts the bot there as systemctl does in production.
exit status: 0 done, 1 the verb failed (one line says why), 2 bad usage.
"""

DESCRIPTION = """\
Start the paper bot (paper-bot --chaos; with --bot ccxt-gateway, the example ccxt bot and the paper gateway it
trades on), the reconciler (with the configured playbook, by default the packaged one), Prometheus and
Alertmanager (Debian binaries) with the repo's prometheus/ and alertmanager/ configurations adapted to local
ports and to files under the state directory; wait until each is healthy; print the URLs and a live status line
(alerts firing, open episodes, last action). Ctrl-C or SIGTERM stops them all (SIGTERM, then SIGKILL after a
deadline). A missing Prometheus or Alertmanager binary is reported with how to install it and the rest starts.
Everything listens on 127.0.0.1.

The bot and the reconciler run with a generated copy of --config (STATE_DIR/trading-ops.yaml: the stack's ports,
token files var/secrets/control-token, var/secrets/reconciler-token and var/secrets/reconciler-read-token (the
episode API's, which the status line reads with), created when missing, and the local Prometheus and
Alertmanager; for ccxt-gateway also the gateway and the bot's ccxt section, with the gateway's key, secret and
fault token generated into var/secrets/gateway-*). In alertmanager.yml the reconciler webhook points at the local
reconciler with its token as credentials_file; the other receivers (pager, chat, dead-man) stay in the routing
tree but notify nobody, as they need accounts and the internet: their alerts are visible in the Alertmanager UI.
"""

PROFILE_INDENT = " " * 18
# The port options of the clustered Alertmanager pair (`--alertmanagers 2`), as --help names them.
PORT_HELP = {
    "alertmanager_gossip": "the alertmanager's gossip, TCP and UDP (--alertmanagers 2 only)",
    "alertmanager_2": "the second Alertmanager, alertmanager-2 (--alertmanagers 2 only)",
    "alertmanager_2_gossip": "alertmanager-2's gossip, TCP and UDP (--alertmanagers 2 only)",
    "freqtrade": "freqtrade's REST API (--bot freqtrade only; its sidecar serves the bot port)",
}
FLEET_PORT = max(DEFAULT_PORTS.values()) + 1  # where a fleet's bots start with the default ports


def _profile_help(profile: Profile, label: str) -> str:
    """A profile's summary in the epilog, after its label (a flag is never cut at its hyphens)."""
    return textwrap.fill(
        profile.summary, 110, initial_indent=label, subsequent_indent=PROFILE_INDENT, break_on_hyphens=False
    )


PAIR_HELP = textwrap.fill(
    "a clustered Alertmanager pair: --alertmanagers 2 runs two prometheus-alertmanager children gossiping with each "
    "other as production's HA pair does: alertmanager and alertmanager-2, each with its own port, storage "
    "(STATE_DIR/alertmanager*/data), log and gossip port (TCP and UDP), the other's gossip port as its peer. By "
    "default Alertmanager's own convention (gossip right after HTTP): alertmanager "
    f"{DEFAULT_PORTS['alertmanager']} and its gossip {PAIR_PORTS['alertmanager_gossip']} (--alertmanager-gossip-port), "
    f"alertmanager-2 {PAIR_PORTS['alertmanager_2']} (--alertmanager-2-port) and its gossip "
    f"{PAIR_PORTS['alertmanager_2_gossip']} (--alertmanager-2-gossip-port); with --base-port N: N+3 and N+5, N+6 and "
    "N+7 (a fleet's bots then start at N+8). Prometheus sends every alert to both and scrapes both; the reconciler "
    "posts escalations and silences to both (alertmanager_url, alertmanager_peers) and reads from the first that "
    "answers; the status line reads every member that answers. A member that dies (kill -9 included) is restarted "
    "and rejoins the cluster; one that gives up (its start limit hit) leaves the stack running on the other. Without "
    "--alertmanagers 2 the one Alertmanager gossips with nobody and these ports are not used.",
    116,
    break_on_hyphens=False,
)
EPILOG = f"""\
profiles:
{_profile_help(FAST, "  fast (default)  ")}
{_profile_help(STANDARD, "  standard        ")}
{_profile_help(FLOOR, "  floor           ")}

ports: --base-port N puts the bot, the reconciler, Prometheus, Alertmanager and the gateway (--bot ccxt-gateway only)
on N, N+1, N+2, N+3, N+4 (default {", ".join(f"{name} {DEFAULT_PORTS[name]}" for name in BASE_PORT_ORDER)}).

{PAIR_HELP}

a fleet: --bot ccxt-gateway --bots N runs N example bots (at most {MAX_BOTS}) on the one paper gateway, named ccxt-1 ..
ccxt-N (NAME-1 .. with bot.name NAME or NAME-1), each a child of its own (unit trading-ops-bot@ccxt-I.service)
with its own configuration file (STATE_DIR/bots/ccxt-I.yaml), data dir (bot.data_dir/ccxt-I) and account on the
gateway: ccxt-1 on the venue's main account (var/secrets/gateway-api-key), every other one on a sub-account of its
own, its key and secret generated into var/secrets/gateway-ccxt-I-api-key and -api-secret. They listen on P ..
P+N-1, with --bots-base-port P (default: right after the stack's highest port, {FLEET_PORT} .. with the default ports,
N+5 .. with --base-port N). All are in the bots: list, so Prometheus scrapes every one and the reconciler acts on
every one; the status line counts them ("bots: 20 (20 active)"). `gateway-chaos outage seconds=60` takes the venue
down under all of them.

freqtrade: --bot freqtrade runs a real freqtrade (the `freqtrade` extra: pip install 'trading-ops[freqtrade]') trading
live on a paper-gateway child, with the packaged demo strategy TradingOpsDemo and a generated config
(STATE_DIR/freqtrade/config.json: exchange.ccxt_config points ccxt's kraken client at the gateway, its rate limiter
at 20 calls a second; its API on --freqtrade-port, N+8 with --base-port N), its secrets from var/secrets as
FREQTRADE__* environment variables; and its sidecar (`trading-ops freqtrade`, the `freqtrade:` section of the
generated configuration) on the bot port, reconciling on a gateway key of its own (var/secrets/gateway-sidecar-*).
Prometheus scrapes the sidecar in its freqtrade job; freqtrade runs as freqtrade.service, which the playbook's
freqtrade rules restart through stackctl. The banner prints the faults to try.

Each child runs as its production systemd unit says (read from the shipped unit files): restarted on failure, the
bot under its watchdog (a hung loop is killed and restarted), a crash loop stopped by the start limit. If the bot
(or the gateway) gives up, the rest keeps running so its alert, the reconciler's attempt and the escalation can be
watched; if Prometheus, Alertmanager (of a pair: both members) or the reconciler gives up, everything stops.
`trading-ops stackctl` is systemctl for the stack; the reconciler's systemd steps use it.
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
        "--fresh",
        action="store_true",
        help="start from empty state: remove the earlier runs' ledger and journal (SQLite), Prometheus's and "
        "Alertmanager's data and the paper venues' books before starting (default: keep them, and say so)",
    )
    up.add_argument(
        "--repo",
        default=None,
        metavar="DIR",
        help="directory with prometheus/ and alertmanager/ (default: the current directory, else the checkout "
        "trading_ops runs from)",
    )
    up.add_argument(
        "--base-port",
        type=int,
        default=None,
        metavar="N",
        help="ports N..N+4 (with --alertmanagers 2, N..N+7; see below)",
    )
    for name in PORT_ORDER:
        what = PORT_HELP.get(name, f"the {name}")
        up.add_argument(
            port_option(name),
            type=int,
            default=None,
            metavar="PORT",
            help=f"port of {what} (default {(DEFAULT_PORTS | PAIR_PORTS | FREQTRADE_PORTS)[name]})",
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
        help=f"how long each child may take to become healthy (default {DEFAULT_READY_TIMEOUT:g}; a fleet's bots, "
        f"starting together, {FLEET_START_SECONDS:g} s more per bot)",
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
        help="the bot to run: paper (default: the paper bot with --chaos); ccxt-gateway (examples/ccxt_bot.py trading "
        "through ccxt on a paper-gateway child with generated credentials; its faults: gateway-chaos); freqtrade (a "
        "real freqtrade, the `freqtrade` extra, on the paper gateway, watched by its `trading-ops freqtrade` sidecar "
        "on the bot port; see below); or a kind of "
        "bot_kinds: in the configuration (KIND -> its command line; {python} and {config} are filled in)",
    )
    up.add_argument(
        "--bots",
        type=int,
        default=1,
        metavar="N",
        help=f"how many bots (default 1; more than one, at most {MAX_BOTS}: --bot ccxt-gateway only, see below)",
    )
    up.add_argument(
        "--alertmanagers",
        type=int,
        default=1,
        metavar="N",
        help="1 (default: one Alertmanager, clustering off) or 2: a clustered pair gossiping as production's HA "
        "deployment (see below)",
    )
    up.add_argument(
        "--bots-base-port",
        type=int,
        default=None,
        metavar="P",
        help="the bots listen on P .. P+N-1 (default: one bot on the bot port, a fleet right after the stack's ports)",
    )
    up.set_defaults(handler=handle)

    ctl = sub.add_parser(
        "stackctl",
        help="systemctl for the local stack: status, start, stop, restart a child of `trading-ops up`",
        description=STACKCTL_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ctl.add_argument("verb", choices=VERBS, help="what to do (as systemctl's verbs of the same name)")
    ctl.add_argument(
        "units",
        nargs="*",
        metavar="UNIT",
        help="unit names as production has them (trading-ops-paper-bot.service, trading-ops-reconciler.service, "
        "prometheus.service, prometheus-alertmanager.service; with --alertmanagers 2 also "
        "prometheus-alertmanager-2.service; a fleet's bots trading-ops-bot@ccxt-I.service), with "
        "or without .service, or the child's name; "
        "status and reset-failed without a unit mean every one",
    )
    ctl.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help=f"the state directory of the `up` to talk to (default: ./{DEFAULT_STATE_DIR})",
    )
    ctl.add_argument(
        "--property",
        "-p",
        default="",
        metavar="NAMES",
        help=f"show: only these properties, comma-separated (default: {', '.join(SHOW_PROPERTIES)})",
    )
    ctl.add_argument(
        "--value",
        action="store_true",
        help="show: print the values only, without the property names (as systemctl's option)",
    )
    ctl.add_argument(
        "--timestamp",
        choices=["pretty", "unix"],
        default="pretty",
        help="show: timestamps as local time (pretty, the default) or @EPOCH seconds (unix), as systemctl's option",
    )
    ctl.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help=f"how long to wait for the answer (a restart waits for the start to complete; default "
        f"{DEFAULT_TIMEOUT_SECONDS:g})",
    )
    ctl.set_defaults(handler=handle_stackctl)


def handle_stackctl(args: argparse.Namespace, _config: Config) -> int:
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    try:
        answer = call(Path(args.state_dir), args.verb, args.units, args.timeout)
    except (OSError, ValueError) as exc:
        print(f"trading-ops: stackctl: {exc}", file=sys.stderr)
        return 1
    if not answer.get("ok"):
        print(f"trading-ops: stackctl: {answer.get('error', 'no answer')}", file=sys.stderr)
        return 1
    properties = [p for p in args.property.split(",") if p]
    for service in answer.get("services", []):
        if args.verb == "status":
            print(format_status(service))
        elif args.verb == "show":
            lines = format_show(service, properties, args.timestamp == "unix")
            print("\n".join(line.partition("=")[2] if args.value else line for line in lines))
    return 0


def handle(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.stack.up import UpOptions, UsageProblem, run  # the stack's dependencies only when it runs

    if args.ready_timeout <= 0 or (args.status_interval is not None and args.status_interval <= 0):
        raise UsageError("--ready-timeout and --status-interval must be positive")
    options = UpOptions(
        state_dir=Path(args.state_dir),
        repo=args.repo,
        ports=Ports.choose(args.base_port, **{name: getattr(args, f"{name}_port") for name in PORT_ORDER}),
        profile=PROFILES[args.profile],
        ready_timeout=args.ready_timeout,
        status_interval=args.status_interval,
        node_exporter=args.node_exporter,
        config_path=args.config,
        log_level=args.log_level,
        bot_kind=args.bot,
        bots=args.bots,
        bots_base_port=args.bots_base_port,
        alertmanagers=args.alertmanagers,
        fresh=args.fresh,
    )
    try:
        return run(options)
    except UsageProblem as exc:
        raise UsageError(f"up: {exc}") from exc
