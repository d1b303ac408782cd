"""`TradingOpsController`: the NautilusTrader `Controller` that gives a node the library's metrics and control API."""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from collections.abc import Awaitable
from datetime import timedelta
from pathlib import Path
from typing import Any

import nautilus_trader
from nautilus_trader.live.config import ControllerConfig
from nautilus_trader.model.enums import TradingState
from nautilus_trader.system.config import ImportableControllerConfig
from nautilus_trader.trading.controller import Controller
from prometheus_client import CollectorRegistry

from trading_ops.bot.control import ACTED_ON, CALLER, COMMAND_SCOPES, CONTROL_EVENTS, SOURCE_RISK, Caller
from trading_ops.bot.risk import DAILY_LOSS
from trading_ops.bot.state import TradingState as OpsState
from trading_ops.decisions import load_public_key
from trading_ops.integrations.command_journal import CommandJournal, SchemaProblem, open_engine
from trading_ops.integrations.halt_gate import HaltGate
from trading_ops.integrations.nautilus.control import NautilusControl
from trading_ops.integrations.nautilus.exporter import NautilusExporter
from trading_ops.integrations.nautilus.server import ServerThread, on_loop
from trading_ops.scopes import DESTRUCTIVE, READ, TokenSet

log = logging.getLogger(__name__)

TIMER_NAME = "trading-ops-heartbeat"
DEFAULT_TOKEN_ENV = "TRADING_OPS_CONTROL_TOKEN"
# A command waits this long for the node's loop to carry it out (a flatten while halted waits for its orders to pass
# the RiskEngine; reconciliation has a timeout of its own within this).
COMMAND_TIMEOUT_SECONDS = 30.0
# The journal of control commands without a `database_url`: a SQLite file of the controller's own in its data dir.
JOURNAL_FILE = "control-journal.db"
JOURNAL_VENUE = "nautilus"


class TradingOpsControllerConfig(ControllerConfig, frozen=True, kw_only=True):
    """Where the controller serves and what it exports.

    The bearer token of the control API comes from `token_file` or the environment variable `token_env`, never from
    the configuration itself. `venue` and `strategy` are the `venue` and `strategy` labels of the families (default:
    the venue of the first execution client, the trader id). Realized and unrealized P&L are summed in
    `quote_currency`; `daily_loss_limit` (positive, that currency) halts the node (the RiskEngine's HALTED) when the
    day's loss reaches it, as the library's in-process limit does. Such a halt (or a `halt` whose reason names a loss
    limit) clears only on a clear_halt decision the reconciler signed for `bot` (default: the `strategy` label) with
    a key of `decision_keys` (as bot.decision_keys: PEM files or `ed25519:...`); `data_dir` keeps the halt's reason and
    the decisions acted on (default: a folder of the process's temporary directory, which a restart may lose).

    Every control command an authenticated caller sends (accepted or refused; `status` and `control_events` aside) is
    journaled as a bot on the runtime journals it, and served back with `control_events` for the reconciler's audit:
    in the database of `database_url` (or `database_url_file`, for a URL with a password: the trading-ops database,
    already migrated by `trading-ops db upgrade`, or the node refuses to build), else in a SQLite file of the
    controller's own, `control-journal.db` in its data dir's folder for the trader, which it migrates itself."""

    host: str = "127.0.0.1"
    port: int = 9310
    token_file: str | None = None
    token_env: str = DEFAULT_TOKEN_ENV
    web_config_file: str | None = None
    venue: str | None = None
    strategy: str | None = None
    quote_currency: str = "USD"
    daily_loss_limit: float | None = None
    heartbeat_interval_seconds: float = 1.0
    heartbeat_timeout_seconds: float = 15.0
    market_data_stale_seconds: float = 10.0
    decision_keys: tuple[str, ...] = ()
    data_dir: str | None = None
    bot: str | None = None
    database_url: str | None = None
    database_url_file: str | None = None


def controller_config(**config: Any) -> ImportableControllerConfig:
    """What goes in `TradingNodeConfig(controller=...)`: `controller_config(port=9310, token_file=...)`."""
    return ImportableControllerConfig(
        controller_path="trading_ops.integrations.nautilus.controller:TradingOpsController",
        config_path="trading_ops.integrations.nautilus.controller:TradingOpsControllerConfig",
        config=config,
    )


def read_token(config: TradingOpsControllerConfig) -> str:
    if config.token_file:
        token = Path(config.token_file).read_text().strip()
        where = f"token_file {config.token_file}"
    else:
        token = os.environ.get(config.token_env, "").strip()
        where = f"environment variable {config.token_env}"
    if not token:
        raise ValueError(f"the trading-ops control API needs a bearer token: {where} is empty or unset")
    return token


class _StateView:
    """What the bot server reads of a bot's state (`state.state.value`): the last state the node's thread exported."""

    def __init__(self, exporter: NautilusExporter) -> None:
        self._exporter = exporter

    @property
    def state(self) -> OpsState:
        return self._exporter.state.state or OpsState.ACTIVE


def data_dir(config: TradingOpsControllerConfig, trader_id: str) -> Path:
    """The controller's folder for this trader: the halt's reason, the decisions acted on, its own journal."""
    base = Path(config.data_dir) if config.data_dir else Path(tempfile.gettempdir()) / "trading-ops-nautilus"
    return base / trader_id


def journal_engine(config: TradingOpsControllerConfig, trader_id: str) -> Any:
    """The engine the control commands are journaled on (see TradingOpsControllerConfig); ValueError in one line when
    the configured database cannot hold them."""
    if config.database_url and config.database_url_file:
        raise ValueError("give only one of database_url and database_url_file")
    url = config.database_url
    if config.database_url_file:
        url = Path(config.database_url_file).read_text().strip()
        if not url:
            raise ValueError(f"database_url_file {config.database_url_file} is empty")
    if url is None:
        from trading_ops.db import migrate

        folder = data_dir(config, trader_id)
        folder.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{folder / JOURNAL_FILE}"
        if not config.data_dir:
            log.warning(
                "the control commands are journaled in %s, a temporary directory a reboot may empty: give the "
                "controller a database_url or a data_dir",
                folder,
            )
        # One migration at a time: two nodes of one trader id starting at once on a shared data dir.
        with open(folder / f"{JOURNAL_FILE}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            migrate.upgrade(url)
    try:
        return open_engine(url)
    except SchemaProblem as exc:
        raise ValueError(f"database_url: {exc} (the controller journals its control commands there)") from None


class _ThreadedControl:
    """The control plane as the server's thread sees it: each command carried out on the node's loop, and journaled
    (`control_events` read on the server's thread: the node's loop never waits on the journal)."""

    def __init__(self, control: NautilusControl, loop: Any, journal: CommandJournal) -> None:
        self._control = control
        self._loop = loop
        self.journal = journal
        self._events = journal.handler

    @property
    def commands(self) -> list[str]:
        return sorted([*self._control.commands, CONTROL_EVENTS])

    def has(self, name: str) -> bool:
        return name == CONTROL_EVENTS or self._control.has(name)

    def record(self, command: str, caller: Caller, outcome: str, detail: dict[str, Any]) -> Awaitable[None] | None:
        """A command an authenticated caller sent, carried out or refused, to the journal (the reads aside)."""
        if self.scope(command) != READ:
            return self.journal.record(command, caller, outcome, detail)
        return None

    def scope(self, name: str) -> str:
        """The scope a token needs to send command `name` (the library's: status read, pause operate, flatten
        destructive)."""
        return COMMAND_SCOPES.get(name, DESTRUCTIVE)

    async def run(self, name: str, args: dict[str, Any], caller: Caller | None = None) -> dict[str, Any]:
        CALLER.set(caller)
        if name == CONTROL_EVENTS:
            return await self._events(args)
        if caller is not None:
            log.info("control %s by %s", name, caller)

        async def run() -> tuple[dict[str, Any], dict[str, Any] | None]:
            # The signed decision the command acted on is set in the node loop's task: brought back to the request's.
            return await self._control.run(name, args), ACTED_ON.get()

        result, acted = await on_loop(self._loop, run, COMMAND_TIMEOUT_SECONDS)
        if acted:
            ACTED_ON.set(acted)
        return dict(result)


class TradingOpsController(Controller):
    """Add it to a node with `TradingNodeConfig(controller=controller_config(...))`.

    Exports the `tradingbot_` families from the node's message bus (order events, quotes, the RiskEngine's trading
    state) and, on the node's clock, from its cache and portfolio (positions, balances, P&L, client connections,
    heartbeat); serves /metrics, /healthz, /readyz and the bearer-authenticated /control/{command} from a thread of its
    own; carries out each command on the node's event loop (see NautilusControl)."""

    def __init__(self, trader: Any, config: TradingOpsControllerConfig | None = None) -> None:
        config = config or TradingOpsControllerConfig()
        super().__init__(trader=trader, config=config)
        self.ops_config = config
        self.token = read_token(config)
        # Where the control commands are journaled: a database that cannot hold them refuses the node here.
        trader_id = trader.trader_id.value
        self.journal = CommandJournal(
            journal_engine(config, trader_id), config.bot or config.strategy or trader_id, JOURNAL_VENUE
        )
        self.registry: CollectorRegistry | None = None
        self.exporter: NautilusExporter | None = None
        self.control: NautilusControl | None = None
        self.server: ServerThread | None = None
        self._last_heartbeat: float | None = None

    # -- what the bot server reads (trading_ops.bot.server) --------------------------------------------------------
    @property
    def metrics(self) -> Any:
        assert self.exporter is not None
        return self.exporter.metrics

    @property
    def port(self) -> int | None:
        return self.server.port if self.server is not None else None

    def heartbeat_age(self) -> float | None:
        return None if self._last_heartbeat is None else time.monotonic() - self._last_heartbeat

    def health(self) -> tuple[bool, dict[str, Any]]:
        age = self.heartbeat_age()
        timeout = self.ops_config.heartbeat_timeout_seconds
        return age is not None and age <= timeout, {"heartbeat_age_seconds": age, "heartbeat_timeout_seconds": timeout}

    def readiness(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        assert self.exporter is not None
        clients = self.exporter.connected
        stale = [
            symbol
            for symbol in self.exporter.subscribed
            if (age := self.exporter.metrics.market_data_age(symbol)) is None
            or age > self.ops_config.market_data_stale_seconds
        ]
        checks: dict[str, dict[str, Any]] = {
            "clients": {"ok": all(clients.values()), "connected": clients},
            "market_data": {"ok": not stale, "stale": stale},
            "loop": {"ok": self.health()[0], "heartbeat_age_seconds": self.heartbeat_age()},
        }
        return all(c["ok"] for c in checks.values()), checks

    # -- Nautilus's actor lifecycle (on the node's thread) ---------------------------------------------------------
    def on_start(self) -> None:
        config = self.ops_config
        trader = self._trader
        venue = config.venue or self._first_venue()
        # A registry per start: a node stopped and started again in its process exports afresh, as a new bot would.
        self.registry = CollectorRegistry()
        self.exporter = NautilusExporter(
            venue=venue,
            strategy=config.strategy or trader.trader_id.value,
            quote_currency=config.quote_currency,
            registry=self.registry,
            daily_loss_limit=config.daily_loss_limit,
        )
        self.exporter.info(trader.trader_id.value, nautilus_trader.__version__)
        # Starting until a tick finds the node's strategies running (the trader starts them after its actors), as the
        # runtime's phase says it: rules and playbooks leave a bot that starts alone.
        self.exporter.metrics.phase("starting")
        if trader._exec_engine.reconciliation:
            # A live node starts its trader (and so this controller) only once its execution reconciliation passed.
            self.exporter.reconciliation.run("startup", "clean", time.time())
        strategy = config.strategy or trader.trader_id.value
        self.control = NautilusControl(
            trader, self.exporter, self._tick, self.heartbeat_age, halts=self._halt_gate(strategy)
        )
        self.msgbus.subscribe(topic="events.order.*", handler=self._on_order_event)
        self.msgbus.subscribe(topic="events.position.*", handler=self._on_change)
        self.msgbus.subscribe(topic="events.risk", handler=self._on_change)
        self.msgbus.subscribe(topic="data.quotes.*", handler=self._on_quote)
        self._tick()
        # The live clock calls its timers from a thread of its own: the tick is handed to the node's loop, where the
        # cache is touched (and a stuck loop stops the heartbeat).
        loop = trader._loop
        assert loop is not None, "a live node has an event loop"
        self.clock.set_timer(
            TIMER_NAME,
            timedelta(seconds=config.heartbeat_interval_seconds),
            callback=lambda _event: loop.call_soon_threadsafe(self._tick),
        )
        self.journal.begin()
        self.server = ServerThread(
            _Instrumentation(self, _ThreadedControl(self.control, trader._loop, self.journal)),
            config.host,
            config.port,
            config.web_config_file,
        )
        self.server.start()

    def on_stop(self) -> None:
        if self.exporter is not None:
            self.exporter.metrics.phase("stopping")
        if TIMER_NAME in self.clock.timer_names:
            self.clock.cancel_timer(TIMER_NAME)
        for topic, handler in (
            ("events.order.*", self._on_order_event),
            ("events.position.*", self._on_change),
            ("events.risk", self._on_change),
            ("data.quotes.*", self._on_quote),
        ):
            self.msgbus.unsubscribe(topic=topic, handler=handler)
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.journal.run_id is not None:
            self.journal.end(clean=True, reason="stopped")
            # A node started again in its process journals as a new run, on a new worker.
            self.journal = CommandJournal(self.journal.engine, self.journal.bot, JOURNAL_VENUE)

    def _halt_gate(self, strategy: str) -> HaltGate:
        """What a clear_halt of a loss-limit halt checks: a decision signed for this bot by a trusted key."""
        config = self.ops_config
        keys = [load_public_key(value, None, f"decision_keys[{i}]") for i, value in enumerate(config.decision_keys)]
        assert self.exporter is not None
        folder = data_dir(config, self._trader.trader_id.value)
        return HaltGate(keys, folder, self.exporter.metrics, config.bot or strategy)

    def _first_venue(self) -> str:
        for client in self._trader._exec_engine._clients.values():
            if client.venue is not None:
                return str(client.venue.value)
        return "nautilus"

    # -- message bus and clock -------------------------------------------------------------------------------------
    def _on_order_event(self, event: Any) -> None:
        assert self.exporter is not None
        self.exporter.order_event(event, self.cache.order(event.client_order_id))

    def _on_quote(self, quote: Any) -> None:
        assert self.exporter is not None
        self.exporter.quote(quote.instrument_id.symbol.value)

    def _on_change(self, _event: Any) -> None:
        self._refresh()

    def _tick(self) -> None:
        """The heartbeat, on the node's clock: it stops when the node's loop does."""
        started = time.perf_counter()
        self._refresh()
        self._last_heartbeat = time.monotonic()
        self.journal.beat()
        assert self.exporter is not None
        self.exporter.heartbeat(time.perf_counter() - started)

    def _refresh(self) -> None:
        exporter, control = self.exporter, self.control
        assert exporter is not None and control is not None
        trader = self._trader
        quoted = {i for c in trader._data_engine._clients.values() for i in c.subscribed_quote_ticks()}
        exporter.snapshot(self.cache, self.portfolio, quoted, time.time())
        data = {f"data:{c.id.value}": bool(c.is_connected) for c in trader._data_engine._clients.values()}
        orders = {f"exec:{c.id.value}": bool(c.is_connected) for c in trader._exec_engine._clients.values()}
        exporter.connected = {**data, **orders}
        exporter.subscribed = sorted({i.symbol.value for i in quoted})
        exporter.connections(all(data.values()) if data else None, all(orders.values()) if orders else None)
        self._loss_limit(control)
        exporter.state.set(control.state())
        if exporter.metrics.current_phase == "starting" and control.running():
            exporter.metrics.phase("trading")

    def _loss_limit(self, control: NautilusControl) -> None:
        """The day's loss at the limit halts the node (again if someone clears the halt while it is still reached; a
        flatten under way, REDUCING for its orders, is left alone)."""
        assert self.exporter is not None
        limit = self.ops_config.daily_loss_limit
        if limit is None or limit <= 0 or control.flattening:
            return
        loss = -(self.exporter.realized + self.exporter.unrealized)
        if loss >= limit and control.risk_engine.trading_state != TradingState.HALTED:
            log.warning("daily loss %.2f reached the limit %.2f: halting the node", loss, limit)
            # The runtime's words: a person clears it, on a decision others approved (HaltGate).
            control.halts.halted(f"risk limit {DAILY_LOSS}: loss {loss:.2f} >= {limit:.2f}", True)
            control.risk_engine.set_trading_state(TradingState.HALTED)
            self.exporter.metrics.control_command("halt", SOURCE_RISK)


class _Instrumentation:
    """The controller as trading_ops.bot.server reads a bot: registry, token, control, metrics, state, health."""

    def __init__(self, controller: TradingOpsController, control: _ThreadedControl) -> None:
        self._controller = controller
        self.control = control
        self.registry = controller.registry
        # The controller's one token has every right of its API, as a bot's single control_token has.
        self.tokens = TokenSet.single(controller.token)
        self.metrics = controller.metrics
        assert controller.exporter is not None
        self.state = _StateView(controller.exporter)

    def health(self) -> tuple[bool, dict[str, Any]]:
        return self._controller.health()

    def readiness(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        return self._controller.readiness()
