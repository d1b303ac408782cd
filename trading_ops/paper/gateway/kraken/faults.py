"""The Kraken gateway's fault injection: the fault commands of `POST /chaos/{fault}`, kept in the FaultModel the
paper venue uses too, and what a fault in force does to a request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any

from aiohttp import web

from trading_ops.paper.faults import FaultModel
from trading_ops.paper.gateway.kraken.api import (
    E_INSUFFICIENT_FUNDS,
    E_INVALID_NONCE,
    E_INVALID_ORDER,
    E_ORDER_RATE_LIMIT,
    E_RATE_LIMIT,
    E_UNAVAILABLE,
    KrakenError,
    Pairs,
)
from trading_ops.paper.venue import PaperVenue

LOG = logging.getLogger(__name__)

MAX_FAULT_SECONDS = 3600.0
MAX_FAULT_COUNT = 10_000
DEFAULT_LOST_REPLY_DELAY_SECONDS = 30.0
# The call a reconnecting client starts its new session with: it ends a drop_connection.
RECONNECT_METHOD = "SystemStatus"
# The order-placement calls count against Kraken's trading limiter, whose refusal says EOrder.
TRADING_METHODS = frozenset({"AddOrder", "CancelOrder", "CancelAll"})
FAULTS = (
    "drop_connection",
    "outage",
    "unavailable",
    "rate_limit",
    "nonce",
    "lost_reply",
    "insufficient_funds",
    "invalid_order",
    "stale_market_data",
    "position_drift",
    "price_gap",
    "clear",
)
# The faults that last `seconds` (0: until cleared, or healed by the client), kept under their own name.
TIMED_FAULTS = ("drop_connection", "outage", "unavailable", "rate_limit")
# The faults that break the next `count` calls, kept under their own name.
COUNTED_FAULTS = ("nonce", "insufficient_funds", "invalid_order")
LOST_REPLY = "lost_reply"  # counted; its detail is (mode, delay)
STALE = "stale_market_data"  # timed, one per symbol
LOST_REPLY_MODES = ("close", "timeout")


class FaultError(Exception):
    """A fault command with bad arguments (400)."""


def _fault_number(args: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FaultError(f"{key} must be a number")
    if not low <= value <= high:
        raise FaultError(f"{key} must be between {low:g} and {high:g}")
    return float(value)


def close_unanswered(request: web.Request) -> None:
    """Close the connection without an answer: the client sees it drop."""
    if request.transport is not None:
        request.transport.abort()


class GatewayFaults:
    """What the gateway is told to break (its FaultModel, deadlines on the gateway's clock) and how each fault shows:
    the commands that start them (`inject`), what `GET /chaos` says of them (`describe`), and the checks a request
    passes through (a dropped connection, a refused service, a refused order or nonce, a lost reply)."""

    def __init__(
        self,
        model: FaultModel,
        venue: PaperVenue,
        accounts: Mapping[str, PaperVenue],
        main_account: str,
        pairs: Pairs,
        follow: Callable[[], Awaitable[None]],
    ) -> None:
        self.model = model
        self.venue = venue
        self.accounts = accounts
        self.main_account = main_account
        self.pairs = pairs
        self._follow = follow
        self._release = asyncio.Event()  # ends the wait of answers held back (lost_reply timeout) at clear or stop
        self.held = 0  # answers to AddOrder held back right now (lost_reply timeout): orders in flight at the client
        self._commands: dict[str, Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]]] = {
            "lost_reply": self._lost_reply,
            "stale_market_data": self._stale_market_data,
            "position_drift": self._position_drift,
            "price_gap": self._price_gap,
            "clear": self._clear,
        }

    # -- commands ---------------------------------------------------------------------------------------------
    async def inject(self, fault: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """Apply one fault (see FAULTS); raises FaultError for bad arguments."""
        if fault in TIMED_FAULTS:
            seconds = _fault_number(args, "seconds", 0.0, 0.0, MAX_FAULT_SECONDS)
            self.model.start(fault, seconds or None)
            healed = "until the client reconnects" if fault == "drop_connection" else "until cleared"
            return {"fault": fault, "seconds": seconds or healed}
        if fault in COUNTED_FAULTS:
            count = int(_fault_number(args, "count", 1, 1, MAX_FAULT_COUNT))
            self.model.add(fault, count)
            return {"fault": fault, "count": count}
        return await self._commands[fault](args)

    async def _lost_reply(self, args: Mapping[str, Any]) -> dict[str, Any]:
        count = int(_fault_number(args, "count", 1, 1, MAX_FAULT_COUNT))
        mode = args.get("mode", "close")
        if mode not in LOST_REPLY_MODES:
            raise FaultError(f"mode must be one of {', '.join(LOST_REPLY_MODES)}")
        delay = _fault_number(args, "delay", DEFAULT_LOST_REPLY_DELAY_SECONDS, 0.0, MAX_FAULT_SECONDS)
        self.model.add(LOST_REPLY, count, detail=(str(mode), delay))
        return {"fault": LOST_REPLY, "count": count, "mode": mode}

    async def _stale_market_data(self, args: Mapping[str, Any]) -> dict[str, Any]:
        symbol = self._fault_symbol(args)
        seconds = _fault_number(args, "seconds", 0.0, 0.0, MAX_FAULT_SECONDS)
        await self.venue.stop_market_data(symbol)
        self.model.start(STALE, seconds or None, subject=symbol)
        return {"fault": STALE, "symbol": symbol, "seconds": seconds or "until the client resubscribes"}

    async def _position_drift(self, args: Mapping[str, Any]) -> dict[str, Any]:
        symbol = self._fault_symbol(args)
        quantity = Decimal(str(_fault_number(args, "quantity", 0.01, -1e9, 1e9)))
        account = str(args.get("account", self.main_account))
        if account not in self.accounts:
            raise FaultError(f"unknown account {account[:64]!r}; known: {', '.join(self.accounts)}")
        try:
            fill = await self.accounts[account].inject_hidden_fill(symbol, quantity)
        except ValueError as exc:
            raise FaultError(str(exc)) from None
        answer = {"fault": "position_drift", "symbol": symbol, "quantity": str(quantity), "trade_id": fill.trade_id}
        return answer if account == self.main_account else {**answer, "account": account}

    async def _price_gap(self, args: Mapping[str, Any]) -> dict[str, Any]:
        symbol = self._fault_symbol(args)
        change = _fault_number(args, "change", -0.05, -0.5, 0.5)
        quote = await self.venue.gap_price(symbol, change)
        await self._follow()  # every account's resting orders it crosses fill
        return {"fault": "price_gap", "symbol": symbol, "change": change, "mid": str(quote.mid)}

    async def _clear(self, _args: Mapping[str, Any]) -> dict[str, Any]:
        await self.end_stale()
        self.model.clear()
        self.release_held()
        return {"cleared": True}

    def _fault_symbol(self, args: Mapping[str, Any]) -> str:
        symbol = args.get("symbol", self.venue.symbols[0])
        if symbol not in self.pairs.by_symbol:
            raise FaultError(f"unknown symbol {str(symbol)[:32]!r}; known: {', '.join(self.pairs.by_symbol)}")
        return str(symbol)

    def describe(self) -> dict[str, Any]:
        model = self.model
        now = model.now()

        def left(name: str, subject: str = "", healed_by: str = "") -> float | str | None:
            until = model.until(name, subject)
            if until <= now:
                return None
            return f"until {healed_by or 'cleared'}" if math.isinf(until) else round(until - now, 3)

        mode, _ = model.detail(LOST_REPLY, default=("close", DEFAULT_LOST_REPLY_DELAY_SECONDS))
        return {
            "drop_connection": left("drop_connection", healed_by="the client reconnects"),
            "outage": left("outage"),
            "unavailable": left("unavailable"),
            "rate_limit": left("rate_limit"),
            "nonce": model.count("nonce"),
            "lost_reply": model.count(LOST_REPLY),
            "lost_reply_mode": mode,
            "lost_reply_held": self.held,
            "insufficient_funds": model.count("insufficient_funds"),
            "invalid_order": model.count("invalid_order"),
            "stale_market_data": {s: left(STALE, s, "the client resubscribes") for s in model.subjects(STALE)},
        }

    # -- what a request meets -----------------------------------------------------------------------------------
    def reconnected(self, method: str) -> None:
        """A client's new session (RECONNECT_METHOD) ends a drop_connection."""
        if method == RECONNECT_METHOD and self.model.active("drop_connection"):
            LOG.warning("drop_connection ended: a client reconnected (%s)", method)
            self.model.end("drop_connection")

    def dropping(self, request: web.Request) -> bool:
        """Close the request unanswered while the connection is dropped or the venue is out."""
        if self.model.active("drop_connection") or self.model.active("outage"):
            close_unanswered(request)
            return True
        if self.model.end("outage"):
            LOG.warning("outage over: the venue answers again")
        return False

    def check_service(self, method: str) -> None:
        """KrakenError while the service is unavailable or rate-limited."""
        if self.model.active("unavailable"):
            raise KrakenError(E_UNAVAILABLE)
        if self.model.active("rate_limit"):
            raise KrakenError(E_ORDER_RATE_LIMIT if method in TRADING_METHODS else E_RATE_LIMIT)

    def check_nonce(self) -> None:
        """KrakenError for a correctly signed call a nonce fault refuses."""
        if self.model.take("nonce"):
            raise KrakenError(E_INVALID_NONCE)

    def check_order(self) -> None:
        """KrakenError for a valid order an insufficient_funds or invalid_order fault refuses."""
        if self.model.take("insufficient_funds"):
            raise KrakenError(E_INSUFFICIENT_FUNDS)
        if self.model.take("invalid_order"):
            raise KrakenError(E_INVALID_ORDER)

    async def lose_reply(self, request: web.Request, result: Mapping[str, Any]) -> bool:
        """A lost_reply fault owed: the order is placed, its answer never arrives (the connection closed, True), or
        arrives late (held until `delay` runs out or `release_held`)."""
        if not self.model.take(LOST_REPLY):
            return False
        mode, delay = self.model.detail(LOST_REPLY, default=("close", DEFAULT_LOST_REPLY_DELAY_SECONDS))
        LOG.warning("lost_reply: dropping the answer to the order %s", result.get("txid") or result.get("orderId"))
        if mode == "close":
            close_unanswered(request)
            return True
        self.held += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), delay)
        finally:
            self.held -= 1
        return False

    def release_held(self) -> None:
        """Send now the answers a lost_reply fault (mode timeout) holds back."""
        self._release.set()
        self._release = asyncio.Event()

    def stale(self, symbol: str) -> bool:
        """The feed of `symbol` is stopped (its deadline may have passed: the next request ends it)."""
        return self.model.until(STALE, symbol) > 0

    async def end_stale(self, symbols: Iterable[str] | None = None, *, expired_only: bool = False) -> None:
        """The feed of these pairs (all when None; with `expired_only`, those whose `seconds` ran out) flows again."""
        model = self.model
        ended = [
            s
            for s in (model.subjects(STALE) if symbols is None else symbols)
            if self.stale(s) and not (expired_only and model.active(STALE, s))
        ]
        for symbol in ended:
            model.end(STALE, symbol)
        if ended:
            LOG.warning("stale_market_data ended for %s", ", ".join(ended))
            await self.venue.resubscribe(ended)
