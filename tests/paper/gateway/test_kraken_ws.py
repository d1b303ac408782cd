"""The gateway's Kraken Spot WebSocket v2 read and written by a raw aiohttp client: status on connect, ping/pong,
heartbeats when idle, the book kept in step by its CRC32 checksum at the pair's precision, trade, ticker and
instrument; the private endpoint's token from REST GetWebSocketsToken, executions (snapshots, sequence) and balances,
and order entry (add_order, cancel_order, cancel_all, cancel_all_orders_after) with Kraken's v2 envelope and errors.
Needs nothing but the gateway itself, started per test on a free port of 127.0.0.1."""

from __future__ import annotations

from decimal import Decimal

from ccxt_helpers import (
    API_KEY,
    API_SECRET,
    CONTROL_TOKEN,
    OTHER_KEY,
    OTHER_SECRET,
    QUIET_VENUE,
    SUB_KEY,
    SUB_SECRET,
    chaos,
    limit,
    market,
    running_gateway,
    serving,
)
from ws_helpers import socket, ws_token, ws_urls

from trading_ops.bot.streams.checksum import Book
from trading_ops.paper.gateway.kraken.gateway import KrakenGateway
from trading_ops.paper.venue import PaperVenue
from trading_ops.venues.call_counter import CounterLimiter

MOVING = {"tick_interval": 0.02, "volatility": 0.001}


def levels(side: list[dict]) -> list[tuple[Decimal, Decimal]]:
    return [(level["price"], level["qty"]) for level in side]


def of(channel: str, kind: str | None = None):
    return lambda m: m.get("channel") == channel and (kind is None or m.get("type") == kind)


def acked(method: str, req_id: int):
    return lambda m: m.get("method") == method and m.get("req_id") == req_id


async def test_status_on_connect_pong_with_req_id_and_heartbeats_while_idle() -> None:
    async with running_gateway() as (_gateway, base), socket(ws_urls(base)[0]) as ws:
        status = await ws.next()
        assert status["channel"] == "status" and status["type"] == "update"
        assert status["data"][0]["system"] == "online" and status["data"][0]["api_version"] == "v2"
        await ws.send({"method": "ping", "req_id": 101})
        pong = await ws.next()
        assert pong["method"] == "pong" and pong["req_id"] == 101 and pong["time_in"] <= pong["time_out"]
        # Subscribed to a channel the quiet market never updates: heartbeats keep the socket talking.
        await ws.send({"method": "subscribe", "params": {"channel": "instrument"}, "req_id": 2})
        ack = await ws.until(acked("subscribe", 2))
        assert ack["success"] is True and ack["result"] == {"channel": "instrument", "snapshot": True}
        snapshot = await ws.until(of("instrument", "snapshot"))
        btc = next(p for p in snapshot["data"]["pairs"] if p["symbol"] == "BTC/USD")
        assert (btc["price_precision"], btc["qty_precision"], btc["tick_size"]) == (2, 4, Decimal("0.01"))
        assert {a["id"] for a in snapshot["data"]["assets"]} >= {"BTC", "USD", "ETH"}
        assert await ws.until(of("heartbeat")) == {"channel": "heartbeat"}
        assert await ws.until(of("heartbeat")) == {"channel": "heartbeat"}


async def test_the_book_stays_in_step_with_its_checksum_at_every_depth() -> None:
    async with running_gateway(**MOVING) as (_gateway, base), socket(ws_urls(base)[0]) as ws:
        await ws.send(
            {"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 25}, "req_id": 7}
        )
        ack = await ws.until(acked("subscribe", 7))
        assert ack["result"] == {"channel": "book", "depth": 25, "snapshot": True, "symbol": "BTC/USD"}
        snapshot = (await ws.until(of("book", "snapshot")))["data"][0]
        book = Book(depth=25, price_decimals=2, qty_decimals=4)
        assert book.apply(levels(snapshot["asks"]), levels(snapshot["bids"]), snapshot=True) == snapshot["checksum"]
        assert len(book.asks) == len(book.bids) == 25
        for _ in range(60):
            update = (await ws.until(of("book", "update")))["data"][0]
            assert update["symbol"] == "BTC/USD" and update["timestamp"].endswith("Z")
            assert book.apply(levels(update["asks"]), levels(update["bids"]), snapshot=False) == update["checksum"]
            assert min(book.asks) > max(book.bids) and len(book.asks) == 25
        # Kraken's own error strings for what it does not serve.
        await ws.send({"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/FOO"]}, "req_id": 8})
        refused = await ws.until(acked("subscribe", 8))
        assert refused["success"] is False and refused["error"] == "Currency pair not supported BTC/FOO"
        await ws.send(
            {"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 7}, "req_id": 9}
        )
        assert (await ws.until(acked("subscribe", 9)))["error"] == "Subscription depth not supported"


async def test_trades_and_ticker_follow_every_accounts_fills() -> None:
    async with running_gateway(**MOVING) as (gateway, base), socket(ws_urls(base)[0]) as ws:
        await ws.send({"method": "subscribe", "params": {"channel": "trade", "symbol": ["ETH/USD"]}, "req_id": 1})
        await ws.send({"method": "subscribe", "params": {"channel": "ticker", "symbol": ["ETH/USD"]}, "req_id": 2})
        await ws.send(
            {
                "method": "subscribe",
                "params": {"channel": "ticker", "symbol": ["BTC/USD"], "event_trigger": "bbo"},
                "req_id": 3,
            }
        )
        bbo = await ws.until(lambda m: m.get("channel") == "ticker" and m["data"][0]["symbol"] == "BTC/USD")
        assert bbo["data"][0]["bid"] < bbo["data"][0]["ask"]

        order = await gateway.venue.submit(market("m-1", "ETH-USD"))
        trade = (await ws.until(of("trade", "update")))["data"][0]
        fill = (await gateway.venue.recent_fills())[-1]
        assert trade["symbol"] == "ETH/USD" and trade["side"] == "buy" and trade["ord_type"] == "market"
        assert (trade["price"], trade["qty"], trade["trade_id"]) == (fill.price, fill.quantity, int(fill.trade_id[1:]))
        assert order.venue_order_id == fill.venue_order_id
        ticker = await ws.until(
            lambda m: m.get("channel") == "ticker" and m["type"] == "update" and m["data"][0]["symbol"] == "ETH/USD"
        )
        assert ticker["data"][0]["last"] == fill.price


async def test_private_executions_balances_and_order_entry() -> None:
    async with running_gateway() as (gateway, base), socket(ws_urls(base)[1]) as ws:
        token = await ws_token(base)
        await ws.send({"method": "subscribe", "params": {"channel": "executions", "token": "forged"}, "req_id": 1})
        refused = await ws.until(acked("subscribe", 1))
        assert (refused["success"], refused["error"]) == (False, "ESession:Invalid session")
        resting = await gateway.venue.submit(limit("rest-1"))
        await ws.send(
            {
                "method": "subscribe",
                "params": {"channel": "executions", "token": token, "snap_trades": True},
                "req_id": 2,
            }
        )
        ack = await ws.until(acked("subscribe", 2))
        assert ack["success"] is True and ack["result"]["channel"] == "executions"
        orders = await ws.until(of("executions", "snapshot"))
        assert [o["order_id"] for o in orders["data"]] == [resting.venue_order_id] and orders["sequence"] == 1
        assert orders["data"][0]["cl_ord_id"] == "rest-1" and orders["data"][0]["order_status"] == "new"
        trades = await ws.until(of("executions", "snapshot"))
        assert trades["data"] == [] and trades["sequence"] == 2
        await ws.send({"method": "subscribe", "params": {"channel": "balances", "token": token}, "req_id": 3})
        balances = await ws.until(of("balances", "snapshot"))
        usd = next(b for b in balances["data"] if b["asset"] == "USD")
        assert usd["balance"] == (await gateway.venue.balances())["USD"] and usd["wallets"][0]["type"] == "spot"

        # An order that crosses at once: its ack, then pending_new/new, its trade, filled; the balances it moved.
        ask = gateway.venue.quote("ETH-USD").ask
        await ws.send(
            {
                "method": "add_order",
                "req_id": 4,
                "params": {
                    "order_type": "limit",
                    "side": "buy",
                    "order_qty": Decimal("0.5"),
                    "limit_price": ask + 5,
                    "symbol": "ETH/USD",
                    "cl_ord_id": "ws-1",
                    "token": token,
                },
            }
        )
        placed = await ws.until(acked("add_order", 4))
        assert placed["success"] is True and placed["result"]["cl_ord_id"] == "ws-1"
        order_id = placed["result"]["order_id"]
        events = []
        while not events or events[-1]["exec_type"] != "filled":
            message = await ws.until(of("executions", "update"))
            events += message["data"]
        assert [e["exec_type"] for e in events] == ["pending_new", "new", "trade", "filled"]
        assert {e["order_id"] for e in events} == {order_id}
        fill = (await gateway.venue.recent_fills())[-1]
        assert events[2]["exec_id"] == fill.trade_id and events[2]["last_qty"] == Decimal("0.5")
        assert events[2]["liquidity_ind"] == "t" and events[2]["fees"][0]["qty"] == fill.fee
        sequences = [m["sequence"] for m in ws.received if m.get("channel") == "executions"]
        assert sequences == list(range(1, len(sequences) + 1))
        seen = [m for m in ws.received if of("balances", "update")(m)]
        moved = seen[0] if seen else await ws.until(of("balances", "update"))
        assert {b["asset"] for b in moved["data"]} == {"ETH", "USD"}
        eth = next(b for b in moved["data"] if b["asset"] == "ETH")
        assert eth["amount"] == Decimal("0.5") and eth["balance"] == (await gateway.venue.balances())["ETH"]

        # Refusals carry Kraken's strings; cancels by id, cancel_all and the dead man's switch answer as Kraken does.
        await ws.send(
            {
                "method": "add_order",
                "req_id": 5,
                "params": {
                    "order_type": "limit",
                    "side": "buy",
                    "order_qty": Decimal("0.01"),
                    "limit_price": Decimal("1000.001"),
                    "symbol": "BTC/USD",
                    "token": token,
                },
            }
        )
        bad = await ws.until(acked("add_order", 5))
        assert bad["error"].startswith("EOrder:Invalid price:XXBTZUSD price can only be specified up to 2 decimals")
        await ws.send(
            {
                "method": "cancel_order",
                "req_id": 6,
                "params": {"order_id": [resting.venue_order_id, "NOPE"], "token": token},
            }
        )
        first, second = await ws.until(acked("cancel_order", 6)), await ws.until(acked("cancel_order", 6))
        assert first["result"] == {"order_id": resting.venue_order_id}
        assert second["error"] == "EOrder:Unknown order"
        await ws.send({"method": "cancel_all_orders_after", "req_id": 7, "params": {"timeout": 60, "token": token}})
        switch = await ws.until(acked("cancel_all_orders_after", 7))
        assert switch["result"]["triggerTime"] != "0" and gateway.venue.dead_man_switch_trigger() is not None
        await ws.send({"method": "cancel_all", "req_id": 8, "params": {"token": token}})
        assert (await ws.until(acked("cancel_all", 8)))["result"] == {"count": 0}
        await ws.send({"method": "ping", "req_id": 9})
        assert (await ws.until(acked("pong", 9)))["req_id"] == 9


async def test_a_token_reaches_only_its_own_accounts_events() -> None:
    async with running_gateway(sub_account=True) as (gateway, base):
        public, private = ws_urls(base)
        async with socket(private) as main, socket(private) as other_key, socket(private) as sub:
            for ws, (key, secret) in (
                (main, (None, None)),
                (other_key, (OTHER_KEY, OTHER_SECRET)),
                (sub, (SUB_KEY, SUB_SECRET)),
            ):
                token = await (ws_token(base) if key is None else ws_token(base, key, secret))
                await ws.send({"method": "subscribe", "params": {"channel": "executions", "token": token}, "req_id": 1})
                await ws.until(of("executions", "snapshot"))
            await gateway.venue.submit(limit("main-1"))
            for ws in (main, other_key):  # two keys of the main account both see it
                assert (await ws.until(of("executions", "update")))["data"][0]["cl_ord_id"] == "main-1"
            await sub.send({"method": "ping", "req_id": 2})
            await sub.until(acked("pong", 2))
            assert not [m for m in sub.received if of("executions", "update")(m)]
        async with socket(public) as ws:  # the public endpoint has no private channel nor order entry
            await ws.send({"method": "subscribe", "params": {"channel": "executions", "token": "x"}, "req_id": 3})
            assert (await ws.until(acked("subscribe", 3)))["error"] == "Channel not found"
            await ws.send({"method": "add_order", "params": {}, "req_id": 4})
            assert (await ws.until(acked("add_order", 4)))["error"] == "Method not found"


async def test_trading_calls_count_on_the_keys_rest_counter() -> None:
    """With the Starter tier's counter: the dead man's switch over the socket spends the key's REST points (the
    token's key), and a counter spent by REST refuses it with REST's string."""
    frozen = [0.0]
    counter = CounterLimiter("starter", clock=lambda: frozen[0])  # no decay: what is spent stays spent
    gateway = KrakenGateway(
        PaperVenue(**QUIET_VENUE, seed=7), {API_KEY: API_SECRET}, CONTROL_TOKEN, call_counter=counter
    )
    async with serving(gateway) as base, socket(ws_urls(base)[1]) as ws:
        token = await ws_token(base)  # GetWebSocketsToken: 1 point
        assert counter.level(API_KEY) == 1
        for req_id in range(1, 15):
            await ws.send(
                {"method": "cancel_all_orders_after", "params": {"timeout": 60, "token": token}, "req_id": req_id}
            )
            assert (await ws.until(acked("cancel_all_orders_after", req_id)))["success"] is True
        assert counter.level(API_KEY) == 15  # the tier's maximum
        await ws.send({"method": "cancel_all_orders_after", "params": {"timeout": 60, "token": token}, "req_id": 99})
        assert (await ws.until(acked("cancel_all_orders_after", 99)))["error"] == "EAPI:Rate limit exceeded"


async def test_a_subscription_ends_a_stale_feed_as_reloading_the_markets_does() -> None:
    async with running_gateway(**MOVING) as (_gateway, base), socket(ws_urls(base)[0]) as ws:
        await ws.send({"method": "subscribe", "params": {"channel": "book", "symbol": ["ETH/USD"]}, "req_id": 1})
        await ws.until(of("book", "update"))
        await chaos(base, "stale_market_data", symbol="ETH-USD")
        await ws.until(of("heartbeat"))  # the pair's feed stopped: nothing but heartbeats
        start = len(ws.received)
        await ws.until(of("heartbeat"))
        assert not [m for m in ws.received[start:] if of("book")(m)]
        await ws.send({"method": "subscribe", "params": {"channel": "book", "symbol": ["ETH/USD"]}, "req_id": 2})
        await ws.until(of("book", "update"))
