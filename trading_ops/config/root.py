"""The whole configuration file: one section per service, and the checks that span sections."""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from trading_ops.config.bot import BotConfig, RecoveryConfig, order_id_prefix
from trading_ops.config.common import DatabaseConfig, LoggingConfig, NotificationsConfig
from trading_ops.config.fields import (
    FREQTRADE_KIND,
    POSTGRESQL_DRIVER,
    POSTGRESQL_DRIVER_MISSING,
    ConfigError,
    check_client_id_prefix,
    check_command,
    check_name,
    state_base,
)
from trading_ops.config.freqtrade import FreqtradeConfig
from trading_ops.config.ops import BackupConfig, MaintenanceConfig, ReportConfig, SchedulerConfig, UpkeepConfig
from trading_ops.config.paper import CcxtConfig, GatewayConfig, PaperConfig
from trading_ops.config.readiness import ReadinessConfig
from trading_ops.config.reconciler import BotEntryConfig, BotVenueConfig, ReconcilerConfig, TargetConfig

# How a venue gives each bot an account of its own (`check_accounts`' refusal names it): Kraken's subaccounts, Binance's
# sub-accounts (each with API keys of its own); elsewhere, what the venue calls them.
ACCOUNT_OF_ITS_OWN = {"kraken": "a Kraken subaccount each", "binance": "a Binance sub-account each"}
# Venues where two bots may share one account, each told by its order-id prefix: no dead man's switch of the account's
# for the runtime to keep armed (Kraken's CancelAllOrdersAfter cancels every order of the account, another bot's too),
# and a bot's open orders, trades and cancels asked per symbol (Binance spot). Their base assets must differ: a spot
# position is the account's balance of its base asset.
SHAREABLE_ACCOUNTS = frozenset({"binance"})


def bot_prefix(entry: BotEntryConfig) -> str:
    """The order-id prefix of a bot under `bots:`: its venue's `order_id_prefix`, else derived from its name."""
    return entry.venue.order_id_prefix or order_id_prefix(entry.name)


def _place(venue: BotVenueConfig) -> str:
    """The venue a bot's entry reaches (its exchange and URLs): two entries on one place and account share it."""
    return " ".join([venue.exchange, *(f"{k}={v}" for k, v in sorted(venue.urls.items()))])


def _account(venue: BotVenueConfig) -> tuple[str, str]:
    return _place(venue), venue.account or venue.api_key


def _bases(symbols: list[str]) -> set[str]:
    return {symbol.split("-", 1)[0] for symbol in symbols}


def shared_account(config: Config) -> bool:
    """Whether the bot this configuration runs (`bot:`) shares its account with other bots: `ccxt.shared_account`,
    or its entry under `bots:` on the account of another entry. Its broker then sees only its own orders."""
    if config.ccxt.shared_account:
        return True
    entry = next((b for b in config.bots if b.name == config.bot.name and b.venue.exchange), None)
    if entry is None:
        return False
    return any(b is not entry and b.venue.exchange and _account(b.venue) == _account(entry.venue) for b in config.bots)


def bot_order_id_prefix(config: Config) -> str:
    """The order-id prefix of the bot this configuration runs (`bot:`): bot.order_id_prefix, else its entry's under
    `bots:`, else derived from its name, as the reconciler's `venue` step derives it."""
    if config.bot.order_id_prefix:
        return config.bot.order_id_prefix
    entry = next((b for b in config.bots if b.name == config.bot.name), None)
    return bot_prefix(entry) if entry is not None else order_id_prefix(config.bot.name)


@dataclass
class Config:
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    bot: BotConfig = field(default_factory=BotConfig)
    paper: PaperConfig = field(default_factory=PaperConfig)
    notifications: NotificationsConfig = field(default_factory=NotificationsConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    reconciler: ReconcilerConfig = field(default_factory=ReconcilerConfig)
    freqtrade: FreqtradeConfig = field(default_factory=FreqtradeConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # The bots, declared once: the reconciler's targets and Prometheus's file_sd targets
    # (`trading-ops config targets`) are derived from this list.
    bots: list[BotEntryConfig] = field(default_factory=list)
    # Bot kinds `trading-ops up --bot KIND` can run besides the built-in `paper`: KIND -> the bot's command line;
    # {python} is this Python, {config} the stack's generated configuration file.
    bot_kinds: dict[str, list[str]] = field(default_factory=dict)
    backup: BackupConfig = field(default_factory=BackupConfig)
    upkeep: UpkeepConfig = field(default_factory=UpkeepConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    ccxt: CcxtConfig = field(default_factory=CcxtConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    maintenance: MaintenanceConfig = field(default_factory=MaintenanceConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    readiness: ReadinessConfig = field(default_factory=ReadinessConfig)
    # Directory that relative paths in this file are resolved against (the file's own directory).
    base_dir: Path = field(default=Path("."), metadata={"internal": True})
    # The top-level sections the file gives (`config check` checks the services they configure).
    sections: frozenset[str] = field(default=frozenset(), metadata={"internal": True})

    def validate(self, prefix: str, given: set[str]) -> None:
        if self.readiness.prometheus_retention:
            from trading_ops.durations import parse_duration

            retention = parse_duration(self.readiness.prometheus_retention)
            for i, stage in enumerate(self.bot.ramp.stages):
                if parse_duration(stage.window) > retention:
                    raise ConfigError(
                        f"bot.ramp.stages[{i}].window",
                        f"{stage.window} is longer than Prometheus's retention ({self.readiness.prometheus_retention}, "
                        "readiness.prometheus_retention): it cannot hold that much history",
                    )
        for key, attr in (("name", "name"), ("instance", "instance")):
            seen: set[str] = set()
            for i, entry in enumerate(self.bots):
                value = getattr(entry, attr)
                if value in seen:
                    raise ConfigError(f"bots[{i}].{key}", f"{value} is listed twice")
                seen.add(value)
        for kind, command in self.bot_kinds.items():
            if check_name(kind) or (problem := check_command(command)):
                raise ConfigError(f"bot_kinds.{kind}", check_name(kind) or problem or "")
        self.recognize_freqtrade()
        self.check_accounts()
        if self.bots:
            if self.reconciler.targets:
                raise ConfigError("reconciler.targets", "give the bots once, under bots: (targets are derived)")
            self.reconciler.targets = {
                b.instance: TargetConfig(
                    url=b.url,
                    token=b.token,
                    destructive_token=b.destructive_token,
                    unit=b.systemd_unit,
                    container=b.docker_container,
                    venue=dataclasses.replace(b.venue, order_id_prefix=bot_prefix(b)),
                    host=b.host,
                )
                for b in self.bots
            }

    def recognize_freqtrade(self) -> None:
        """A bot that a freqtrade target of this file watches (`freqtrade.targets.<name>.bot`, else the target's name)
        is of kind freqtrade: its unit, its container, its venue step's orders and its readiness are freqtrade's. Left
        out, `kind` is taken to be freqtrade; given as another kind, it is refused."""
        watched = {target.bot or name: name for name, target in self.freqtrade.targets.items()}
        for i, entry in enumerate(self.bots):
            target = watched.get(entry.name)
            if target is None or entry.kind == FREQTRADE_KIND:
                continue
            if entry.kind_given:
                raise ConfigError(
                    f"bots[{i}].kind",
                    f"{entry.kind}, but freqtrade.targets.{target} watches {entry.name}: "
                    f"it is of kind {FREQTRADE_KIND}",
                )
            entry.kind = FREQTRADE_KIND
            entry.check_kind(f"bots[{i}]")

    def check_accounts(self) -> None:
        """A bot touches only its own orders: no two bots on a venue with one order-id prefix (a `venue` step tells a
        bot's orders by it; two bots given keys of their own on one account are not seen sharing it, their prefixes
        are), and one account per bot where the venue has a dead man's switch of the account's (Kraken: it and the
        balances are the account's, so two bots on one would cancel and reconcile each other). Where it has none
        (SHAREABLE_ACCOUNTS: Binance spot), bots may share an account when each is told by its prefix (`orders:
        prefix`) and no two trade one base asset (a spot position is the account's balance of it). The bot this file
        runs (`bot:`) takes the prefix its entry under `bots:` gives. A prefix leaves room for the rest of a client
        order id where the venue caps it."""
        if self.bot.order_id_prefix:
            check_client_id_prefix(self.ccxt.exchange, self.bot.order_id_prefix, "bot.order_id_prefix")
        if self.ccxt.shared_account and self.ccxt.exchange not in SHAREABLE_ACCOUNTS:
            raise ConfigError(
                "ccxt.shared_account",
                f"{self.ccxt.exchange} accounts are one per bot: their dead man's switch and balances are the "
                f"account's ({ACCOUNT_OF_ITS_OWN.get(self.ccxt.exchange, 'a sub-account each')})",
            )
        prefixes: dict[tuple[str, str], int] = {}
        accounts: dict[tuple[str, str], list[int]] = {}
        for i, entry in enumerate(self.bots):
            venue = entry.venue
            if entry.name == self.bot.name and venue.order_id_prefix and self.bot.order_id_prefix:
                if venue.order_id_prefix != self.bot.order_id_prefix:
                    raise ConfigError(
                        f"bots[{i}].venue.order_id_prefix",
                        f"{venue.order_id_prefix} is not bot.order_id_prefix ({self.bot.order_id_prefix}), the "
                        f"prefix bot {entry.name} gives its orders",
                    )
            if not venue.exchange:
                continue
            place = _place(venue)
            prefix = bot_prefix(entry)
            check_client_id_prefix(venue.exchange, prefix, f"bots[{i}].venue.order_id_prefix")
            first = prefixes.setdefault((place, prefix), i)
            if first != i:
                raise ConfigError(
                    f"bots[{i}].venue.order_id_prefix",
                    f"{prefix} is the order-id prefix of bots[{first}] ({self.bots[first].name}) on {venue.exchange} "
                    "too: a venue step would take both bots' orders (give each bot a prefix of its own)",
                )
            sharing = accounts.setdefault(_account(venue), [])
            if sharing:
                self.check_shared(i, sharing)
            sharing.append(i)
        self.check_running_bot_shares(accounts)

    def check_shared(self, i: int, sharing: list[int]) -> None:
        """bots[i] on the account of the bots `sharing` (their indexes): only on a venue whose accounts may be
        shared, each bot told by its prefix, and no base asset of another's."""
        entry, first = self.bots[i], sharing[0]
        venue = entry.venue
        if venue.exchange not in SHAREABLE_ACCOUNTS:
            raise ConfigError(
                f"bots[{i}].venue",
                f"the {venue.exchange} account of bots[{first}] ({self.bots[first].name}): one account per bot "
                f"({ACCOUNT_OF_ITS_OWN.get(venue.exchange, 'a sub-account each')}), the reconciler holding a key "
                "of its own on it",
            )
        for j in (i, *sharing):
            if self.bots[j].venue.orders != "prefix":
                raise ConfigError(
                    f"bots[{j}].venue.orders",
                    f"{self.bots[j].venue.orders} on the {venue.exchange} account bots[{i}] and bots[{first}] share: a "
                    "venue step would cancel every bot's orders there (bots sharing an account are told by their "
                    "prefixes: orders: prefix)",
                )
        for j in sharing:
            common = sorted(_bases(venue.symbols) & _bases(self.bots[j].venue.symbols))
            if common:
                raise ConfigError(
                    f"bots[{i}].venue.symbols",
                    f"{', '.join(common)} is a base asset of bots[{j}] ({self.bots[j].name}) too, on the "
                    f"{venue.exchange} account they share: bots on one account trade base assets of their own (a "
                    "spot position is the account's balance of its base asset)",
                )

    def check_running_bot_shares(self, accounts: dict[tuple[str, str], list[int]]) -> None:
        """The bot this file runs, on an account it shares (its entry under `bots:` says so): its `ccxt.symbols` trade
        no base asset of another bot on that account."""
        mine = next((i for i, b in enumerate(self.bots) if b.name == self.bot.name and b.venue.exchange), None)
        if mine is None or self.bots[mine].venue.exchange != self.ccxt.exchange:
            return
        for j in accounts.get(_account(self.bots[mine].venue), []):
            common = sorted(_bases(self.ccxt.symbols) & _bases(self.bots[j].venue.symbols)) if j != mine else []
            if common:
                raise ConfigError(
                    "ccxt.symbols",
                    f"{', '.join(common)} is a base asset of bots[{j}] ({self.bots[j].name}) too, on the "
                    f"{self.bots[j].venue.exchange} account this bot shares with it: bots on one account trade base "
                    "assets of their own (a spot position is the account's balance of its base asset)",
                )

    def path(self, value: str) -> Path:
        """Resolve a path rendered at run time (a step's pidfile template) against the configuration file's
        directory; the configured path keys are resolved at load (`path_field`)."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    def database_url(self) -> str:
        """The validated SQLAlchemy URL: a relative SQLite path resolved (under systemd against the unit's state
        directory: `state_base`), bare `postgresql://` on psycopg 3."""
        url = self.database.resolved_url(self.base_dir)
        prefix = "sqlite:///"
        if url.startswith(prefix) and url != "sqlite:///:memory:" and not url.startswith("sqlite:////"):
            relative = Path(url[len(prefix) :]).expanduser()
            url = prefix + str(relative if relative.is_absolute() else state_base(self.base_dir) / relative)
        if url.startswith("postgresql://"):
            url = POSTGRESQL_DRIVER + url[len("postgresql") :]
        if url.startswith(POSTGRESQL_DRIVER) and importlib.util.find_spec("psycopg") is None:
            raise ConfigError("database.url", POSTGRESQL_DRIVER_MISSING)
        return url
