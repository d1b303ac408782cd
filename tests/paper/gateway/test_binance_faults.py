"""The Binance dialect's faults through the gateway's fault commands (`POST /chaos/{fault}`, what `trading-ops
gateway-chaos` sends), each as ccxt's and ccxt.pro's stock binance clients observe it, and how each heals: request
weight exhausted (429, then a 418 IP ban), a user data stream ended from the server's side (a listen key's lapse), a
depth diff that skips update ids, a user stream acked then silent, the clock past recvWindow, a filter refusal. Real
parts: the gateway's aiohttp app on a free loopback port, ccxt's real clients."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import ccxt
import pytest
from binance_helpers import binance, binance_gateway, binance_pro
from ccxt_helpers import CONTROL_TOKEN, chaos, wait_for

from trading_ops.paper.gateway.binance.dialect import WS_API_PATH

MOVING = {"volatility": 0.001}


class ManualClock:
    """The weight limiter's clock, moved by the test (a minute never rolls over mid-test)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def started(coro: Any) -> asyncio.Task[Any]:
    task = asyncio.ensure_future(coro)
    await asyncio.sleep(0.3)
    return task


async def test_weight_exhausted_answers_429_then_bans_the_ip_with_418_until_retry_after() -> None:
    clock = ManualClock()
    async with binance_gateway() as (_gw, dialect, base):
        dialect.weights.clock = clock
        ex = binance(base)
        try:
            await ex.load_markets()
            answer = await chaos(base, "binance_weight_exhausted")
            assert answer["weight_exhausted_for_seconds"] > 0
            for _ in range(dialect.weights.refusals_before_ban):
                with pytest.raises(ccxt.DDoSProtection, match="429"):
                    await ex.fetch_ticker("BTC/USD")
            assert ex.last_response_headers["Retry-After"] == "60"
            with pytest.raises(ccxt.DDoSProtection, match="418"):  # it kept sending: banned
                await ex.fetch_ticker("BTC/USD")
            assert ex.last_response_headers["Retry-After"] == "120"
            status = await _status(base)
            assert list(status["binance"]["banned_ips"]) == ["127.0.0.1"]
            clock.now += 60  # a new minute: still banned
            with pytest.raises(ccxt.DDoSProtection, match="418"):
                await ex.fetch_ticker("BTC/USD")
            clock.now += 61  # the ban's Retry-After has passed
            assert (await ex.fetch_ticker("BTC/USD"))["bid"] > 0
        finally:
            await ex.close()


async def _status(base: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base}/chaos", headers={"Authorization": f"Bearer {CONTROL_TOKEN}"}) as r,
    ):
        return await r.json()


async def test_a_user_stream_ended_by_the_server_is_subscribed_again_by_the_next_watch() -> None:
    async with binance_gateway() as (_gw, dialect, base):
        ex = binance_pro(base)
        try:
            await ex.load_markets()
            first = await started(ex.watch_orders())
            assert len(dialect.users.subscribers) == 1
            ended = await chaos(base, "binance_listen_key_expired")
            assert ended["subscriptions_terminated"] == 1
            client = ex.clients["ws" + base.removeprefix("http") + WS_API_PATH]
            await wait_for(lambda: "spot" not in client.subscriptions)  # the client forgot its subscription
            assert dialect.users.subscribers == []
            again = await started(ex.watch_orders())  # ccxt.pro subscribes again
            assert len(dialect.users.subscribers) == 1
            order = await ex.create_order("ETH/USD", "market", "buy", 0.5)
            seen = await asyncio.wait_for(again, 10)
            assert seen[-1]["id"] == order["id"]
            assert first.done()  # the watch pending across the end saw the order too (one message hash)
        finally:
            await ex.close()


async def test_a_depth_diff_that_skips_update_ids_fails_the_book_and_a_new_watch_resyncs() -> None:
    async with binance_gateway(**MOVING) as (gw, dialect, base):
        ex = binance_pro(base)
        try:
            first = await started(ex.watch_order_book("BTC/USD"))
            await gw.venue.tick()
            await asyncio.wait_for(first, 10)
            answer = await chaos(base, "binance_depth_gap", symbol="BTC-USD", count=3)
            assert answer == {"depth_gap": 3, "symbols": ["BTC-USD"]}
            broken = await started(ex.watch_order_book("BTC/USD"))
            await gw.venue.tick()
            with pytest.raises(ccxt.ChecksumError):  # ccxt.pro's word for a diff whose U is not the last u + 1
                await asyncio.wait_for(broken, 10)
            await asyncio.wait_for(ex.watch_order_book("BTC/USD"), 10)  # a new snapshot, synced by update ids
            moved = await started(ex.watch_order_book("BTC/USD"))
            await gw.venue.tick()
            book = await asyncio.wait_for(moved, 10)  # the next diff applies on it
            assert book["nonce"] == dialect.market.books["BTCUSD"].update_id
            snapshot = dialect.market.books["BTCUSD"].snapshot(5)
            assert [[float(p), float(q)] for p, q in snapshot["bids"]] == [list(b[:2]) for b in book["bids"][:5]]
        finally:
            await ex.close()


async def test_a_depth_stream_silent_while_the_market_moves_until_subscribed_again() -> None:
    """`binance_depth_silent`: the subscribed depth stream sends no diff while the book moves (REST and the ticker
    show the move); the same socket's SUBSCRIBE again heals it; `persistent` silences new subscriptions too."""
    async with binance_gateway(**MOVING) as (gw, dialect, base):
        ex = binance_pro(base)
        try:
            first = await started(ex.watch_order_book("BTC/USD"))
            await gw.venue.tick()
            await asyncio.wait_for(first, 10)
            answer = await chaos(base, "binance_depth_silent", symbol="BTC-USD")
            assert answer == {"depth_streams_silenced": 1, "symbols": ["BTC-USD"]}
            quiet = await started(ex.watch_order_book("BTC/USD"))
            before = dialect.market.books["BTCUSD"].update_id
            for _ in range(5):
                await gw.venue.tick()
            assert dialect.market.books["BTCUSD"].update_id > before  # the venue's book moved
            await asyncio.sleep(0.5)
            assert not quiet.done()  # and no diff said so
            ticker = await ex.fetch_ticker("BTC/USD")
            assert float(ticker["bid"]) != ex.orderbooks["BTC/USD"]["bids"][0][0]  # REST tells the book is behind
            quiet.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await quiet
            ex.orderbooks.pop("BTC/USD", None)  # a new subscription (and snapshot) on the same socket
            for client in ex.clients.values():
                client.subscriptions.pop("orderbook::BTC/USD", None)
            await asyncio.wait_for(ex.watch_order_book("BTC/USD"), 10)
            moved = await started(ex.watch_order_book("BTC/USD"))
            await gw.venue.tick()
            book = await asyncio.wait_for(moved, 10)  # diffs again
            assert book["nonce"] == dialect.market.books["BTCUSD"].update_id
            assert dialect.streams.connections() == 1  # healed on the same socket
            await chaos(base, "binance_depth_silent", persistent=True)
            silent = (await _status(base))["binance"]["silent_depth_streams"]
            assert silent == ["btcusd@depth", "ethusd@depth", "solusd@depth"]
            await chaos(base, "clear")
            assert (await _status(base))["binance"]["silent_depth_streams"] == []
        finally:
            await ex.close()


async def test_a_user_stream_acked_then_silent_until_a_new_subscription() -> None:
    async with binance_gateway() as (_gw, _dialect, base):
        silent, fresh = binance_pro(base), binance_pro(base)
        try:
            await silent.load_markets()
            waiting = await started(silent.watch_orders())
            answer = await chaos(base, "binance_user_stream_silent")
            assert answer == {"user_streams_silenced": 1}
            status = await _status(base)
            assert status["binance"]["silent_user_streams"] == 1
            await silent.create_order("ETH/USD", "market", "buy", 0.5)
            await asyncio.wait([waiting], timeout=1.0)
            assert not waiting.done()  # subscribed, and nothing comes
            await fresh.load_markets()
            heard = await started(fresh.watch_orders())  # a new subscription is heard
            order = await fresh.create_order("ETH/USD", "market", "buy", 0.5)
            assert (await asyncio.wait_for(heard, 10))[-1]["id"] == order["id"]
            assert not waiting.done()
        finally:
            await silent.close()
            await fresh.close()


async def test_a_user_stream_refused_cannot_be_renewed_after_it_ends_until_clear() -> None:
    async with binance_gateway() as (_gw, dialect, base):
        ex = binance_pro(base)
        try:
            await ex.load_markets()
            await started(ex.watch_orders())
            assert await chaos(base, "binance_user_stream_refused") == {"user_streams_refused": True}
            assert len(dialect.users.subscribers) == 1  # the subscription held stays
            await chaos(base, "binance_listen_key_expired")
            # -2015: renewing it is refused. Stock ccxt.pro 4.5.90 then fails its own clean-up (it forgets the refused
            # subscription twice): the watch ends with a KeyError, not the venue's error (ProFills takes either).
            with pytest.raises((ccxt.AuthenticationError, KeyError)):
                await asyncio.wait_for(ex.watch_orders(), 10)
            with pytest.raises(ccxt.AuthenticationError):  # a listen key too
                await ex.public_post_userdatastream()
            assert dialect.users.subscribers == [] and (await _status(base))["binance"]["user_streams_refused"]
            await chaos(base, "clear")
            fresh = binance_pro(base)  # (the stock client's own socket waits on its failed subscription for good)
            try:
                await fresh.load_markets()
                again = await started(fresh.watch_orders())
                assert len(dialect.users.subscribers) == 1
                again.cancel()
            finally:
                await fresh.close()
        finally:
            await ex.close()


@pytest.mark.parametrize(
    ("drift_ms", "message"), [(-20_000, "ahead of the server"), (20_000, "outside of the recvWindow")]
)
async def test_clock_drift_past_recv_window_is_1021_until_the_client_syncs_its_clock(
    drift_ms: int, message: str
) -> None:
    async with binance_gateway() as (_gw, _dialect, base):
        ex = binance(base)
        try:
            await ex.load_markets()
            await chaos(base, "binance_clock_drift", ms=drift_ms)
            with pytest.raises(ccxt.InvalidNonce, match=message):
                await ex.fetch_balance()
            ex.options["adjustForTimeDifference"] = True
            await ex.load_time_difference()  # ccxt's own remedy: the offset to /api/v3/time
            assert abs(ex.options["timeDifference"] + drift_ms) < 5000
            assert (await ex.fetch_balance())["USD"]["free"] == 100000
        finally:
            await ex.close()


async def test_a_filter_refusal_is_1013_for_the_next_orders_only() -> None:
    async with binance_gateway() as (_gw, _dialect, base):
        ex = binance(base)
        try:
            await ex.load_markets()
            assert await chaos(base, "binance_filter_refusal", count=1, filter="LOT_SIZE") == {
                "filter_refusals": 1,
                "filter": "LOT_SIZE",
            }
            with pytest.raises(ccxt.InvalidOrder, match="Filter failure: LOT_SIZE"):
                await ex.create_order("ETH/USD", "market", "buy", 0.5)
            assert (await ex.create_order("ETH/USD", "market", "buy", 0.5))["status"] == "closed"
        finally:
            await ex.close()


async def test_binance_fault_arguments_are_checked_and_clear_ends_them() -> None:
    async with binance_gateway() as (_gw, dialect, base):
        headers = {"Authorization": f"Bearer {CONTROL_TOKEN}"}
        async with aiohttp.ClientSession() as session:
            for fault, args in (
                ("binance_filter_refusal", {"filter": "MAX_POSITION"}),
                ("binance_clock_drift", {"ms": "soon"}),
                ("binance_depth_gap", {"symbol": "DOGE-USD"}),
                ("binance_depth_silent", {"persistent": "yes"}),
            ):
                async with session.post(f"{base}/chaos/{fault}", json=args, headers=headers) as r:
                    assert r.status == 400, fault
            await chaos(base, "binance_clock_drift", ms=5000)
            await chaos(base, "binance_filter_refusal", count=2)
            await chaos(base, "clear")
            assert dialect.faults.describe() == {"clock_drift_ms": 0, "filter_refusals": 0}


async def test_the_gateways_outage_drops_the_binance_dialect_too_until_it_ends() -> None:
    async with binance_gateway(**MOVING) as (gw, dialect, base):
        ex = binance_pro(base)
        try:
            first = await started(ex.watch_order_book("BTC/USD"))
            await gw.venue.tick()
            await asyncio.wait_for(first, 10)
            assert dialect.streams.connections() == 1
            await chaos(base, "outage", seconds=0)  # until cleared
            await wait_for(lambda: dialect.streams.connections() == 0)  # its socket dropped
            with pytest.raises(ccxt.NetworkError):  # its requests closed unanswered
                await ex.fetch_ticker("BTC/USD")
            await chaos(base, "clear")
            assert (await ex.fetch_ticker("BTC/USD"))["bid"] > 0
            again = await started(ex.watch_order_book("BTC/USD"))
            await gw.venue.tick()
            assert (await asyncio.wait_for(again, 10))["nonce"] > 0
        finally:
            await ex.close()


async def test_stale_market_data_freezes_a_pairs_tickers_and_book_until_a_client_subscribes_again() -> None:
    """The gateway's stale_market_data on the Binance dialect: the pair is a market that makes no data, as Binance's
    are in BREAK or once delisted. Every ticker endpoint still answers it, with its last values: the 24-hour ticker's
    `closeTime` (ccxt's `timestamp`) and bid, ask and last, the best bid and ask (bookTicker), the book, while the other
    pairs move on. A client subscribing again ends it: the markets loaded again (exchangeInfo, as a polling client's
    resubscribe does), a market stream of the pair (a new SUBSCRIBE), or, with `seconds`, its own end."""
    async with binance_gateway(tick_interval=0.02, volatility=0.002) as (gw, _dialect, base):
        ex, pro = binance(base), binance_pro(base)
        try:
            await ex.load_markets()
            await chaos(base, "stale_market_data", symbol="ETH-USD")
            frozen = await ex.fetch_ticker("ETH/USD")
            frozen_book = await ex.fetch_order_book("ETH/USD", 5)
            frozen_top = (await ex.fetch_bids_asks(["ETH/USD"]))["ETH/USD"]
            live = await ex.fetch_ticker("BTC/USD")

            async def moved() -> bool:  # the other pair's quotes and the venue's own ETH price
                btc = await ex.fetch_ticker("BTC/USD")
                hidden = float(gw.venue.quote("ETH-USD").bid)
                return btc["timestamp"] > live["timestamp"] and btc["bid"] != live["bid"] and hidden != frozen["bid"]

            await wait_for(moved)
            both = await ex.fetch_tickers(["BTC/USD", "ETH/USD"])
            assert sorted(both) == ["BTC/USD", "ETH/USD"]  # still listed: no pair left out, as on Binance
            eth = both["ETH/USD"]
            assert [eth[k] for k in ("timestamp", "bid", "ask", "last")] == [
                frozen[k] for k in ("timestamp", "bid", "ask", "last")
            ]
            assert both["BTC/USD"]["timestamp"] > eth["timestamp"]
            top = (await ex.fetch_bids_asks(["ETH/USD"]))["ETH/USD"]
            assert (top["bid"], top["ask"]) == (frozen_top["bid"], frozen_top["ask"])
            assert (await ex.fetch_order_book("ETH/USD", 5))["bids"] == frozen_book["bids"]
            shown = (await _status(base))["faults"]["stale_market_data"]
            assert shown == {"ETH-USD": "until the client resubscribes"}

            await ex.load_markets(True)  # the polling client's new subscription
            assert gw.fault_model.subjects("stale_market_data") == []
            assert (await ex.fetch_ticker("ETH/USD"))["timestamp"] > frozen["timestamp"]

            await pro.load_markets()
            await chaos(base, "stale_market_data", symbol="ETH-USD")
            assert (await ex.fetch_ticker("ETH/USD"))["timestamp"] == (await ex.fetch_ticker("ETH/USD"))["timestamp"]
            ticker = await asyncio.wait_for(pro.watch_ticker("ETH/USD"), 10)  # a market stream's subscription
            assert gw.fault_model.subjects("stale_market_data") == []
            assert ticker["symbol"] == "ETH/USD" and ticker["last"] > 0  # its data flows again

            await chaos(base, "stale_market_data", symbol="SOL-USD", seconds=0.3)  # with `seconds`, it also ends
            stopped = await ex.fetch_ticker("SOL/USD")

            async def flowing() -> bool:
                return (await ex.fetch_ticker("SOL/USD"))["timestamp"] != stopped["timestamp"]

            await wait_for(flowing, timeout=10)
            assert gw.fault_model.subjects("stale_market_data") == []
        finally:
            await ex.close()
            await pro.close()
