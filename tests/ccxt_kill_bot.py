"""A bot process for the kill -9 test: trades through CcxtBroker on a gateway and journals as a bot does, printing
each step so the test knows when to kill it. Usage: python -m tests.ccxt_kill_bot DB_URL GATEWAY_URL ORDERS.

Its fills come only through polling, which is slowed to never: whatever filled is in no journal when it dies.
"""

from __future__ import annotations

import asyncio
import sys
from decimal import Decimal

from tests.ccxt_helpers import JournalHooks, kraken
from trading_ops.bot.broker import BrokerEvents, OrderRequest, OrderType, Side
from trading_ops.bot.journal import Journal
from trading_ops.db.base import make_engine
from trading_ops.venues.ccxt import CcxtBroker

NEVER = 3600.0


def say(line: str) -> None:
    print(line, flush=True)


async def main(url: str, base: str, plan: list[str]) -> None:
    engine = make_engine(url)
    journal = Journal(engine, "ccxt-bot", "kraken")
    hooks = JournalHooks(journal)

    async def on_order(order):  # type: ignore[no-untyped-def]
        await journal.call(journal.order_update, order)

    # A long client timeout: the bot must still be waiting for the held-back answer when the test kills it.
    client = kraken(base, timeout=120_000)
    broker = CcxtBroker(client, ["BTC-USD", "ETH-USD"], poll_interval=NEVER, quote_interval=NEVER)
    await broker.connect(BrokerEvents(on_order=on_order, on_fill=hooks.adopt_fill))
    await journal.call(journal.set_balances, await broker.balances())
    say("connected")
    for step in plan:  # KIND:CLIENT_ORDER_ID with KIND one of rest (far below the market), market; or wait:
        kind, cid = step.split(":")
        if kind == "wait":  # until the test says go (a line on stdin)
            say("waiting")
            await asyncio.to_thread(sys.stdin.readline)
            continue
        request = OrderRequest(
            client_order_id=cid,
            symbol="BTC-USD" if kind == "rest" else "ETH-USD",
            side=Side.BUY,
            order_type=OrderType.LIMIT if kind == "rest" else OrderType.MARKET,
            quantity=Decimal("0.01") if kind == "rest" else Decimal("0.5"),
            price=Decimal("1000") if kind == "rest" else None,
        )
        await journal.call(journal.order_submitted, request, "kill-test")
        say(f"sending {cid}")
        order = await broker.submit(request)
        await journal.call(journal.order_update, order)
        say(f"placed {cid} {order.venue_order_id} {order.status.value}")
    say("done")
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3].split(",")))
