"""The bot's share of a venue account other bots trade on too (config `ccxt.shared_account`: the bot's order-id
prefix): which orders, fills and balances are its own, and how it cancels all of them without taking the others'.

Apart from the broker because it is one rule applied in many places (open orders, the trades of a poll and a stream,
balances, cancel-all), and an account of the bot's alone is the same rule with nothing to exclude."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

import ccxt.async_support as ccxt_async

from trading_ops.bot.broker import BrokerError, VenueOrder
from trading_ops.bot.client_ids import bot_order_pattern


class AccountShare:
    """The orders whose client order id carries `prefix` (none given: the account is the bot's alone, and every order
    is its own) and the balances of `base_assets` (its symbols' base assets, which no other bot on the account trades:
    `config check` refuses two bots on one account with a base asset in common)."""

    def __init__(self, prefix: str, base_assets: Iterable[str]) -> None:
        self._own = bot_order_pattern(prefix) if prefix else None
        self._assets = frozenset(base_assets)

    @property
    def shared(self) -> bool:
        return self._own is not None

    def mine(self, client_order_id: str | None) -> bool:
        """Whether an order (or a fill of it) is this bot's: always, unless the account is shared with other bots,
        where only a client order id carrying its prefix is."""
        return self._own is None or bool(self._own.fullmatch(client_order_id or ""))

    def balance_assets(self) -> frozenset[str] | None:
        """The assets whose balances are the bot's alone; None: every one (the account is its own)."""
        return None if self._own is None else self._assets

    async def cancel_each(
        self,
        orders: list[VenueOrder],
        cancel: Callable[[VenueOrder], Awaitable[VenueOrder]],
        order_status: Callable[[VenueOrder], Awaitable[VenueOrder | None]],
    ) -> list[VenueOrder]:
        """A shared account's cancel-all: its own `orders` one at a time (a cancel-all of the account, or of a symbol
        as Binance's, takes every bot's); one that closed meanwhile (filled) is returned as it ended."""
        ended = []
        for order in orders:
            try:
                ended.append(await cancel(order))
            except BrokerError as exc:
                if not isinstance(exc.__cause__, ccxt_async.OrderNotFound):
                    raise
                state = await order_status(order)
                if state is None or state.status.is_open:
                    raise
                ended.append(state)
        return ended
