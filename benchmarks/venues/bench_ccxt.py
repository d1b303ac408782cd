"""CcxtBroker against bare ccxt on the same Kraken-compatible gateway, in the same run; prints JSON.

- Order round trip (submit until the venue's answer is in hand): `CcxtBroker.submit` and ccxt's own
  `kraken.create_order` with the same arguments (a limit sell far above the market, a client order id), interleaved
  one for one so both see the same machine. Goal (DESIGN): broker p50 and p99 <= 1.1x bare ccxt.
- Reconciliation of 1,000 orders (500 market orders that filled, 500 resting limit orders): a journal holding the
  orders as the bot saw them answered, reconciled by a freshly started broker (it must learn every fill's client
  order id), first run (adopting the 500 fills and the filled orders' states), then a clean run.

The gateway runs as its own process (`trading-ops paper-gateway`), so its work is not on the client's event loop.
The two clients use two API keys (Kraken's nonces are per key). The broker's background polls are off
(poll intervals of an hour): what is measured is the call path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from trading_ops.bot.book import Book
from trading_ops.bot.broker import BrokerEvents, OrderRequest, OrderType, Side, VenueFill, VenueOrder
from trading_ops.bot.classify import balance_changes
from trading_ops.bot.journal import Journal
from trading_ops.bot.metrics import BotMetrics
from trading_ops.bot.reconciliation import Reconciler, Trigger
from trading_ops.bot.reconciliation_metrics import ReconciliationMetrics
from trading_ops.bot.recovery_store import RecoveryStore
from trading_ops.db import migrate
from trading_ops.db.base import make_engine
from trading_ops.venues.ccxt.rest import CcxtBroker

# Run as a script, a benchmark has its own folder on the path: the repository's root too, for benchmarks.*.
REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks._shared.gateway_bench import NEVER, gateway_process, kraken, new_keys, percentile, serve, wait_up  # noqa: E402

GOAL_RATIO = 1.1
BTC_DEPOSIT = 1000  # on the gateway's account, for the round trips' resting sells


class Hooks:
    """Reconciliation hooks over a journal: adopted fills and orders are journaled as a bot would."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.book = Book()

    async def settle(self) -> None:
        return None

    async def adopt_fill(self, fill: VenueFill) -> bool:
        realized = self.book.apply_fill(
            fill.symbol, fill.side.sign * fill.quantity, fill.price, fill.fee, fill.executed_at
        )
        h = self.book.holding(fill.symbol)
        return await self.journal.call(
            self.journal.fill, fill, (h.quantity, h.average_price, h.realized_pnl), balance_changes(fill), realized
        )

    async def adopt_order(self, order: VenueOrder) -> None:
        await self.journal.call(self.journal.upsert_order, order, "bench")

    async def adjust_position(self, symbol: str, quantity: Decimal, reference: str) -> None:
        raise AssertionError(f"unexpected position adjustment {symbol} {quantity}")

    async def fills_changed(self, symbols: list[str]) -> None:
        await self.journal.call(self.journal.rebuild_positions, symbols)

    async def halt(self, reason: str) -> None:
        raise AssertionError(f"unexpected halt: {reason}")


async def round_trips(base: str, keys: dict[str, str], orders: int, warmup: int) -> dict[str, Any]:
    (bare_key, bare_secret), (broker_key, broker_secret) = keys.items()
    bare = kraken(base, bare_key, bare_secret)
    broker = CcxtBroker(kraken(base, broker_key, broker_secret), ["BTC-USD"], poll_interval=NEVER, quote_interval=NEVER)
    await bare.load_markets()
    await broker.connect(BrokerEvents())
    price = str((Decimal(str((await bare.fetch_ticker("BTC/USD"))["ask"])) * 10).quantize(Decimal("0.01")))
    samples: dict[str, list[float]] = {"bare": [], "broker": []}
    try:
        for i in range(warmup + orders):
            runs = [("bare", i), ("broker", i)] if i % 2 == 0 else [("broker", i), ("bare", i)]
            for who, n in runs:
                cid = f"{who}-{n}"
                started = time.perf_counter()
                if who == "bare":
                    await bare.create_order("BTC/USD", "limit", "sell", "0.001", price, {"clientOrderId": cid})
                else:
                    await broker.submit(
                        OrderRequest(cid, "BTC-USD", Side.SELL, OrderType.LIMIT, Decimal("0.001"), Decimal(price))
                    )
                if n >= warmup:
                    samples[who].append(time.perf_counter() - started)
        await bare.cancel_all_orders()
    finally:
        await bare.close()
        await broker.close()
    result: dict[str, Any] = {"orders_each": orders}
    for who, values in samples.items():
        result[f"{who}_p50_ms"] = round(statistics.median(values) * 1000, 3)
        result[f"{who}_p99_ms"] = round(percentile(values, 0.99) * 1000, 3)
    result["ratio_p50"] = round(result["broker_p50_ms"] / result["bare_p50_ms"], 3)
    result["ratio_p99"] = round(result["broker_p99_ms"] / result["bare_p99_ms"], 3)
    result["goal_ratio"] = GOAL_RATIO
    result["meets_goal"] = result["ratio_p50"] <= GOAL_RATIO and result["ratio_p99"] <= GOAL_RATIO
    return result


async def reconciliation(base: str, key: str, secret: str, orders: int, workdir: Path) -> dict[str, Any]:
    url = f"sqlite:///{workdir / 'bench.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    journal = Journal(engine, "bench", "kraken")
    placing = CcxtBroker(kraken(base, key, secret), ["ETH-USD", "SOL-USD"], poll_interval=NEVER, quote_interval=NEVER)
    await placing.connect(BrokerEvents())
    await journal.call(journal.set_balances, await placing.balances())
    started = time.perf_counter()
    for i in range(orders):
        if i % 2 == 0:
            request = OrderRequest(f"r-{i}", "ETH-USD", Side.BUY, OrderType.MARKET, Decimal("0.01"))
        else:
            request = OrderRequest(f"r-{i}", "SOL-USD", Side.BUY, OrderType.LIMIT, Decimal("0.01"), Decimal("1"))
        await journal.call(journal.order_submitted, request, "bench")
        answer = await placing.submit(request)
        await journal.call(journal.order_update, answer)
    placing_seconds = time.perf_counter() - started
    await placing.close()

    # A bot starting again: a new broker that knows nothing of those orders.
    broker = CcxtBroker(kraken(base, key, secret), ["ETH-USD", "SOL-USD"], poll_interval=NEVER, quote_interval=NEVER)
    await broker.connect(BrokerEvents())
    reconciler = Reconciler(
        broker,
        journal,
        RecoveryStore(engine, "bench", "kraken"),
        ReconciliationMetrics(BotMetrics(venue="kraken", registry=CollectorRegistry())),
        Hooks(journal),
        confirm_delay_seconds=0.0,
    )
    try:
        started = time.perf_counter()
        first = await reconciler.run(Trigger.STARTUP)
        first_seconds = time.perf_counter() - started
        started = time.perf_counter()
        second = await reconciler.run(Trigger.SCHEDULE)
        second_seconds = time.perf_counter() - started
    finally:
        await broker.close()
        journal.close()
        engine.dispose()
    return {
        "orders": orders,
        "placing_seconds": round(placing_seconds, 3),
        "first_run_seconds": round(first_seconds, 3),
        "first_run_result": first["result"],
        "first_run_counts": first["counts"],
        "clean_run_seconds": round(second_seconds, 3),
        "clean_run_result": second["result"],
    }


async def run(args: argparse.Namespace, base: str, keys: dict[str, str], workdir: Path) -> dict[str, Any]:
    for key, secret in keys.items():
        await wait_up(base, key, secret)
    trips = await round_trips(base, keys, args.orders, args.warmup)
    key, secret = next(iter(keys.items()))
    recon = await reconciliation(base, key, secret, args.reconcile_orders, workdir)
    return {"round_trip": trips, "reconciliation": recon}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=400, help="measured submits per client")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--reconcile-orders", type=int, default=1000)
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        # A still venue; the round trips' resting sells' BTC on the account (a spot account sells what it holds).
        return serve(args.serve, {"BTC": Decimal(BTC_DEPOSIT)})
    keys = new_keys(("bench-bare", "bench-broker"))
    with tempfile.TemporaryDirectory() as tmp, gateway_process(__file__, keys) as base:
        result = asyncio.run(run(args, base, keys, Path(tmp)))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
