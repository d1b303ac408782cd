"""The library's `tradingbot_` families fed from a NautilusTrader node's events and cache, on the node's own thread."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from nautilus_trader.model.enums import LiquiditySide, OrderSide, OrderType, TradingState
from nautilus_trader.model.events import (
    OrderAccepted,
    OrderCanceled,
    OrderDenied,
    OrderExpired,
    OrderFilled,
    OrderRejected,
    OrderSubmitted,
)
from nautilus_trader.model.identifiers import Venue
from prometheus_client import CollectorRegistry, Gauge, ProcessCollector

from trading_ops.bot.control import HEADER_SOURCES, SOURCE_RISK, STATE_COMMANDS
from trading_ops.bot.metrics import PREFIX, BotMetrics
from trading_ops.bot.reconciliation_metrics import ReconciliationMetrics
from trading_ops.bot.risk import OPEN_POSITIONS_HELP
from trading_ops.bot.state import StateMetrics
from trading_ops.bot.state import TradingState as OpsState

# Nautilus's order types as the catalogue's bounded `order_type` label (its ORDER_TYPES); a post-only limit order is
# `post_only`, the touched and trailing kinds are the stop or limit they become.
ORDER_TYPES = {
    OrderType.MARKET: "market",
    OrderType.LIMIT: "limit",
    OrderType.STOP_MARKET: "stop",
    OrderType.STOP_LIMIT: "stop_limit",
    OrderType.MARKET_TO_LIMIT: "market",
    OrderType.MARKET_IF_TOUCHED: "stop",
    OrderType.LIMIT_IF_TOUCHED: "stop_limit",
    OrderType.TRAILING_STOP_MARKET: "stop",
    OrderType.TRAILING_STOP_LIMIT: "stop_limit",
}
SIDES = {OrderSide.BUY: "buy", OrderSide.SELL: "sell"}
# A venue's reject reason is free text: counted by these words, in this order, else `other` (the label stays bounded).
REJECT_REASONS = (
    ("insufficient", "insufficient_funds"),
    ("reduce", "reduce_only"),
    ("margin", "insufficient_funds"),
    ("price", "invalid_order"),
    ("quantity", "invalid_order"),
    ("invalid", "invalid_order"),
)


def reject_reason(text: str) -> str:
    lowered = text.lower()
    for word, reason in REJECT_REASONS:
        if word in lowered:
            return reason
    return "other"


def refusal_reason(text: str) -> str:
    """Why the RiskEngine denied an order, as the library's `orders_refused_total` reason."""
    lowered = text.lower()
    if "halted" in lowered:
        return "halted"
    if "reducing" in lowered:
        return "reduce_only"
    return "risk_nautilus"


def ops_state(trading_state: TradingState, strategies_running: bool) -> OpsState:
    """The library's trading state of a node: the RiskEngine's HALTED and REDUCING as they are; ACTIVE with its
    strategies stopped is paused."""
    if trading_state == TradingState.HALTED:
        return OpsState.HALTED
    if trading_state == TradingState.REDUCING:
        return OpsState.REDUCE_ONLY
    return OpsState.ACTIVE if strategies_running else OpsState.PAUSED


class StateGauges:
    """`tradingbot_state{state}` (one-hot), `tradingbot_kill_switch_engaged` and `tradingbot_state_transitions_total`,
    as the library's state machine exports them, set from what the node says."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._metrics = StateMetrics(registry, PREFIX)
        self.state: OpsState | None = None

    def set(self, state: OpsState) -> bool:
        """Export `state`; whether it changed."""
        if state is self.state:
            return False
        if self.state is None:
            self._metrics.show(state)
        else:
            self._metrics.transition(state)
        self.state = state
        return True


class NautilusExporter:
    """Everything the controller exports, on one registry: BotMetrics fed by order events and quotes, and snapshots of
    the cache and portfolio (positions, balances, P&L, connections) taken on the node's clock.

    Every method runs on the node's event-loop thread (message-bus handlers, the clock's timer); a scrape on the
    server's thread reads only the prometheus_client objects."""

    def __init__(
        self,
        *,
        venue: str,
        strategy: str,
        quote_currency: str,
        registry: CollectorRegistry,
        daily_loss_limit: float | None = None,
    ) -> None:
        self.registry = registry
        self.quote_currency = quote_currency
        self.metrics = BotMetrics(
            venue=venue, strategy=strategy, registry=registry, daily_loss_limit=daily_loss_limit, clock=time.time
        )
        self.metrics.control_commands_known(STATE_COMMANDS, (*HEADER_SOURCES, SOURCE_RISK))
        self.reconciliation = ReconciliationMetrics(self.metrics)
        self.state = StateGauges(registry)
        ProcessCollector(registry=registry)
        # What the runtime's open_positions limit counts; the node has no such limit (nor a drawdown one): no
        # `tradingbot_risk_limit` for it (docs/nautilus.md).
        self._open_positions = Gauge(
            f"{PREFIX}_open_positions", OPEN_POSITIONS_HELP, ["venue", "strategy"], registry=registry
        ).labels(venue, strategy)
        self._info = Gauge(
            f"{PREFIX}_nautilus_info",
            "The NautilusTrader node this controller runs in (always 1).",
            ["trader_id", "nautilus_version"],
            registry=registry,
        )
        self.realized = 0.0
        self.unrealized = 0.0
        # `data:<client id>` / `exec:<client id>` -> connected, and the symbols quoted to the node: what /readyz says
        # (read from the server's thread).
        self.connected: dict[str, bool] = {}
        self.subscribed: list[str] = []
        self._positions: set[Any] = set()  # the instruments whose position is exported
        self._day: str | None = None
        self._realized_at_day_start = 0.0

    def info(self, trader_id: str, nautilus_version: str) -> None:
        self._info.labels(trader_id, nautilus_version).set(1)

    # -- events ----------------------------------------------------------------------------------------------------
    def order_event(self, event: Any, order: Any) -> None:
        """One order event of the message bus (`events.order.*`); `order` is the cache's order (None if unknown)."""
        m = self.metrics
        symbol = event.instrument_id.symbol.value
        client_order_id = event.client_order_id.value
        side = SIDES.get(order.side, "buy") if order is not None else "buy"
        order_type = _order_type(order)
        if isinstance(event, OrderSubmitted):
            m.order_submitted(symbol, side, order_type, client_order_id)
        elif isinstance(event, OrderAccepted):
            m.order_acknowledged(symbol, side, order_type, client_order_id)
        elif isinstance(event, OrderRejected):
            m.order_rejected(symbol, reject_reason(str(event.reason)), client_order_id)
        elif isinstance(event, OrderDenied):
            m.order_refused(symbol, refusal_reason(str(event.reason)))
        elif isinstance(event, OrderCanceled | OrderExpired):
            m.order_canceled(symbol, client_order_id)
        elif isinstance(event, OrderFilled):
            fee = 0.0
            if event.commission is not None and event.commission.currency.code == self.quote_currency:
                fee = float(event.commission.as_double())
            m.order_filled(
                symbol,
                SIDES.get(event.order_side, "buy"),
                float(event.last_qty.as_double()),
                float(event.last_px.as_double()),
                fee,
                "maker" if event.liquidity_side == LiquiditySide.MAKER else "taker",
                order_type=order_type,
                client_order_id=client_order_id,
                order_done=order is None or order.is_closed,
            )

    def quote(self, symbol: str) -> None:
        self.metrics.market_data(symbol)

    # -- snapshots on the node's clock -----------------------------------------------------------------------------
    def snapshot(self, cache: Any, portfolio: Any, quoted: Iterable[Any], now: float) -> None:
        """Positions, balances and P&L from the cache and the portfolio, as Nautilus has them now. A position is
        exported for every instrument with an open position or quoted to the node (`quoted`), and stays exported (at 0)
        once closed: not for every instrument a venue lists (thousands on some)."""
        m = self.metrics
        current = {p.instrument_id for p in cache.positions_open()} | set(quoted)
        self._positions |= current
        for iid in self._positions:
            quantity = float(portfolio.net_position(iid))
            quote = cache.quote_tick(iid)
            notional = None
            if quote is not None:
                notional = quantity * (float(quote.bid_price) + float(quote.ask_price)) / 2
            m.position(iid.symbol.value, quantity, notional)
        self.open_positions(cache, portfolio)
        venues: set[str] = set()
        for account in cache.accounts():
            venues.add(account.id.get_issuer())
            for currency, balance in account.balances().items():
                m.balance(currency.code, float(balance.total.as_double()))
        realized = unrealized = 0.0
        for venue in sorted(venues):
            realized += _in(portfolio.realized_pnls(Venue(venue)), self.quote_currency)
            unrealized += _in(portfolio.unrealized_pnls(Venue(venue)), self.quote_currency)
        day = datetime.fromtimestamp(now, UTC).date().isoformat()
        if day != self._day:
            # Realized P&L since the start of the UTC day: what was realized before it is the baseline.
            if self._day is not None:
                self._realized_at_day_start = realized
            self._day = day
        self.realized = realized - self._realized_at_day_start
        self.unrealized = unrealized
        m.pnl(self.realized, self.unrealized)

    def open_positions(self, cache: Any, portfolio: Any) -> int:
        """`tradingbot_open_positions`: the instruments of the cache's open positions whose net position is not zero
        (a hedging account's long and short of the same size hold nothing, as the runtime's book would count it)."""
        held = {p.instrument_id for p in cache.positions_open()}
        count = sum(1 for iid in held if portfolio.net_position(iid) != 0)
        self._open_positions.set(count)
        return count

    def connections(self, market_data: bool | None, orders: bool | None) -> None:
        if market_data is not None:
            self.metrics.broker_connection("market_data", market_data)
        if orders is not None:
            self.metrics.broker_connection("orders", orders)
            self.metrics.broker_connection("account", orders)

    def heartbeat(self, duration: float) -> None:
        self.metrics.loop_iteration(duration)


def _order_type(order: Any) -> str:
    if order is None:
        return "limit"
    if order.order_type == OrderType.LIMIT and getattr(order, "is_post_only", False):
        return "post_only"
    return ORDER_TYPES.get(order.order_type, "limit")


def _in(amounts: dict[Any, Any], currency: str) -> float:
    for key, money in amounts.items():
        if key.code == currency:
            return float(money.as_double())
    return 0.0
