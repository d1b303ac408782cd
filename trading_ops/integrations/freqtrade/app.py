"""The sidecar's aiohttp app for one freqtrade: the bot server's /metrics, /healthz, /readyz and /control/{command}."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, ProcessCollector

from trading_ops import __version__
from trading_ops.bot import server
from trading_ops.bot.control import control_sources
from trading_ops.bot.metrics import PREFIX
from trading_ops.integrations.command_journal import CommandJournal
from trading_ops.integrations.freqtrade.client import ApiMetrics, FreqtradeClient
from trading_ops.integrations.freqtrade.collector import FreqtradeCollector
from trading_ops.integrations.freqtrade.control import ControlMetrics, FreqtradeControl, VenueProbe
from trading_ops.integrations.freqtrade.journal import FreqtradeJournal
from trading_ops.integrations.freqtrade.logs import (
    DatabaseError,
    LogFile,
    Record,
    database_error,
    exchange_error,
    order_problem,
)
from trading_ops.integrations.freqtrade.order_flow import OrderFlow
from trading_ops.integrations.freqtrade.poller import FreqtradePoller, News, Snapshot
from trading_ops.integrations.freqtrade.stream_state import StreamState
from trading_ops.integrations.freqtrade.venue_link import VenueLink
from trading_ops.integrations.halt_gate import GateLabels, HaltGate
from trading_ops.scopes import TokenSet

if TYPE_CHECKING:  # ccxt is imported only by a sidecar that reconciles
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from trading_ops.integrations.freqtrade.reconcile import FreqtradeReconciler
    from trading_ops.venues.ccxt.rest import CcxtBroker


log = logging.getLogger(__name__)

# How a freqtrade run the sidecar journals ends when freqtrade stops answering (bot_runs.stop_reason: 64 at most).
FREQTRADE_ABSENT = "freqtrade does not answer"


@dataclass
class _StateValue:
    value: str


class _StateView:
    """What the bot server reads of a bot's state machine (`state.state.value`), from the last poll."""

    def __init__(self, poller: FreqtradePoller) -> None:
        self._poller = poller

    @property
    def state(self) -> _StateValue:
        return _StateValue(self._poller.snapshot.state or "unknown")


def venue_probe(broker: CcxtBroker) -> VenueProbe:
    """A check that the venue would let freqtrade rebuild its connection: a new session as a careful client starts one
    (the venue's status, its markets loaded: what freqtrade's reload_config needs, or it exits) and a private call."""
    return broker.check_session


class FreqtradeSidecar:
    """Everything the bot server needs of a bot (registry, token, control, metrics, health), for one freqtrade.

    Its registry also holds the sidecar process's own `process_*` families (ProcessCollector): the process that serves
    this target, as `process_start_time_seconds` of a library bot is the bot's (TradingBotReconciliationStale counts
    from it for a target that never reconciled)."""

    def __init__(
        self,
        *,
        name: str,
        url: str,
        username: str,
        password: str,
        token: str | TokenSet,
        registry: CollectorRegistry,
        poll_interval: float = 2.0,
        request_timeout: float = 3.0,
        heartbeat_timeout: float = 15.0,
        broker: CcxtBroker | None = None,
        reconcile_interval: float = 60.0,
        reconcile_confirm: float | None = None,
        log_file: str | None = None,
        stream: bool = False,
        decision_keys: list[Ed25519PublicKey] | None = None,
        data_dir: Path | None = None,
        bot: str = "",
        journal: CommandJournal | None = None,
    ) -> None:
        """`journal`: where the control commands it receives are journaled and read back (`control_events`, what the
        reconciler's audit pulls); `trading-ops freqtrade` gives each target one on `database.url`."""
        if not token:
            raise ValueError("the control API needs a bearer token")
        self.name = name
        # The tokens its control API accepts; a bare string is one token with every right.
        self.tokens = TokenSet.single(token) if isinstance(token, str) else token
        self.registry = registry
        self.heartbeat_timeout = heartbeat_timeout
        client = FreqtradeClient(url, username, password, timeout=request_timeout, metrics=ApiMetrics(registry))
        self.poller = FreqtradePoller(client, poll_interval)
        self.metrics = ControlMetrics(registry, control_sources(self.tokens))
        self.reconciler: FreqtradeReconciler | None = None
        if broker is not None:
            from trading_ops.integrations.freqtrade.reconcile import FreqtradeReconciler

            self.reconciler = FreqtradeReconciler(self.poller, broker, registry, reconcile_interval)
            if reconcile_confirm is not None:
                self.reconciler.confirm = reconcile_confirm
        reconcile = self.reconciler.command if self.reconciler is not None else None
        probe = venue_probe(broker) if broker is not None else None
        if data_dir is None:
            # A library caller without one: the halt's reason and the spent decisions last as long as the process.
            data_dir = Path(tempfile.mkdtemp(prefix="trading-ops-sidecar-"))
            log.warning(
                "freqtrade sidecar %s: no data_dir: its halt and spent decisions are kept in %s", name, data_dir
            )
        # A halt whose reason names a loss limit clears only on a decision the reconciler signed for this bot.
        self.halts = HaltGate(list(decision_keys or []), data_dir, GateLabels(registry, "freqtrade", name), bot or name)
        self.command_journal = journal
        self.control = FreqtradeControl(self.poller, reconcile, heartbeat_timeout, probe, self.halts, journal)
        self.state = _StateView(self.poller)
        self.link = VenueLink()
        self.flow = OrderFlow()
        self.journal = FreqtradeJournal()
        # freqtrade's own candle stream (exchange.enable_ws), from its log: `stream` says it streams before it says so.
        self.stream = StreamState(stream)
        # freqtrade's log file, when the sidecar can read it: the database errors come from it (read on every poll,
        # answered or not), else from /logs (lost when freqtrade exits before a poll reads them).
        self.log_file = LogFile(log_file) if log_file else None
        self._log_file_read = False
        self.transitions: dict[str, float] = {}
        self._last_state: str | None = None
        self.poller.listeners.append(self._observe)
        self.poller.down_listeners.append(self._observe_down)
        registry.register(
            FreqtradeCollector(self.poller, self.link, self.flow, self.transitions, self.journal, self.stream)
        )
        ProcessCollector(registry=registry)
        Gauge(
            f"{PREFIX}_build_info",
            "Build of trading-ops running in this bot's sidecar (always 1).",
            ["version", "integration"],
            registry=registry,
        ).labels(__version__, "freqtrade").set(1)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy: freqtrade answers and its loop completed an iteration within heartbeat_timeout (or it is
        stopped, where freqtrade runs no loop on purpose)."""
        snap = self.poller.snapshot
        age = None if snap.heartbeat is None else max(0.0, time.time() - snap.heartbeat)
        loop_ok = snap.freqtrade_state == "stopped" or (age is not None and age <= self.heartbeat_timeout)
        detail = {
            "freqtrade_up": snap.up,
            "state": snap.state,
            "heartbeat_age_seconds": age,
            "heartbeat_timeout_seconds": self.heartbeat_timeout,
            "error": snap.error or None,
        }
        return snap.up and loop_ok, detail

    def readiness(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        snap = self.poller.snapshot
        down = [name for name, channel in self.link.channels.items() if not channel.connected]
        checks: dict[str, dict[str, Any]] = {
            "freqtrade": {"ok": snap.up, "error": snap.error or None, "polled_at": snap.polled_at},
            "venue": {"ok": not down, "channels_down": down},
            "journal": {
                "ok": not self.journal.failing,
                "reason": self.journal.reason,
                "error": self.journal.error or None,
            },
        }
        return snap.up and not down and not self.journal.failing, checks

    def _observe(self, previous: Snapshot, snap: Snapshot, news: News, count: bool) -> None:
        """One answered poll: the venue link, the order flow and the journal from freqtrade's log and trades; state
        transitions."""
        if self.command_journal is not None:
            self.command_journal.answered()
        if previous.bot_start is not None and snap.bot_start != previous.bot_start:
            self.link.restarted()
        self.link.observe(
            [e for e in map(exchange_error, news.records) if e is not None], snap.heartbeat, count, snap.bot_start
        )
        self.stream.observe(news.records, count)
        self.flow.observe(
            snap.venue,
            snap.strategy,
            snap.trades,
            news.closed_trades,
            [p for p in map(order_problem, news.records) if p is not None],
            count,
        )
        if self.log_file is None:
            errors, count_errors = self._database_errors(news.records), count
        else:
            errors, count_errors = self._file_errors()
        self.journal.observe(errors, snap.trades, news.closed_trades, snap.heartbeat, count, count_errors)
        if snap.state is not None and snap.state != self._last_state:
            if self._last_state is not None:
                self.transitions[snap.state] = self.transitions.get(snap.state, 0.0) + 1
            self._last_state = snap.state

    def _observe_down(self, _snap: Snapshot) -> None:
        """A poll freqtrade did not answer: what its log file says of its database (freqtrade exits on an error)."""
        if self.command_journal is not None:
            self.command_journal.absent(FREQTRADE_ABSENT)
        if self.log_file is not None:
            self.journal.failed(*self._file_errors())

    def _file_errors(self) -> tuple[list[DatabaseError], bool]:
        """The database errors freqtrade's log file has since the last read, and whether to count them (its first
        read is history)."""
        assert self.log_file is not None
        errors = self._database_errors(self.log_file.read())
        count, self._log_file_read = self._log_file_read, True
        return errors, count

    @staticmethod
    def _database_errors(records: list[Record]) -> list[DatabaseError]:
        return [e for e in map(database_error, records) if e is not None]


def create_app(sidecar: FreqtradeSidecar) -> web.Application:
    """The bot server's app over `sidecar`, its poller started and stopped with the app, and the run of its command
    journal begun before it serves and ended (clean) after."""
    app = server.create_app(sidecar)

    async def poller_ctx(_app: web.Application) -> AsyncIterator[None]:
        if sidecar.command_journal is not None:
            await asyncio.to_thread(sidecar.command_journal.begin)
        await sidecar.poller.start()
        if sidecar.reconciler is not None:
            await sidecar.reconciler.start()
        yield
        if sidecar.reconciler is not None:
            await sidecar.reconciler.stop()
        await sidecar.poller.stop()
        if sidecar.command_journal is not None:
            await sidecar.command_journal.close()

    app.cleanup_ctx.append(poller_ctx)
    return app
