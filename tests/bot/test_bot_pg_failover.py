"""The bot's journal, its single-instance lock and the scheduled operations across a PostgreSQL failover.

A primary and its synchronous standby of this module's own (initdb, pg_basebackup -R, pg_ctl on free ports; never the
shared server on 5432), named together in one multi-host URL (`?host=a&host=b&target_session_attrs=read-write`).
Once per module, everything runs on that URL at the same time: two paper bots trading (the demo strategy on the paper
venue, the runtime in this process), two scheduler replicas with a run in progress and two more started while no
server takes writes; a "second instance" of one bot holds that bot's advisory lock on the standby (a session there,
as another host's process would). The primary is SIGKILLed and the standby promoted PROMOTION_SECONDS later, longer
than the scheduler's lease. Each test then reads what one party did:

- the bot reconnects by itself, takes its advisory lock on the new primary before its first order there, trades again,
  and every order that reached the venue is in the new primary's journal as it was journaled before it left;
- the bot whose lock the other instance holds there halts, says so in /readyz, in its trading state and in one log
  line, and sends nothing;
- the run in progress at the kill is finished by its owner, once, not taken over for the lease that lapsed while no
  server took writes; the slot that fell due during the outage runs once across the two replicas started then.

Needs PostgreSQL's server binaries (/usr/lib/postgresql/*/bin). The measured times are printed (run with -s):
kill -> the bot trading again, promotion -> the bot trading again, promotion -> the job due during the outage run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from paper_helpers import TOKEN, fast_config, get, submitted, wait_for
from pg_cluster import ReplicatedPair, replicated_pair
from prometheus_client import CollectorRegistry
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from trading_ops.bot.instance_lock import advisory_key
from trading_ops.bot.state import TradingState
from trading_ops.config import Config, parse_config
from trading_ops.cron import CronSchedule
from trading_ops.db.base import make_engine, utcnow
from trading_ops.db.models import Order
from trading_ops.db.models.ops import JobRun
from trading_ops.ops.scheduler import Job, Scheduler
from trading_ops.paper.bot import PaperBot, make_venue

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

DATABASE = "failover"
TRADER, LOCKED_OUT = "paper-a", "paper-b"  # the bot that trades on, and the one whose lock another instance holds
# The other instance, as pg_stat_activity shows it (a bot's lock names its holder this way).
OTHER_INSTANCE = f"trading-ops {LOCKED_OUT} pid 4242@other-host"
LEASE_SECONDS = 2.0  # the scheduler's lease: shorter than the outage, so it lapses while no server takes writes
PROMOTION_SECONDS = 4.0  # SIGKILL -> pg_ctl promote
EVERY_MINUTE = CronSchedule.parse("* * * * *")
# The demo strategy every 50 ms: fewer orders than the paper venue's memory of closed ones (1,000) over the module.
LOOP_SECONDS = 0.05
# How long anything after the promotion may take (the bound for acting again).
AFTER_PROMOTION_SECONDS = 60.0


def measured(what: str, seconds: float) -> None:
    print(f"\nMEASURED {what}: {seconds:.2f} s")


class Records(logging.Handler):
    """The log lines of the bots' runtime and lock, with when they were written."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[float, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.created, record.levelno, record.getMessage()))

    def matching(self, *words: str) -> list[tuple[float, int, str]]:
        return [line for line in self.lines if all(w in line[2] for w in words)]


class Job_:
    """A scheduled job that records each slot it ran; with `hold`, each run waits for it (a run in progress)."""

    def __init__(self, hold: asyncio.Event | None = None) -> None:
        self.slots: list[datetime] = []
        self.started: list[float] = []  # time.time() of each run
        self.hold = hold

    async def __call__(self, config: Config, registry: CollectorRegistry, slot: datetime) -> None:
        self.slots.append(slot)
        self.started.append(time.time())
        if self.hold is not None:
            await self.hold.wait()


@dataclass
class Failover:
    """What the module's failover left: times (time.time()), what the bots and schedulers did, what they said."""

    killed_at: float = 0.0
    # pg_ctl promote asked for the promotion, and returned once it saw it done: the standby may take writes (and the
    # bot its lock there) a poll of pg_ctl's before promoted_at.
    promote_asked_at: float = 0.0
    promoted_at: float = 0.0
    trading_again_at: float = 0.0
    venue_orders: dict[str, list[Any]] = field(default_factory=dict)  # bot -> every order its venue received
    # The trader's journaled orders (id -> when journaled) read from the old primary just before the kill.
    journaled_before_kill: dict[str, datetime] = field(default_factory=dict)
    lock_holders: list[str] = field(default_factory=list)  # on the new primary once the trader trades again
    locked_out_state: str = ""
    locked_out_halted_metric: float | None = None  # tradingbot_state{state="halted"}
    locked_out_readyz: tuple[int, dict[str, Any]] = (0, {})
    locked_out_refusal: str | None = None  # why its gate refuses even a reduce-only order
    log: Records = field(default_factory=Records)
    held: Job_ = field(default_factory=Job_)  # the run in progress at the kill
    due: Job_ = field(default_factory=Job_)  # the slot due while no server took writes
    held_slot: datetime | None = None
    due_slot: datetime | None = None
    taken_over_checks: int = 0  # ticks of the other replica after it had reached the database for a whole lease


def bot_config(tmp: Path, name: str, url: str) -> Config:
    config = fast_config(tmp / name, loop_interval_seconds=LOOP_SECONDS)
    config.database.url = url
    config.bot.name = name
    return config


def handled(url: str, *jobs: str) -> None:
    """The slot before this minute's done for each job: this minute's slot is due at the first tick."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            slot = EVERY_MINUTE.latest_at_or_before(utcnow()) - timedelta(minutes=1)
            for job in jobs:
                conn.execute(
                    insert(JobRun).values(
                        job=job,
                        scheduled_for=slot,
                        owner="earlier",
                        state="success",
                        attempts=1,
                        started_at=slot,
                        finished_at=slot,
                        lease_until=slot,
                        error="",
                    )
                )
    finally:
        engine.dispose()


async def hold_the_lock_on_the_standby(pair: ReplicatedPair) -> psycopg.AsyncConnection[Any]:
    """The other instance of LOCKED_OUT: a session on the standby (advisory locks work during recovery and the session
    outlives the promotion) holding that bot's advisory lock."""
    conn = await psycopg.AsyncConnection.connect(
        f"host=127.0.0.1 port={pair.standby.port} user=postgres dbname={DATABASE}", autocommit=True
    )
    await conn.execute("SELECT set_config('application_name', %s, false)", (OTHER_INSTANCE,))
    row = await (await conn.execute("SELECT pg_try_advisory_lock(%s)", (advisory_key(LOCKED_OUT),))).fetchone()
    assert row is not None and row[0], "the standby refused the advisory lock"
    return conn


def journaled_orders(url: str, bot: str) -> dict[str, datetime]:
    """A bot's journaled orders: client order id -> when the row was written."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            query = select(Order.client_order_id, Order.created_at).where(Order.bot == bot)
            return {key: at for key, at in conn.execute(query).all()}
    finally:
        engine.dispose()


async def run_failover(pair: ReplicatedPair, tmp: Path) -> Failover:
    url = pair.url(DATABASE)
    record = Failover()
    logging.getLogger("trading_ops").addHandler(record.log)
    configs = {name: bot_config(tmp, name, url) for name in (TRADER, LOCKED_OUT)}
    bots = {
        name: PaperBot(config, token=TOKEN, registry=CollectorRegistry(), venue=make_venue(config))
        for name, config in configs.items()
    }
    release = asyncio.Event()
    record.held = Job_(release)
    await asyncio.to_thread(handled, url, "held", "due")
    scheduler_config = parse_config(
        {"database": {"url": url}, "scheduler": {"lease_seconds": LEASE_SECONDS, "retry_initial_seconds": 0.1}},
        base_dir=tmp,
    )
    holder, other = (
        Scheduler(scheduler_config, make_engine(url), [Job("held", EVERY_MINUTE, record.held)], CollectorRegistry(), o)
        for o in ("r1", "r2")
    )
    late = [
        Scheduler(scheduler_config, make_engine(url), [Job("due", EVERY_MINUTE, record.due)], CollectorRegistry(), o)
        for o in ("s1", "s2")
    ]
    tasks: list[asyncio.Task[Any]] = []
    other_instance: psycopg.AsyncConnection[Any] | None = None
    try:
        for bot in bots.values():
            bot.port = await bot.start("127.0.0.1", 0)  # type: ignore[attr-defined]
        trader, locked_out = bots[TRADER], bots[LOCKED_OUT]
        await wait_for(lambda: all(submitted(b) > 10 for b in bots.values()), timeout=60)
        other_instance = await hold_the_lock_on_the_standby(pair)
        (run,) = await holder.tick()  # this minute's slot: claimed, running until released
        tasks.append(run)
        await wait_for(lambda: record.held.slots, timeout=30)
        record.held_slot = record.held.slots[0]

        async def other_ticks() -> None:
            """The other replica, ticked every 0.2 s (not only at fire times): every chance to take the run over."""
            while True:
                with contextlib.suppress(Exception):
                    await other.tick()
                    if other.lapsed_is_dead():
                        record.taken_over_checks += 1
                await asyncio.sleep(0.2)

        tasks.append(asyncio.create_task(other_ticks()))
        await wait_for(lambda: other.reachable_since is not None, timeout=30)
        record.journaled_before_kill = await asyncio.to_thread(journaled_orders, pair.primary.url(DATABASE), TRADER)
        record.killed_at = time.time()
        await asyncio.to_thread(pair.kill_primary)
        # Two replicas started while no server takes writes: the slot due now runs once the new primary does.
        tasks += [asyncio.create_task(s.run_forever()) for s in late]
        await wait_for(lambda: all(b.journal.health.failing for b in bots.values()), timeout=30)
        await asyncio.sleep(max(0.0, record.killed_at + PROMOTION_SECONDS - time.time()))  # the outage's length
        record.promote_asked_at = time.time()
        await asyncio.to_thread(pair.promote)
        record.promoted_at = time.time()
        waiting = submitted(trader)
        await wait_for(lambda: submitted(trader) > waiting, timeout=AFTER_PROMOTION_SECONDS)
        record.trading_again_at = time.time()
        measured("primary SIGKILLed -> the bot trading again", record.trading_again_at - record.killed_at)
        measured("standby promoted -> the bot trading again", record.trading_again_at - record.promoted_at)
        record.lock_holders = await asyncio.to_thread(pair.standby.advisory_lock_holders)

        await wait_for(
            lambda: locked_out.inst.state.state is TradingState.HALTED and locked_out.instance_lock.holder,
            timeout=AFTER_PROMOTION_SECONDS,
        )
        status, body = await get(locked_out.port, "/readyz")  # type: ignore[attr-defined]
        record.locked_out_readyz = (status, json.loads(body))
        record.locked_out_state = locked_out.inst.state.state.value
        record.locked_out_halted_metric = locked_out.inst.registry.get_sample_value(
            "tradingbot_state", {"state": "halted"}
        )
        # A few loop steps of the halted bot: its strategy runs no more, the gate refuses even a reduce-only order.
        steps = locked_out.inst.registry.get_sample_value("tradingbot_loop_iterations_total") or 0
        await wait_for(
            lambda: (locked_out.inst.registry.get_sample_value("tradingbot_loop_iterations_total") or 0) > steps + 10
        )
        record.locked_out_refusal = locked_out.order_refusal("BTC-USD", reduce_only=True)

        # The run in progress: the other replica has reached the database for a whole lease and looked again, and
        # left the run to its owner; then it is let go, and its owner's outcome lands.
        await wait_for(lambda: record.taken_over_checks >= 3, timeout=AFTER_PROMOTION_SECONDS)
        release.set()
        await wait_for(lambda: not holder.active, timeout=AFTER_PROMOTION_SECONDS)
        due_engine = make_engine(url)

        def due_done() -> bool:
            with due_engine.connect() as conn:
                return bool(conn.scalar(select(JobRun.id).where(JobRun.job == "due", JobRun.state == "success")))

        try:
            await wait_for(lambda: asyncio.to_thread(due_done), timeout=AFTER_PROMOTION_SECONDS)
        finally:
            due_engine.dispose()
        record.due_slot = record.due.slots[0] if record.due.slots else None
        measured("standby promoted -> the job due during the outage run", record.due.started[0] - record.promoted_at)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for bot in bots.values():
            await bot.stop()
            record.venue_orders[bot.config.bot.name] = bot.paper_venue.orders()
            bot.engine.dispose()
        for scheduler in (holder, other, *late):
            scheduler.engine.dispose()
        if other_instance is not None:
            await other_instance.close()
        logging.getLogger("trading_ops").removeHandler(record.log)
    return record


@pytest.fixture(scope="module")
def pair() -> Iterator[ReplicatedPair]:
    with replicated_pair("-c fsync=off") as pg:
        pg.primary.create_database(DATABASE)
        yield pg


@pytest.fixture(scope="module")
def failover(pair: ReplicatedPair, tmp_path_factory: pytest.TempPathFactory) -> Failover:
    """The failover, once for the module's tests (each reads what one party did)."""
    return asyncio.run(run_failover(pair, tmp_path_factory.mktemp("failover")))


def new_primary(pair: ReplicatedPair) -> str:
    return pair.standby.url(DATABASE)


def test_the_bot_takes_its_lock_on_the_new_primary_before_it_trades_and_loses_no_journaled_order(
    pair: ReplicatedPair, failover: Failover
) -> None:
    """The trader reconnected by itself, took its advisory lock on the promoted standby before its first order there
    (its log says when), and every order its venue received is in the new primary's journal, journaled before it
    left: nothing acknowledged by the old primary was lost with synchronous replication."""
    assert failover.trading_again_at > failover.promoted_at
    (taken,) = [t for t, _, m in failover.log.matching(f"bot {TRADER}:", "taken again on")]
    assert failover.promote_asked_at <= taken < failover.trading_again_at
    rows = journaled_orders(new_primary(pair), TRADER)
    before = failover.journaled_before_kill
    assert before and all(rows.get(key) == at for key, at in before.items()), "rows journaled before the kill changed"
    venue = failover.venue_orders[TRADER]
    assert 0 < len(venue) < 1000, "the venue forgot orders: the check below would be partial"
    missing = [o.client_order_id for o in venue if o.client_order_id not in rows]
    assert not missing, f"orders that reached the venue and are not in the journal: {missing[:5]}"
    # Journaled before it left (not adopted back by a reconciliation after the promotion).
    late = [o.client_order_id for o in venue if o.created_at is not None and rows[o.client_order_id] > o.created_at]
    assert not late, f"orders whose journal row was written after the venue had them: {late[:5]}"
    # Its first order at the venue after the promotion came after the lock was taken on the new primary.
    after = [
        o.created_at.timestamp() for o in venue if o.created_at and o.created_at.timestamp() > failover.promote_asked_at
    ]
    assert after and min(after) > taken, "an order reached the venue before the lock was taken on the new primary"
    assert OTHER_INSTANCE in failover.lock_holders
    assert [h for h in failover.lock_holders if h.startswith(f"trading-ops {TRADER} pid ")], failover.lock_holders


def test_a_bot_whose_lock_another_instance_holds_on_the_new_primary_halts_and_sends_nothing(
    failover: Failover,
) -> None:
    """The locked-out bot reconnected, could not take its lock on the new primary (the other instance holds it there):
    it halted (tradingbot_state), /readyz says why naming the holder, one error line says so, its gate refuses even a
    reduce-only order for the lock, and its venue received nothing after the promotion."""
    assert failover.locked_out_state == "halted" and failover.locked_out_halted_metric == 1
    status, body = failover.locked_out_readyz
    assert status == 503 and not body["checks"]["instance_lock"]["ok"], body
    assert OTHER_INSTANCE in body["checks"]["instance_lock"]["detail"]
    lines = [(level, m) for _, level, m in failover.log.matching(f"'{LOCKED_OUT}'", "halting")]
    assert len(lines) == 1 and lines[0][0] == logging.ERROR, lines
    assert failover.locked_out_refusal is not None and "single-instance lock" in failover.locked_out_refusal
    sent = [
        o
        for o in failover.venue_orders[LOCKED_OUT]
        if o.created_at and o.created_at.timestamp() > failover.promote_asked_at
    ]
    assert not sent, f"the locked-out bot sent orders after the promotion: {[o.client_order_id for o in sent]}"


def test_scheduled_jobs_run_once_across_the_failover(pair: ReplicatedPair, failover: Failover) -> None:
    """The run in progress at the kill (its lease lapsed during the outage) was not taken over by the other replica,
    which reached the new primary for a whole lease and looked again: its owner finished it and recorded it, once.
    The slot due during the outage ran once across the two replicas started then, once the new primary took writes."""
    # A minute boundary during the module adds the next slot of each: every slot once.
    assert failover.held_slot in failover.held.slots and len(set(failover.held.slots)) == len(failover.held.slots)
    assert failover.due_slot is not None and len(set(failover.due.slots)) == len(failover.due.slots)
    engine = make_engine(new_primary(pair))
    try:
        with Session(engine) as session:
            rows = {(r.job, r.scheduled_for.astimezone(UTC)): r for r in session.scalars(select(JobRun))}
    finally:
        engine.dispose()
    held = rows[("held", failover.held_slot)]
    assert (held.owner, held.state, held.attempts) == ("r1", "success", 1)
    due = rows[("due", failover.due_slot)]
    assert (due.state, due.attempts) == ("success", 1) and due.owner in ("s1", "s2")
