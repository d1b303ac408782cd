"""A ccxt exchange's limits on requests as the broker applies and reports them: Kraken's call counter (CallBudget)
and Binance's weights and order counts (WeightBudget), installed on the exchange's requests, their headroom read by
the runtime's gates, and the weight budget's families on the bot's registry.

Apart from the broker because the budgets are the venue's accounting, not its calls: the broker only asks whether a
poll is allowed, while the gates and /metrics read the headroom."""

from __future__ import annotations

import functools

import ccxt.async_support as ccxt_async
from prometheus_client import CollectorRegistry, Gauge

from trading_ops.venues.call_counter import ORDER_COUNT_INTERVALS, CallBudget, WeightBudget, install, install_weights


class RequestLimits:
    """The `call_budget` and the `weight_budget` (either, both or neither) of `exchange`, installed on its requests."""

    def __init__(
        self, exchange: ccxt_async.Exchange, call_budget: CallBudget | None, weight_budget: WeightBudget | None
    ) -> None:
        self.venue = str(exchange.id)
        self.call_budget = call_budget
        self.weight_budget = weight_budget
        self._registered = False
        if call_budget is not None:
            install(exchange, call_budget)
        if weight_budget is not None:
            install_weights(exchange, weight_budget)

    def headroom(self) -> float | None:
        """The fraction of the venue's request limit left (the weight budget's, else the call counter's); None:
        unknown (no budget)."""
        if self.weight_budget is not None:
            return self.weight_budget.headroom()
        return None if self.call_budget is None else self.call_budget.headroom()

    def order_headroom(self) -> float | None:
        """The fraction of the venue's limit on new orders left (Binance's order counts); None: unknown."""
        return None if self.weight_budget is None else self.weight_budget.order_headroom()

    def polls_allowed(self) -> bool:
        """False while the weight budget stops the polls (a 429 or 418, or under the weight kept for cancels and
        submits)."""
        return self.weight_budget is None or self.weight_budget.polls_allowed()

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """With a weight budget (Binance), once: the seconds left of an IP ban (418), the 429s and 418s answered and
        the room left of the account's order counts (what the order gate reads before new risk)."""
        budget = self.weight_budget
        if budget is None or self._registered:
            return
        self._registered = True
        Gauge(
            "tradingbot_venue_ban_seconds",
            "Seconds left of the venue's ban of the bot's IP (Binance's 418, until its Retry-After; 0: not banned). "
            "No call is sent meanwhile.",
            ["venue"],
            registry=registry,
        ).labels(self.venue).set_function(budget.ban_seconds)
        refusals = Gauge(
            "tradingbot_venue_rate_limit_refusals",
            "The venue's rate-limit answers since the start, by status (429: past the limit, 418: banned).",
            ["venue", "status"],
            registry=registry,
        )
        refusals.labels(self.venue, "429").set_function(lambda: budget.refusals)
        refusals.labels(self.venue, "418").set_function(lambda: budget.bans)
        orders = Gauge(
            "tradingbot_venue_order_count_headroom_ratio",
            "Fraction (0-1) of the venue's limit on new orders per interval still available (Binance's ORDERS per 10 s "
            "and per day, from X-MBX-ORDER-COUNT-*); 0 while a -1015 holds new orders. Under the order gate's floor, "
            "new risk is refused (reason venue_order_count).",
            ["venue", "interval"],
            registry=registry,
        )
        for header, interval in ORDER_COUNT_INTERVALS.items():
            orders.labels(self.venue, interval).set_function(functools.partial(budget.order_headroom, header))
