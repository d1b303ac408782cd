"""The Kraken-compatible gateway driven by ccxt's real `kraken` client (ccxt.async_support) over loopback: markets,
market data, orders, partial fills, cancels, order history, trades, authentication, nonces, and each injected fault
raised as ccxt's own exception class. Needs nothing but the gateway itself, started per test on a free port."""

from __future__ import annotations

import asyncio
import base64
import itertools
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from pathlib import Path

import aiohttp
import ccxt.async_support as ccxt
import pytest
from ccxt_helpers import (
    API_KEY,
    API_SECRET,
    CONTROL_TOKEN,
    OTHER_KEY,
    OTHER_SECRET,
    SUB_ACCOUNT,
    SUB_KEY,
    SUB_SECRET,
    kraken,
    running_gateway,
    serving,
    wait_for,
)
from ports import free_port

from trading_ops.cli import main
from trading_ops.config import ConfigError, parse_config
from trading_ops.paper.gateway.kraken.api import sign
from trading_ops.paper.gateway.kraken.gateway import gateway_from_config

ROOT = Path(__file__).resolve().parents[3]


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

            await gateway.venue.transfer("SOL", Decimal(1))  # a deposit: a spot account sells only what it holds
            market = await ex.create_order("SOL/USD", "market", "sell", 1, None, {"clientOrderId": "mkt-1"})
            assert market["type"] == "market"
            by_cid = await ex.fetch_open_orders(None, None, None, {"clientOrderId": "mkt-1"})
            assert [o["filled"] < 1 for o in by_cid] in ([], [True])  # partially filled at most, still open
            await ex.cancel_all_orders()
            balance = await ex.fetch_balance()
            venue = await gateway.venue.balances()
            assert Decimal(str(balance["total"]["USD"])) == venue["USD"].quantize(Decimal("1e-10"))
            assert Decimal(str(balance["total"]["SOL"])) == venue["SOL"] < 1
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
            # A wrong secret is Kraken's "Invalid key" too: stock ccxt (and so freqtrade) raises AuthenticationError.
            with pytest.raises(ccxt.AuthenticationError, match="EAPI:Invalid key"):
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
                assert (await r.json())["error"] == ["EAPI:Invalid key"]
            async with session.post(url, data=body, headers={**headers, "API-Sign": "ünïcode"}) as r:
                assert (await r.json())["error"] == ["EAPI:Invalid key"]


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


async def test_stale_market_data_stops_one_pairs_feed_until_a_client_loads_the_markets_again() -> None:
    async with running_gateway(tick_interval=0.02, volatility=0.002) as (gateway, base):
        ex = kraken(base)
        try:
            await ex.load_markets()
            status, body = await chaos(base, "stale_market_data", symbol="ETH-USD")
            assert status == 200 and body["seconds"] == "until the client resubscribes"
            # The book as the fault froze it (one read before the fault may be a tick older than that).
            frozen_book = await ex.fetch_order_book("ETH/USD", 3)
            # The pair is no longer quoted (a frozen price would look like a quiet market); the others are.
            assert (await ex.fetch_ticker("ETH/USD"))["bid"] is None
            assert sorted(await ex.fetch_tickers(["BTC/USD", "ETH/USD"])) == ["BTC/USD"]
            live = (await ex.fetch_ticker("BTC/USD"))["bid"]

            async def moved() -> bool:
                btc_moved = (await ex.fetch_ticker("BTC/USD"))["bid"] != live
                return btc_moved and gateway.venue.quote("ETH-USD").bid != Decimal(str(frozen_book["bids"][0][0]))

            await wait_for(moved)
            assert (await ex.fetch_order_book("ETH/USD", 3))["bids"] == frozen_book["bids"]  # depth froze with it
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{base}/chaos", headers={"Authorization": f"Bearer {CONTROL_TOKEN}"}) as response,
            ):
                shown = (await response.json())["faults"]["stale_market_data"]
            assert shown == {"ETH-USD": "until the client resubscribes"}
            # Subscribing again, for a polling client: the markets loaded again. The feed flows from then on.
            await ex.load_markets(True)
            assert (await ex.fetch_ticker("ETH/USD"))["bid"] == float(gateway.venue.quote("ETH-USD").bid)
            assert gateway.fault_model.subjects("stale_market_data") == []

            # With `seconds`, it also ends by itself.
            await chaos(base, "stale_market_data", symbol="SOL-USD", seconds=0.3)
            assert (await ex.fetch_ticker("SOL/USD"))["bid"] is None

            async def quoted_again() -> bool:
                return (await ex.fetch_ticker("SOL/USD"))["bid"] is not None

            await wait_for(quoted_again, timeout=10)
        finally:
            await ex.close()


async def test_a_dropped_connection_lasts_until_the_client_reconnects_with_a_status_check() -> None:
    async with running_gateway() as (gateway, base):
        ex = kraken(base)
        try:
            await ex.load_markets()
            status, body = await chaos(base, "drop_connection")
            assert status == 200 and body["seconds"] == "until the client reconnects"
            for _ in range(3):  # the client's own retries on new connections do not get through
                with pytest.raises(ccxt.ExchangeNotAvailable):
                    await ex.fetch_balance()
            await ex.close()  # what a reconnect is: a new session, which starts by asking the venue's status
            ex.open()
            assert (await ex.fetch_status())["status"] == "ok"
            assert (await ex.fetch_balance())["total"]["USD"] > 0
            assert gateway.fault_model.until("drop_connection") == 0

            await chaos(base, "drop_connection", seconds=0.3)  # with `seconds`, it also ends by itself
            with pytest.raises(ccxt.ExchangeNotAvailable):
                await ex.fetch_balance()

            async def answered() -> bool:
                try:
                    await ex.fetch_balance()
                except ccxt.ExchangeNotAvailable:
                    return False
                return True

            await wait_for(answered, timeout=10)
        finally:
            await ex.close()


async def test_a_sub_account_trades_the_same_market_with_balances_orders_and_trades_of_its_own() -> None:
    """As Kraken's subaccounts: each key acts on its own account (a second key of the main account on the main one);
    one market, so one account's resting order fills when the market crosses it, whoever moved it."""
    async with running_gateway(sub_account=True) as (gateway, base):
        main, by_hand, sub = (
            kraken(base),
            kraken(base, key=OTHER_KEY, secret=OTHER_SECRET),
            kraken(base, SUB_KEY, SUB_SECRET),
        )
        try:
            for ex in (main, by_hand, sub):
                await ex.load_markets()
            mine = await main.create_order("BTC/USD", "limit", "buy", 0.01, 1000, {"clientOrderId": "same-id"})
            theirs = await sub.create_order("BTC/USD", "limit", "buy", 0.02, 1000, {"clientOrderId": "same-id"})
            assert mine["id"] != theirs["id"]  # client ids are the account's; txids the venue's
            await sub.create_order("ETH/USD", "market", "buy", 0.1, None, {"clientOrderId": "sub-market"})
            assert [o["id"] for o in await main.fetch_open_orders()] == [mine["id"]]
            assert [o["id"] for o in await by_hand.fetch_open_orders()] == [mine["id"]]  # the same account
            assert [o["id"] for o in await sub.fetch_open_orders()] == [theirs["id"]]
            assert await main.fetch_my_trades() == []
            (trade,) = await sub.fetch_my_trades()
            assert trade["symbol"] == "ETH/USD" and trade["amount"] == 0.1
            main_balance, sub_balance = await main.fetch_balance(), await sub.fetch_balance()
            assert main_balance["total"]["USD"] == 100000 and main_balance["total"].get("ETH", 0) == 0
            assert sub_balance["total"]["ETH"] == 0.1 and sub_balance["total"]["USD"] < 100000
            with pytest.raises(ccxt.OrderNotFound):  # another account's order is no order of this one
                await sub.cancel_order(mine["id"])

            await sub.cancel_all_orders()  # cancels the account's orders, never another account's
            assert await sub.fetch_open_orders() == []
            assert [o["id"] for o in await main.fetch_open_orders()] == [mine["id"]]

            resting = await sub.create_order("SOL/USD", "limit", "buy", 1, 140, {"clientOrderId": "sub-bid"})
            status, _ = await chaos(base, "price_gap", symbol="SOL-USD", change=-0.1)  # the market falls through it
            assert status == 200
            assert (await sub.fetch_order(resting["id"]))["status"] == "closed"
            status, drift = await chaos(base, "position_drift", symbol="BTC-USD", quantity=0.5, account=SUB_ACCOUNT)
            assert status == 200 and drift["account"] == SUB_ACCOUNT
            assert (await sub.fetch_balance())["total"]["BTC"] == 0.5
            assert (await main.fetch_balance())["total"].get("BTC", 0) == 0
            assert (await chaos(base, "position_drift", account="nobody"))[0] == 400
        finally:
            for ex in (main, by_hand, sub):
                await ex.close()


def gateway_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A `gateway` section of the main account's key (files `key`, `secret` in tmp_path) and token; the files
    `sub-key`, `sub-secret`, `other-key` and `other` hold a sub-account's and another main-account key."""
    files = {"key": API_KEY, "secret": API_SECRET, "sub-key": SUB_KEY, "sub-secret": SUB_SECRET}
    for name, value in {**files, "other-key": OTHER_KEY, "other": OTHER_SECRET}.items():
        (tmp_path / name).write_text(value)
    monkeypatch.setenv("GATEWAY_TEST_TOKEN", CONTROL_TOKEN)
    return {"api_key_file": "key", "api_secret_file": "secret", "control_token_env": "GATEWAY_TEST_TOKEN"}


def test_sub_accounts_from_the_configuration_keep_their_state_beside_the_venues(tmp_path: Path, monkeypatch) -> None:
    section = {
        **gateway_section(tmp_path, monkeypatch),
        "state_file": "state/venue.json",
        "accounts": [{"name": "bot-2", "api_key_file": "sub-key", "api_secret_file": "sub-secret"}],
    }
    gateway = gateway_from_config(parse_config({"gateway": section}, base_dir=tmp_path))
    sub = gateway.accounts["bot-2"]
    assert list(gateway.accounts) == ["main", "bot-2"] and sub.symbols == gateway.venue.symbols
    assert sub.autosave_path == tmp_path / "state" / "venue.bot-2.json"
    for accounts, problem in (
        ([{"name": "main"}], r"gateway.accounts\[0\].name: main is the main account's name"),
        (section["accounts"] * 2, r"gateway.accounts\[1\].name: bot-2 is listed twice"),
        ([{"api_key_file": "sub-key"}], r"gateway.accounts\[0\].name: every sub-account needs a name"),
    ):
        with pytest.raises(ConfigError, match=problem):
            parse_config({"gateway": {**section, "accounts": accounts}})
    for accounts, problem in (
        ([{"name": "x", "api_key_file": "key", "api_secret_file": "secret"}], "API key of sub-account x is another"),
        ([{"name": "x"}], r"gateway.accounts\[0\].api_key: not set"),
        ([{"name": "x", "api_key_file": "sub-key", "api_secret_file": "key"}], r"accounts\[0\].api_secret: an API"),
    ):
        with pytest.raises(ConfigError, match=problem):
            gateway_from_config(parse_config({"gateway": {**section, "accounts": accounts}}, base_dir=tmp_path))


async def test_more_keys_of_the_main_account_from_the_configuration_each_with_its_own_nonce(
    tmp_path: Path, monkeypatch
) -> None:
    """gateway.extra_keys: each reaches the main account (the same balance, the same orders), and its nonce is its
    own, so a client far ahead on one key does not get another client's calls on another key refused."""
    section = {
        **gateway_section(tmp_path, monkeypatch),
        "extra_keys": [{"api_key_file": "other-key", "api_secret_file": "other"}],
    }
    # No random business rejects (paper.reject_probability's 2 % of orders): the orders here must be taken.
    config = parse_config({"paper": {"reject_probability": 0}, "gateway": section}, base_dir=tmp_path)
    gateway = gateway_from_config(config)
    assert list(gateway.accounts) == ["main"]
    async with serving(gateway) as base:
        bot, ahead = kraken(base), kraken(base, key=OTHER_KEY, secret=OTHER_SECRET)
        ahead.nonce = lambda: 10**18  # far ahead of anything the bot's key will send
        try:
            placed = await bot.create_order("BTC/USD", "limit", "buy", 0.01, 1000)
            assert [o["id"] for o in await ahead.fetch_open_orders()] == [placed["id"]]  # one account
            assert (await bot.fetch_balance())["total"] == (await ahead.fetch_balance())["total"]
            await bot.cancel_order(placed["id"])  # the bot's key is not held back by the other's nonce
        finally:
            for ex in (bot, ahead):
                await ex.close()
    for extra, problem in (
        (
            [{"api_key_file": "key", "api_secret_file": "secret"}],
            r"extra_keys\[0\].api_key: is another key of the main",
        ),
        ([{"api_key_file": "other-key"}], r"gateway.extra_keys\[0\].api_secret: not set"),
        ([{"api_key_file": "other-key", "api_secret_file": "key"}], r"extra_keys\[0\].api_secret: an API"),
    ):
        with pytest.raises(ConfigError, match=problem):
            gateway_from_config(parse_config({"gateway": {**section, "extra_keys": extra}}, base_dir=tmp_path))
    sub = {"name": "x", "api_key_file": "other-key", "api_secret_file": "other"}
    with pytest.raises(ConfigError, match="API key of sub-account x is another"):
        gateway_from_config(parse_config({"gateway": {**section, "accounts": [sub]}}, base_dir=tmp_path))


async def test_a_sub_account_holds_several_keys_the_bots_and_the_reconcilers(tmp_path: Path, monkeypatch) -> None:
    """gateway.accounts[].extra_keys: a sub-account reached with a second key of its own (the reconciler's, for its
    venue steps, beside the bot's): both keys see the same orders and balances, each with its own nonce; the main
    account's key sees none of them; a key given twice to one account is one line naming it."""
    sub = {
        "name": "bot-2",
        "api_key_file": "sub-key",
        "api_secret_file": "sub-secret",
        "extra_keys": [{"api_key_file": "other-key", "api_secret_file": "other"}],
    }
    section = {**gateway_section(tmp_path, monkeypatch), "accounts": [sub]}
    config = parse_config({"paper": {"reject_probability": 0}, "gateway": section}, base_dir=tmp_path)
    gateway = gateway_from_config(config)
    assert list(gateway.accounts) == ["main", "bot-2"]
    async with serving(gateway) as base:
        bot, reconciler, main = kraken(base, SUB_KEY, SUB_SECRET), kraken(base, OTHER_KEY, OTHER_SECRET), kraken(base)
        reconciler.nonce = itertools.count(10**18).__next__  # far ahead of anything the bot's key will send
        try:
            placed = await bot.create_order("BTC/USD", "limit", "buy", 0.01, 1000)
            assert [o["id"] for o in await reconciler.fetch_open_orders()] == [placed["id"]]  # one account
            assert (await bot.fetch_balance())["total"] == (await reconciler.fetch_balance())["total"]
            assert await main.fetch_open_orders() == []  # another account's
            await reconciler.cancel_order(placed["id"])  # the reconciler's key acts on the bot's account
            assert await bot.fetch_open_orders() == []
        finally:
            for ex in (bot, reconciler, main):
                await ex.close()
    twice = {**sub, "extra_keys": [{"api_key_file": "sub-key", "api_secret_file": "sub-secret"}]}
    with pytest.raises(ConfigError, match=r"^gateway.accounts\[0\].extra_keys\[0\].api_key: is another key of sub-ac"):
        gateway_from_config(parse_config({"gateway": {**section, "accounts": [twice]}}, base_dir=tmp_path))


async def test_an_outage_drops_every_client_whatever_they_do_until_it_ends_by_itself() -> None:
    """The venue down for everyone: every key's public and private calls close unanswered, a reconnect (a new session
    starting with SystemStatus) does not end it; it ends at `clear`, or by itself after `seconds`."""
    async with running_gateway() as (gateway, base):
        clients = [kraken(base), kraken(base, key=OTHER_KEY, secret=OTHER_SECRET)]

        async def answered() -> bool:
            try:
                for ex in clients:
                    await ex.fetch_balance()
            except ccxt.ExchangeNotAvailable:
                return False
            return True

        try:
            for ex in clients:
                await ex.load_markets()
            status, body = await chaos(base, "outage", seconds=600)
            assert status == 200 and body == {"fault": "outage", "seconds": 600}
            for ex in clients:
                for call in (ex.fetch_balance, ex.fetch_status, lambda ex=ex: ex.fetch_ticker("BTC/USD")):
                    with pytest.raises(ccxt.ExchangeNotAvailable) as info:
                        await call()
                    assert isinstance(info.value.__cause__, aiohttp.ClientConnectionError)
                await ex.close()  # a reconnect: a new session, starting with the venue's status
                ex.open()
                with pytest.raises(ccxt.ExchangeNotAvailable):
                    await ex.fetch_status()
            assert not await answered()
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{base}/chaos", headers={"Authorization": f"Bearer {CONTROL_TOKEN}"}) as r,
            ):
                left = (await r.json())["faults"]["outage"]  # the operator's side still answers
            assert 0 < left <= 600
            assert (await chaos(base, "clear"))[0] == 200
            assert await answered()

            assert (await chaos(base, "outage", seconds=0.5))[1]["seconds"] == 0.5
            assert not await answered()
            await wait_for(answered, timeout=10)  # over by itself, nobody told it
            assert gateway.fault_model.until("outage") == 0
        finally:
            for ex in clients:
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
        assert gateway.fault_model.until("rate_limit") == 0  # nothing took effect
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


def _venue_balances_never_negative(gateway) -> None:  # type: ignore[no-untyped-def]
    for name, venue in gateway.accounts.items():
        negative = {a: b for a, b in venue.book.balances.items() if b < 0}
        assert not negative, f"{name}: {negative}"


async def test_a_spot_account_never_goes_negative_and_open_orders_hold_funds_as_kraken_does() -> None:
    """With ccxt's stock kraken client: a sell beyond the base asset held, or beyond what open sells leave of it,
    and a buy beyond the quote asset open buys leave (fee included), answer `EOrder:Insufficient funds`
    (InsufficientFunds) and place nothing; BalanceEx's hold_trade is what ccxt reads as `used`."""
    async with running_gateway(sub_account=True, starting_balance=Decimal(10_000)) as (gateway, base):
        ex = kraken(base)
        ex.number = str
        try:
            await ex.load_markets()
            btc = gateway.venue.quote("BTC-USD")
            for amount in ("0.01", "1000"):  # none held: what the issue saw sell 1,000 BTC
                with pytest.raises(ccxt.InsufficientFunds, match="EOrder:Insufficient funds"):
                    await ex.create_order("BTC/USD", "market", "sell", amount)
            with pytest.raises(ccxt.InsufficientFunds):  # 5 ETH with none held
                await ex.create_order("ETH/USD", "limit", "sell", "5", "100000")
            with pytest.raises(ccxt.InsufficientFunds):  # ~13,000 USD of BTC on 10,000 USD
                await ex.create_order("BTC/USD", "market", "buy", "0.2")
            assert await ex.fetch_open_orders() == [] and await ex.fetch_closed_orders() == []  # never existed

            await ex.create_order("BTC/USD", "market", "buy", "0.1")  # ~6,500 USD
            ask = gateway.venue.quote("BTC-USD").ask
            resting = await ex.create_order("BTC/USD", "limit", "sell", "0.06", str(ask * 2))  # holds 0.06 BTC
            balance = await ex.fetch_balance()
            assert Decimal(balance["BTC"]["total"]) == Decimal("0.1") and Decimal(balance["BTC"]["used"]) == Decimal(
                "0.06"
            )
            with pytest.raises(ccxt.InsufficientFunds):  # 0.04 left free
                await ex.create_order("BTC/USD", "market", "sell", "0.05")
            await ex.create_order("BTC/USD", "market", "sell", "0.04")

            fee = max(gateway.venue.maker_fee, gateway.venue.taker_fee)
            await ex.create_order("ETH/USD", "limit", "buy", "1", "1000")  # holds 1,000 USD plus the fee
            balance = await ex.fetch_balance()
            assert Decimal(balance["USD"]["used"]) == Decimal(1000) * (1 + fee)
            free = Decimal(balance["USD"]["free"])
            with pytest.raises(ccxt.InsufficientFunds):  # a limit buy that would spend just over what is free
                await ex.create_order("ETH/USD", "limit", "buy", "1", str((free / (1 + fee) + 1).quantize(btc.bid)))
            await ex.cancel_order(resting["id"])
            assert Decimal((await ex.fetch_balance())["BTC"]["used"]) == 0
            # A fault cannot make a spot account hold less than nothing either.
            status, body = await chaos(base, "position_drift", symbol="ETH-USD", quantity=-1, account=SUB_ACCOUNT)
            assert status == 400 and "cannot pay" in body["error"]
            _venue_balances_never_negative(gateway)
        finally:
            await ex.close()


async def test_a_market_buy_filling_over_time_never_spends_more_than_the_account_holds() -> None:
    """A market buy partly filled, the price rising under the rest: a spot account pays for what it can and the rest
    is canceled; no balance goes negative, whatever the partial fills and the prices do."""
    async with running_gateway(
        partial_fill_probability=1.0, tick_interval=0.01, volatility=0.02, starting_balance=Decimal(1000)
    ) as (gateway, base):
        ex = kraken(base)
        try:
            await ex.load_markets()
            for _ in range(10):  # each time all the account can pay for at the ask: the rest fills at later prices
                ask = gateway.venue.quote("SOL-USD").ask
                usd = (await gateway.venue.balances())["USD"] * Decimal("0.999")
                affordable = (usd / (ask * Decimal("1.0005"))).quantize(Decimal("0.0001"), rounding=ROUND_DOWN)
                try:
                    await ex.create_order("SOL/USD", "market", "buy", str(affordable))
                except ccxt.InsufficientFunds:
                    pass  # the price moved between the quote and the order
                await wait_for(lambda: not gateway.venue.book.open, timeout=30)
                _venue_balances_never_negative(gateway)
                held = (await gateway.venue.balances())["SOL"]
                if held > 0:
                    await ex.create_order("SOL/USD", "market", "sell", str(held))
                    await wait_for(lambda: not gateway.venue.book.open, timeout=30)
                _venue_balances_never_negative(gateway)
        finally:
            await ex.close()


@pytest.mark.parametrize(
    ("params", "error", "raised"),
    [
        ({"volume": "0.00001"}, "EOrder:Order minimum not met", ccxt.InvalidOrder),
        ({"volume": "lots"}, "EGeneral:Invalid arguments:volume", ccxt.InvalidOrder),
        ({"price": ""}, "EGeneral:Invalid arguments:price", ccxt.InvalidOrder),
        # Kraken's own words; stock ccxt knows only "...:Invalid price argument" (the broker teaches it the rest).
        (
            {"price": "1000.001"},
            "EOrder:Invalid price:XXBTZUSD price can only be specified up to 2 decimals.",
            ccxt.ExchangeError,
        ),
        ({"ordertype": "iceberg"}, "EGeneral:Invalid arguments:ordertype", ccxt.ExchangeError),
        ({"type": "hold"}, "EGeneral:Invalid arguments:type", ccxt.ExchangeError),
        ({"pair": "DOGEUSD"}, "EQuery:Unknown asset pair", ccxt.ExchangeError),
    ],
)
async def test_order_validation_answers_krakens_strings(params, error, raised) -> None:
    """AddOrder sent as is (ccxt's implicit API, no rounding by the client): Kraken's error string, and the class
    stock ccxt raises for it; nothing is placed."""
    async with running_gateway() as (gateway, base):
        ex = kraken(base)
        try:
            order = {"pair": "XXBTZUSD", "type": "buy", "ordertype": "limit", "volume": "0.01", "price": "1000"}
            with pytest.raises(raised) as info:
                await ex.private_post_addorder({**order, **params})
            assert f'["{error}"]' in str(info.value)
            assert gateway.venue.orders() == []
        finally:
            await ex.close()


async def test_random_rejects_answer_krakens_strings_in_the_classes_ccxt_gives_them() -> None:
    """`paper.reject_probability`: a price out of band is `EOrder:Invalid price:Invalid price argument`
    (InvalidOrder, as ccxt's table has it), a busy venue `EService:Busy` (ExchangeNotAvailable)."""
    async with running_gateway(reject_probability=1.0) as (gateway, base):
        ex = kraken(base)
        try:
            await ex.load_markets()
            seen: dict[type, str] = {}
            for _ in range(40):
                try:
                    await ex.create_order("BTC/USD", "limit", "buy", 0.01, 1000)
                except (ccxt.InvalidOrder, ccxt.ExchangeNotAvailable) as exc:
                    seen[type(exc)] = str(exc)
                if len(seen) == 2:
                    break
            assert 'EOrder:Invalid price:Invalid price argument"' in seen[ccxt.InvalidOrder]
            assert '"EService:Busy"' in seen[ccxt.ExchangeNotAvailable]
            assert await ex.fetch_open_orders() == [] and await ex.fetch_closed_orders() == []  # never existed
        finally:
            await ex.close()


async def test_public_trades_and_spread_in_krakens_format() -> None:
    """Trades: every account's fills on the market as the taker saw them (stock ccxt's fetch_trades), oldest first,
    `since` in milliseconds; Spread: the best bid and ask each time they changed (ccxt's implicit public API)."""
    async with running_gateway(sub_account=True, tick_interval=0.02, volatility=0.001) as (gateway, base):
        main, sub = kraken(base), kraken(base, SUB_KEY, SUB_SECRET)
        try:
            for ex in (main, sub):
                await ex.load_markets()
            assert await main.fetch_trades("BTC/USD") == []
            taken = await main.create_order("BTC/USD", "market", "buy", 0.01)
            bid = gateway.venue.quote("BTC-USD").bid
            resting = await sub.create_order("BTC/USD", "limit", "buy", 0.02, float(bid - 50))
            await chaos(base, "price_gap", symbol="BTC-USD", change=-0.05)  # the market sells into the sub's bid
            assert (await sub.fetch_order(resting["id"]))["status"] == "closed"

            trades = await main.fetch_trades("BTC/USD")
            assert [(t["side"], t["type"], t["amount"]) for t in trades] == [
                ("buy", "market", 0.01),
                ("sell", "market", 0.02),  # the taker of the sub-account's resting bid sold
            ]
            assert [t["id"] for t in trades] == [
                (await main.fetch_my_trades())[0]["id"].lstrip("T"),
                (await sub.fetch_my_trades())[0]["id"].lstrip("T"),
            ]
            assert trades[0]["timestamp"] <= trades[1]["timestamp"]
            assert trades[1]["price"] == float(bid - 50)
            later = await main.fetch_trades("BTC/USD", trades[0]["timestamp"] + 1)
            assert [t["amount"] for t in later] == ([0.02] if trades[1]["timestamp"] > trades[0]["timestamp"] else [])
            assert await main.fetch_trades("ETH/USD") == []
            assert len(await main.fetch_trades("BTC/USD", None, 1)) == 1
            assert taken["id"]

            # The last row is the quote of the moment the venue answered: read it across a request that no tick
            # overtook (the market ticks every 20 ms; on a busy machine a request may take longer).
            for _ in range(100):
                before = gateway.venue.quote("BTC-USD")
                spread = (await main.public_get_spread({"pair": "XXBTZUSD"}))["result"]
                quote = gateway.venue.quote("BTC-USD")
                if (before.bid, before.ask) == (quote.bid, quote.ask):
                    break
            rows = spread["XXBTZUSD"]
            assert rows and all(Decimal(b) < Decimal(a) for _, b, a in rows)
            assert all(rows[i][0] <= rows[i + 1][0] for i in range(len(rows) - 1))
            assert (Decimal(rows[-1][1]), Decimal(rows[-1][2])) == (quote.bid, quote.ask)
            assert spread["last"] == rows[-1][0]
            newer = (await main.public_get_spread({"pair": "XBTUSD", "since": spread["last"]}))["result"]
            assert all(row[0] > spread["last"] for row in newer["XXBTZUSD"])
            with pytest.raises(ccxt.ExchangeError, match="EGeneral:Invalid arguments:pair"):
                await main.public_get_spread({})
        finally:
            for ex in (main, sub):
                await ex.close()


async def test_the_dead_man_switch_through_ccxts_stock_client_arms_refreshes_disarms_and_cancels_the_account() -> None:
    """Kraken's CancelAllOrdersAfter as ccxt's `cancel_all_orders_after` sends it (the timeout in ms, sent in whole
    seconds): currentTime and triggerTime in RFC 3339, triggerTime "0" when disarmed with 0; at the trigger every open
    order of the account is canceled, whichever of its keys placed it, and no other account's; then it stays
    disarmed. A timeout Kraken refuses (negative, a day or more, not whole seconds, none) answers its string."""
    async with running_gateway(sub_account=True, tick_interval=0.05) as (gateway, base):
        main, by_hand, sub = (
            kraken(base),
            kraken(base, key=OTHER_KEY, secret=OTHER_SECRET),
            kraken(base, SUB_KEY, SUB_SECRET),
        )
        try:
            for ex in (main, by_hand, sub):
                await ex.load_markets()
            armed = await main.cancel_all_orders_after(60_000)
            assert armed["error"] == []
            now = datetime.strptime(armed["result"]["currentTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            trigger = datetime.strptime(armed["result"]["triggerTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            assert trigger - now == timedelta(seconds=60)
            refreshed = await by_hand.cancel_all_orders_after(3_000_000)  # another key of the account: the one timer
            later = datetime.strptime(refreshed["result"]["triggerTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            assert later > trigger
            disarmed = await main.cancel_all_orders_after(0)
            assert disarmed["result"]["triggerTime"] == "0" and disarmed["result"]["currentTime"].endswith("Z")
            assert gateway.venue.dead_man_switch_trigger() is None

            for params in ({"timeout": -1}, {"timeout": 86_400}, {"timeout": "1.5"}, {}):
                with pytest.raises(ccxt.BadRequest, match='"EGeneral:Invalid arguments"'):
                    await main.private_post_cancelallordersafter(params)
            assert gateway.venue.dead_man_switch_trigger() is None  # refused: nothing armed

            mine = await main.create_order("BTC/USD", "limit", "buy", 0.01, 1000, {"clientOrderId": "mine"})
            by_other_key = await by_hand.create_order("ETH/USD", "limit", "buy", 0.1, 100, {"clientOrderId": "hand"})
            theirs = await sub.create_order("BTC/USD", "limit", "buy", 0.01, 1000, {"clientOrderId": "theirs"})
            await sub.cancel_all_orders_after(600_000)  # the sub-account's own timer, far away
            await main.cancel_all_orders_after(1_000)

            async def main_account_empty() -> bool:
                return await main.fetch_open_orders() == []

            await wait_for(main_account_empty)
            closed = {o["id"]: o for o in await main.fetch_closed_orders()}
            assert closed[mine["id"]]["status"] == "canceled" and closed[by_other_key["id"]]["status"] == "canceled"
            assert [o["id"] for o in await sub.fetch_open_orders()] == [theirs["id"]]
            assert gateway.venue.dead_man_switch_trigger() is None  # triggered: disarmed until armed again
            assert gateway.accounts[SUB_ACCOUNT].dead_man_switch_trigger() is not None
        finally:
            for ex in (main, by_hand, sub):
                await ex.close()


async def test_a_canceled_orders_closetm_is_the_time_of_the_cancel() -> None:
    """QueryOrders' and ClosedOrders' `closetm` of a canceled order is when it was canceled, not when it opened."""
    clock = [datetime(2026, 1, 1, 12, 0, tzinfo=UTC)]
    async with running_gateway(clock=lambda: clock[0]) as (gateway, base):
        ex = kraken(base)
        try:
            await ex.load_markets()
            order = await ex.create_order("BTC/USD", "limit", "buy", 0.01, 1000, {"clientOrderId": "late-cancel"})
            clock[0] += timedelta(minutes=5)
            await ex.cancel_order(order["id"])
            (info,) = (await ex.private_post_queryorders({"txid": order["id"]}))["result"].values()
            assert info["status"] == "canceled"
            assert info["closetm"] - info["opentm"] == 300
            assert info["closetm"] == clock[0].timestamp()
            closed = (await ex.private_post_closedorders())["result"]["closed"][order["id"]]
            assert closed["closetm"] == clock[0].timestamp()
        finally:
            await ex.close()
