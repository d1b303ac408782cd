"""The paper gateway's Binance spot dialect (trading_ops.paper.gateway.binance) against ccxt's stock binance client,
its URLs pointed at the gateway and nothing else changed: markets and their filters, balance, depth, tickers, trades,
the order lifecycle, each numbered error as ccxt's exception class, request weights and the IP ban, and one account
seen the same through the Kraken and the Binance dialects. Real parts: the gateway's aiohttp app on a free loopback
port, ccxt's real clients."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import ccxt as ccxt_sync
import ccxt.async_support as ccxt
import pytest
from binance_helpers import (
    BINANCE_KEY,
    BINANCE_SECRET,
    BINANCE_SUB_KEY,
    BINANCE_SUB_SECRET,
    binance,
    binance_gateway,
    binance_urls,
)
from ccxt_helpers import API_KEY, API_SECRET, CONTROL_TOKEN, chaos, kraken
from polling import until
from ports import free_port
from secret_file import write_secret
from system_binaries import REPO_ROOT

from trading_ops.paper.gateway.binance.weights import WeightLimiter


class ManualClock:
    """The weight limiter's clock, moved by the test (its minute windows never roll over mid-test)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def signed(
    session: aiohttp.ClientSession, base: str, method: str, path: str, key: str = BINANCE_KEY, **params: Any
) -> tuple[int, dict[str, str], Any]:
    """A signed request sent by hand (the status, the headers and the JSON answer), as Binance documents it."""
    params = {**params, "timestamp": int(time.time() * 1000)}
    query = urlencode(params)
    secret = BINANCE_SECRET if key == BINANCE_KEY else BINANCE_SUB_SECRET
    query += "&signature=" + hmac.new(secret.encode(), query.encode(), hashlib.sha256).hexdigest()
    async with session.request(method, f"{base}/api/v3/{path}?{query}", headers={"X-MBX-APIKEY": key}) as r:
        return r.status, dict(r.headers), await r.json()


async def test_stock_client_loads_markets_with_binance_filters() -> None:
    async with binance_gateway() as (_gw, _dialect, base):
        ex = binance(base)
        try:
            markets = await ex.load_markets()
            assert sorted(markets) == ["BTC/USD", "ETH/USD", "SOL/USD"]
            btc = markets["BTC/USD"]
            assert btc["id"] == "BTCUSD" and btc["spot"] and btc["active"]
            assert btc["precision"]["price"] == 0.01 and btc["precision"]["amount"] == 0.0001
            assert btc["limits"]["amount"]["min"] == 0.0001 and btc["limits"]["cost"]["min"] == 5
            filters = {f["filterType"] for f in btc["info"]["filters"]}
            assert filters == {"PRICE_FILTER", "LOT_SIZE", "NOTIONAL"}
            assert await ex.fetch_time() > 0
        finally:
            await ex.close()


async def test_stock_client_reads_balance_depth_tickers_and_trades() -> None:
    async with binance_gateway() as (_gw, _dialect, base):
        ex = binance(base)
        try:
            balance = await ex.fetch_balance()
            assert balance["USD"] == {"free": 100000.0, "used": 0.0, "total": 100000.0}
            book = await ex.fetch_order_book("BTC/USD", 5)
            assert len(book["bids"]) == 5 and book["bids"][0][0] < book["asks"][0][0]
            assert book["nonce"] > 0  # Binance's lastUpdateId
            ticker = await ex.fetch_ticker("BTC/USD")
            assert ticker["bid"] == book["bids"][0][0] and ticker["ask"] == book["asks"][0][0]
            tickers = await ex.fetch_tickers()
            assert set(tickers) == {"BTC/USD", "ETH/USD", "SOL/USD"}
            bids_asks = await ex.fetch_bids_asks(["ETH/USD"])
            assert bids_asks["ETH/USD"]["bid"] > 0
            last = await ex.fetch_last_prices(["BTC/USD"])
            assert last["BTC/USD"]["price"] > 0
            order = await ex.create_order("ETH/USD", "market", "buy", 0.5)
            trades = await ex.fetch_trades("ETH/USD")
            assert [(t["side"], t["amount"]) for t in trades] == [("buy", 0.5)]
            assert trades[0]["price"] == order["average"]
            recent = await ex.fetch_trades("ETH/USD", params={"fetchTradesMethod": "publicGetTrades"})
            assert [t["id"] for t in recent] == [t["id"] for t in trades]
            balance = await ex.fetch_balance()
            assert balance["ETH"]["free"] == 0.5
        finally:
            await ex.close()


async def test_stock_client_creates_queries_edits_and_cancels_orders() -> None:
    async with binance_gateway() as (_gw, _dialect, base):
        ex = binance(base)
        try:
            order = await ex.create_order("BTC/USD", "limit", "buy", 0.01, 60000, {"clientOrderId": "bot-a.1:x/y_z-1"})
            assert order["status"] == "open" and order["clientOrderId"] == "bot-a.1:x/y_z-1"
            assert (await ex.fetch_order(order["id"], "BTC/USD"))["status"] == "open"
            by_cid = await ex.fetch_order("", "BTC/USD", {"origClientOrderId": "bot-a.1:x/y_z-1"})
            assert by_cid["id"] == order["id"]
            balance = await ex.fetch_balance()
            assert balance["USD"]["used"] > 600  # the order holds its value
            assert [o["id"] for o in await ex.fetch_open_orders("BTC/USD")] == [order["id"]]
            ex.options["fetchOpenOrders"]["warnWithoutSymbol"] = False  # ccxt's own caution: every symbol weighs 80
            assert [o["id"] for o in await ex.fetch_open_orders()] == [order["id"]]
            edited = await ex.edit_order(order["id"], "BTC/USD", "limit", "buy", 0.02, 61000)
            assert edited["id"] != order["id"] and edited["amount"] == 0.02 and edited["price"] == 61000
            assert (await ex.fetch_order(order["id"], "BTC/USD"))["status"] == "canceled"
            canceled = await ex.cancel_order(edited["id"], "BTC/USD")
            assert canceled["status"] == "canceled"
            await ex.create_order("BTC/USD", "limit", "sell", 0.01, 70000)  # refused below: no BTC
        except ccxt.InsufficientFunds:
            pass
        finally:
            await ex.close()
        ex = binance(base)
        try:
            filled = await ex.create_order("ETH/USD", "market", "buy", 1)
            assert filled["status"] == "closed" and filled["filled"] == 1
            resting = [await ex.create_order("ETH/USD", "limit", "sell", 0.25, 5000) for _ in range(2)]
            assert len(await ex.fetch_open_orders("ETH/USD")) == 2
            assert len(await ex.cancel_all_orders("ETH/USD")) == 2
            assert await ex.fetch_open_orders("ETH/USD") == []
            closed = await ex.fetch_closed_orders("ETH/USD")
            assert [o["status"] for o in closed] == ["closed"]
            every = await ex.fetch_orders("ETH/USD")
            assert [o["id"] for o in every] == [filled["id"], *(o["id"] for o in resting)]
            mine = await ex.fetch_my_trades("ETH/USD")
            assert [(t["order"], t["amount"], t["takerOrMaker"]) for t in mine] == [(filled["id"], 1.0, "taker")]
            tested = await ex.create_order("ETH/USD", "limit", "buy", 0.1, 3000, {"test": True})
            assert tested is not None and await ex.fetch_open_orders("ETH/USD") == []
        finally:
            await ex.close()


@pytest.mark.parametrize(
    ("case", "code", "status", "error"),
    [
        ("insufficient balance", -2010, 400, ccxt.InsufficientFunds),
        ("lot size", -1013, 400, ccxt.InvalidOrder),
        ("notional", -1013, 400, ccxt.BadRequest),  # ccxt names LOT_SIZE and PRICE_FILTER only; -1013 is BadRequest
        ("price filter", -1013, 400, ccxt.InvalidOrder),
        ("cancel unknown order", -2011, 400, ccxt.OrderNotFound),
        ("query unknown order", -2013, 400, ccxt.OrderNotFound),
        ("client order id of 37 characters", -1100, 400, ccxt.BadRequest),
        ("client order id with a space", -1100, 400, ccxt.BadRequest),
        ("unknown symbol", -1121, 400, ccxt.BadSymbol),
        ("wrong secret", -1022, 400, ccxt.AuthenticationError),
        ("unknown key", -2015, 401, ccxt.AuthenticationError),
        ("malformed key", -2014, 401, ccxt.AuthenticationError),
        ("clock past recvWindow", -1021, 400, ccxt.InvalidNonce),
    ],
)
async def test_numbered_errors_are_binances_and_raise_ccxts_classes(
    case: str, code: int, status: int, error: type[Exception]
) -> None:
    async with binance_gateway() as (_gw, _dialect, base):
        key, secret = BINANCE_KEY, BINANCE_SECRET
        if case == "wrong secret":
            secret = "not the secret"
        elif case == "unknown key":
            key = "noSuchKey123"
        elif case == "malformed key":
            key = "a key with spaces"
        ex = binance(base, key, secret)
        try:
            await binance_markets(ex, base)
            if case == "clock past recvWindow":
                await chaos(base, "binance_clock_drift", ms=-20_000)
            with pytest.raises(error) as raised:
                await _provoke(ex, case)
            assert json.loads(ex.last_http_response)["code"] == code, raised.value
        finally:
            await ex.close()
        # The same refusal sent by hand: Binance's status and body.
        if case in ("insufficient balance", "cancel unknown order", "unknown key"):
            async with aiohttp.ClientSession() as session:
                sent_key = key if case == "unknown key" else BINANCE_KEY
                if case == "insufficient balance":
                    args = {"symbol": "BTCUSD", "side": "SELL", "type": "MARKET", "quantity": "1"}
                    got = await signed(session, base, "POST", "order", sent_key, **args)
                else:
                    got = await signed(session, base, "DELETE", "order", sent_key, symbol="BTCUSD", orderId=99)
                assert got[0] == status and got[2]["code"] == code, got


async def binance_markets(ex: Any, base: str) -> None:
    """Load the markets with the gateway's own key (a client whose key is refused still needs them)."""
    loader = binance(base)
    try:
        ex.set_markets(list((await loader.load_markets()).values()))
    finally:
        await loader.close()


# The filters through ccxt's implicit API: its unified create_order rounds to the precision first.
LIMIT = {"side": "BUY", "type": "LIMIT", "timeInForce": "GTC"}
PROVOKE: dict[str, Callable[[Any], Awaitable[Any]]] = {
    "insufficient balance": lambda ex: ex.create_order("BTC/USD", "market", "sell", 1),
    "lot size": lambda ex: ex.private_post_order(
        {**LIMIT, "symbol": "BTCUSD", "quantity": "0.00015", "price": "60000"}
    ),
    "notional": lambda ex: ex.private_post_order({**LIMIT, "symbol": "SOLUSD", "quantity": "0.01", "price": "100"}),
    "price filter": lambda ex: ex.private_post_order(
        {**LIMIT, "symbol": "BTCUSD", "quantity": "0.01", "price": "60000.005"}
    ),
    "cancel unknown order": lambda ex: ex.cancel_order("12345", "BTC/USD"),
    "query unknown order": lambda ex: ex.fetch_order("12345", "BTC/USD"),
    "client order id of 37 characters": lambda ex: ex.create_order(
        "BTC/USD", "limit", "buy", 0.01, 60000, {"clientOrderId": "x" * 37}
    ),
    "client order id with a space": lambda ex: ex.create_order(
        "BTC/USD", "limit", "buy", 0.01, 60000, {"clientOrderId": "bot a"}
    ),
    "unknown symbol": lambda ex: ex.public_get_depth({"symbol": "DOGEUSD"}),
}


async def _provoke(ex: Any, case: str) -> Any:
    return await PROVOKE.get(case, lambda ex: ex.fetch_balance())(ex)


async def test_weights_are_counted_per_endpoint_and_orders_per_account() -> None:
    clock = ManualClock()
    async with binance_gateway() as (_gw, dialect, base):
        dialect.weights.clock = clock
        async with aiohttp.ClientSession() as session:
            used = []
            for path in (
                "ping",
                "exchangeInfo",
                "depth?symbol=BTCUSD",
                "depth?symbol=BTCUSD&limit=1000",
                "ticker/24hr",
                "ticker/24hr?symbol=BTCUSD",
                'ticker/24hr?symbols=["BTCUSD","ETHUSD"]',
                'ticker/price?symbols=["BTCUSD","ETHUSD"]',
            ):
                async with session.get(f"{base}/api/v3/{path}") as r:
                    assert r.status == 200
                    used.append(int(r.headers["X-MBX-USED-WEIGHT-1M"]))
            # 1, 20, 5, 50; 80 for every symbol's 24hr ticker, 2 for one, 2 for up to 20 named (Binance's table);
            # 4 for the price tickers of `symbols`, as for all of them
            assert used == [1, 21, 26, 76, 156, 158, 160, 164]
            args = {"symbol": "BTCUSD", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.01"}
            status, headers, _ = await signed(session, base, "POST", "order", price="60000", **args)
            assert status == 200
            assert headers["X-MBX-ORDER-COUNT-10S"] == "1" and headers["X-MBX-ORDER-COUNT-1D"] == "1"
            assert headers["X-MBX-USED-WEIGHT-1M"] == "165"
            status, headers, _ = await signed(session, base, "POST", "order", BINANCE_SUB_KEY, price="60000", **args)
            assert headers["X-MBX-ORDER-COUNT-10S"] == "1"  # another account's count
            clock.now += 60  # a new minute
            async with session.get(f"{base}/api/v3/ping") as r:
                assert r.headers["X-MBX-USED-WEIGHT-1M"] == "1"


async def test_past_the_weight_limit_429_then_an_ip_ban_418_with_retry_after() -> None:
    clock = ManualClock()
    async with binance_gateway() as (_gw, dialect, base):
        dialect.weights = WeightLimiter(100, refusals_before_ban=3, ban_seconds=120, clock=clock)
        dialect.rest.weights = dialect.market.weights = dialect.users.weights = dialect.weights
        async with aiohttp.ClientSession() as session:
            statuses = []
            for _ in range(10):
                async with session.get(f"{base}/api/v3/exchangeInfo") as r:
                    statuses.append((r.status, r.headers.get("Retry-After"), (await r.json()).get("code")))
            assert statuses[:5] == [(200, None, None)] * 5
            assert statuses[5:8] == [(429, "60", -1003)] * 3
            assert statuses[8:] == [(418, "120", -1003)] * 2
        ex = binance(base)
        try:
            with pytest.raises(ccxt.DDoSProtection, match="418"):
                await ex.fetch_time()
        finally:
            await ex.close()
        clock.now += 121  # the ban is over
        async with aiohttp.ClientSession() as session, session.get(f"{base}/api/v3/ping") as r:
            assert r.status == 200


async def test_one_account_seen_the_same_through_kraken_and_binance() -> None:
    async with binance_gateway() as (_gw, _dialect, base):
        kr, bn = kraken(base, API_KEY, API_SECRET), binance(base)
        bn.options["fetchOpenOrders"]["warnWithoutSymbol"] = False
        try:
            via_kraken = await kr.create_order("BTC/USD", "limit", "buy", 0.01, 60000, {"cl_ord_id": "from-kraken-1"})
            via_binance = await bn.create_order(
                "ETH/USD", "limit", "buy", 0.5, 3000, {"clientOrderId": "from-binance-1"}
            )
            await bn.create_order("SOL/USD", "market", "buy", 2)
            kraken_open = {o["clientOrderId"] for o in await kr.fetch_open_orders()}
            binance_open = {o["clientOrderId"] for o in await bn.fetch_open_orders()}
            assert kraken_open == binance_open == {"from-kraken-1", "from-binance-1"}
            kb, bb = await kr.fetch_balance(), await bn.fetch_balance()
            for asset in ("USD", "SOL", "BTC", "ETH"):
                assert Decimal(str(kb["total"].get(asset, 0))) == Decimal(str(bb["total"][asset])), asset
            assert Decimal(str(bb["USD"]["used"])) > 0
            await bn.cancel_order(str(int(via_kraken["id"].lstrip("P"))), "BTC/USD")
            await kr.cancel_order("P" + via_binance["id"])  # one order, Kraken's txid P<n> is Binance's orderId n
            assert await kr.fetch_open_orders() == [] and await bn.fetch_open_orders() == []
            # The sub-account's Binance key reaches the sub-account only.
            sub = binance(base, BINANCE_SUB_KEY, BINANCE_SUB_SECRET)
            try:
                assert await sub.fetch_my_trades("SOL/USD") == []
                assert len(await bn.fetch_my_trades("SOL/USD")) == 1
            finally:
                await sub.close()
        finally:
            await kr.close()
            await bn.close()


def test_paper_gateway_command_serves_binance_keys_from_its_configuration(tmp_path: Path) -> None:
    """`trading-ops paper-gateway` with gateway.binance.keys (a real process), and a Binance fault sent with
    `trading-ops gateway-chaos`."""
    for name, text in (
        ("key", API_KEY),
        ("secret", API_SECRET),
        ("token", CONTROL_TOKEN),
        ("bkey", BINANCE_KEY),
        ("bsecret", BINANCE_SECRET),
    ):
        write_secret(tmp_path / name, text)
    port = free_port()
    config = {
        "paper": {"symbols": ["BTC-USD", "ETH-USD"], "quote_asset": "USD", "reject_probability": 0},
        "gateway": {
            "listen": {"host": "127.0.0.1", "port": port},
            "api_key_file": str(tmp_path / "key"),
            "api_secret_file": str(tmp_path / "secret"),
            "control_token_file": str(tmp_path / "token"),
            "binance": {
                "keys": [
                    {
                        "account": "main",
                        "api_key_file": str(tmp_path / "bkey"),
                        "api_secret_file": str(tmp_path / "bsecret"),
                    }
                ]
            },
        },
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps(config))
    command = [sys.executable, "-m", "trading_ops", "--config", str(path)]
    with open(tmp_path / "gateway.log", "wb") as log:
        proc = subprocess.Popen([*command, "paper-gateway"], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        sync = ccxt_sync.binance({"apiKey": BINANCE_KEY, "secret": BINANCE_SECRET, "urls": {"api": binance_urls(base)}})
        until(
            "the gateway answers on Binance's API",
            lambda: sync.fetch_time() > 0,
            deadline=60,
            tolerate=(ccxt.NetworkError,),
        )
        assert sync.fetch_balance()["USD"]["free"] > 0
        done = subprocess.run(
            [*command, "gateway-chaos", "binance_filter_refusal", "count=1", "filter=NOTIONAL"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        with pytest.raises(ccxt.BadRequest, match="Filter failure: NOTIONAL"):
            sync.create_order("ETH/USD", "market", "buy", 0.5)
        bad = subprocess.run(
            [*command, "gateway-chaos", "binance_filter_refusal", "filter=MAX_POSITION"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert bad.returncode == 2 and "filter must be one of" in bad.stderr
    finally:
        proc.terminate()
        proc.wait(15)


async def test_cancel_replace_reports_each_half_and_fails_as_binance_does() -> None:
    async with binance_gateway() as (_gw, _dialect, base), aiohttp.ClientSession() as session:
        new = {"symbol": "BTCUSD", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.01"}
        status, _, placed = await signed(session, base, "POST", "order", price="60000", **new)
        assert status == 200
        args = {**new, "price": "61000", "cancelReplaceMode": "STOP_ON_FAILURE"}
        status, _, both = await signed(
            session, base, "POST", "order/cancelReplace", cancelOrderId=placed["orderId"], **args
        )
        assert status == 200 and (both["cancelResult"], both["newOrderResult"]) == ("SUCCESS", "SUCCESS")
        assert both["cancelResponse"]["status"] == "CANCELED" and both["newOrderResponse"]["price"] == "61000.00000000"
        status, _, failed = await signed(
            session, base, "POST", "order/cancelReplace", cancelOrderId=placed["orderId"], **args
        )
        assert status == 400 and failed["code"] == -2022 and failed["msg"] == "Order cancel-replace failed."
        assert failed["data"]["cancelResponse"] == {"code": -2011, "msg": "Unknown order sent."}
        assert failed["data"]["newOrderResult"] == "NOT_ATTEMPTED"
        args["cancelReplaceMode"] = "ALLOW_FAILURE"
        status, _, half = await signed(
            session, base, "POST", "order/cancelReplace", cancelOrderId=placed["orderId"], **args
        )
        assert status == 400 and half["code"] == -2021 and half["data"]["newOrderResult"] == "SUCCESS"


async def test_past_the_orders_per_10_seconds_an_order_answers_1015() -> None:
    clock = ManualClock()
    async with binance_gateway() as (_gw, dialect, base), aiohttp.ClientSession() as session:
        dialect.weights = WeightLimiter(orders_10s=2, clock=clock)
        dialect.rest.weights = dialect.weights
        market = {"symbol": "ETHUSD", "side": "BUY", "type": "MARKET", "quantity": "0.01"}
        answers = [await signed(session, base, "POST", "order", **market) for _ in range(3)]
        assert [a[0] for a in answers] == [200, 200, 429]
        assert answers[2][2] == {"code": -1015, "msg": "Too many new orders; current limit is 2 orders per 10 SECOND."}
        assert answers[1][1]["X-MBX-ORDER-COUNT-10S"] == "2"
        clock.now += 10
        assert (await signed(session, base, "POST", "order", **market))[0] == 200
