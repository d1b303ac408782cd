"""The account's trade history as a ccxt venue lists it: asked for (all its pages, or per symbol where the venue
wants one), kept by trade id where asking costs (a call budget), and which trades were already handed on.

Apart from the broker because a venue's trades never change once made: what is known of them (every trade from some
time on) is a fact of its own, and the broker's polls, reconciliation snapshots and streams only ask it for the
trades since a time, or which of them are new."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import ccxt.async_support as ccxt_async

from trading_ops.bot.broker import VenueFill
from trading_ops.venues.ccxt.translation import ms_time

# Exchanges whose trade history comes in pages of a fixed size, and the parameter that pages on.
TRADE_PAGES = {"kraken": ("ofs", 50)}
MAX_PAGES = 1000
FILL_OVERLAP_SECONDS = 2.0  # asks for trades from this long before the newest seen (late stamps)
MAX_TRADES = 20_000  # trades kept, trade ids already handed on

# One call to the venue: (what it is, for errors and logs; the ccxt method; its arguments) -> its answer.
Ask = Callable[..., Awaitable[Any]]


class TradeHistory:
    """The trades of `exchange`'s account, asked through `ask` (the broker's call: errors mapped, channel marked),
    per symbol of `symbols` when given (a venue that takes no account-wide trades), else account-wide. With `keep`
    (a call budget: each page costs), the trades fetched are kept, and a later ask from a time they cover completely
    fetches only what is newer than the newest kept."""

    def __init__(self, exchange: ccxt_async.Exchange, ask: Ask, *, symbols: list[str] | None, keep: bool) -> None:
        self.exchange = exchange
        self.venue = str(exchange.id)
        self._ask = ask
        self._symbols = symbols
        self._keep_trades = keep
        self._trades: dict[str, dict[str, Any]] = {}  # the venue's trades by id
        self._complete_from: int | None = None  # every trade from this time (ms) on is in _trades
        # An answer reusable once (the reconciliation snapshot's first look right after a poll fetched it), while the
        # broker's count of changes (submits, cancels, fills) is this one; None: none.
        self._reusable: int | None = None
        self._handed_on: OrderedDict[str, None] = OrderedDict()  # trade ids delivered, oldest first

    def hold_answer(self, changes: int | None) -> None:
        """The trades just fetched stand for the next `since` once, if the broker's `changes` are still these then;
        None: they do not (a poll is about to ask again)."""
        self._reusable = changes

    async def since(self, since: datetime | None, changes: int) -> list[dict[str, Any]]:
        """The account's trades (ccxt's raw trades) from `since` on, the venue's order. Kept ones stand in for what
        they cover: the answer held (hold_answer) while `changes` did not move, else only newer ones fetched."""
        since_ms = None if since is None else int(since.timestamp() * 1000)
        known_from = self._complete_from
        fresh, self._reusable = self._reusable == changes, None
        if not self._keep_trades or since_ms is None:
            raws = await self._fetch(since)
        elif known_from is not None and since_ms >= known_from and fresh:
            raws = self._trades  # what the poll just fetched: the snapshot's first look at the fills
        elif known_from is not None and since_ms >= known_from:
            newest = max((int(r["timestamp"]) for r in self._trades.values()), default=known_from)
            self._keep(await self._fetch(ms_time(newest - int(FILL_OVERLAP_SECONDS * 1000))), known_from)
            raws = self._trades
        else:
            self._keep(await self._fetch(since), since_ms)
            raws = self._trades
        return [raw for raw in raws.values() if since_ms is None or int(raw["timestamp"]) >= since_ms]

    def new(self, fills: list[VenueFill]) -> list[VenueFill]:
        """The `fills` not handed on yet, counted as handed on from now (the last MAX_TRADES trade ids)."""
        fresh = [f for f in fills if f.trade_id not in self._handed_on]
        for fill in fresh:
            self._handed_on[fill.trade_id] = None
        while len(self._handed_on) > MAX_TRADES:
            self._handed_on.popitem(last=False)
        return fresh

    async def _fetch(self, since: datetime | None) -> dict[str, dict[str, Any]]:
        """The account's trades since `since` as the venue lists them (all its pages), by trade id."""
        raws: dict[str, dict[str, Any]] = {}
        since_ms = None if since is None else int(since.timestamp() * 1000)
        paging = TRADE_PAGES.get(self.venue)
        if paging is None:
            for unified in self._symbols if self._symbols is not None else [None]:
                what = f"my trades {unified}" if unified else "my trades"
                for raw in await self._ask(what, self.exchange.fetch_my_trades, unified, since_ms):
                    raws.setdefault(str(raw["id"]), raw)
            return raws
        offset_param, page_size = paging
        params: dict[str, Any] = {} if since is None else {"start": int(since.timestamp()) - 1}
        offset = 0
        for _ in range(MAX_PAGES):
            page = await self._ask(
                "my trades", self.exchange.fetch_my_trades, None, None, None, {**params, offset_param: offset}
            )
            for raw in page:
                raws.setdefault(str(raw["id"]), raw)
            if len(page) < page_size:
                break
            offset += len(page)
        return raws

    def _keep(self, raws: dict[str, dict[str, Any]], complete_from: int) -> None:
        """Add fetched trades to those kept; every trade from `complete_from` (ms) on is known now. At most
        MAX_TRADES are kept: the oldest go, and what is known complete starts after them."""
        for trade_id, raw in raws.items():
            self._trades.setdefault(trade_id, raw)
        start = complete_from if self._complete_from is None else min(self._complete_from, complete_from)
        if len(self._trades) > MAX_TRADES:
            ordered = sorted(self._trades.items(), key=lambda item: int(item[1]["timestamp"]))
            dropped = ordered[: len(ordered) - MAX_TRADES]
            self._trades = dict(ordered[len(dropped) :])
            start = max(start, int(dropped[-1][1]["timestamp"]) + 1)
        self._complete_from = start
