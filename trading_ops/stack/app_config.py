"""The trading-ops configuration the stack's bot and reconciler run with: the user's file, wired to the stack."""

from __future__ import annotations

import base64
import copy
import math
import os
import re
import secrets
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from trading_ops.config import Config, ConfigError, DatabaseConfig, PaperConfig, parse_config
from trading_ops.decisions import DecisionKeyError, ensure_key_files
from trading_ops.durations import format_duration, parse_duration
from trading_ops.paper.bot import VENUE_STATE_FILE
from trading_ops.readiness.criteria import SCRAPE_TOLERANCE_SHARE
from trading_ops.reconciler.packaged_playbooks import DEFAULT_PLAYBOOK, PACKAGED_PLAYBOOKS
from trading_ops.stack.layout import HOST, Layout, Ports
from trading_ops.stack.profiles import FOR_DIVISOR, Profile
from trading_ops.stack.repo import dump_yaml

# Token files `make run` creates; `up` creates them too when the configuration names none.
DEFAULT_CONTROL_TOKEN = "var/secrets/control-token"
DEFAULT_RECONCILER_TOKEN = "var/secrets/reconciler-token"
# The episode API's token (reconciler.read_token): the status line reads the episodes with it.
DEFAULT_READ_TOKEN = "var/secrets/reconciler-read-token"
# A token of the `approve` scope (reconciler.api_tokens), named APPROVER: the operator console (/ui/) decides approvals
# with it. Added when the configuration has no approve token; `make run` creates it too.
DEFAULT_APPROVE_TOKEN = "var/secrets/reconciler-approve-token"
APPROVER = "desk"
# Tokens of the `operate` scope (the console's maintenance windows) and of the `destructive` one (also its emergency
# halt), named OPERATOR and ONCALL, added the same way: so every part of the console can be tried on the demo.
DEFAULT_OPERATE_TOKEN = "var/secrets/reconciler-operate-token"
OPERATOR = "operator"
DEFAULT_DESTRUCTIVE_TOKEN = "var/secrets/reconciler-destructive-token"
ONCALL = "oncall"
# scope -> (the token's name, its file) of the console's logins `up` adds when the configuration has none of the scope.
CONSOLE_TOKENS = {
    "approve": (APPROVER, DEFAULT_APPROVE_TOKEN),
    "operate": (OPERATOR, DEFAULT_OPERATE_TOKEN),
    "destructive": (ONCALL, DEFAULT_DESTRUCTIVE_TOKEN),
}
# The reconciler's key that signs decisions (reconciler.decision_key_file), generated when the configuration names none;
# its public key beside it (<file>.pub), which the stack's bots trust (bot.decision_keys) unless they name their own.
DEFAULT_DECISION_KEY = "var/secrets/reconciler-decision-key"
# The packaged rule whose approval the demo shows (`chaos loss_spike`): the stack's playbook (fast and floor profiles)
# lets it ask even on the shipped alert, a breached hard limit on which production's playbook acts at once.
DEMO_APPROVAL_RULE = "loss-limit-flatten"
TOKEN_BYTES = 32
# Two people's own tokens of the `approve` scope (reconciler.api_tokens, named after them), so that docs/readiness.md's
# promotion can be run as written by two people on the stack: one asks for the next stage with hers, the other approves
# with his (four eyes: the requester's token never decides its own request). Added beside the console's APPROVER when
# the configuration has no approve token of its own; `make run` creates the files too.
APPROVERS = (
    ("alice", "var/secrets/alice-token"),
    ("bob", "var/secrets/bob-token"),
)
# `up --bot ccxt-gateway`: the example bot (examples/ccxt_bot.py) trades through ccxt on the paper gateway, whose
# API key, secret (base64, as Kraken issues them) and fault-command token are generated into these files.
GATEWAY_BOT_KIND = "ccxt-gateway"
DEFAULT_GATEWAY_API_KEY = "var/secrets/gateway-api-key"
DEFAULT_GATEWAY_API_SECRET = "var/secrets/gateway-api-secret"
DEFAULT_GATEWAY_TOKEN = "var/secrets/gateway-control-token"
SECRET_BYTES = 64
# `up --bot freqtrade`: a real freqtrade (the `freqtrade` extra) trading on the paper gateway with the gateway's main
# key, watched by the `trading-ops freqtrade` sidecar, which reconciles on a key of its own on the same account
# (gateway.extra_keys: each client its own nonce; on Kraken a key with query permissions only). freqtrade's API
# password, JWT secret and websocket token are generated into files too; they reach freqtrade as its FREQTRADE__*
# environment variables, never in its config.json.
FREQTRADE_BOT_KIND = "freqtrade"
FREQTRADE_TARGET = "freqtrade-1"
FREQTRADE_USERNAME = "freqtrader"
DEFAULT_SIDECAR_API_KEY = "var/secrets/gateway-sidecar-api-key"
DEFAULT_SIDECAR_API_SECRET = "var/secrets/gateway-sidecar-api-secret"
FREQTRADE_SECRETS = {
    "FREQTRADE__API_SERVER__PASSWORD": "var/secrets/freqtrade-api-password",
    "FREQTRADE__API_SERVER__JWT_SECRET_KEY": "var/secrets/freqtrade-jwt-secret",
    "FREQTRADE__API_SERVER__WS_TOKEN": "var/secrets/freqtrade-ws-token",
}
# The sidecar polls freqtrade this often in the stack unless the configuration says otherwise (its default is 2 s):
# a fault shows a second sooner, at a handful of cheap GETs a second.
STACK_FREQTRADE_POLL_SECONDS = 1.0
# What the generated configuration names the gateway bot by, unless the user's file says otherwise.
GATEWAY_BOT_DEFAULTS = {"name": "ccxt-1", "venue": "kraken", "strategy": "mean-reverter"}
# A fleet (`up --bots N`): bots NAME-1 ... NAME-N (NAME the configuration's bot.name less a trailing -1, else this);
# every bot but the first trades on a gateway sub-account of its own, with a generated key and secret in these files.
FLEET_NAME = "ccxt"
FLEET_API_KEY = "var/secrets/gateway-{name}-api-key"
FLEET_API_SECRET = "var/secrets/gateway-{name}-api-secret"
FLEET_DATABASE = "trading-ops.db"  # with SQLite, each bot's journal is in its data dir (bot.data_dir/NAME/...)
# Unless the configuration sets them: how often each bot of a fleet polls the venue (orders and trades; quotes) and
# runs its strategy (each step also asks the venue's time). Half as often as one bot does: twenty bots at one bot's
# defaults took a whole core of the 2-core development machine at rest (3.4 % each, the gateway 15 %), at these 0.8
# of one (2.6 % each, the gateway 12 %; benchmarks/stack/bench_fleet.py). An outage is still noticed, and its end found,
# within 2 s, and market data stays fresh (stale after bot.market_data_stale_seconds, 10 s).
FLEET_DEFAULTS: dict[str, dict[str, float]] = {
    "ccxt": {"poll_interval_seconds": 2.0, "quote_poll_interval_seconds": 2.0},
    "bot": {"loop_interval_seconds": 1.0},
}
# The ccxt-gateway stack's Kraken tier, unless the configuration sets one: the gateway enforces its REST call counter
# (gateway.call_counter) and the bot budgets against it (ccxt.kraken_tier), so the bot's rate-limit headroom is checked
# against the venue. Pro (20 points, 1/s decay) lets the demo bot poll its orders every 2 s; Starter would stretch
# that to 6 s. The freqtrade stack leaves the counter off: freqtrade paces itself by ccxt's limiter, not this counter.
STACK_KRAKEN_TIER = "pro"
# ... and the ccxt bot's scheduled reconciliation at least this far apart, whatever the profile: one costs about 12
# points of that counter (trade history twice, balances twice, open orders, lookups), so the fast profile's 15 s would
# spend most of Pro's decay (1/s) on reconciling alone, leaving the bot's polls and cancels no room.
STACK_KRAKEN_RECONCILE_SECONDS = 60.0
# Keys whose string values are paths relative to the configuration file; the generated file lives elsewhere,
# so they are made absolute. A playbook value that names no file ("default", "docker") is kept as it is.
PATH_KEY_SUFFIXES = ("_file", "_dir", "_path", "_socket")
PATH_KEYS = ("playbook",)
# The playbook's default cooldown (reconciler.playbook's Rule.cooldown), and what a shortening profile makes of one:
# divided as `for:` is, at most a minute (the tour's second round comes minutes after the first: a disk cleanup's 1h
# would be 12 min), never below 30 s (a rule still cannot loop on a target faster than twice a minute; the budget
# per target holds the rest).
DEFAULT_COOLDOWN_SECONDS = 300.0
PROFILE_COOLDOWN_CAP_SECONDS = 60.0
COOLDOWN_FLOOR = 30.0
# The bot's own directory inside a data_dir that also holds the stack's state directory.
OWN_DATA_DIR = "bot"
MIB = 1024 * 1024
# Budgets of the bot's memory and disk alerts in the stack (bot.resources), unless the configuration sets its own:
# the machine (24 GiB, a 250 GB disk) is far bigger than a paper bot (~90 MiB resident, a data directory of a few
# MiB plus its journal), so without them no leak or fill of a demo would ever fire an alert. The paper bot's chaos
# defaults cross them: leak_memory (10 MiB/s up to 1 GiB) and fill_disk (320 MiB into <data_dir>/scratch).
STACK_MEMORY_BUDGET_BYTES = 384 * MIB
STACK_DATA_DIR_BUDGET_BYTES = 256 * MIB
SQLITE_PREFIX = "sqlite:///"
SQLITE_MEMORY = "sqlite:///:memory:"
DEFAULT_DATABASE_URL = DatabaseConfig().url
# The paper bot's daily loss limit in the stack unless the configuration sets one: a quarter of its 10,000 position
# limit per symbol, so that `chaos loss_spike` (1.2x the limit, at most a 90 % gap) can breach it with the book the
# demo usually holds (about 6,000), while the demo's own fees and spreads (it loses on the order of 1,000 an hour)
# take hours to reach it.
STACK_DAILY_LOSS_LIMIT = 2500.0
# The reconciler's action budget per target in the stack unless the configuration sets one: the README's fault tour
# (every fault of `chaos --help` once) takes about 15 actions on the bot, so a demo can run it twice within the hour
# before a spent budget opens the bot's circuit (production's default, 6, would stop the tour half-way).
STACK_ACTIONS_PER_TARGET_PER_HOUR = 30
# Keys whose string values are directories relative to the configuration file, whatever their name.
DIRECTORY_KEYS = {"backup": ("directory", "copy_to")}
# The paper bot's ramp in the stack, unless the configuration has one (bot.ramp.stages): docs/readiness.md's first two
# stages by name, so that its promotion (`ramp promote paper-1 --to seven-dollars`, then another person's approval) runs
# as written. Their limits are the demo's book, not the page's dollars: the first stage caps a position at a fifth above
# what the demo's strategy keeps to by itself (paper.max_position_notional), so the demo trades as it did (a stage
# limit the strategy brushes against would refuse its orders and turn the bot reduce-only); the second widens that cap
# by the page's 7/5. No stage limit of their own on the day's loss or the symbols: the demo's (bot.risk, every symbol).
STACK_RAMP_STAGES = ("five-dollars", "seven-dollars")
STACK_RAMP_FIRST_CAP = 1.2
STACK_RAMP_WIDENING = 1.4
# The page's criteria of a stage, judged over a window of minutes rather than days: the least whole minutes whose scrape
# tolerance (1 % of the window, trading_ops.readiness.criteria) holds two scrapes of the profile (fast, 1 s: 5 min;
# standard, the repo's 5 s: 17 min), and never below STACK_RAMP_MIN_WINDOW. min_time is the same: a stage's criteria
# pass, and its least time is spent, once the stack has run that long.
STACK_RAMP_CRITERIA = ("uptime", "crashes", "order_success", "api_error_ratio", "daily_loss_breaches")
STACK_RAMP_MIN_WINDOW_SECONDS = 300.0
STACK_RAMP_SCRAPES_IN_TOLERANCE = 2
# prometheus/prometheus.yml's scrape interval: the standard profile keeps it.
REPO_SCRAPE_INTERVAL_SECONDS = 5.0


@dataclass(frozen=True)
class AppConfig:
    path: Path
    config: Config
    control_token_file: Path
    reconciler_token_file: Path
    read_token_file: Path | None = None
    gateway_token_file: Path | None = None  # the gateway's fault commands (`--bot ccxt-gateway`, `--bot freqtrade`)
    # Each bot's configuration file, in the order of the bots: list (one bot: the stack's own file).
    bot_configs: tuple[Path, ...] = ()
    # Every database the stack's processes use, migrated before they start (a fleet's bots on SQLite: one each).
    database_urls: tuple[str, ...] = ()
    # What the stack changed in the user's file, and why (`up` prints each as a note).
    notes: tuple[str, ...] = ()
    # `--bot freqtrade`: freqtrade's environment variable -> the file of its secret (FREQTRADE_SECRETS, and the
    # exchange key and secret: the gateway's main key).
    freqtrade_secrets: tuple[tuple[str, Path], ...] = ()
    # The reconciler's approve-scope token (the console's login that may decide approvals); None: given by env only.
    approve_token_file: Path | None = None
    # Its operate-scope token (maintenance windows) and destructive-scope one (also the emergency halt), the same way.
    operate_token_file: Path | None = None
    destructive_token_file: Path | None = None
    # The two people's approve tokens the stack added (APPROVERS: name, file); none when the configuration has its own.
    approvers: tuple[tuple[str, Path], ...] = ()

    def freqtrade_secrets_file(self, variable: str) -> Path | None:
        return dict(self.freqtrade_secrets).get(variable)


def _url_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def _api_secret() -> str:
    return base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def ensure_token(path: Path, make: Callable[[], str] = _url_token) -> Path:
    """A secret in `path` (mode 600), created with `make()` (secrets.token_urlsafe) when the file is missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(make() + "\n")
    elif not path.read_text(encoding="utf-8").strip():
        raise ConfigError(str(path), "token file is empty")
    return path


def _absolute(data: Any, base: Path) -> Any:
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            is_path = str(key).endswith(PATH_KEY_SUFFIXES) or key in PATH_KEYS
            if is_path and isinstance(value, str) and value:
                candidate = (base / Path(value).expanduser()).resolve()
                looks_like_path = "/" in value or value.endswith((".yml", ".yaml"))
                named = key in PATH_KEYS and not candidate.exists() and not looks_like_path
                out[key] = value if named else str(candidate)
            else:
                out[key] = _absolute(value, base)
        return out
    if isinstance(data, list):
        return [_absolute(v, base) for v in data]
    return data


def _token_path(section: dict[str, Any], key: str, base: Path, default: str) -> Path:
    value = section.get(f"{key}_file")
    return Path(value) if value else (base / default).resolve()


def _own_data_dir(bot: dict[str, Any], layout: Layout, notes: list[str]) -> None:
    """The bot's data directory holds only the bot's data: when it holds the stack's state directory (the example's
    `./var` holds `./var/stack`, with Prometheus's data), the bot's budget would count the stack's files, and a cleanup
    of the bot's data dir could reach them. The bot then keeps its data in a directory of its own inside it (`bot`)."""
    if not isinstance(bot.get("data_dir"), str) or not bot["data_dir"]:
        return  # parse_config names the problem
    data_dir = Path(bot["data_dir"])
    if layout.state_dir.resolve().is_relative_to(data_dir):
        own = data_dir / OWN_DATA_DIR
        bot["data_dir"] = str(own)
        # A paper venue's book that an earlier run kept beside the stack's state (before the bot had a directory of
        # its own) moves with the bot: the journal's positions are on it.
        for book in data_dir.glob(f"*-{VENUE_STATE_FILE}"):
            if not (own / book.name).exists():
                own.mkdir(parents=True, exist_ok=True)
                book.rename(own / book.name)
        notes.append(
            f"bot.data_dir {data_dir} holds the stack's directory {layout.state_dir.resolve()}: the bot keeps its "
            f"data in {bot['data_dir']}, so the stack's files do not count against the bot's disk budget"
        )


def _profile_playbook(rc: dict[str, Any], layout: Layout, profile: Profile, notes: list[str]) -> None:
    """The configured playbook with its cooldowns shortened as the profile shortens the alerts' `for:` (5m -> 1m; at
    most 1m), in
    the state dir: a cooldown spaces runs of one rule on one target, so production's would hold back the second round
    of a demo's fault tour for minutes while the alerts, shortened, fire again at once. Everything else is the
    playbook's own; a playbook that cannot be read or parsed is left for the reconciler to reject (it names the
    problem)."""
    value = rc.get("playbook") or DEFAULT_PLAYBOOK
    try:
        if value in PACKAGED_PLAYBOOKS:
            package = resources.files("trading_ops.reconciler").joinpath("playbooks", PACKAGED_PLAYBOOKS[value])
            text = package.read_text(encoding="utf-8")
        else:
            text = Path(value).read_text(encoding="utf-8")
        data = yaml.safe_load(text)
        defaults = data.setdefault("defaults", {})
        rules = data["rules"]
        changed = {}
        for where, section in [("defaults", defaults), *((str(r.get("name")), r) for r in rules)]:
            if where != "defaults" and "cooldown" not in section:
                continue
            seconds = parse_duration(section.get("cooldown", DEFAULT_COOLDOWN_SECONDS))
            shortened = min(seconds, max(min(seconds / FOR_DIVISOR, PROFILE_COOLDOWN_CAP_SECONDS), COOLDOWN_FLOOR))
            if shortened != seconds:
                section["cooldown"] = format_duration(shortened)
                changed[where] = f"{format_duration(seconds)} -> {section['cooldown']}"
        asks = value in PACKAGED_PLAYBOOKS and _demo_asks_approval(rules)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, yaml.YAMLError):
        return
    if not changed and not asks:
        return
    path = layout.state_dir / "playbook.yml"
    what = "cooldowns shortened" + (f"; {DEMO_APPROVAL_RULE} asks for approval" if asks else "")
    dump_yaml(path, data, f"Generated by `trading-ops up` (profile {profile.name}) from {value}: {what}.")
    rc["playbook"] = str(path)
    notes.append(
        f"profile {profile.name}: the playbook's cooldowns are shortened as the alerts' `for:` are "
        f"(defaults {changed.get('defaults', 'unchanged')}), in {path}"
    )
    if asks:
        notes.append(
            f"the demo's {DEMO_APPROVAL_RULE} asks for approval before it cancels and flattens (approve in the "
            "console, or `reconciler approve ID --token-file var/secrets/reconciler-approve-token`); the packaged "
            "playbook acts at once on a breached hard limit"
        )


def _demo_asks_approval(rules: list[dict[str, Any]]) -> bool:
    """The packaged playbook's loss-limit rule without its hard limit: the shipped (critical) loss alert then waits for
    a person's approval, as the demo shows; production's acts at once. True when the rule was changed."""
    for rule in rules:
        if rule.get("name") == DEMO_APPROVAL_RULE and rule.get("approval") == "required" and "hard_limit" in rule:
            del rule["hard_limit"]
            return True
    return False


def _gateway_section(data: dict[str, Any], base: Path, layout: Layout, ports: Ports) -> dict[str, Path]:
    """The paper gateway on its port with generated credentials (files under var/secrets, never in the YAML): the
    files of its api_key, api_secret and control_token."""
    gateway = data.setdefault("gateway", {})
    files = {
        "api_key": ensure_token(_token_path(gateway, "api_key", base, DEFAULT_GATEWAY_API_KEY)),
        "api_secret": ensure_token(_token_path(gateway, "api_secret", base, DEFAULT_GATEWAY_API_SECRET), _api_secret),
        "control_token": ensure_token(_token_path(gateway, "control_token", base, DEFAULT_GATEWAY_TOKEN)),
    }
    gateway["listen"] = {"host": HOST, "port": ports.gateway}
    gateway.setdefault("state_file", str(layout.gateway_state))
    Path(gateway["state_file"]).parent.mkdir(parents=True, exist_ok=True)
    for name, path in files.items():
        gateway.pop(f"{name}_env", None)
        gateway[f"{name}_file"] = str(path)
    return files


def _wire_gateway(data: dict[str, Any], base: Path, layout: Layout, ports: Ports, notes: list[str]) -> Path:
    """The paper gateway (_gateway_section), and the bot's `ccxt:` section on the same key, pointed at it. Returns the
    file of the gateway's fault-command token.

    A `bot:` section that describes the paper bot (venue `paper`, as the example configuration's does) is not the
    ccxt bot's: taking its name would give the ccxt bot the paper bot's journal, whose positions the gateway's account
    never held (its start-up reconciliation halts on them). The ccxt bot then gets a name, venue and strategy of its
    own, and `notes` says so."""
    files = _gateway_section(data, base, layout, ports)
    client = data.setdefault("ccxt", {})
    client["exchange"] = "kraken"
    client["urls"] = {"public": ports.url("gateway"), "private": ports.url("gateway")}
    client.setdefault("symbols", list(data.get("paper", {}).get("symbols") or PaperConfig().symbols))
    if client.get("enable_rate_limit"):
        notes.append(
            "ccxt.enable_rate_limit is off on the paper gateway (it limits orders itself; ccxt's kraken limiter allows "
            "1 call/s, which makes the start-up reconciliation take minutes)"
        )
    client["enable_rate_limit"] = False
    tier = client.setdefault("kraken_tier", STACK_KRAKEN_TIER)
    data["gateway"].setdefault("call_counter", tier)
    for name in ("api_key", "api_secret"):
        client.pop(f"{name}_env", None)
        client[f"{name}_file"] = str(files[name])
    for key, value in GATEWAY_BOT_DEFAULTS.items():
        data["bot"].setdefault(key, value)
    return files["control_token"]


def _wire_freqtrade(
    data: dict[str, Any], base: Path, layout: Layout, ports: Ports, control: Path
) -> tuple[Path, tuple[tuple[str, Path], ...]]:
    """The gateway (_gateway_section) with one more key of its main account, the sidecar's, and the `freqtrade:`
    section: one target, the stack's freqtrade (its API on the freqtrade port), served on the bot port, reconciled
    through the gateway on the sidecar's key, its log file read. Returns the gateway's fault-command token file and
    freqtrade's secrets (environment variable -> file)."""
    files = _gateway_section(data, base, layout, ports)
    gateway = data["gateway"]
    key = ensure_token((base / DEFAULT_SIDECAR_API_KEY).resolve())
    secret = ensure_token((base / DEFAULT_SIDECAR_API_SECRET).resolve(), _api_secret)
    extra = gateway.get("extra_keys")
    extra = extra if isinstance(extra, list) else []
    if not any(isinstance(k, dict) and k.get("api_key_file") == str(key) for k in extra):
        extra.append({"api_key_file": str(key), "api_secret_file": str(secret)})
    gateway["extra_keys"] = extra
    secrets_ = {env: ensure_token((base / path).resolve()) for env, path in FREQTRADE_SECRETS.items()}
    section = data.setdefault("freqtrade", {})
    section.pop("control_token_env", None)
    section["control_token_file"] = str(control)
    section.setdefault("poll_interval_seconds", STACK_FREQTRADE_POLL_SECONDS)
    symbols = list(data.get("paper", {}).get("symbols") or PaperConfig().symbols)
    section["targets"] = {
        FREQTRADE_TARGET: {
            "url": ports.url("freqtrade"),
            "username": FREQTRADE_USERNAME,
            "password_file": str(secrets_["FREQTRADE__API_SERVER__PASSWORD"]),
            "listen": {"host": HOST, "port": ports.bot},
            "log_file": str(layout.freqtrade_log),
            "ccxt": {
                "exchange": "kraken",
                "api_key_file": str(key),
                "api_secret_file": str(secret),
                "urls": {"public": ports.url("gateway"), "private": ports.url("gateway")},
                "symbols": symbols,
                # The gateway limits orders itself; ccxt's kraken limiter would space the reconciliation's calls 1 s.
                "enable_rate_limit": False,
                "kraken_tier": STACK_KRAKEN_TIER,  # the sidecar's reconciliations budget against Pro's counter
            },
        }
    }
    env = {
        "FREQTRADE__EXCHANGE__KEY": files["api_key"],
        "FREQTRADE__EXCHANGE__SECRET": files["api_secret"],
        **secrets_,
    }
    return files["control_token"], tuple(env.items())


def _default_budgets(bot: dict[str, Any]) -> None:
    """The stack's resource budgets where the configuration gives none (a memory budget only below a configured
    memory limit: one above it is refused)."""
    resources = bot.setdefault("resources", {})
    if not isinstance(resources, dict):
        return  # parse_config names the problem
    limit = bot.get("memory_limit_bytes")
    if not (isinstance(limit, int) and 0 < limit < STACK_MEMORY_BUDGET_BYTES):
        resources.setdefault("memory_budget_bytes", STACK_MEMORY_BUDGET_BYTES)
    resources.setdefault("data_dir_budget_bytes", STACK_DATA_DIR_BUDGET_BYTES)


def build_app_config(
    source: Path | None,
    layout: Layout,
    ports: Ports,
    bot_kind: str = "paper",
    profile: Profile | None = None,
    bot_ports: Sequence[int] | None = None,
    alertmanager_peers: Sequence[str] = (),
) -> AppConfig:
    """Write the stack's configuration into the state dir: the user's file (or the defaults) with the bot and the
    reconciler on the stack's ports, tokens from files, and the reconciler pointed at the local servers (with a
    clustered Alertmanager pair, `alertmanager_peers` are the members after the first, as production configures it:
    escalations and silences posted to every member, reads from the first that answers); for the
    ccxt-gateway bot, the gateway and the bot's ccxt section too. With more than one of `bot_ports` (a fleet of
    ccxt-gateway bots, one per port; default: one bot on the stack's bot port), each bot gets a configuration file of
    its own (`Layout.bot_config`) with its name, port, data dir and a sub-account of the gateway with its own key."""
    bot_ports = list(bot_ports or [ports.bot])
    if len(bot_ports) > 1 and bot_kind != GATEWAY_BOT_KIND:
        raise ConfigError("bots", f"a fleet of bots runs on the paper gateway only (--bot {GATEWAY_BOT_KIND})")
    data, base = _read_source(source)
    notes: list[str] = []
    _local_storage(data, base)
    bot = data.setdefault("bot", {})
    named = _stack_bot_section(bot, bot_kind, notes)  # the user's name for the bot (a fleet's: NAME-1 ... NAME-N)
    bot.setdefault("data_dir", str((base / "var").resolve()))
    _own_data_dir(bot, layout, notes)
    _stack_limits(data, bot, bot_kind, profile)
    if bot_kind == "paper":
        _demo_ramp(data, bot, profile, notes)
    rc = data.setdefault("reconciler", {})
    budgets = rc.setdefault("budgets", {})
    if isinstance(budgets, dict):  # else parse_config names the problem
        budgets.setdefault("max_actions_per_target_per_hour", STACK_ACTIONS_PER_TARGET_PER_HOUR)
    tokens = _wire_tokens(bot, rc, base, bot_ports[0], ports)
    _wire_decision_key(bot, rc, base)
    logins = {scope: _wire_console_token(rc, base, scope) for scope in CONSOLE_TOKENS}
    approvers = _wire_approvers(rc, base, logins["approve"])
    _wire_reconciler(rc, layout, ports, profile, alertmanager_peers, notes)
    gateway_token = _wire_gateway(data, base, layout, ports, notes) if bot_kind == GATEWAY_BOT_KIND else None
    freqtrade_secrets: tuple[tuple[str, Path], ...] = ()
    if bot_kind == FREQTRADE_BOT_KIND:
        gateway_token, freqtrade_secrets = _wire_freqtrade(data, base, layout, ports, tokens.control)
    # The stack's bots are the bots: list (the reconciler's targets are derived from it, and Prometheus scrapes the
    # same instances through its file_sd file). Prometheus labels a bot's series instance="<host>:<port>" of its
    # scrape target: that is how the reconciler's bot action finds the control API.
    rc.pop("targets", None)
    names = _bot_names(bot_kind, bot, named, len(bot_ports))
    data["bots"] = [
        {
            "name": name,
            "kind": bot_kind,
            "instance": f"{HOST}:{port}",
            "url": f"http://{HOST}:{port}",
            "token_file": str(tokens.control),
        }
        for name, port in zip(names, bot_ports, strict=True)
    ]
    if bot_kind == FREQTRADE_BOT_KIND:
        _trust_decisions(data, names[0])
    fleet = _fleet(data, base, layout, names, bot_ports) if len(bot_ports) > 1 else {}
    config, databases = _write_configs(source, layout, data, fleet)
    return AppConfig(
        layout.app_config,
        config,
        tokens.control,
        tokens.webhook,
        tokens.read,
        gateway_token,
        tuple(fleet) or (layout.app_config,),
        databases,
        tuple(notes),
        freqtrade_secrets,
        logins["approve"],
        logins["operate"],
        logins["destructive"],
        approvers,
    )


@dataclass(frozen=True)
class _Tokens:
    """The stack's token files: the bots' control API, the reconciler's webhook and its read-only API."""

    control: Path
    webhook: Path
    read: Path


def _read_source(source: Path | None) -> tuple[dict[str, Any], Path]:
    """The user's file (or the defaults: an empty one) with its paths absolute, and the directory they are relative
    to."""
    if source is not None and source.exists():
        raw = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
        base = source.resolve().parent
    else:
        raw, base = {}, Path.cwd().resolve()
    if not isinstance(raw, dict):
        raise ConfigError("(top level)", "expected a mapping")
    data: dict[str, Any] = _absolute(copy.deepcopy(raw), base)
    for section, keys in DIRECTORY_KEYS.items():
        values = data.get(section)
        if not isinstance(values, dict):
            continue  # absent, or parse_config names the problem
        for key in keys:
            if isinstance(values.get(key), str) and values[key]:
                values[key] = str((base / Path(values[key]).expanduser()).resolve())
    return data, base


def _local_storage(data: dict[str, Any], base: Path) -> None:
    """Backups that stay on this machine unless the file names a remote host; a relative SQLite database relative to
    the user's file."""
    backup = data.setdefault("backup", {})
    remote = backup.setdefault("remote", {}) if isinstance(backup, dict) else None
    if isinstance(remote, dict) and not remote.get("host") and remote.get("required", True) is True:
        # A demo on one machine has no other host: its backups stay here (`backup run` says so on every run). A
        # deployment's backups are not complete without their off-host copy (backup.remote).
        remote["required"] = False
    db = data.setdefault("database", {})
    if not db.get("url_file") and not db.get("url_env"):
        # A relative SQLite path (the default one included) is relative to the user's file, not to the copy.
        url = str(db.get("url", DEFAULT_DATABASE_URL))
        if url.startswith(SQLITE_PREFIX) and not url.startswith(SQLITE_PREFIX + "/") and url != SQLITE_MEMORY:
            db["url"] = SQLITE_PREFIX + str((base / url[len(SQLITE_PREFIX) :]).resolve())


def _stack_bot_section(bot: dict[str, Any], bot_kind: str, notes: list[str]) -> Any:
    """The bot section for `bot_kind`; returns the bot's name as the user's file gives it (None without one)."""
    if bot_kind == GATEWAY_BOT_KIND and bot.get("venue") == "paper":
        # The paper bot's section (the example configuration's) is not the ccxt bot's: its name would give the ccxt
        # bot the paper bot's journal, whose positions the gateway's account never held (its start-up reconciliation
        # halts on them). The ccxt bot gets the gateway bot's name, venue and strategy instead.
        notes.append(
            f"bot {bot.get('name', 'paper-1')!r} on venue 'paper' is the paper bot's section: the ccxt bot runs as "
            f"{GATEWAY_BOT_DEFAULTS['name']!r} on venue {GATEWAY_BOT_DEFAULTS['venue']!r}, with a journal of its own"
        )
        for key in GATEWAY_BOT_DEFAULTS:
            bot.pop(key, None)
    return bot.get("name")


def _stack_limits(data: dict[str, Any], bot: dict[str, Any], bot_kind: str, profile: Profile | None) -> None:
    """The profile's recovery settings, the demo's daily loss limit and the resource budgets, where the file sets
    none."""
    recovery = data.setdefault("recovery", {})
    for key, value in profile.recovery if profile else ():
        ccxt_reconcile = bot_kind == GATEWAY_BOT_KIND and key == "reconcile_interval_seconds"
        recovery.setdefault(key, max(value, STACK_KRAKEN_RECONCILE_SECONDS) if ccxt_reconcile else value)
    if (bot.get("risk") or {}).get("daily_loss_limit") is None:
        data.setdefault("paper", {}).setdefault("daily_loss_limit", STACK_DAILY_LOSS_LIMIT)
        if bot_kind == GATEWAY_BOT_KIND and isinstance(bot.setdefault("risk", {}), dict):
            # The ccxt bot's limit is the runtime's (bot.risk): the same demo limit, and the boards' loss panel.
            bot["risk"]["daily_loss_limit"] = STACK_DAILY_LOSS_LIMIT
    _default_budgets(bot)


def ramp_window(profile: Profile | None) -> float:
    """The stack's ramp window in seconds (STACK_RAMP_CRITERIA's comment): whole minutes whose scrape tolerance holds
    STACK_RAMP_SCRAPES_IN_TOLERANCE scrapes of the profile, at least STACK_RAMP_MIN_WINDOW_SECONDS."""
    interval = (profile.scrape_interval if profile else None) or REPO_SCRAPE_INTERVAL_SECONDS
    needed = interval * STACK_RAMP_SCRAPES_IN_TOLERANCE / SCRAPE_TOLERANCE_SHARE
    return max(STACK_RAMP_MIN_WINDOW_SECONDS, math.ceil(needed / 60) * 60.0)


def _demo_ramp(data: dict[str, Any], bot: dict[str, Any], profile: Profile | None, notes: list[str]) -> None:
    """The paper bot's ramp (STACK_RAMP_STAGES) where the configuration gives none: docs/readiness.md's promotion then
    runs on the stack as written, and `notes` says what the stages are."""
    ramp = bot.setdefault("ramp", {})
    if not isinstance(ramp, dict) or ramp.get("stages"):
        return  # the configuration's own ramp (or parse_config names the problem)
    paper = data.get("paper")
    cap = (paper if isinstance(paper, dict) else {}).get("max_position_notional", PaperConfig().max_position_notional)
    if not isinstance(cap, int | float) or isinstance(cap, bool) or cap <= 0:
        return  # parse_config names the problem
    window = format_duration(ramp_window(profile))
    first = round(cap * STACK_RAMP_FIRST_CAP, 2)
    caps = (first, round(first * STACK_RAMP_WIDENING, 2))
    ramp["stages"] = [
        {
            "name": name,
            "max_position_notional": limit,
            "min_time": window,
            "criteria": list(STACK_RAMP_CRITERIA),
            "window": window,
        }
        for name, limit in zip(STACK_RAMP_STAGES, caps, strict=True)
    ]
    notes.append(
        f"the paper bot's ramp: stages {caps[0]:g} and {caps[1]:g} a position "
        f"({', '.join(STACK_RAMP_STAGES)}), each judged over {window} and held at least that long "
        "(docs/readiness.md, Go live in stages)"
    )


def _wire_tokens(bot: dict[str, Any], rc: dict[str, Any], base: Path, bot_port: int, ports: Ports) -> _Tokens:
    """Tokens from files (created when missing) for the bot and the reconciler, each on its stack port."""
    tokens = _Tokens(
        control=ensure_token(_token_path(bot, "control_token", base, DEFAULT_CONTROL_TOKEN)),
        webhook=ensure_token(_token_path(rc, "token", base, DEFAULT_RECONCILER_TOKEN)),
        read=ensure_token(_token_path(rc, "read_token", base, DEFAULT_READ_TOKEN)),
    )
    bot.pop("control_token_env", None)
    bot["control_token_file"] = str(tokens.control)
    bot["listen"] = {"host": HOST, "port": bot_port}
    rc.pop("token_env", None)
    rc["token_file"] = str(tokens.webhook)
    rc.pop("read_token_env", None)
    rc["read_token_file"] = str(tokens.read)
    rc["listen"] = {"host": HOST, "port": ports.reconciler}
    return tokens


def _trust_decisions(data: dict[str, Any], name: str) -> None:
    """The sidecar trusts the keys the stack's bot section trusts (the reconciler's), and its target is the bot
    `name` of bots[]: a loss-limit halt of the stack's freqtrade clears on the decision the reconciler signs for it."""
    section = data["freqtrade"]
    keys = data.get("bot", {}).get("decision_keys")
    if not section.get("decision_keys") and isinstance(keys, list):
        section["decision_keys"] = list(keys)
    section["targets"][FREQTRADE_TARGET].setdefault("bot", name)


def _wire_decision_key(bot: dict[str, Any], rc: dict[str, Any], base: Path) -> None:
    """The reconciler's signing key from its file (DEFAULT_DECISION_KEY, generated owner-only when missing) and the
    bot trusting its public key, so that the demo's ramp promotes on a signed decision as production's does. A key
    given by environment (decision_key_env) is the user's: left as it is, the bot's keys too."""
    if rc.get("decision_key_env"):
        return
    private = _token_path(rc, "decision_key", base, DEFAULT_DECISION_KEY)
    public = private.with_name(private.name + ".pub")
    try:
        ensure_key_files(private, public)
    except DecisionKeyError as exc:
        raise ConfigError("reconciler.decision_key_file", str(exc)) from None
    except OSError as exc:
        raise ConfigError("reconciler.decision_key_file", f"cannot write {private}: {exc.strerror}") from None
    rc["decision_key_file"] = str(private)
    if not bot.get("decision_keys"):
        bot["decision_keys"] = [str(public)]


def _wire_console_token(rc: dict[str, Any], base: Path, scope: str) -> Path | None:
    """The reconciler's token file of `scope` (approve, operate, destructive): the configuration's (none when it gives
    one by environment only), or CONSOLE_TOKENS' file (created when missing) added to reconciler.api_tokens under its
    name, so the console can decide the approvals the demo asks for, open maintenance windows and halt a bot."""
    tokens = rc.setdefault("api_tokens", [])
    if not isinstance(tokens, list):
        return None  # parse_config names the problem
    for token in tokens:
        if isinstance(token, dict) and token.get("scope") == scope:
            given = token.get("token_file")
            return (base / str(given)).resolve() if given else None
    name, default = CONSOLE_TOKENS[scope]
    taken = {t.get("name") for t in tokens if isinstance(t, dict)}
    if name in taken:
        return None  # a token of another scope has the name: the user's configuration, left as it is
    path = ensure_token((base / default).resolve())
    tokens.append({"name": name, "scope": scope, "token_file": str(path)})
    return path


def _wire_approvers(rc: dict[str, Any], base: Path, approve: Path | None) -> tuple[tuple[str, Path], ...]:
    """APPROVERS' tokens (files created when missing) added to reconciler.api_tokens, scope approve, when the approve
    token in force is the stack's own (`approve`: its file): a configuration with approvers of its own keeps them."""
    tokens = rc.get("api_tokens")
    if approve is None or approve != (base / DEFAULT_APPROVE_TOKEN).resolve() or not isinstance(tokens, list):
        return ()
    taken = {t.get("name") for t in tokens if isinstance(t, dict)}
    added = []
    for name, default in APPROVERS:
        if name in taken:
            continue
        path = ensure_token((base / default).resolve())
        tokens.append({"name": name, "scope": "approve", "token_file": str(path)})
        added.append((name, path))
    return tuple(added)


def _wire_reconciler(
    rc: dict[str, Any],
    layout: Layout,
    ports: Ports,
    profile: Profile | None,
    alertmanager_peers: Sequence[str],
    notes: list[str],
) -> None:
    """The reconciler pointed at the stack's Prometheus and Alertmanager, and its systemctl at the stack's."""
    if profile is not None and profile.shorten_for:
        _profile_playbook(rc, layout, profile, notes)
    rc["prometheus_url"] = ports.url("prometheus")
    rc["alertmanager_url"] = ports.url("alertmanager")
    rc.pop("alertmanager_peers", None)  # the file's peers are another deployment's members: only the stack's
    if alertmanager_peers:
        rc["alertmanager_peers"] = list(alertmanager_peers)
    # The stack's children are not systemd units: `up` runs them as their units would and answers systemctl's verbs
    # through `trading-ops stackctl`, so the playbook's systemd steps restart the bot here as in production.
    rc["systemctl"] = [
        sys.executable,
        "-m",
        "trading_ops",
        "--config",
        str(layout.app_config.resolve()),
        "stackctl",
        "--state-dir",
        str(layout.state_dir.resolve()),
    ]


def _bot_names(bot_kind: str, bot: dict[str, Any], named: Any, count: int) -> list[str]:
    """The names of the stack's `count` bots (a fleet's: the user's name, or FLEET_NAME, numbered from 1)."""
    if bot_kind == FREQTRADE_BOT_KIND:
        return [FREQTRADE_TARGET]
    if count == 1:
        return [str(bot.get("name", "paper-1"))]
    prefix = re.sub(r"-\d+$", "", str(named)) if named else FLEET_NAME  # bot.name paper-1: paper-1 .. paper-N
    return [f"{prefix}-{i}" for i in range(1, count + 1)]


def _write_configs(
    source: Path | None, layout: Layout, data: dict[str, Any], fleet: dict[Path, dict[str, Any]]
) -> tuple[Config, tuple[str, ...]]:
    """Parse (which checks) and write the stack's configuration and each fleet bot's; returns the stack's parsed
    configuration and every database the processes use, without repeats."""
    config = parse_config(data, base_dir=layout.state_dir.resolve())
    origin = source.resolve() if source else "the defaults"
    databases = [config.database_url()]
    for path, bot_data in fleet.items():
        databases.append(parse_config(bot_data, base_dir=layout.state_dir.resolve()).database_url())
        dump_yaml(
            path,
            bot_data,
            f"Generated by `trading-ops up --bots {len(fleet)}` from {origin}: the stack's configuration with\n"
            "this bot's name, port, data dir and gateway account key. Edit the source file, not this copy.",
        )
    dump_yaml(
        layout.app_config,
        data,
        f"Generated by `trading-ops up` from {origin}: the stack's ports,\n"
        "token files and local Prometheus and Alertmanager. Edit the source file, not this copy.",
    )
    return config, tuple(dict.fromkeys(databases))


def _fleet(
    data: dict[str, Any], base: Path, layout: Layout, names: list[str], bot_ports: list[int]
) -> dict[Path, dict[str, Any]]:
    """A fleet on the paper gateway: the first bot on the venue's main account (the gateway's key), every other one
    on a sub-account of its own named after it, with a key and secret generated into var/secrets (Kraken's nonce is
    per key: bots never share one). `data` (the stack's configuration, its bot the first one) gets the sub-accounts;
    returns each bot's configuration by its file."""
    gateway, client, bot = data["gateway"], data["ccxt"], data["bot"]
    keys = [(client["api_key_file"], client["api_secret_file"])]
    accounts = gateway.setdefault("accounts", [])
    for name in names[1:]:
        key = ensure_token((base / FLEET_API_KEY.format(name=name)).resolve())
        secret = ensure_token((base / FLEET_API_SECRET.format(name=name)).resolve(), _api_secret)
        accounts.append({"name": name, "api_key_file": str(key), "api_secret_file": str(secret)})
        keys.append((str(key), str(secret)))
    for section, defaults in FLEET_DEFAULTS.items():
        for setting, value in defaults.items():
            data.setdefault(section, {}).setdefault(setting, value)
    data_dir = Path(bot["data_dir"])
    bot.update(name=names[0], data_dir=str(data_dir / names[0]))
    db = data["database"]
    url = str(db.get("url", ""))
    own_sqlite = not db.get("url_file") and not db.get("url_env") and url.startswith(SQLITE_PREFIX)
    fleet = {}
    for name, port, (key, secret) in zip(names, bot_ports, keys, strict=True):
        mine = copy.deepcopy(data)
        mine["bot"].update(name=name, listen={"host": HOST, "port": port}, data_dir=str(data_dir / name))
        mine["ccxt"].update(api_key_file=key, api_secret_file=secret)
        if own_sqlite and url != SQLITE_MEMORY:
            # One SQLite file does not take tens of writing processes (a transaction that read, then writes, fails
            # with "database is locked" once another wrote in between): each bot journals in a file of its own.
            # A PostgreSQL database (url_file, url_env) is shared, as in production.
            mine["database"]["url"] = SQLITE_PREFIX + str(data_dir / name / FLEET_DATABASE)
        fleet[layout.bot_config(name)] = mine
    return fleet
