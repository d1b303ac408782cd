"""The ccxt broker on a Binance account shared with another bot (trading_ops.venues.ccxt.rest, `shared_account`):
it lists, cancels and counts only the orders whose client order id carries its prefix, and only their fills; its
cancel-all never uses Binance's cancel-all of a symbol (which takes every bot's orders on it); the balances it calls
its own are its symbols' base assets. Here the two bots trade one symbol, which `config check` refuses for a fleet
(base assets of their own): the broker holds even so, as it must for a person's order or a bot no file lists. Real
parts: the gateway's Binance dialect on a free loopback port, ccxt's stock binance client (and ccxt.pro's, whose user
data stream carries every trade of the account: the streaming broker passes on only its own)."""

from __future__ import annotations

from decimal import Decimal

from binance_helpers import BINANCE_KEY, BINANCE_SECRET, binance, binance_gateway, binance_urls
from broker_recorder import Recorder, connected
from ccxt_helpers import market, wait_for
from prometheus_client import CollectorRegistry

from trading_ops.bot.broker import BrokerEvents, OrderRequest, OrderStatus, OrderType, Side
from trading_ops.venues.ccxt.binance_pro import UserStreamBinance
from trading_ops.venues.ccxt.pro_broker import ProStreamingCcxtBroker
from trading_ops.venues.ccxt.rest import CcxtBroker

SYMBOL = "BTC-USD"
# Two bots' prefixes, the second starting with the first's (its ids `bot-a-2-<run>-<n>` start with `bot-a-`).
MINE, THEIRS = "bot-a", "bot-a-2"
RUN = "19ac0ffee01"  # the runtime's run part: its start in milliseconds, in hex
HOUR = 3600.0  # the streaming broker's REST poll: only the stream delivers a fill


def order(prefix: str, n: int, kind: OrderType, price: Decimal | None = None) -> OrderRequest:
    return OrderRequest(
        client_order_id=f"{prefix}-{RUN}-{n}",
        symbol=SYMBOL,
        side=Side.BUY,
        order_type=kind,
        quantity=Decimal("0.01"),
        price=price,
    )


async def test_a_broker_on_a_shared_account_sees_cancels_and_counts_only_its_own_orders() -> None:
    async with binance_gateway() as (gateway, dialect, base):
        mine = CcxtBroker(binance(base), [SYMBOL], shared_account=MINE)
        theirs = CcxtBroker(binance(base), [SYMBOL], shared_account=THEIRS)
        whole = CcxtBroker(binance(base), [SYMBOL])  # one that owns the whole account (the default)
        try:
            for broker in (mine, theirs, whole):
                await broker.connect(BrokerEvents())
            since = await mine.server_time()
            low = (gateway.venue.quote(SYMBOL).bid * Decimal("0.9")).quantize(Decimal("0.01"))
            for prefix, broker in ((MINE, mine), (THEIRS, theirs)):
                await broker.submit(order(prefix, 1, OrderType.LIMIT, low))
                await broker.submit(order(prefix, 2, OrderType.LIMIT, low))
                await broker.submit(order(prefix, 3, OrderType.MARKET))

            listed = sorted(o.client_order_id for o in await mine.open_orders())
            assert listed == [f"{MINE}-{RUN}-1", f"{MINE}-{RUN}-2"]
            assert len(await whole.open_orders()) == 4
            fills = await mine.recent_fills(since)
            assert {f.client_order_id for f in fills} == {f"{MINE}-{RUN}-3"}
            assert len({f.client_order_id for f in await whole.recent_fills(since)}) == 2
            # Its balances are its symbol's base asset; the quote asset is the account's.
            assert mine.balance_assets() == frozenset({"BTC"}) and whole.balance_assets() is None

            # A cancel-all (a halt's, a shutdown's) takes its two bids, one by one, and leaves the other bot's.
            canceled = await mine.cancel_all()
            assert sorted(o.client_order_id for o in canceled) == [f"{MINE}-{RUN}-1", f"{MINE}-{RUN}-2"]
            assert all(o.status is OrderStatus.CANCELED for o in canceled)
            resting = sorted(o.client_order_id for o in await gateway.venue.open_orders())
            assert resting == [f"{THEIRS}-{RUN}-1", f"{THEIRS}-{RUN}-2"]
            assert await mine.cancel_all() == [] and await mine.open_orders() == []
            assert dialect.rest.calls.get("api/openOrders", 0) > 0
        finally:
            for broker in (mine, theirs, whole):
                await broker.close()


async def test_a_streaming_broker_on_a_shared_account_passes_on_only_its_own_fills() -> None:
    """The account's user data stream carries both bots' trades, in order on one socket; only this bot's fills reach
    its callbacks (the REST poll an hour apart: the stream alone delivers them)."""
    recorder, registry = Recorder(), CollectorRegistry()
    async with binance_gateway() as (gateway, _dialect, base):
        pro = UserStreamBinance(
            {
                "apiKey": BINANCE_KEY,
                "secret": BINANCE_SECRET,
                "enableRateLimit": False,
                "timeout": 5000,
                "urls": {"api": binance_urls(base)},
            }
        )
        broker = ProStreamingCcxtBroker(
            binance(base),
            [SYMBOL],
            pro=pro,
            registry=registry,
            poll_interval=HOUR,
            quote_interval=HOUR,
            shared_account=MINE,
        )
        theirs = CcxtBroker(binance(base), [SYMBOL], shared_account=THEIRS)
        try:
            await theirs.connect(BrokerEvents())
            async with connected(broker, recorder):
                subscribed = {"channel": "executions"}
                await wait_for(lambda: registry.get_sample_value("tradingbot_stream_subscribed", subscribed) == 1)
                # Each bot's market order twice, the other bot's first and last, one socket carrying them in order:
                # once this bot's second fill is in, the other's first two were heard before it.
                for n in (1, 2):
                    await theirs.submit(market(f"{THEIRS}-{RUN}-{n}", SYMBOL, quantity="0.01"))
                    await broker.submit(market(f"{MINE}-{RUN}-{n}", SYMBOL, quantity="0.01"))
                await theirs.submit(market(f"{THEIRS}-{RUN}-3", SYMBOL, quantity="0.01"))
                await wait_for(lambda: any(f.client_order_id == f"{MINE}-{RUN}-2" for f in recorder.fills))
                assert [f.client_order_id for f in recorder.fills] == [f"{MINE}-{RUN}-1", f"{MINE}-{RUN}-2"]
                assert registry.get_sample_value("tradingbot_stream_fills_first_seen_total", {"source": "stream"}) == 2
                assert len(gateway.venue.book.fills) == 5
        finally:
            await theirs.close()
