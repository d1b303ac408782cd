"""`venue`: the reconciler's own hands at a bot's account, for when the bot is gone (its host died, its process hung).

The step reaches the venue directly through ccxt with a key of the reconciler's own on the bot's account
(`bots[].venue`: trade permission only, read from a file or a variable), chosen by the alert's instance: a label
never names an account, a key or a host. Operations:

- `cancel_all`: cancel the bot's open orders, and only the bot's: those whose client order id carries the prefix
  the runtime gives every order of that bot (`<order_id_prefix>-<run>-<n>`); another bot's orders on the same
  account stay, and so do orders with no client order id, which the output counts. A bot that places its orders
  with no client order id (freqtrade: its ccxt calls carry none) is configured `orders: account`: every open order of
  its account is its own (one account per bot), and all of them are cancelled. Then it asks the venue again: the step
  succeeds only when none of the bot's orders is left open.
- `positions`: what the bot holds at the venue (its symbols' base balances less `position_baseline`) and its orders
  still open there; "flat" only with neither.
- `flatten`: cancel the bot's orders, close its positions with market orders, then check they are closed. It waits for a
  person's approval unless the step says `approval: none` (or the rule's hard limit is breached).

Every output names the exposure that remains, so the page the playbook sends after it carries it.

ccxt's own throttler is off for these clients: it spaces every call of a client by the exchange's `rateLimit` times
the endpoint's cost (kraken: 1 s, OpenOrders and Balance 3), which is how a long-running client keeps a steady
stream under a venue's limits, but a step is a fresh client of a handful of calls. With it on, a host-down
`cancel_all` of a bot with no orders took 8 s, 7 of them waiting on the throttler before its second to fifth call.
The calls are few and bounded instead: markets (two public calls, once per step), the open orders (listed again only
when something was cancelled), one balance; at most 3 points of Kraken's private call counter for a `cancel_all`
(cancels count nothing there), 2 for `positions` (the balance and the open orders) and 4 for a `flatten` (6 with the
`positions` look that may skip it), on the reconciler's own key, far under the smallest tier's 15.
On Binance (no dead man's switch for spot orders: this step is what cancels a dead bot's orders) the account's open
orders are asked for in one call across symbols (weight 80), a `cancel_all` weighs about 200 of the IP's 6,000 a
minute. A refusal by the venue fails the step like any other error, and the rule escalates."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from trading_ops.bot.client_ids import bot_order_pattern
from trading_ops.config import BotVenueConfig, ConfigError, resolve_secret
from trading_ops.reconciler.actions.base import Action, ActionContext, Refused, Result, truncate
from trading_ops.schema import one_of

# Exchanges whose ccxt client refuses the account's open orders without a symbol unless told (binance).
ACCOUNT_WIDE_OPEN_ORDERS_WARNED = frozenset({"binance"})
# What an output says of an account that holds nothing of the bot's symbols.
FLAT = "flat"
# What a cancel of a bot configured `orders: account` says it took.
EVERY_ORDER = "every open order of the account: the bot places no client order ids"
# How long a flatten waiting for its approval asks the venue whether there is anything to close.
NEEDLESS_TIMEOUT_SECONDS = 30.0
OPERATION_RISK = {"positions": "safe", "cancel_all": "destructive", "flatten": "destructive"}
# Parameters a step may not have: the account, the key and the host come from the configuration, keyed by the
# alert's instance (a label templated into one would let whoever posts alerts pick an account).
CONFIGURED_ONLY = ("instance", "account", "exchange", "host", "api_key", "api_secret", "urls", "symbols")


class VenueAction(Action):
    kind = "venue"
    params = {"operation": (str, True)}
    schema = {"operation": one_of(OPERATION_RISK)}

    def validate(self, params: dict[str, Any]) -> None:
        for name in params:
            if name in CONFIGURED_ONLY:
                raise ValueError(
                    f"{name}: a venue step never names its account or host; they come from the configuration "
                    "(bots[].venue), keyed by the alert's instance"
                )
        super().validate(params)
        if params["operation"] not in OPERATION_RISK:
            raise ValueError(f"operation: expected one of {', '.join(OPERATION_RISK)}")

    def risk(self, params: dict[str, Any]) -> str:
        return OPERATION_RISK[params["operation"]]

    def protective(self, params: dict[str, Any]) -> bool:
        return params["operation"] in ("cancel_all", "flatten")

    def default_approval(self, params: dict[str, Any]) -> str | None:
        """A flatten at the venue waits for a person unless the step says otherwise."""
        return "required" if params["operation"] == "flatten" else None

    def checked_labels(self, params: dict[str, Any]) -> list[str]:
        return ["instance"]

    async def needless(self, ctx: ActionContext, params: dict[str, Any]) -> str | None:
        """A flatten of an account that holds nothing of the bot's symbols asks nobody: its approval (and page) would
        ask a person to close a position that is not there. The venue is asked; any doubt (no answer, an error) asks
        the person as usual."""
        if params["operation"] != "flatten":
            return None
        try:
            result = await self.run(ctx, {"operation": "positions"}, NEEDLESS_TIMEOUT_SECONDS)
        except Refused:
            return None
        if result.ok and result.output.endswith(f": {FLAT}"):
            return f"nothing to flatten: {result.output}"
        return None

    async def run(self, ctx: ActionContext, params: dict[str, Any], timeout: float) -> Result:
        instance = ctx.label("instance")
        target = ctx.config.reconciler.targets.get(instance)
        if target is None:
            raise Refused(f"no bot with instance {instance!r} in bots: (a label never names an account)")
        venue = target.venue
        if not venue.exchange:
            raise Refused(f"no venue account configured for bot instance {instance!r} (bots[].venue)")
        key = f"bots[{instance}].venue"
        if venue.orders == "prefix" and not venue.order_id_prefix:  # reconciler.targets has no bot name to take it from
            raise Refused(f"no order_id_prefix for bot instance {instance!r}: its orders cannot be told apart ({key})")
        try:
            api_key = resolve_secret(ctx.config, venue, "api_key", f"{key}.api_key")
            api_secret = resolve_secret(ctx.config, venue, "api_secret", f"{key}.api_secret")
        except ConfigError as exc:
            raise Refused(str(exc)) from None
        if not api_key or not api_secret:
            raise Refused(f"no venue credentials for bot instance {instance!r} ({key}.api_key_file or _env is empty)")
        limit = ctx.config.reconciler.output_limit_bytes
        account = VenueAccount(venue, api_key, api_secret, f"episode{ctx.episode_id}")
        try:
            async with asyncio.timeout(timeout):
                return await account.run(params["operation"], limit)
        except TimeoutError:
            return Result("timeout", f"venue {venue.exchange}: no result within {timeout:g}s")
        except Exception as exc:  # ccxt's errors: one line naming the venue and what it said
            return Result("failure", truncate(f"venue {venue.exchange}: {_one_line(exc)}", limit))
        finally:
            await account.close()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:300]}"


class VenueAccount:
    """One bot's account at its venue through ccxt's async client, for one step."""

    def __init__(self, venue: BotVenueConfig, api_key: str, api_secret: str, tag: str) -> None:
        import ccxt.async_support as ccxt_async  # the reconciler imports ccxt only for a venue step

        from trading_ops.venues.ccxt.factory import rest_urls
        from trading_ops.webconfig import client_ssl_context

        if venue.exchange not in ccxt_async.exchanges:
            raise Refused(f"ccxt has no exchange {venue.exchange!r} (bots[].venue.exchange)")
        settings: dict[str, Any] = {
            "apiKey": api_key,
            "secret": api_secret,
            "enableRateLimit": False,  # a step's calls are few and bounded (the module's docstring)
            "timeout": int(venue.timeout_seconds * 1000),
        }
        if venue.urls:
            settings["urls"] = {"api": rest_urls(venue.exchange, venue.urls)}
        if venue.exchange in ACCOUNT_WIDE_OPEN_ORDERS_WARNED:
            # The account's open orders in one call, every symbol (Binance: weight 80, once per look; ccxt refuses it
            # unless told): the bot's orders on a symbol it was never configured for are found and cancelled too.
            settings["options"] = {"warnOnFetchOpenOrdersWithoutSymbol": False}
        self.exchange = getattr(ccxt_async, venue.exchange)(settings)
        tls = client_ssl_context(venue.tls, "bots[].venue.tls")
        if tls is not None:
            self.exchange.ssl_context = tls
        self.venue = venue
        # `orders: account`: every open order of the account is the bot's (it gives its orders no client order id).
        self.every_order = venue.orders == "account"
        self.pattern = bot_order_pattern(venue.order_id_prefix)
        self.tag = tag

    async def close(self) -> None:
        await self.exchange.close()

    async def run(self, operation: str, limit: int) -> Result:
        await self.exchange.load_markets()
        if operation == "cancel_all":
            return await self.cancel_all(limit)
        if operation == "positions":
            held = await self.positions()
            # Its orders open at the venue are exposure too (one the bot sent just before its host died, whose answer
            # the venue held, among them): the account is flat only with none of them and nothing held.
            working, _ = await self.bot_orders()
            return Result("success", truncate(f"{self._who()}: {_exposure(held, working)}", limit))
        return await self.flatten(limit)

    def _who(self) -> str:
        return f"{self.venue.order_id_prefix or 'the bot'} at {self.venue.exchange}"

    async def bot_orders(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The bot's open orders, and the account's other open orders (none with `orders: account`)."""
        listed = await self.exchange.fetch_open_orders()
        if self.every_order:
            return listed, []
        mine: list[dict[str, Any]] = []
        others: list[dict[str, Any]] = []
        for order in listed:
            (mine if self.pattern.fullmatch(str(order.get("clientOrderId") or "")) else others).append(order)
        return mine, others

    async def cancel_all(self, limit: int) -> Result:
        result, _ = await self._cancel_all(limit)
        return result

    async def _cancel_all(self, limit: int) -> tuple[Result, dict[str, Decimal]]:
        """The cancel's result, and the positions it found after it (a flatten's starting point)."""
        mine, others = await self.bot_orders()
        failed: list[str] = []
        for order in mine:
            try:
                await self.exchange.cancel_order(order["id"], order.get("symbol"))
            except Exception as exc:  # an order that closed meanwhile is found closed by the check below
                failed.append(f"{_order_id(order)}: {_one_line(exc)[:120]}")
        # Asked again only when there was something to cancel: the bot is gone, nothing of its adds orders meanwhile.
        left, others = await self.bot_orders() if mine else ([], others)
        held = await self.positions()
        head = f"{self._who()}: {len(mine) - len(left)} of its orders cancelled"
        if self.every_order:
            head += f" ({EVERY_ORDER})"
            kept = ""
        else:
            kept = f"; {len(others)} other orders on the account left alone"
            unnamed = sum(1 for o in others if not o.get("clientOrderId"))
            if unnamed:
                # Orders no runtime placed: a person's, or a bot's that gives none (freqtrade), which `orders: account`
                # would have cancelled. The step cannot tell; the page's reader can.
                kept += f" ({unnamed} with no client order id: a bot placing none, as freqtrade, needs orders: account)"
        if left:
            ids = ", ".join(_order_id(o) for o in left[:10])
            text = f"{head}, {len(left)} still open ({ids}){kept}; exposure: {_exposure(held)}"
            if failed:
                text += "; " + "; ".join(failed[:5])
            return Result("failure", truncate(text, limit)), held
        text = f"{head}, none left open{kept}; exposure: {_exposure(held)}"
        return Result("success", truncate(text, limit)), held

    async def positions(self) -> dict[str, Decimal]:
        """What the bot holds per symbol: the base asset's balance less its baseline (spot, as CcxtBroker counts)."""
        balances = await self.exchange.fetch_balance()
        totals = balances.get("total") or {}
        held: dict[str, Decimal] = {}
        for symbol in self.venue.symbols:
            base = symbol.split("-", 1)[0]
            amount = Decimal(str(totals.get(base) or 0))
            held[symbol] = amount - Decimal(str(self.venue.position_baseline.get(base, 0)))
        return held

    async def flatten(self, limit: int) -> Result:
        """Close each position with a market order; a client order id per episode and symbol, so a venue that
        refuses a duplicate id refuses a second flatten of the same episode (the check after it finds it flat)."""
        cancelled, held = await self._cancel_all(limit)
        done: list[str] = []
        for symbol, amount in held.items():
            if not amount:
                continue
            unified = symbol.replace("-", "/")
            if abs(amount) < self._minimum(symbol):
                continue  # dust below the venue's minimum order: nothing that can be sold
            side = "sell" if amount > 0 else "buy"
            quantity = float(self.exchange.amount_to_precision(unified, float(abs(amount))))
            cid = f"flatten-{self.tag}-{symbol}"
            await self.exchange.create_order(unified, "market", side, quantity, None, {"clientOrderId": cid})
            done.append(f"{side} {quantity:g} {symbol}")
        after = await self.positions()
        left = {s: a for s, a in after.items() if a and abs(a) >= self._minimum(s)}
        head = f"{self._who()}: flatten {', '.join(done) or 'had nothing to close'}"
        text = f"{head}; exposure now: {_exposure(after)}"
        if not cancelled.ok:
            return Result("failure", truncate(f"{text}; {cancelled.output}", limit))
        return Result("failure" if left else "success", truncate(text, limit))

    def _minimum(self, symbol: str) -> Decimal:
        market = self.exchange.market(symbol.replace("-", "/"))
        return Decimal(str((market.get("limits", {}).get("amount") or {}).get("min") or 0)) or Decimal("1e-12")


def _order_id(order: dict[str, Any]) -> str:
    """How an output names an order: its client order id, else the venue's id (an order placed without one)."""
    return str(order.get("clientOrderId") or order.get("id"))


def _exposure(held: dict[str, Decimal], working: list[dict[str, Any]] | None = None) -> str:
    """What the bot holds, and its orders open (when listed): FLAT only when there is neither."""
    parts = [f"{symbol} {amount.normalize():f}" for symbol, amount in held.items() if amount]
    if working:
        ids = ", ".join(_order_id(o) for o in working[:10])
        parts.append(f"{len(working)} of its orders open ({ids})")
    return ", ".join(parts) or FLAT


ACTION = VenueAction()
