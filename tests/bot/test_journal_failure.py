"""A bot that cannot write its journal stops placing orders on purpose and says why, then recovers by itself.

Real servers, each started here: a small tmpfs the test mounts (and unmounts) for the journal's SQLite file, filled
to the last byte; a PostgreSQL cluster of this module's own (initdb + pg_ctl on a free port, 127.0.0.1 only), stopped
and started again under a trading bot; a real Prometheus scraping the bot with the shipped rule file, in which
TradingBotJournalFailing must fire; and, for the packaged playbook's answer, Prometheus with Alertmanager (the
repository's configuration) and the reconciler. Needs root (mount), PostgreSQL's server binaries
(/usr/lib/postgresql/*/bin) and Debian's `prometheus` and `prometheus-alertmanager`. The measured times are printed
(run with -s to see them): fault to /readyz failing, fault to the alert firing, fault cleared to the bot trading again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
import yaml
from alertmanager_server import alertmanager_argv
from full_disk import fill, small_filesystem
from paper_helpers import TOKEN, IdleStrategy, control, fast_config, get, submitted, wait_for
from pg_cluster import Cluster, own_cluster
from polling import until_async
from ports import free_port
from prometheus_client import CollectorRegistry
from reconciler_server import READ_AUTH, ThreadedServer, make_config
from secret_file import write_secret
from server_process import stop
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from system_binaries import REPO_ROOT, require_binary

from trading_ops.bot.broker import OrderType, Side
from trading_ops.bot.reconciliation import Trigger
from trading_ops.bot.runtime import BotRuntime
from trading_ops.config import Config
from trading_ops.db import migrate
from trading_ops.db.models import Order
from trading_ops.durations import format_duration
from trading_ops.paper.bot import PaperBot, make_venue
from trading_ops.stack.alertmanager_config import render_alertmanager
from trading_ops.stack.layout import Ports
from trading_ops.stack.profiles import FAST
from trading_ops.stack.prometheus_config import adapt_rules
from trading_ops.stack.repo import load_yaml

# Big enough for the journal's database and its WAL, small enough to fill in a moment.
TMPFS_SIZE = "64m"
RULES = REPO_ROOT / "prometheus" / "rules" / "tradingbot-availability.yml"
PLAYBOOK = REPO_ROOT / "trading_ops" / "reconciler" / "playbooks" / "default.yml"


def measured(what: str, seconds: float) -> None:
    print(f"\nMEASURED {what}: {seconds:.2f} s")


def sample(bot: BotRuntime, name: str, **labels: str) -> float:
    return bot.inst.registry.get_sample_value(name, labels) or 0.0


async def readiness(bot: BotRuntime) -> tuple[int, dict[str, Any]]:
    status, body = await get(bot.port, "/readyz")  # type: ignore[attr-defined]
    return status, json.loads(body)


async def journal_not_ready(bot: BotRuntime) -> bool:
    status, body = await readiness(bot)
    return status == 503 and not body["checks"]["journal"]["ok"]


async def ready(bot: BotRuntime) -> bool:
    return (await readiness(bot))[0] == 200


async def healthy(port: int) -> bool:
    """/healthz passes: the loop completed an iteration within the heartbeat timeout (0.5 s here). Waited for, not
    read once: right after the journal's return the loop's iteration may still be waiting on the reconciliation's
    trade lock, longer than that on a busy machine."""
    return (await get(port, "/healthz"))[0] == 200


async def orders_stopped(bot: BotRuntime) -> None:
    """No order leaves over twenty loop steps (the journal's failure is already known)."""
    before, steps = submitted(bot), sample(bot, "tradingbot_loop_iterations_total")
    await wait_for(lambda: sample(bot, "tradingbot_loop_iterations_total") > steps + 20, timeout=30)
    assert submitted(bot) == before


async def check_reconciled_before_trading(bot: BotRuntime, fixed_at: datetime) -> None:
    """The first order journaled after the fault was fixed follows a passing reconciliation that ended after the fix
    (orders journaled between the fault and the first failed write are not it: a filesystem fills while the journal
    still writes into space it holds)."""
    runs = await bot.journal.call(bot.recovery_store.reconciliation_runs)

    def first_order_after_the_fault() -> datetime | None:
        with Session(bot.engine) as session:
            return session.scalar(
                select(func.min(Order.created_at)).where(Order.bot == bot.config.bot.name, Order.created_at > fixed_at)
            )

    first = await asyncio.to_thread(first_order_after_the_fault)
    assert first is not None, "no order after the fix"
    passed = [r for r in runs if r.result in ("clean", "resolved") and fixed_at < r.finished_at <= first]
    assert passed, (first.isoformat(), [(r.trigger, r.result, r.finished_at.isoformat()) for r in runs[-5:]])


async def check_journal_agrees_with_the_venue(bot: BotRuntime, before: set[str]) -> None:
    """Nothing journaled before the fault is lost, nothing is journaled twice, and the journal holds the venue's
    positions (with trading paused and nothing working, a reconciliation finds nothing)."""
    assert (await control(bot.port, "pause"))[0] == 200  # type: ignore[attr-defined]
    await bot.cancel_all()
    trade_ids = [f.trade_id for f in await bot.journal.call(bot.journal.fills)]
    assert len(trade_ids) == len(set(trade_ids)), "a fill journaled twice"
    assert before <= set(trade_ids), "fills journaled before the fault are gone"
    result = await bot.reconcile(Trigger.COMMAND)
    assert result["result"] == "clean", result["discrepancies"]
    journal = {s: p.quantity for s, p in (await bot.journal.call(bot.journal.positions)).items()}
    venue = await bot.broker.positions()
    assert {s: q for s, q in journal.items() if q} == {s: q for s, q in venue.items() if q}


def start_bot(config: Config) -> PaperBot:
    config.paper.reject_probability = 0.0
    return PaperBot(config, token=TOKEN, registry=CollectorRegistry(), venue=make_venue(config))


# -- a full disk ---------------------------------------------------------------------------------------------------
@dataclass
class Prometheus:
    proc: subprocess.Popen[bytes]
    url: str

    async def firing(self, alertname: str) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as session, session.get(f"{self.url}/api/v1/alerts") as response:
            alerts = (await response.json())["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == alertname and a["state"] == "firing"]


@contextlib.contextmanager
def prometheus_scraping(tmp: Path, bot_port: int) -> Iterator[Prometheus]:
    """A real Prometheus scraping the bot every second with the shipped availability rules, evaluated every second."""
    binary = require_binary("prometheus")
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "tradingbot", "static_configs": [{"targets": [f"127.0.0.1:{bot_port}"]}]}],
    }
    tmp.mkdir()
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    with (tmp / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        yield Prometheus(proc, f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def scraped(prometheus: Prometheus) -> bool:
    with contextlib.suppress(aiohttp.ClientError):
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{prometheus.url}/api/v1/query", params={"query": 'up{job="tradingbot"} == 1'}) as response,
        ):
            return bool((await response.json())["data"]["result"])
    return False


async def test_a_full_disk_stops_orders_fails_readyz_fires_the_alert_and_the_bot_trades_again_once_freed(
    tmp_path: Path,
) -> None:
    """The journal's SQLite file on a small tmpfs, the demo strategy trading: the filesystem is filled to its last
    byte. Journal writes fail; within a loop step of the first failure /readyz fails its `journal` check, the order
    gate lets nothing out, `tradingbot_journal_failing{reason="disk_full"}` is 1, and TradingBotJournalFailing
    fires in a real Prometheus within its `for:`. The filler is deleted: without any command, the bot reconciles and
    trades again, having lost nothing it journaled and journaled nothing twice."""
    with small_filesystem(tmp_path / "fs", TMPFS_SIZE) as fs:
        config = fast_config(tmp_path)
        config.database.url = f"sqlite:///{fs / 'journal.db'}"
        migrate.upgrade(config.database_url())
        bot = start_bot(config)
        bot.port = port = await bot.start("127.0.0.1", 0)  # type: ignore[attr-defined]
        try:
            with prometheus_scraping(tmp_path / "prometheus", port) as prometheus:
                await wait_for(lambda: scraped(prometheus), timeout=60, interval=0.2)
                await wait_for(lambda: len(bot.book.holdings) > 0 and submitted(bot) > 20, timeout=30)
                before = {f.trade_id for f in await bot.journal.call(bot.journal.fills)}
                filler = fill(fs)
                started = time.monotonic()
                await wait_for(lambda: journal_not_ready(bot), timeout=30, interval=0.005)
                measured("full disk -> /readyz failing", time.monotonic() - started)
                # A full disk flaps (a write that fits in space SQLite holds lands, the next fails): the metric holds
                # until a reconciliation after the journal's return passed, so the alert's `for:` runs on.
                assert sample(bot, "tradingbot_journal_failing", venue="paper", reason="disk_full") == 1
                assert sample(bot, "tradingbot_ready") == 0
                await orders_stopped(bot)
                (alert,) = await wait_for(
                    lambda: prometheus.firing("TradingBotJournalFailing"), timeout=60, interval=0.2
                )
                measured("full disk -> TradingBotJournalFailing firing", time.monotonic() - started)
                assert alert["labels"]["reason"] == "disk_full" and alert["labels"]["severity"] == "critical"
                waiting = submitted(bot)
                status, health = await get(port, "/healthz")
                assert status == 200, health  # under bot.journal_failure_timeout_seconds: alive, not ready
                fixed_at = datetime.now(UTC)
                filler.unlink()
                freed = time.monotonic()
                await wait_for(lambda: submitted(bot) > waiting, timeout=60)
                measured("space freed -> first order out again", time.monotonic() - freed)
                await wait_for(lambda: ready(bot), timeout=30)
                assert bot.journal.health.reason is None
                assert sample(bot, "tradingbot_journal_failing", venue="paper", reason="disk_full") == 0
                await check_reconciled_before_trading(bot, fixed_at)
                await check_journal_agrees_with_the_venue(bot, before)
        finally:
            await bot.stop()
            bot.engine.dispose()


async def test_healthz_fails_once_the_journal_has_failed_for_longer_than_its_timeout(tmp_path: Path) -> None:
    """`bot.journal_failure_timeout_seconds`: /readyz fails at once, /healthz only once the journal has failed that long
    (the loop itself keeps running), and both pass again once space is freed."""
    with small_filesystem(tmp_path / "fs", TMPFS_SIZE) as fs:
        config = fast_config(tmp_path)
        config.database.url = f"sqlite:///{fs / 'journal.db'}"
        config.bot.journal_failure_timeout_seconds = 2.0
        migrate.upgrade(config.database_url())
        bot = start_bot(config)
        bot.port = port = await bot.start("127.0.0.1", 0)  # type: ignore[attr-defined]
        try:
            await wait_for(lambda: submitted(bot) > 5, timeout=30)
            filler = fill(fs)
            await wait_for(lambda: journal_not_ready(bot), timeout=30)
            failing_since = time.monotonic() - bot.journal.health.failing_for()

            async def journal_unhealthy() -> dict[str, Any] | None:
                """/healthz failing for the journal (a loop stalled on a busy machine fails it too, for its own
                reason: not this one); its detail."""
                status, body = await get(port, "/healthz")
                detail = json.loads(body)
                return detail if status == 503 and not detail["journal"]["ok"] else None

            await wait_for(journal_unhealthy, timeout=30)
            assert time.monotonic() - failing_since >= 2.0

            async def while_the_loop_runs() -> dict[str, Any] | None:
                detail = await journal_unhealthy()
                return detail if detail and detail["heartbeat_age_seconds"] < 1.0 else None

            await wait_for(while_the_loop_runs, timeout=30)  # the loop itself keeps running
            filler.unlink()
            await wait_for(lambda: ready(bot), timeout=60)
            await wait_for(lambda: healthy(port), timeout=30)
        finally:
            await bot.stop()
            bot.engine.dispose()


# -- a PostgreSQL that stops ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with own_cluster() as pg:
        yield pg


async def test_a_stopped_postgresql_stops_orders_and_the_bot_reconnects_reconciles_and_trades_by_itself(
    tmp_path: Path, cluster: Cluster
) -> None:
    """The journal on PostgreSQL, the demo strategy trading: the database is stopped (pg_ctl stop -m fast). /readyz
    fails its `journal` check (database_unavailable) and no order leaves. The database is started again: with no
    restart of the bot, its connections are re-established (its single-instance advisory lock too), it reconciles and
    trades again; every fill journaled before the stop is still there and none is journaled twice."""
    config = fast_config(tmp_path)
    config.database.url = cluster.create_database("journal_stop")
    bot = start_bot(config)
    bot.port = port = await bot.start("127.0.0.1", 0)  # type: ignore[attr-defined]
    stopped = False
    try:
        await wait_for(lambda: len(bot.book.holdings) > 0 and submitted(bot) > 20, timeout=30)
        before = {f.trade_id for f in await bot.journal.call(bot.journal.fills)}
        started = time.monotonic()
        await asyncio.to_thread(cluster.stop)
        stopped = True
        await wait_for(lambda: journal_not_ready(bot), timeout=30, interval=0.005)
        measured("PostgreSQL stopped -> /readyz failing", time.monotonic() - started)
        assert bot.journal.health.reason == "database_unavailable"
        assert sample(bot, "tradingbot_journal_failing", venue="paper", reason="database_unavailable") == 1
        await orders_stopped(bot)
        waiting = submitted(bot)
        fixed_at = datetime.now(UTC)
        await asyncio.to_thread(cluster.start)
        stopped = False
        back = time.monotonic()
        await wait_for(lambda: submitted(bot) > waiting, timeout=60)
        measured("PostgreSQL back -> first order out again", time.monotonic() - back)
        await wait_for(lambda: ready(bot), timeout=30)
        await wait_for(lambda: healthy(port), timeout=30)
        # The single-instance advisory lock went with the session the stop ended: the bot holds it again.
        await wait_for(lambda: asyncio.to_thread(cluster.advisory_lock_holders), timeout=30)
        assert all(h.startswith("trading-ops paper-1 pid") for h in cluster.advisory_lock_holders())
        await check_reconciled_before_trading(bot, fixed_at)
        await check_journal_agrees_with_the_venue(bot, before)
    finally:
        if stopped:
            await asyncio.to_thread(cluster.start)
        await bot.stop()
        bot.engine.dispose()


async def test_a_lock_session_ended_on_its_own_is_taken_again_within_a_heartbeat_interval(
    tmp_path: Path, cluster: Cluster
) -> None:
    """The single-instance lock's session alone is ended on the server (pg_terminate_backend: what an operator, a
    pooler or a session timeout does), the journal's sessions untouched, so no journal call fails and nothing else
    says so: within a heartbeat interval the bot finds its lock's session gone and takes the lock again."""
    config = fast_config(tmp_path)
    config.database.url = cluster.create_database("journal_lock_session")
    bot = start_bot(config)
    bot.port = await bot.start("127.0.0.1", 0)  # type: ignore[attr-defined]
    try:
        await wait_for(lambda: ready(bot), timeout=30)
        holder = "trading-ops paper-1 pid"

        def end_the_lock_session() -> int:
            query = (
                "SELECT pg_terminate_backend(a.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name LIKE %s"
            )
            with psycopg.connect(f"host=127.0.0.1 port={cluster.port} user=postgres dbname=postgres") as c:
                return len(c.execute(query, (f"{holder}%",)).fetchall())

        assert await asyncio.to_thread(end_the_lock_session) == 1
        ended = time.monotonic()

        def held_again() -> bool:
            return any(h.startswith(holder) for h in cluster.advisory_lock_holders())

        await until_async("the bot's advisory lock held again (pg_locks)", held_again, 30, in_thread=True)
        measured("the lock's session ended -> the lock taken again", time.monotonic() - ended)
        assert not bot.journal.health.failing
    finally:
        await bot.stop()
        bot.engine.dispose()


async def test_a_positions_query_that_fails_never_changes_the_journals_positions(tmp_path: Path) -> None:
    """Unknown is not flat: the journal holds a position the venue does not (a drift); while the venue's positions
    query fails, reconciliation ends `unknown` and leaves the journal's position as it was, says so in
    tradingbot_reconciliation_unknown and /readyz; once the venue answers, the same drift is adopted."""
    config = fast_config(tmp_path)
    config.recovery.policies["position_mismatch"] = "adopt"  # what a venue's answer would be adopted by
    bot = start_bot(config)
    bot.port = await bot.start("127.0.0.1", 0)  # type: ignore[attr-defined]
    try:
        assert (await control(bot.port, "pause"))[0] == 200  # type: ignore[attr-defined]
        await bot.cancel_all()
        drift = Decimal("0.7")
        held = await bot.journal.call(bot.journal.positions)
        base = held["BTC-USD"].quantity if "BTC-USD" in held else Decimal(0)
        # In the book and the journal, not on the venue.
        await bot.order_engine.adjust_position("BTC-USD", drift, "test-drift")
        journal_before = {s: p.quantity for s, p in (await bot.journal.call(bot.journal.positions)).items()}
        await bot.paper_venue.fail_queries(["positions"], 60)
        result = await bot.reconcile(Trigger.COMMAND)
        assert result["result"] == "unknown" and result["unknown"] == ["positions"], result
        assert not [d for d in result["discrepancies"] if d["kind"] == "position_mismatch"]
        after = {s: p.quantity for s, p in (await bot.journal.call(bot.journal.positions)).items()}
        assert after == journal_before
        assert sample(bot, "tradingbot_reconciliation_unknown", venue="paper", part="positions") == 1
        assert sample(bot, "tradingbot_reconciliation_unknown", venue="paper", part="balances") == 0
        labels = {"venue": "paper", "trigger": "command", "result": "unknown"}
        assert sample(bot, "tradingbot_reconciliation_runs_total", **labels) == 1
        status, body = await readiness(bot)
        assert status == 503 and "unknown" in body["checks"]["reconciliation"]["detail"], body
        # The balances query failing too: still nothing adopted from a missing answer.
        await bot.paper_venue.fail_queries(["balances"], 60)
        balances = await bot.journal.call(bot.journal.balances)
        result = await bot.reconcile(Trigger.COMMAND)
        assert result["unknown"] == ["positions", "balances"]
        assert await bot.journal.call(bot.journal.balances) == balances
        assert {s: p.quantity for s, p in (await bot.journal.call(bot.journal.positions)).items()} == journal_before
        # The venue answers again: the drift is what it is, a position mismatch, adopted.
        await bot.paper_venue.clear_faults()
        result = await bot.reconcile(Trigger.COMMAND)
        assert result["result"] == "resolved", result
        assert [(d["kind"], d["key"]) for d in result["discrepancies"]] == [("position_mismatch", "BTC-USD")]
        assert (await bot.journal.call(bot.journal.positions))["BTC-USD"].quantity == base
        assert sample(bot, "tradingbot_reconciliation_unknown", venue="paper", part="positions") == 0
        assert (await readiness(bot))[1]["checks"]["reconciliation"]["ok"]
    finally:
        await bot.stop()


async def test_an_idle_bot_knows_within_a_loop_step_that_its_database_is_gone(tmp_path: Path, cluster: Cluster) -> None:
    """A bot that writes nothing on its own (a strategy that places no order) still learns within one loop step that
    its PostgreSQL journal is gone: a step in which no write landed probes the journal (a heartbeat write). Counted in
    loop iterations, not seconds: the journal is failing before the loop has completed two steps after the stop. Back,
    it is ready again after a reconciliation of its own (trigger `journal`)."""
    config = fast_config(tmp_path)
    config.database.url = cluster.create_database("journal_idle")
    config.recovery.heartbeat_interval_seconds = 60.0  # the heartbeat task alone would take a minute
    venue = make_venue(config)
    bot = BotRuntime(
        config,
        venue,
        IdleStrategy(),
        symbols=config.paper.symbols,
        token=TOKEN,
        registry=CollectorRegistry(),
        venue_task=venue.run,
        loop_interval=0.2,
    )
    bot.port = port = await bot.start("127.0.0.1", 0)  # type: ignore[attr-defined]
    steps_at_failure: list[float] = []
    bot.journal.health.add_listener(
        lambda reason: steps_at_failure.append(sample(bot, "tradingbot_loop_iterations_total")) if reason else None
    )
    stopped = False
    try:
        await wait_for(lambda: ready(bot), timeout=30)
        await asyncio.to_thread(cluster.stop)
        stopped = True
        steps_at_stop = sample(bot, "tradingbot_loop_iterations_total")
        started = time.monotonic()
        await wait_for(lambda: journal_not_ready(bot), timeout=30, interval=0.005)
        measured("PostgreSQL stopped (idle bot, 0.2 s loop) -> /readyz failing", time.monotonic() - started)
        assert steps_at_failure and steps_at_failure[0] <= steps_at_stop + 1, (steps_at_stop, steps_at_failure)
        assert bot.journal.health.reason == "database_unavailable"
        runs = sample(bot, "tradingbot_reconciliation_runs_total", venue="paper", trigger="journal", result="clean")
        await asyncio.to_thread(cluster.start)
        stopped = False
        await wait_for(lambda: ready(bot), timeout=60)
        assert (
            sample(bot, "tradingbot_reconciliation_runs_total", venue="paper", trigger="journal", result="clean") > runs
        )
        assert not bot.gate.journal_reconcile_pending
        await wait_for(lambda: healthy(port), timeout=30)
    finally:
        if stopped:
            await asyncio.to_thread(cluster.start)
        await bot.stop()
        bot.engine.dispose()


async def test_the_order_gate_while_the_journal_cannot_be_written_and_until_a_reconciliation_passed(
    tmp_path: Path,
) -> None:
    """The journal's SQLite file on a full tmpfs: once a write has failed, no order goes out, a reduce-only one
    included (each is journaled before it leaves), each refusal counted with reason `journal`, while cancels still go
    (cancel_all answers 200 and the venue has nothing of the bot's open). Written again (the heartbeat lands), an order
    that only reduces goes out at once, one that adds risk waits for the reconciliation that follows."""
    with small_filesystem(tmp_path / "fs", TMPFS_SIZE) as fs:
        config = fast_config(tmp_path)
        config.database.url = f"sqlite:///{fs / 'journal.db'}"
        config.recovery.heartbeat_interval_seconds = 0.1
        # The test holds the trade lock while the journal comes back, and the loop waits on it: the heartbeat (whose
        # write is what shows the journal back) beats only while the loop progressed within this timeout. 0.5 s was
        # a window the heartbeat had to land in, missed on a busy machine.
        config.bot.heartbeat_timeout_seconds = 60.0
        migrate.upgrade(config.database_url())
        venue = make_venue(config)
        bot = BotRuntime(
            config,
            venue,
            IdleStrategy(),
            symbols=["BTC-USD"],
            token=TOKEN,
            registry=CollectorRegistry(),
            venue_task=venue.run,
        )
        bot.port = port = await bot.start("127.0.0.1", 0)  # type: ignore[attr-defined]
        try:
            await wait_for(lambda: ready(bot), timeout=30)
            assert await bot.submit("BTC-USD", Side.BUY, OrderType.MARKET, Decimal("0.05")) is not None
            await wait_for(lambda: bot.book.position("BTC-USD") == Decimal("0.05"))
            price = (venue.quote("BTC-USD").bid / 2).quantize(Decimal("0.01"))
            filler = fill(fs)

            async def a_resting_order_is_refused() -> bool:
                # SQLite still writes into the space its WAL holds: orders may go out until a write needs more.
                await bot.submit("BTC-USD", Side.BUY, OrderType.LIMIT, Decimal("0.001"), price)
                return bot.journal.health.failing

            await wait_for(a_resting_order_is_refused, timeout=30)
            assert bot.journal.health.reason == "disk_full"
            working = len(await venue.open_orders())
            refusal = bot.order_refusal("BTC-USD", reduce_only=True)
            assert refusal is not None and "journal cannot be written" in refusal
            labels = {"venue": "paper", "strategy": config.bot.strategy, "symbol": "BTC-USD", "reason": "journal"}
            refused = sample(bot, "tradingbot_orders_refused_total", **labels)
            assert await bot.submit("BTC-USD", Side.SELL, OrderType.MARKET, Decimal("0.05"), reduce_only=True) is None
            assert sample(bot, "tradingbot_orders_refused_total", **labels) == refused + 1
            assert len(await venue.open_orders()) == working and bot.book.position("BTC-USD") == Decimal("0.05")
            status, body = await control(port, "cancel_all")
            assert status == 200 and body["canceled"] == working, body
            assert await venue.open_orders() == []
            async with bot.trade_lock.hold():  # the reconciliation the journal's return asks for waits here
                filler.unlink()
                await wait_for(lambda: not bot.journal.health.failing)  # the heartbeat landed
                assert bot.gate.journal_reconcile_pending
                assert bot.order_refusal("BTC-USD", reduce_only=True) is None
                refusal = bot.order_refusal("BTC-USD", reduce_only=False)
                assert refusal is not None and "after the journal could be written again" in refusal
                assert not (await readiness(bot))[1]["checks"]["journal"]["ok"]
            await wait_for(lambda: bot.order_refusal("BTC-USD", reduce_only=False) is None, timeout=30)
            assert await ready(bot)
            closed = await bot.submit("BTC-USD", Side.SELL, OrderType.MARKET, Decimal("0.05"), reduce_only=True)
            assert closed is not None
            await wait_for(lambda: bot.book.position("BTC-USD") == 0)
        finally:
            await bot.stop()
            bot.engine.dispose()


# -- the whole answer: Prometheus, Alertmanager, the reconciler's packaged rule --------------------------------------
def journal_playbook() -> dict[str, Any]:
    """The packaged default playbook's journal-failing rule as it ships, verified every second and without cooldown."""
    packaged = yaml.safe_load(PLAYBOOK.read_text())
    (rule,) = [r for r in packaged["rules"] if r["name"] == "journal-failing"]
    rule = {**rule, "cooldown": "0s", "verify": {**rule.get("verify", {}), "interval": "1s"}}
    return {"version": 1, "defaults": packaged["defaults"], "rules": [rule]}


def episodes(reconciler_url: str) -> list[dict[str, Any]]:
    request = urllib.request.Request(f"{reconciler_url}/api/v1/episodes?limit=20", headers=READ_AUTH)
    with urllib.request.urlopen(request, timeout=5) as response:
        return [e for e in json.loads(response.read())["episodes"] if e["alertname"] == "TradingBotJournalFailing"]


async def test_the_packaged_playbook_answers_a_full_disk_with_reduce_only_the_cleanup_and_a_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bot's data directory and journal on a small tmpfs, filled through the bot's scratch directory (what a
    runaway file does): TradingBotJournalFailing fires in a real Prometheus (the repository's rules as the fast
    profile times them), Alertmanager (the repository's configuration) hands it to the reconciler, whose packaged
    journal-failing rule sets the bot reduce_only and runs `trading-ops upkeep cleanup`, which empties the scratch
    directory; the journal is writable again, the bot reconciles, the episode is verified in Prometheus and the bot
    resumed by the rule's on_recovery: it trades again with no human involved."""
    with small_filesystem(tmp_path / "fs", TMPFS_SIZE) as fs:
        config = fast_config(tmp_path)
        config.database.url = f"sqlite:///{fs / 'journal.db'}"
        config.bot.data_dir = str(fs / "data")
        migrate.upgrade(config.database_url())
        # What `trading-ops upkeep cleanup` (the rule's exec step) reads: the bot's data directory.
        (tmp_path / "cleanup.yaml").write_text(yaml.safe_dump({"bot": {"data_dir": str(fs / "data")}}))
        monkeypatch.setenv("TRADING_OPS_CONFIG", str(tmp_path / "cleanup.yaml"))
        monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        bot = start_bot(config)
        bot.port = port = await bot.start("127.0.0.1", 0)  # type: ignore[attr-defined]
        instance = f"127.0.0.1:{port}"
        write_secret(tmp_path / "paper-bot-token", TOKEN)
        procs: list[subprocess.Popen[bytes]] = []
        reconciler: ThreadedServer | None = None
        try:
            db = f"sqlite:///{tmp_path / 'reconciler.db'}"
            migrate.upgrade(db)
            (tmp_path / "playbook.yml").write_text(yaml.safe_dump(journal_playbook()))
            prometheus_port, alertmanager_port = free_port(), free_port()
            prometheus_url = f"http://127.0.0.1:{prometheus_port}"
            reconciler = ThreadedServer(
                make_config(
                    tmp_path,
                    db,
                    playbook=str(tmp_path / "playbook.yml"),
                    prometheus_url=prometheus_url,
                    alertmanager_url=f"http://127.0.0.1:{alertmanager_port}",
                    targets={instance: {"url": f"http://{instance}", "token_file": str(tmp_path / "paper-bot-token")}},
                )
            )
            am = tmp_path / "alertmanager"
            am.mkdir()
            rendered = render_alertmanager(
                REPO_ROOT, Ports(reconciler=reconciler.port), FAST, tmp_path / "webhook-token"
            )
            (am / "alertmanager.yml").write_text(yaml.safe_dump(rendered.config))
            with (am / "alertmanager.log").open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        alertmanager_argv(am / "alertmanager.yml", am / "data", alertmanager_port),
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                    )
                )
            rules = tmp_path / RULES.name
            rules.write_text(yaml.safe_dump(adapt_rules(load_yaml(RULES), FAST, str(RULES))))
            interval = format_duration(FAST.scrape_interval or 1)
            prometheus_config = {
                "global": {"scrape_interval": interval, "evaluation_interval": interval},
                "rule_files": [str(rules)],
                "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]},
                "scrape_configs": [{"job_name": "tradingbot", "static_configs": [{"targets": [instance]}]}],
            }
            (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config))
            with (tmp_path / "prometheus.log").open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        [
                            require_binary("prometheus"),
                            f"--config.file={tmp_path / 'prometheus.yml'}",
                            f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
                            f"--web.listen-address=127.0.0.1:{prometheus_port}",
                            f"--rules.alert.resend-delay={format_duration(FAST.alert_resend_delay or 60)}",
                            "--log.level=warn",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                    )
                )
            await wait_for(lambda: scraped(Prometheus(procs[-1], prometheus_url)), timeout=60, interval=0.2)
            await wait_for(lambda: submitted(bot) > 20, timeout=30)
            scratch = fs / "data" / "scratch"
            scratch.mkdir(parents=True, exist_ok=True)
            fill(scratch)
            started = time.monotonic()

            def recovered() -> list[dict[str, Any]]:
                return [e for e in episodes(reconciler.url) if e["closed_at"]]  # type: ignore[union-attr]

            (episode,) = await wait_for(lambda: asyncio.to_thread(recovered), timeout=180, interval=0.5)
            measured("full disk -> the playbook's episode closed (cleanup verified)", time.monotonic() - started)
            assert episode["state"] == "recovered", [a.get("detail") for a in episode["attempts"]]
            # One attempt: reduce_only, the cleanup, then (verified) on_recovery's resume.
            actions = [(a["action"], a["outcome"]) for a in episode["attempts"]]
            assert actions == [("bot, exec, bot", "success")], episode["attempts"]
            assert list(scratch.iterdir()) == []  # the cleanup emptied the scratch directory
            await wait_for(lambda: bot.inst.state.state.value == "active", timeout=60)  # on_recovery's resume
            for command in ("reduce_only", "resume"):
                labels = {"command": command, "source": "reconciler"}
                assert sample(bot, "tradingbot_control_commands_total", **labels) == 1, command
            waiting = submitted(bot)
            await wait_for(lambda: submitted(bot) > waiting, timeout=60)
            measured("full disk -> trading again after the playbook", time.monotonic() - started)
            assert await ready(bot)
        finally:
            if reconciler is not None:
                reconciler.stop()
            for proc in reversed(procs):
                stop(proc)
            await bot.stop()
            bot.engine.dispose()
