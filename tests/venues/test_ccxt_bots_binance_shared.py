"""Two bots on one Binance account: the example bot (examples/ccxt_bot.py) twice, processes of their own with ccxt's
stock binance client, on ONE account of the gateway's Binance dialect (served by this process on a free loopback
port): `ccxt-1` trading BTC-USD, `ccxt-2` ETH-USD, each with its own order-id prefix and journal, the fleet (`bots:`)
listing both on that account with the reconciler's own key on it. Both trade. `ccxt-2` is frozen (SIGSTOP: no order
of its can end by its own hand meanwhile; the example bot cancels its own bids when they are 10 s old) and `ccxt-1`
is killed (SIGKILL, its process group) with a bid resting. The reconciler's `venue` step (`cancel_all` on `ccxt-1`'s
target as the configuration gives it) cancels `ccxt-1`'s orders only: none of `ccxt-2`'s is canceled, and woken,
its journal agrees with the venue (a clean reconciliation: its fills, its ETH position; the USD both spend is the
account's, not compared). `ccxt-1` started again (`ccxt-2` frozen again) reconciles only its own orders (none of
`ccxt-2`'s is an unknown order to it), trades, and its halt cancels none of `ccxt-2`'s."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from binance_helpers import (
    BINANCE_RECONCILER_KEY,
    BINANCE_RECONCILER_SECRET,
    VENUE,
    binance_config,
    binance_gateway,
)
from ccxt_example_bot import DRIFTING, STOP_SECONDS, _at_least, example_bot
from ccxt_helpers import wait_for
from paper_helpers import control, get
from ports import free_port
from secret_file import write_secret
from sqlalchemy import select

from trading_ops.bot.broker import OrderStatus, OrderType
from trading_ops.bot.client_ids import bot_order_pattern
from trading_ops.bot.journal import Journal
from trading_ops.config import bot_order_id_prefix, load_config, resolve_secret
from trading_ops.db.base import make_engine, make_sessionmaker
from trading_ops.db.models.recovery import ReconciliationDiscrepancy, ReconciliationRun
from trading_ops.paper.venue import PaperVenue
from trading_ops.reconciler.actions.venue import VenueAccount

BOTS = {"ccxt-1": "BTC-USD", "ccxt-2": "ETH-USD"}
DEAD, LIVE = "ccxt-1", "ccxt-2"
# Both bots poll from 127.0.0.1, one Binance IP: a symbol's open orders (6) and trades (20) a second each, and the
# tickers (2), about 3,400 weight a minute together, clear of the weight budget's 70 % of 6,000.
POLL_SECONDS = 1.0


def fleet(tmp: Path, base: str, ports: dict[str, int]) -> dict[str, Path]:
    """Each bot's configuration (binance_config: the gateway's main account, its own journal), both listing the
    fleet: the two bots on that account, each with a venue entry holding the reconciler's key (a file of its own)."""
    key = write_secret(tmp / "reconciler" / "venue-key", BINANCE_RECONCILER_KEY)
    secret = write_secret(tmp / "reconciler" / "venue-secret", BINANCE_RECONCILER_SECRET)
    rest = f"{base}/api/v3"
    configs = {
        name: binance_config(
            tmp / name,
            base,
            ports[name],
            bot=name,
            symbols=[symbol],
            poll_interval_seconds=POLL_SECONDS,
            quote_poll_interval_seconds=POLL_SECONDS,
        )
        for name, symbol in BOTS.items()
    }
    entries = [
        {
            "name": name,
            "kind": "ccxt",
            "instance": f"127.0.0.1:{ports[name]}",
            "url": f"http://127.0.0.1:{ports[name]}",
            "token_file": str(tmp / name / "token"),
            "venue": {
                "exchange": VENUE,
                "api_key_file": str(key),
                "api_secret_file": str(secret),
                "urls": {"public": rest, "private": rest},
                "symbols": [symbol],
            },
        }
        for name, symbol in BOTS.items()
    ]
    for path in configs.values():
        doc = yaml.safe_load(path.read_text())
        doc["bots"] = entries
        path.write_text(yaml.safe_dump(doc))
    return configs


def startup_runs(url: str, bot: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """The bot's startup reconciliations in its journal: each one's result and its discrepancies (kind, key)."""
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            runs = session.scalars(
                select(ReconciliationRun).where(ReconciliationRun.bot == bot, ReconciliationRun.trigger == "startup")
            ).all()
            return [
                (
                    run.result,
                    [
                        (d.kind, d.key)
                        for d in session.scalars(
                            select(ReconciliationDiscrepancy).where(ReconciliationDiscrepancy.run_id == run.id)
                        )
                    ],
                )
                for run in runs
            ]
    finally:
        engine.dispose()


def journaled_trades(url: str, bot: str) -> set[str]:
    engine = make_engine(url)
    try:
        journal = Journal(engine, bot, VENUE)
        trade_ids = {f.trade_id for f in journal.fills()}
        journal.close()
    finally:
        engine.dispose()
    return trade_ids


def stop(proc: Any) -> None:
    """Freeze the bot's process group (SIGSTOP): it does nothing until woken, however long."""
    os.killpg(proc.pid, signal.SIGSTOP)


def wake(proc: Any) -> None:
    os.killpg(proc.pid, signal.SIGCONT)


async def _ready(port: int) -> bool:
    try:
        return (await get(port, "/readyz"))[0] == 200
    except aiohttp.ClientError:  # not listening yet
        return False


async def test_two_bots_on_one_binance_account_keep_apart_through_a_kill_a_venue_step_and_a_restart(
    tmp_path: Path,
) -> None:
    async with binance_gateway(**DRIFTING) as (gateway, dialect, base):
        venue: PaperVenue = gateway.venue
        ports = {name: free_port() for name in BOTS}
        configs = fleet(tmp_path, base, ports)
        urls = {name: yaml.safe_load(configs[name].read_text())["database"]["url"] for name in BOTS}
        prefixes = {name: bot_order_id_prefix(load_config(configs[name])) for name in BOTS}
        patterns = {name: bot_order_pattern(prefix) for name, prefix in prefixes.items()}
        assert prefixes == {"ccxt-1": "ccxt-1", "ccxt-2": "ccxt-2"}
        logs = {name: tmp_path / f"{name}.log" for name in BOTS}

        def resting(name: str) -> set[str]:
            """The venue order ids of the bot's resting bids (its limit orders open at the venue)."""
            return {
                o.venue_order_id
                for o in venue.book.open.values()
                if o.order_type is OrderType.LIMIT and patterns[name].fullmatch(o.client_order_id)
            }

        def open_of(name: str) -> set[str]:
            """The venue order ids of the bot's orders open at the venue."""
            return {o.venue_order_id for o in venue.book.open.values() if patterns[name].fullmatch(o.client_order_id)}

        def fills_of(name: str) -> set[str]:
            """The trade ids of the bot's fills at the venue, as Binance numbers them (the paper venue's T42 is 42)."""
            return {
                f.trade_id.removeprefix("T") for f in venue.book.fills if patterns[name].fullmatch(f.client_order_id)
            }

        async with (
            example_bot(configs[DEAD], logs[DEAD]) as dead,
            example_bot(configs[LIVE], logs[LIVE]) as live,
        ):
            procs: dict[str, Any] = {DEAD: dead, LIVE: live}

            async def both_traded_and_resting() -> bool:
                for name, proc in procs.items():
                    assert proc.returncode is None, logs[name].read_text()[-3000:]
                for name in BOTS:
                    if not await _at_least(ports[name], "tradingbot_fills_total", 2) or not resting(name):
                        return False
                return True

            await wait_for(both_traded_and_resting, timeout=120)
            # Every order at the venue is one of the two bots', each on its own symbol.
            assert all(
                any(patterns[n].fullmatch(o.client_order_id) and o.symbol == BOTS[n] for n in BOTS)
                for o in venue.orders()
            )
            # The live bot frozen (SIGSTOP: whatever of its orders ends now, it did not end it); the other killed with
            # its bid resting.
            stop(live)
            theirs = open_of(LIVE)
            os.killpg(dead.pid, signal.SIGKILL)
            await dead.wait()
            left = open_of(DEAD)
            assert theirs and left, (theirs, left)
            live_fills, live_eth = fills_of(LIVE), venue.book.balances.get("ETH")

            # The reconciler's venue step on the dead bot's account: its target as the fleet's configuration gives it.
            config = load_config(configs[LIVE])
            target = config.reconciler.targets[f"127.0.0.1:{ports[DEAD]}"]
            assert target.venue.order_id_prefix == prefixes[DEAD] and target.venue.orders == "prefix"
            key = resolve_secret(config, target.venue, "api_key", "bots[0].venue.api_key")
            secret = resolve_secret(config, target.venue, "api_secret", "bots[0].venue.api_secret")
            account = VenueAccount(target.venue, key, secret, "episode1")
            try:
                result = await account.run("cancel_all", 4000)
            finally:
                await account.close()
            assert result.ok, result
            assert f"{prefixes[DEAD]} at binance: {len(left)} of its orders cancelled, none left open" in result.output
            assert "other orders on the account left alone" in result.output, result.output
            by_id = {o.venue_order_id: o for o in venue.orders()}
            assert all(by_id[v].status is OrderStatus.CANCELED for v in left)
            assert not any(patterns[DEAD].fullmatch(o.client_order_id) for o in venue.book.open.values())
            # The live bot's orders were never canceled (still resting, or filled), its fills and ETH are as they were
            # unless an order of its own filled since; woken, its journal agrees with the venue: a clean
            # reconciliation (the USD both bots spend is the account's, not compared).
            assert all(by_id[v].status is not OrderStatus.CANCELED for v in theirs), [by_id[v] for v in theirs]
            if all(by_id[v].status.is_open for v in theirs):
                assert fills_of(LIVE) == live_fills and venue.book.balances.get("ETH") == live_eth
            wake(live)
            code, run = await control(ports[LIVE], "reconcile")
            assert code == 200 and run["result"] == "clean", run

            # The dead bot started again: it reconciles what it left (its own orders, canceled at the venue), never
            # the live bot's, trades again, and its halt (a cancel-all) takes none of the live bot's orders.
            await wait_for(lambda: bool(open_of(LIVE)), timeout=60)
            stop(live)
            theirs = open_of(LIVE)
            async with example_bot(configs[DEAD], tmp_path / "restarted.log") as again:

                async def ready_and_trading() -> bool:
                    assert again.returncode is None, (tmp_path / "restarted.log").read_text()[-3000:]
                    return await _ready(ports[DEAD]) and bool(resting(DEAD) - left)

                await wait_for(ready_and_trading, timeout=120)
                runs = await asyncio.to_thread(startup_runs, urls[DEAD], DEAD)
                assert len(runs) == 2 and runs[-1][0] in ("clean", "resolved"), runs
                found = runs[-1][1]
                assert not any(kind == "unknown_order" for kind, _ in found), found
                assert all(not key.startswith(prefixes[LIVE]) for _, key in found), found
                code, halted = await control(ports[DEAD], "halt")
                assert code == 200 and halted["state"] == "halted", halted
                assert not any(patterns[DEAD].fullmatch(o.client_order_id) for o in venue.book.open.values())
                by_id = {o.venue_order_id: o for o in venue.orders()}
                assert all(by_id[v].status is not OrderStatus.CANCELED for v in theirs), [by_id[v] for v in theirs]
                wake(live)
                code, run = await control(ports[LIVE], "reconcile")
                assert code == 200 and run["result"] == "clean", run

                # Each journal holds its own bot's fills, every one of them, and no other's.
                async def agreed() -> bool:
                    mine = [await asyncio.to_thread(journaled_trades, urls[n], n) for n in BOTS]
                    return mine == [fills_of(n) for n in BOTS]

                await wait_for(agreed)
                again.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(again.wait(), STOP_SECONDS) == 0
            live.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(live.wait(), STOP_SECONDS) == 0
        for log in (*logs.values(), tmp_path / "restarted.log"):
            assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
        assert dialect.rest.weights.refusals == 0
