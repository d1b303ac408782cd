"""The `tradingbot_` families of one freqtrade, rendered fresh on every scrape from the poller's last snapshot."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from trading_ops.bot.metrics import PHASES, PREFIX
from trading_ops.bot.state import TradingState
from trading_ops.integrations.freqtrade.journal import FreqtradeJournal
from trading_ops.integrations.freqtrade.limits import limit_families
from trading_ops.integrations.freqtrade.order_flow import OrderFlow
from trading_ops.integrations.freqtrade.poller import FreqtradePoller, Snapshot, symbol_of
from trading_ops.integrations.freqtrade.stream_state import StreamState
from trading_ops.integrations.freqtrade.venue_link import CHANNELS, VenueLink

# The library's order-flow counters (trading_ops.bot.metrics): name, help, labels after venue and strategy.
ORDER_FLOW_FAMILIES = (
    ("orders_submitted", "Orders sent to the venue.", ("symbol", "side", "order_type")),
    ("orders_acknowledged", "Orders the venue acknowledged.", ("symbol", "side", "order_type")),
    ("orders_rejected", "Orders the venue rejected, by reason.", ("symbol", "reason")),
    ("orders_canceled", "Orders canceled (by the bot or the venue).", ("symbol",)),
    (
        "orders_outcome_unknown",
        "Orders whose submission got no answer (network error, venue unavailable): they may be on the venue.",
        ("symbol",),
    ),
    ("fills", "Fills (executions) received.", ("symbol", "side", "liquidity")),
    ("filled_quantity", "Quantity filled, in units of the base asset.", ("symbol", "side")),
    ("filled_notional", "Notional value filled, in units of the quote asset.", ("symbol", "side")),
    ("fees", "Fees paid, in units of the quote asset.", ("symbol",)),
    (
        "fee_rebates",
        "Fee rebates received (negative fees, e.g. maker rebates), in units of the quote asset.",
        ("symbol",),
    ),
)


class FreqtradeCollector(Collector):
    """Exports what freqtrade told the last poll under the library's names (state, heartbeat, positions, P&L,
    balances, open orders, the venue connection per channel, its database's writability, readiness) and freqtrade's
    own signals under `tradingbot_freqtrade_*`; and what the sidecar saw happen as the library's counters (order flow,
    fills, fees, venue errors, journal write failures, disconnects and reconnects, state transitions), kept while
    freqtrade is down.

    `tradingbot_freqtrade_up` is always there. While it is 0 the data families are left out (a dead freqtrade
    has no positions to report, and zeros would read as "flat"); the heartbeat keeps its last value, so it goes
    stale and TradingBotHeartbeatStale fires as for a hung bot. A freqtrade in its `stopped` state (halted) runs
    no trading loop at all, by design: its heartbeat is left out rather than reported stale.
    """

    def __init__(
        self,
        poller: FreqtradePoller,
        link: VenueLink | None = None,
        flow: OrderFlow | None = None,
        transitions: dict[str, float] | None = None,
        journal: FreqtradeJournal | None = None,
        stream: StreamState | None = None,
    ) -> None:
        self._poller = poller
        self._stream = stream or StreamState()
        self._link = link or VenueLink()
        self._flow = flow or OrderFlow()
        self._transitions = transitions if transitions is not None else {}
        self._journal = journal or FreqtradeJournal()

    def describe(self) -> Iterator[Metric]:
        return iter(())  # families depend on the snapshot: registration must not call collect()

    def collect(self) -> Iterator[Metric]:
        snap = self._poller.snapshot
        timeframe_ms = snap.config.get("timeframe_ms")
        timeframe = timeframe_ms / 1000 if isinstance(timeframe_ms, int | float) and timeframe_ms > 0 else None
        yield from self._stream.families(timeframe, snap.up)
        yield GaugeMetricFamily(
            f"{PREFIX}_freqtrade_up",
            "1 when freqtrade's REST API answered the sidecar's last poll, 0 when it did not.",
            1 if snap.up else 0,
        )
        if snap.version is not None:
            info = InfoMetricFamily(f"{PREFIX}_freqtrade", "freqtrade's version and setup (always 1).")
            info.add_metric([], _info(snap))
            yield info
        if snap.polled_at is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_freqtrade_last_poll_success_timestamp_seconds",
                "Unix time of the sidecar's last poll that freqtrade answered.",
                snap.polled_at,
            )
        if snap.heartbeat is not None and snap.freqtrade_state != "stopped":
            yield GaugeMetricFamily(
                f"{PREFIX}_heartbeat_timestamp_seconds",
                "Unix time at which the trading loop last completed an iteration.",
                snap.heartbeat,
            )
        if snap.bot_start is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_freqtrade_bot_start_timestamp_seconds",
                "Unix time at which this freqtrade process started trading.",
                snap.bot_start,
            )
        yield GaugeMetricFamily(
            f"{PREFIX}_ready",
            "1 when the bot is ready to trade: freqtrade answers, its venue connection is up on every channel and it "
            "can write its database.",
            1 if snap.up and self._link.all_connected and not self._journal.failing else 0,
        )
        # The journal's state is kept while freqtrade is down: freqtrade exits on a database error its loop does not
        # catch, and a restart must prove the database writable again (trading_ops.integrations.freqtrade.journal).
        failing = GaugeMetricFamily(
            f"{PREFIX}_journal_failing",
            "1 while freqtrade cannot write its database, for the reason its log gives (disk_full, "
            "database_unavailable, write_error).",
            labels=["venue", "reason"],
        )
        for reason, value in self._journal.gauges().items():
            failing.add_metric([snap.venue, reason], value)
        yield failing
        yield from self._history(snap)
        phase = self._poller.phase
        if phase is not None:
            yield _phase_family(phase)
        if snap.up:
            yield from _data_families(snap)
            connected = GaugeMetricFamily(
                f"{PREFIX}_broker_connected",
                "1 when the connection to the venue is up, per channel.",
                labels=["venue", "channel"],
            )
            for channel in CHANNELS:
                connected.add_metric([snap.venue, channel], 1 if self._link.connected(channel) else 0)
            yield connected

    def _history(self, snap: Snapshot) -> Iterator[Metric]:
        """The counters of what the sidecar saw happen: kept while freqtrade is down (they are history, not state)."""
        venue = snap.venue
        for name, doc, values in (
            ("broker_disconnects", "Connections to the venue lost, per channel.", self._link.disconnects),
            ("broker_reconnects", "Connections re-established after a loss, per channel.", self._link.reconnects),
        ):
            family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=["venue", "channel"])
            for channel, value in sorted(values.items()):
                family.add_metric([venue, channel], value)
            yield family
        errors = CounterMetricFamily(
            f"{PREFIX}_venue_errors", "Errors returned by the venue, by class.", labels=["venue", "error_class"]
        )
        for error_class, value in sorted(self._link.errors.items()):
            errors.add_metric([venue, error_class], value)
        yield errors
        write_failures = CounterMetricFamily(
            f"{PREFIX}_journal_write_failures",
            "Database calls that failed on the database or its storage, as freqtrade's log reports them.",
            labels=["venue"],
        )
        write_failures.add_metric([venue], self._journal.failures)
        yield write_failures
        for name, doc, labels in ORDER_FLOW_FAMILIES:
            family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=["venue", "strategy", *labels])
            for label_values, value in sorted(self._flow.counts.get(name, {}).items()):
                family.add_metric(list(label_values), value)
            yield family
        transitions = CounterMetricFamily(
            f"{PREFIX}_state_transitions", "Transitions into each trading state.", labels=["state"]
        )
        for state, value in sorted(self._transitions.items()):
            transitions.add_metric([state], value)
        yield transitions


def _info(snap: Snapshot) -> dict[str, str]:
    c = snap.config
    return {
        "version": str(snap.version),
        "exchange": snap.venue,
        "strategy": snap.strategy,
        "bot_name": str(c.get("bot_name") or ""),
        "dry_run": str(bool(c.get("dry_run"))).lower(),
        "trading_mode": str(c.get("trading_mode") or ""),
        "stake_currency": str(c.get("stake_currency") or ""),
    }


def _phase_family(current: str) -> GaugeMetricFamily:
    """The lifecycle phase, one-hot, as the runtime exports it (rules tell a bot starting from one hung or down)."""
    doc = "Lifecycle phase of the bot runtime, one-hot: starting, trading or stopping."
    phase = GaugeMetricFamily(f"{PREFIX}_phase", doc, labels=["phase"])
    for each in PHASES:
        phase.add_metric([each], 1 if each == current else 0)
    return phase


def _state_families(current: str | None) -> Iterator[Metric]:
    """The trading state, one-hot, and the kill switch; nothing while the state is unknown."""
    if current is None:
        return
    state = GaugeMetricFamily(
        f"{PREFIX}_state", "Trading state of the bot, one-hot: 1 for the current state.", labels=["state"]
    )
    for s in TradingState:
        state.add_metric([s.value], 1 if s.value == current else 0)
    yield state
    yield GaugeMetricFamily(
        f"{PREFIX}_kill_switch_engaged",
        "1 while the kill switch holds the bot halted.",
        1 if current == TradingState.HALTED.value else 0,
    )


def _data_families(snap: Snapshot) -> Iterator[Metric]:
    venue, strategy = snap.venue, snap.strategy
    yield from _state_families(snap.state)

    quantity = GaugeMetricFamily(
        f"{PREFIX}_position_quantity",
        "Signed position in units of the base asset (negative is short).",
        labels=["venue", "symbol"],
    )
    notional = GaugeMetricFamily(
        f"{PREFIX}_position_notional",
        "Signed position valued at the mark price, in units of the quote asset.",
        labels=["venue", "symbol"],
    )
    positions: dict[str, list[float]] = {}
    for trade in snap.trades:
        amount = _float(trade.get("amount"))
        sign = -1.0 if trade.get("is_short") else 1.0
        totals = positions.setdefault(symbol_of(str(trade.get("pair", "?"))), [0.0, 0.0])
        totals[0] += sign * amount
        totals[1] += sign * amount * _float(trade.get("current_rate"))
    for symbol, (qty, value) in sorted(positions.items()):
        quantity.add_metric([venue, symbol], qty)
        notional.add_metric([venue, symbol], value)
    yield quantity
    yield notional

    open_orders = GaugeMetricFamily(
        f"{PREFIX}_open_orders", "Orders acknowledged and still working on the venue.", labels=["venue", "symbol"]
    )
    counts: dict[str, int] = {}
    for trade, _order in snap.open_orders():
        symbol = symbol_of(str(trade.get("pair", "?")))
        counts[symbol] = counts.get(symbol, 0) + 1
    for symbol in sorted(set(counts) | set(positions)):
        open_orders.add_metric([venue, symbol], counts.get(symbol, 0))
    yield open_orders

    balance = GaugeMetricFamily(
        f"{PREFIX}_balance", "Account balance per asset, in units of that asset.", labels=["venue", "asset"]
    )
    for currency in snap.balance.get("currencies") or ():
        if isinstance(currency, dict) and currency.get("currency"):
            balance.add_metric([venue, str(currency["currency"])], _float(currency.get("balance")))
    yield balance

    if snap.today is not None:
        yield _pnl(
            "realized_pnl",
            "Realized profit and loss since the start of the UTC day, in units of the quote asset.",
            venue,
            strategy,
            _float(snap.today.get("abs_profit")),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_freqtrade_daily_profit_ratio",
            "Today's (UTC) closed profit relative to the day's starting balance, as freqtrade's /daily computes it.",
            _float(snap.today.get("rel_profit")),
        )
    yield _pnl(
        "unrealized_pnl",
        "Unrealized profit and loss of open positions at the mark price, in units of the quote asset.",
        venue,
        strategy,
        sum(_float(t.get("profit_abs")) for t in snap.trades),
    )

    yield GaugeMetricFamily(f"{PREFIX}_freqtrade_open_trades", "Trades freqtrade holds open.", len(snap.trades))
    if snap.max_open_trades is not None:
        yield GaugeMetricFamily(
            f"{PREFIX}_freqtrade_max_open_trades",
            "freqtrade's max_open_trades: it opens no trade beyond this many (absent when unlimited).",
            snap.max_open_trades,
        )
    yield from limit_families(snap)  # the runtime's risk-limit families that freqtrade has a notion of (limits.py)
    locks = [lock for lock in snap.locks.get("locks") or () if isinstance(lock, dict) and lock.get("active")]
    yield GaugeMetricFamily(
        f"{PREFIX}_freqtrade_pair_locks",
        "Active pair locks: pairs freqtrade will not enter (protections, manual locks).",
        len(locks),
    )
    p = snap.profit
    for name, key, doc in (
        ("trades", "trade_count", "Trades freqtrade opened (open and closed) since its database began."),
        ("closed_trades", "closed_trade_count", "Trades freqtrade closed since its database began."),
        ("winning_trades", "winning_trades", "Closed trades that made a profit."),
        ("losing_trades", "losing_trades", "Closed trades that made a loss."),
    ):
        if key in p:
            yield CounterMetricFamily(f"{PREFIX}_freqtrade_{name}", doc, _float(p[key]))
    if "profit_closed_coin" in p:
        yield GaugeMetricFamily(
            f"{PREFIX}_freqtrade_closed_profit",
            "Profit of every closed trade since the database began, in units of the stake currency.",
            _float(p["profit_closed_coin"]),
        )


def _pnl(name: str, doc: str, venue: str, strategy: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=["venue", "strategy"])
    family.add_metric([venue, strategy], value)
    return family


def _float(value: Any) -> float:
    try:
        return float(value) if value is not None else 0.0
    except (TypeError, ValueError):
        return 0.0
