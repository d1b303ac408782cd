"""The Kraken-compatible gateway driven by ccxt's real `kraken` client (ccxt.async_support) over loopback: markets,
market data, orders, partial fills, cancels, order history, trades, authentication, nonces, and each injected fault
raised as ccxt's own exception class. Needs nothing but the gateway itself, started per test on a free port."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import aiohttp
import ccxt.async_support as ccxt
import pytest

from tests.ccxt_helpers import (
    API_KEY,
    API_SECRET,
    CONTROL_TOKEN,
    OTHER_KEY,
    OTHER_SECRET,
    kraken,
    running_gateway,
    wait_for,
)
from tests.conftest import free_port
from trading_ops.cli import main
from trading_ops.venues.kraken_gateway import sign

ROOT = Path(__file__).resolve().parent.parent


async def chaos(base: str, fault: str, token: str = CONTROL_TOKEN, **args: object) -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base}/chaos/{fault}", json=args, headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        return response.status, await response.json()


async def test_markets_assets_and_market_data_as_ccxt_parses_them() -> None:
    async with running_gateway(tick_interval=0.02, volatility=0.001) as (gateway, base):
        ex = kraken(base)
        try:
            markets = await ex.load_markets()
            assert sorted(markets) == ["BTC/USD", "ETH/USD", "SOL/USD"]
            btc = markets["BTC/USD"]
            assert (btc["id"], btc["altname"], btc["base"], btc["quote"]) == ("XXBTZUSD", "XBTUSD", "BTC", "USD")
            assert markets["SOL/USD"]["id"] == "SOLUSD" and btc["active"] is True
            assert btc["precision"] == {"amount": 0.0001, "price": 0.01}
            assert btc["limits"]["amount"]["min"] == 0.0001
            assert btc["taker"] == pytest.approx(0.0005) and btc["maker"] == pytest.approx(0.0002)
            assert {"BTC", "USD", "ETH", "SOL"} <= set(ex.currencies)

            ticker = await ex.fetch_ticker("BTC/USD")
            quote = gateway.venue.quote("BTC-USD")
            assert 0 < ticker["bid"] < ticker["ask"]
            assert abs(Decimal(str(ticker["bid"])) - quote.bid) < quote.bid * Decimal("0.05")
            tickers = await ex.fetch_tickers(["BTC/USD", "ETH/USD"])
            assert sorted(tickers) == ["BTC/USD", "ETH/USD"]

            book = await ex.fetch_order_book("ETH/USD", 5)
            assert len(book["bids"]) == len(book["asks"]) == 5
            assert book["bids"][0][0] < book["asks"][0][0]
            assert all(a[0] < b[0] for a, b in zip(book["asks"], book["asks"][1:], strict=False))

            candles = await ex.fetch_ohlcv("BTC/USD", "1m")
            assert candles and all(low <= o <= high and low <= c <= high for _, o, high, low, c, _ in candles)
            server = await ex.fetch_time()
            venue_ms = (await gateway.venue.server_time()).timestamp() * 1000
            assert abs(server - venue_ms) < 60_000
            assert (await ex.fetch_status())["status"] == "ok"
        finally:
            await ex.close()


async def test_limit_and_market_orders_partial_fills_cancels_history_and_trades() -> None:
    async with running_gateway(partial_fill_probability=1.0) as (gateway, base):
        ex = kraken(base)
        try:
            await ex.load_markets()
            ask = gateway.venue.quote("ETH-USD").ask
            # A buy above the ask crosses at once: with partial fills always on, part of it fills on arrival.
            crossing = await ex.create_order("ETH/USD", "limit", "buy", 2, float(ask + 5), {"clientOrderId": "cross-1"})
            assert crossing["id"] and crossing["clientOrderId"] == "cross-1" and crossing["side"] == "buy"
            resting = await ex.create_order("BTC/USD", "limit", "buy", 0.01, 1000, {"clientOrderId": "rest-1"})

            state = await ex.fetch_order(crossing["id"])
            assert state["status"] == "open" and 0 < state["filled"] < 2 and state["clientOrderId"] == "cross-1"
            open_orders = {o["clientOrderId"]: o for o in await ex.fetch_open_orders()}
            assert set(open_orders) == {"cross-1", "rest-1"}
            assert open_orders["rest-1"]["price"] == 1000 and open_orders["rest-1"]["filled"] == 0

            trades = await ex.fetch_my_trades()
            assert [t["order"] for t in trades] == [crossing["id"]]
            assert trades[0]["amount"] == state["filled"] and trades[0]["takerOrMaker"] == "taker"
            assert trades[0]["fee"]["currency"] == "USD" and trades[0]["fee"]["cost"] > 0

            # Cancel by client order id and by venue id; a partially filled order keeps what filled.
            await ex.cancel_order("", None, {"clientOrderId": "cross-1"})
            await ex.cancel_order(resting["id"])
            assert await ex.fetch_open_orders() == []
            closed = {o["clientOrderId"]: o for o in await ex.fetch_closed_orders()}
            assert closed["cross-1"]["status"] == "canceled" and closed["cross-1"]["filled"] == state["filled"]
            assert closed["rest-1"]["status"] == "canceled" and closed["rest-1"]["filled"] == 0
            with pytest.raises(ccxt.OrderNotFound):
                await ex.cancel_order(resting["id"])

            market = await ex.create_order("SOL/USD", "market", "sell", 1, None, {"clientOrderId": "mkt-1"})
            assert market["type"] == "market"
            by_cid = await ex.fetch_open_orders(None, None, None, {"clientOrderId": "mkt-1"})
            assert [o["filled"] < 1 for o in by_cid] in ([], [True])  # partially filled at most, still open
            await ex.cancel_all_orders()
            balance = await ex.fetch_balance()
            venue = await gateway.venue.balances()
            assert Decimal(str(balance["total"]["USD"])) == venue["USD"].quantize(Decimal("1e-10"))
            assert Decimal(str(balance["total"]["SOL"])) == venue["SOL"] < 0
        finally:
            await ex.close()


async def test_market_order_fills_whole_and_pages_of_trade_history() -> None:
    async with running_gateway() as (gateway, base):
        ex = kraken(base)
        ex.number = str  # exact decimals, as the broker reads them
        try:
            for i in range(60):  # more than one page of history (Kraken answers 50 at a time)
                await ex.create_order("BTC/USD", "market", "buy", "0.001", None, {"clientOrderId": f"m-{i}"})
            first = await ex.fetch_my_trades()
            second = await ex.fetch_my_trades(None, None, None, {"ofs": 50})
            assert len(first) == 50 and len(second) == 10
            ids = {t["id"] for t in first} | {t["id"] for t in second}
            assert ids == {f.trade_id for f in await gateway.venue.recent_fills()}
            closed = await ex.fetch_closed_orders(None, None, None, {"clientOrderId": "m-59"})
            assert [(o["status"], o["filled"], o["amount"]) for o in closed] == [("closed", "0.0010", "0.0010")]
            assert Decimal(closed[0]["average"]) == gateway.venue.quote("BTC-USD").ask
        finally:
            await ex.close()


async def test_authentication_and_the_increasing_nonce() -> None:
    async with running_gateway() as (gateway, base):
        good, wrong_key, wrong_secret = kraken(base), kraken(base, key="nobody"), kraken(base, secret=OTHER_SECRET)
        stale = kraken(base, key=API_KEY)
        stale.nonce = lambda: 1  # behind what the key already used
        try:
            assert (await good.fetch_balance())["total"]["USD"] == 100000
            with pytest.raises(ccxt.AuthenticationError, match="EAPI:Invalid key"):
                await wrong_key.fetch_balance()
            # ccxt leaves Kraken's "Invalid signature" as a bare ExchangeError (the broker teaches it better).
            with pytest.raises(ccxt.ExchangeError, match="EAPI:Invalid signature"):
                await wrong_secret.fetch_balance()
            with pytest.raises(ccxt.InvalidNonce, match="EAPI:Invalid nonce"):
                await stale.fetch_balance()
            # Nonces are per key: another key starts from zero.
            assert (await kraken(base, key=OTHER_KEY, secret=OTHER_SECRET).fetch_balance())["total"]["USD"] == 100000
        finally:
            for ex in (good, wrong_key, wrong_secret, stale):
                await ex.close()
        # A hand-made request: a tampered body fails the signature; a replayed nonce is refused.
        secret = base64.b64decode(API_SECRET)
        async with aiohttp.ClientSession() as session:
            nonce = str(10**18)
            body = f"nonce={nonce}"
            headers = {"API-Key": API_KEY, "API-Sign": sign(secret, "/0/private/Balance", nonce, body)}
            url = f"{base}/0/private/Balance"
            async with session.post(url, data=body, headers=headers) as r:
                assert (await r.json())["error"] == []
            async with session.post(url, data=body, headers=headers) as r:
                assert (await r.json()) == {"error": ["EAPI:Invalid nonce"], "result": {}}
            async with session.post(url, data=body + "&x=1", headers=headers) as r:
                assert (await r.json())["error"] == ["EAPI:Invalid signature"]
            async with session.post(url, data=body, headers={**headers, "API-Sign": "ünïcode"}) as r:
                assert (await r.json())["error"] == ["EAPI:Invalid signature"]


@pytest.mark.parametrize(
    ("fault", "args", "call", "raised"),
    [
        ("unavailable", {}, "balance", ccxt.ExchangeNotAvailable),
        ("rate_limit", {}, "balance", ccxt.DDoSProtection),  # EAPI:Rate limit exceeded
        ("rate_limit", {}, "order", ccxt.DDoSProtection),  # EOrder:Rate limit exceeded
        ("nonce", {"count": 1}, "balance", ccxt.InvalidNonce),
        ("insufficient_funds", {}, "order", ccxt.InsufficientFunds),
        ("invalid_order", {}, "order", ccxt.InvalidOrder),
        ("drop_connection", {}, "ticker", ccxt.ExchangeNotAvailable),  # the connection closes without an answer
    ],
)
async def test_each_fault_raises_ccxts_own_exception_class(fault, args, call, raised) -> None:
    async with running_gateway() as (gateway, base):
        ex = kraken(base)
        try:
            await ex.load_markets()
            status, body = await chaos(base, fault, **args)
            assert status == 200 and body["fault"] == fault

            async def do() -> object:
                if call == "balance":
                    return await ex.fetch_balance()
                if call == "ticker":
                    return await ex.fetch_ticker("BTC/USD")
                return await ex.create_order("BTC/USD", "limit", "buy", 0.01, 1000, {"clientOrderId": "f-1"})

            with pytest.raises(raised) as info:
                await do()
            if fault == "drop_connection":
                assert isinstance(info.value.__cause__, aiohttp.ClientConnectionError)
            assert gateway.venue.orders() == []  # a refused order was never placed
            assert (await chaos(base, "clear"))[0] == 200
            await do()  # healed
        finally:
            await ex.close()


async def test_lost_replies_place_the_order_and_lose_the_answer() -> None:
    async with running_gateway() as (gateway, base):
        ex = kraken(base, timeout=300)
        try:
            await ex.load_markets()
            await chaos(base, "lost_reply", count=1)
            with pytest.raises(ccxt.NetworkError) as info:
                await ex.create_order("BTC/USD", "limit", "buy", 0.01, 1000, {"clientOrderId": "lost-1"})
            assert isinstance(info.value.__cause__, aiohttp.ClientConnectionError)
            await chaos(base, "lost_reply", count=1, mode="timeout", delay=2.0)
            with pytest.raises(ccxt.RequestTimeout):
                await ex.create_order("BTC/USD", "limit", "buy", 0.01, 1000, {"clientOrderId": "lost-2"})
            # Both reached the venue, once each.
            assert sorted(o.client_order_id for o in gateway.venue.orders()) == ["lost-1", "lost-2"]
            found = await ex.fetch_open_orders(None, None, None, {"clientOrderId": "lost-2"})
            assert [o["clientOrderId"] for o in found] == ["lost-2"]
        finally:
            await ex.close()


async def test_stale_market_data_freezes_one_symbol_while_the_market_moves() -> None:
    async with running_gateway(tick_interval=0.02, volatility=0.002) as (gateway, base):
        ex = kraken(base)
        try:
            await ex.load_markets()
            await chaos(base, "stale_market_data", symbol="ETH-USD")
            frozen = (await ex.fetch_ticker("ETH/USD"))["bid"]
            live = (await ex.fetch_ticker("BTC/USD"))["bid"]

            async def moved() -> bool:
                return (await ex.fetch_ticker("BTC/USD"))["bid"] != live and gateway.venue.quote(
                    "ETH-USD"
                ).bid != Decimal(str(frozen))

            await wait_for(moved)
            assert (await ex.fetch_ticker("ETH/USD"))["bid"] == frozen
            await chaos(base, "clear")
            assert (await ex.fetch_ticker("ETH/USD"))["bid"] == float(gateway.venue.quote("ETH-USD").bid)
        finally:
            await ex.close()


async def test_fault_commands_need_the_token_and_valid_arguments() -> None:
    async with running_gateway() as (gateway, base):
        assert (await chaos(base, "rate_limit", token="wrong"))[0] == 401
        assert (await chaos(base, "rate_limit", token="tökén"))[0] == 401
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base}/chaos/rate_limit") as r:
                assert r.status == 401
            async with session.post(
                f"{base}/chaos/rate_limit", data="[1]", headers={"Authorization": f"Bearer {CONTROL_TOKEN}"}
            ) as r:
                assert r.status == 400
        status, body = await chaos(base, "melt_down")
        assert status == 404 and "unknown fault" in body["error"]
        assert (await chaos(base, "rate_limit", seconds="ten"))[0] == 400
        assert (await chaos(base, "rate_limit", seconds=1e9))[0] == 400
        assert (await chaos(base, "stale_market_data", symbol="DOGE-USD"))[0] == 400
        assert (await chaos(base, "lost_reply", mode="sideways"))[0] == 400
        assert gateway.faults.rate_limited_until == 0  # nothing took effect
        status, body = await chaos(base, "position_drift", symbol="SOL-USD", quantity=2)
        assert status == 200 and (await gateway.venue.positions())["SOL-USD"] == 2


def test_cli_serves_the_gateway_and_sends_faults(tmp_path, monkeypatch) -> None:
    """`trading-ops paper-gateway` as a process, `trading-ops gateway-chaos` against it, one-line config errors."""
    port = free_port()
    config = tmp_path / "trading-ops.yaml"
    config.write_text(
        f"paper:\n  tick_interval_seconds: 0.05\n  reject_probability: 0\ngateway:\n  listen:\n    port: {port}\n"
        f"  state_file: {tmp_path / 'gateway.json'}\n"
    )
    monkeypatch.setenv("TRADING_OPS_GATEWAY_API_KEY", API_KEY)
    monkeypatch.setenv("TRADING_OPS_GATEWAY_API_SECRET", API_SECRET)
    monkeypatch.setenv("TRADING_OPS_GATEWAY_CONTROL_TOKEN", CONTROL_TOKEN)
    proc = subprocess.Popen([sys.executable, "-m", "trading_ops", "--config", str(config), "paper-gateway"], cwd=ROOT)
    base = f"http://127.0.0.1:{port}"

    async def scenario() -> None:
        ex = kraken(base)
        try:

            async def up() -> bool:
                try:
                    await ex.fetch_time()
                    return True
                except ccxt.NetworkError:
                    return False

            await wait_for(up, timeout=60)
            await ex.create_order("BTC/USD", "limit", "buy", 0.01, 1000, {"clientOrderId": "cli-1"})
            code = await asyncio.to_thread(main, ["--config", str(config), "gateway-chaos", "rate_limit"])
            assert code == 0
            with pytest.raises(ccxt.DDoSProtection):
                await ex.fetch_balance()
            assert await asyncio.to_thread(main, ["--config", str(config), "gateway-chaos", "clear"]) == 0
            assert (await ex.fetch_open_orders())[0]["clientOrderId"] == "cli-1"
        finally:
            await ex.close()

    try:
        asyncio.run(scenario())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # The venue's state outlived the process: orders and balances are in the state file.
    assert "cli-1" in (tmp_path / "gateway.json").read_text()


def test_cli_config_errors_are_one_line_exit_2(tmp_path, capsys, monkeypatch) -> None:
    for name in ("TRADING_OPS_GATEWAY_API_KEY", "TRADING_OPS_GATEWAY_API_SECRET", "TRADING_OPS_GATEWAY_CONTROL_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "c.yaml"
    config.write_text("gateway:\n  api_key: in-the-file\n")
    assert main(["--config", str(config), "paper-gateway"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "trading-ops: config: gateway.api_key: secrets are not written in the file; use api_key_file or api_key_env"
    ]
    config.write_text("gateway: {}\n")
    assert main(["--config", str(config), "paper-gateway"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "trading-ops: config: gateway.api_key: not set: give api_key_file or api_key_env"
    )
    monkeypatch.setenv("TRADING_OPS_GATEWAY_API_KEY", "k")
    monkeypatch.setenv("TRADING_OPS_GATEWAY_API_SECRET", "not base64!")
    monkeypatch.setenv("TRADING_OPS_GATEWAY_CONTROL_TOKEN", "t")
    assert main(["--config", str(config), "paper-gateway"]) == 2
    assert "gateway.api_secret: an API secret must be base64" in capsys.readouterr().err
    # gateway-chaos with nobody listening: one line, exit 1.
    config.write_text(f"gateway:\n  listen:\n    port: {free_port()}\n")
    assert main(["--config", str(config), "gateway-chaos", "clear"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("trading-ops: gateway-chaos: cannot reach http://127.0.0.1:")
