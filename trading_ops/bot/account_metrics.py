"""The account families of BotMetrics: positions, balances, the day's P&L and its loss limit."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from trading_ops.bot.cardinality import ChildCache
from trading_ops.bot.metrics_base import VS, MetricsBase


class AccountMetrics(MetricsBase):
    """What the account holds and what the day has made or lost, as the bot values them. A part of BotMetrics (see
    MetricsBase)."""

    if not TYPE_CHECKING:  # mypy would hold the part to an empty __slots__; BotMetrics holds its attributes
        __slots__ = ()

    _position: ChildCache
    _position_notional: ChildCache
    _balance: ChildCache
    _realized: Callable[[float], None]
    _unrealized: Callable[[float], None]
    _loss_limit: Callable[[float], None]

    def _account_metrics(self, daily_loss_limit: float | None) -> None:
        self._position = self._gauge(
            "position_quantity", "Signed position in units of the base asset (negative is short).", ("symbol",)
        )
        self._position_notional = self._gauge(
            "position_notional", "Signed position valued at the mark price, in units of the quote asset.", ("symbol",)
        )
        self._balance = self._gauge("balance", "Account balance per asset, in units of that asset.", ("asset",))
        pnl_labels: tuple[str, ...] = ()
        self._realized = self._gauge(
            "realized_pnl",
            "Realized profit and loss since the start of the UTC day, in units of the quote asset.",
            pnl_labels,
            VS,
        )[()]
        self._unrealized = self._gauge(
            "unrealized_pnl",
            "Unrealized profit and loss of open positions at the mark price, in units of the quote asset.",
            pnl_labels,
            VS,
        )[()]
        self._loss_limit = self._gauge(
            "daily_loss_limit",
            "Loss (positive, quote asset) at which the bot must stop trading for the day.",
            pnl_labels,
            VS,
        )[()]
        if daily_loss_limit is not None:
            self._loss_limit(daily_loss_limit)

    # -- positions, balances, P&L -----------------------------------------------------------------------
    def position(self, symbol: str, quantity: float, notional: float | None = None) -> None:
        self._position[(symbol,)](quantity)
        if notional is not None:
            self._position_notional[(symbol,)](notional)

    def balance(self, asset: str, total: float) -> None:
        self._balance[(asset,)](total)

    def pnl(self, realized: float, unrealized: float) -> None:
        self._realized(realized)
        self._unrealized(unrealized)

    def daily_loss_limit(self, limit: float) -> None:
        self._loss_limit(limit)
