"""examples/ccxt_bot.py with `ccxt.exchange: binance`, as a process of its own with ccxt's stock binance client, on
the gateway's Binance spot dialect (served by this process on a free loopback port). Polling over REST only, it
trades, its fills reach the journal and its metrics, it reconciles (journal, metrics and venue agree on every fill),
halts with nothing resting and stops cleanly on SIGTERM. The calls stock ccxt binance refuses without a symbol (open
orders, trades, order lookups, cancels) go per symbol, and the weight the bot used per minute is on the gateway's
headers (`X-MBX-USED-WEIGHT-1M`), measured here against the limit. Streaming, its fills come over ccxt.pro's user
data stream first, and again after a reconnect."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import yaml
from binance_helpers import POLL_SECONDS, binance_config, binance_gateway
from ccxt_example_bot import MOVING, STOP_SECONDS, _at_least, example_bot, metric
from ccxt_helpers import chaos, wait_for
from paper_helpers import control, get
from ports import free_port

from trading_ops.bot.broker import OrderType
from trading_ops.bot.journal import Journal
from trading_ops.config import bot_order_id_prefix, load_config
from trading_ops.db.base import make_engine, make_sessionmaker
from trading_ops.db.models.journal import Order
from trading_ops.paper.gateway.binance.dialect import BinanceDialect

BOT, VENUE = "ccxt-1", "binance"
LOOPBACK = "127.0.0.1"
MEASURE_SECONDS = 20.0  # the weight rate is measured over at least this long, once the bot traded (steady state)


def journaled(url: str) -> tuple[dict[str, Order], set[str]]:
    """The journal as the bot left it: its orders by client order id, and its fills' trade ids on Binance."""
    engine = make_engine(url)
    try:
        journal = Journal(engine, BOT, VENUE)
        with make_sessionmaker(engine)() as session:
            orders = {o.client_order_id: o for o in session.query(Order).filter(Order.bot == BOT)}
        trade_ids = {f.trade_id for f in journal.fills()}
        journal.close()
    finally:
        engine.dispose()
    return orders, trade_ids


class WeightMeter:
    """The weight the gateway charged 127.0.0.1 (the bot alone calls it), sampled across its minute windows: the
    rate per minute over the time sampled."""

    def __init__(self, dialect: BinanceDialect) -> None:
        self.weights = dialect.rest.weights
        self.spent = 0
        self._last = self.weights.used(LOOPBACK)
        self.started = time.monotonic()

    def sample(self) -> None:
        used = self.weights.used(LOOPBACK)
        self.spent += used - self._last if used >= self._last else used  # a new minute starts from 0
        self._last = used

    def per_minute(self) -> float:
        return self.spent * 60 / max(1e-9, time.monotonic() - self.started)


async def test_the_example_bot_polling_on_binance_trades_reconciles_and_stops_cleanly(tmp_path: Path) -> None:
    async with binance_gateway(**MOVING) as (gateway, dialect, base):
        port = free_port()
        config = binance_config(tmp_path, base, port)
        url = yaml.safe_load(config.read_text())["database"]["url"]
        async with example_bot(config, tmp_path / "bot.log") as proc:

            async def traded() -> bool:
                assert proc.returncode is None, (tmp_path / "bot.log").read_text()[-3000:]
                return await metric(port, "tradingbot_fills_total") >= 3

            await wait_for(traded, timeout=90)
            meter, calls = WeightMeter(dialect), dict(dialect.rest.calls)

            async def measured() -> bool:
                meter.sample()
                return time.monotonic() - meter.started >= MEASURE_SECONDS

            await wait_for(measured, timeout=MEASURE_SECONDS + 30)
            rate, minutes = meter.per_minute(), (time.monotonic() - meter.started) / 60
            per_route = {k: round((v - calls.get(k, 0)) / minutes) for k, v in dialect.rest.calls.items()}
            said = f"polling 2 symbols every {POLL_SECONDS:g} s: {rate:.0f} weight a minute of 6000"
            print(f"{said}; calls a minute {per_route}")
            assert 0 < rate < dialect.rest.weights.limit and dialect.rest.weights.refusals == 0
            status, body = await get(port, "/readyz")
            assert status == 200, body
            code, state = await control(port, "status")
            assert code == 200 and (state["bot"], state["venue"], state["trading_allowed"]) == (BOT, VENUE, True)
            assert state["connected"] == {"orders": True, "market_data": True}
            # No dead man's switch on Binance spot: none armed, none exported, and its status says so.
            switch = state["dead_man_switch"]
            assert (switch["active"], switch["applicable"]) == (False, False)
            assert switch["note"].startswith("not applicable on this venue")
            _, text = await get(port, "/metrics")
            assert "tradingbot_dead_man_switch_" not in text

            # Its orders carry its prefix in Binance's client order id field, within Binance's 36 characters.
            prefix = bot_order_id_prefix(load_config(config))
            orders, _ = await asyncio.to_thread(journaled, url)
            assert orders and all(cid.startswith(prefix + "-") and len(cid) <= 36 for cid in orders)
            # It sees its own orders on every symbol: one bid resting per symbol, never a second beside it.
            resting = [o.symbol for o in await gateway.venue.open_orders() if o.order_type is OrderType.LIMIT]
            assert sorted(resting) == sorted(set(resting))
            # It asked per symbol (stock ccxt binance takes no account-wide trades or lookups, and weighs the
            # account's open orders at 80): never an openOrders without a symbol.
            assert dialect.rest.calls.get("api/myTrades", 0) > 0
            assert dialect.rest.calls.get("api/openOrders", 0) > 0

            # Halted (a cancel-all per symbol), nothing rests; the journal, the metrics and the venue agree.
            code, halted = await control(port, "halt")
            assert code == 200 and halted["state"] == "halted"
            assert await gateway.venue.open_orders() == []

            async def agreed() -> bool:
                # The paper venue's trade T42 is Binance's trade id 42.
                venue = {f.trade_id.removeprefix("T") for f in await gateway.venue.recent_fills()}
                _, journal = await asyncio.to_thread(journaled, url)
                return journal == venue and await metric(port, "tradingbot_fills_total") == len(venue)

            await wait_for(agreed)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), STOP_SECONDS) == 0
        log = (tmp_path / "bot.log").read_text()
        assert "Traceback" not in log and "ArgumentsRequired" not in log, log[-3000:]


async def test_the_polling_binance_bot_finds_a_frozen_pair_stale_and_trusts_it_again_once_it_moves(
    tmp_path: Path,
) -> None:
    """`stale_market_data` on the Binance dialect: the pair's 24-hour ticker keeps answering, its last quote under its
    last `closeTime` (Binance's tickers of a market that makes no data). The polling bot takes that for no news: the
    pair's market data goes stale (`/readyz` fails naming it, the data's age grows) while the other pair stays fresh;
    cleared, the pair is fresh again. Frozen once more, the bot's `resubscribe` (what the reconciler's playbook sends
    on TradingBotMarketDataStale) loads the markets again, which ends it as a new subscription does."""
    async with binance_gateway(**MOVING) as (gateway, _dialect, base):
        port = free_port()
        config = binance_config(tmp_path, base, port)
        async with example_bot(config, tmp_path / "bot.log") as proc:

            async def ready() -> bool:
                assert proc.returncode is None, (tmp_path / "bot.log").read_text()[-3000:]
                try:
                    return (await get(port, "/readyz"))[0] == 200
                except OSError:
                    return False

            async def stale() -> bool:
                status, body = await get(port, "/readyz")
                return status == 503 and "stale: ETH-USD" in body and "BTC-USD" not in body

            await wait_for(ready, timeout=90)
            for heal in ("clear", "resubscribe"):
                await chaos(base, "stale_market_data", symbol="ETH-USD")
                await wait_for(stale, timeout=60)
                assert gateway.fault_model.subjects("stale_market_data") == ["ETH-USD"]  # not healed by the polls
                if heal == "clear":
                    await chaos(base, "clear")
                else:
                    code, _ = await control(port, "resubscribe")
                    assert code == 200
                    assert gateway.fault_model.subjects("stale_market_data") == []
                await wait_for(ready, timeout=60)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), STOP_SECONDS) == 0
        log = (tmp_path / "bot.log").read_text()
        assert "Traceback" not in log, log[-3000:]


async def test_the_example_bot_streaming_on_binance_sees_its_fills_on_the_user_stream(tmp_path: Path) -> None:
    """`ccxt.stream: true` (the default) on Binance: ccxt.pro's stock binance client (its WebSocket API's user data
    stream, URLs derived from the gateway's host) delivers the fills first, the REST poll still the fallback, and the
    journal, the metrics and the venue agree."""
    async with binance_gateway(**MOVING) as (gateway, dialect, base):
        port = free_port()
        config = binance_config(tmp_path, base, port, stream=True)
        url = yaml.safe_load(config.read_text())["database"]["url"]
        async with example_bot(config, tmp_path / "bot.log") as proc:

            async def streamed() -> bool:
                assert proc.returncode is None, (tmp_path / "bot.log").read_text()[-3000:]
                return await metric(port, "tradingbot_stream_fills_first_seen_total", source="stream") >= 3

            await wait_for(streamed, timeout=90)
            assert await metric(port, "tradingbot_stream_connected", endpoint="private") == 1
            meter, calls = WeightMeter(dialect), dict(dialect.rest.calls)

            async def measured() -> bool:
                meter.sample()
                return time.monotonic() - meter.started >= MEASURE_SECONDS

            await wait_for(measured, timeout=MEASURE_SECONDS + 30)
            rate, minutes = meter.per_minute(), (time.monotonic() - meter.started) / 60
            per_route = {k: round((v - calls.get(k, 0)) / minutes) for k, v in dialect.rest.calls.items()}
            print(f"streaming 2 symbols: {rate:.0f} weight a minute of 6000; REST calls a minute {per_route}")
            assert 0 < rate < dialect.rest.weights.limit and dialect.rest.weights.refusals == 0
            # Never a -1015 either (the order gate keeps new risk under the order counts' floor), and their room is
            # exported; the books' silence check (the quote poll's answers) measured, not asserted (a busy machine's
            # late diff is one resync).
            assert await metric(port, "tradingbot_venue_rate_limit_refusals", status="429") == 0
            room = await metric(port, "tradingbot_venue_order_count_headroom_ratio", interval="10s")
            silent = await metric(port, "tradingbot_stream_resyncs_total", channel="book", reason="silent")
            print(f"order count room (10 s) {room:.2f}; books found silent {silent:g}")
            assert 0 < room <= 1
            # A new socket (a new user-stream subscription, a REST reconciliation after it): fills stream again.
            code, answer = await control(port, "reconnect")
            assert code == 200, answer
            await wait_for(lambda: _at_least(port, "tradingbot_stream_reconnects_total", 1, reason="requested"))
            before = await metric(port, "tradingbot_stream_fills_first_seen_total", source="stream")
            await wait_for(
                lambda: _at_least(port, "tradingbot_stream_fills_first_seen_total", before + 1, source="stream"),
                timeout=60,
            )
            code, halted = await control(port, "halt")
            assert code == 200 and halted["state"] == "halted"

            async def agreed() -> bool:
                venue = {f.trade_id.removeprefix("T") for f in await gateway.venue.recent_fills()}
                _, journal = await asyncio.to_thread(journaled, url)
                return journal == venue and await metric(port, "tradingbot_fills_total") == len(venue)

            await wait_for(agreed)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), STOP_SECONDS) == 0


async def test_a_binance_bot_sharing_a_base_asset_on_its_account_refuses_to_start(tmp_path: Path) -> None:
    """Two bots on one Binance account may share it only with base assets of their own (a spot position is the
    account's balance of its base asset; docs/configuration.md). The example bot's configuration lists the fleet
    (`bots:`), where `ccxt-2` trades BTC-USD on its account too: it does not start, exit 2 and one line naming the
    rule; nothing reaches the venue."""
    async with binance_gateway(**MOVING) as (gateway, dialect, base):
        port = free_port()
        config = binance_config(tmp_path, base, port)
        venue = {
            "exchange": VENUE,
            "api_key_file": str(tmp_path / "api-key"),
            "api_secret_file": str(tmp_path / "api-secret"),
            "urls": {"public": f"{base}/api/v3", "private": f"{base}/api/v3"},
            "symbols": ["BTC-USD", "ETH-USD"],
        }
        settings = yaml.safe_load(config.read_text())
        settings["bots"] = [
            {"name": BOT, "kind": "ccxt", "instance": f"127.0.0.1:{port}", "venue": venue},
            {"name": "ccxt-2", "kind": "ccxt", "instance": "127.0.0.1:9", "venue": {**venue, "symbols": ["BTC-EUR"]}},
        ]
        config.write_text(yaml.safe_dump(settings))
        log = tmp_path / "refused.log"
        async with example_bot(config, log) as proc:
            assert await asyncio.wait_for(proc.wait(), STOP_SECONDS) == 2
        (line,) = log.read_text().strip().splitlines()
        assert (
            "bots[1].venue.symbols: BTC is a base asset of bots[0] (ccxt-1) too, on the binance account they share: "
            "bots on one account trade base assets of their own"
        ) in line, line
        assert dict(dialect.rest.calls) == {} and await gateway.venue.open_orders() == []
