"""Database and disk upkeep on the real databases (SQLite and PostgreSQL): retention that never deletes an open
order or the history a position still needs, recovery and ledger retention, VACUUM/ANALYZE, directory cleanup by
age and size, and the disk alert's playbook step healing a real paper bot filled by its `fill_disk` chaos."""

from __future__ import annotations

import os
import re
from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
from full_disk import small_filesystem
from paper_helpers import TOKEN, control, wait_for
from prometheus_client import CollectorRegistry
from sqlalchemy import insert, select, text

from trading_ops.bot.broker import Side
from trading_ops.cli import main
from trading_ops.clients.alertmanager import AlertmanagerClient
from trading_ops.clients.notify import Notifier
from trading_ops.config import Config, parse_config
from trading_ops.db import migrate
from trading_ops.db.base import make_engine, utcnow
from trading_ops.db.models import (
    BotRun,
    Episode,
    Fill,
    Order,
    ReconciliationDiscrepancy,
    ReconciliationRun,
    RecoveryEvent,
)
from trading_ops.ops.state_metrics import UpkeepCollector
from trading_ops.ops.upkeep import run_upkeep_sync, state_path
from trading_ops.paper.bot import PaperBot
from trading_ops.reconciler.actions import ACTIONS
from trading_ops.reconciler.actions.base import ActionContext
from trading_ops.reconciler.cli import environment_for_steps
from trading_ops.reconciler.playbook import load_configured_playbook
from trading_ops.reconciler.retention import ledger_retention

MIB = 1024 * 1024


def make_config(tmp_path: Path, url: str, **upkeep: Any) -> Config:
    return parse_config(
        {
            "database": {"url": url},
            "bot": {"data_dir": str(tmp_path / "data")},
            "backup": {"directory": str(tmp_path / "data" / "backups")},
            "reconciler": {"retention_days": 30},
            "upkeep": upkeep,
        },
        base_dir=tmp_path,
    )


def collector(config: Config) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(UpkeepCollector(state_path(config.bot.data_dir)))
    return registry


class JournalRows:
    """Orders and fills written straight through the models, at chosen times."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.n = 0

    def order(self, status: str, at: datetime, symbol: str = "BTC-USD") -> str:
        self.n += 1
        coid = f"o{self.n}"
        with self.engine.begin() as conn:
            conn.execute(
                insert(Order).values(
                    bot="b",
                    client_order_id=coid,
                    venue="paper",
                    symbol=symbol,
                    side="buy",
                    order_type="limit",
                    quantity=Decimal(1),
                    status=status,
                    strategy="demo",
                    created_at=at,
                    updated_at=at,
                )
            )
        return coid

    def fill(self, coid: str, side: str, qty: str, at: datetime, symbol: str = "BTC-USD") -> str:
        self.n += 1
        trade = f"t{self.n}"
        with self.engine.begin() as conn:
            conn.execute(
                insert(Fill).values(
                    bot="b",
                    venue="paper",
                    trade_id=trade,
                    client_order_id=coid,
                    symbol=symbol,
                    side=side,
                    quantity=Decimal(qty),
                    price=Decimal(100),
                    fee=Decimal(0),
                    fee_asset="USD",
                    liquidity="maker",
                    executed_at=at,
                )
            )
        return trade

    def positions(self) -> dict[str, Decimal]:
        totals: dict[str, Decimal] = defaultdict(Decimal)
        with self.engine.connect() as conn:
            for symbol, side, qty in conn.execute(select(Fill.symbol, Fill.side, Fill.quantity)):
                totals[symbol] += Side(side).sign * qty
        return dict(totals)


def names(engine: Any, column: Any) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(column)).scalars())


def test_journal_retention_never_takes_an_open_order_or_a_position_s_history(database_url: str, tmp_path: Path) -> None:
    migrate.upgrade(database_url)
    config = make_config(tmp_path, database_url, journal_retention_days=30, recovery_retention_days=0)
    engine = make_engine(database_url)
    rows = JournalRows(engine)
    now = utcnow()
    old = now - timedelta(days=100)
    # BTC: bought and sold back (flat), then bought 2 and held, then bought 1 today.
    o1 = rows.order("filled", old)
    f1 = rows.fill(o1, "buy", "1", old)
    o2 = rows.order("filled", old + timedelta(days=1))
    f2 = rows.fill(o2, "sell", "1", old + timedelta(days=1))
    o3 = rows.order("filled", old + timedelta(days=2))
    f3 = rows.fill(o3, "buy", "2", old + timedelta(days=2))
    o4 = rows.order("filled", now - timedelta(hours=1))
    f4 = rows.fill(o4, "buy", "1", now - timedelta(hours=1))
    # ETH: an order still open (partly filled 100 days ago), another order flattening it: flat, but the open order's
    # fill is history it still needs, so nothing of ETH goes.
    o5 = rows.order("partially_filled", old, "ETH-USD")
    f5 = rows.fill(o5, "buy", "1", old, "ETH-USD")
    o6 = rows.order("filled", old + timedelta(days=1), "ETH-USD")
    f6 = rows.fill(o6, "sell", "1", old + timedelta(days=1), "ETH-USD")
    # Canceled without fills: an old one goes, a recent one stays.
    o7 = rows.order("canceled", old)
    o8 = rows.order("canceled", now - timedelta(days=1))
    before = rows.positions()

    result = run_upkeep_sync(config, ("retention",), retention=(ledger_retention(config),))
    assert result.failures == []
    assert result.rows_deleted["fills"] == 2 and result.rows_deleted["orders"] == 3
    assert names(engine, Fill.trade_id) == {f3, f4, f5, f6}
    assert f1 not in names(engine, Fill.trade_id) and f2 not in names(engine, Fill.trade_id)
    assert names(engine, Order.client_order_id) == {o3, o4, o5, o6, o8}
    assert {o1, o2, o7}.isdisjoint(names(engine, Order.client_order_id))
    # A replay of what is left ends where the full history did.
    assert rows.positions() == {s: q for s, q in before.items()}
    registry = collector(config)
    assert registry.get_sample_value("tradingops_upkeep_rows_deleted_total", {"table": "fills"}) == 2
    assert registry.get_sample_value("tradingops_upkeep_rows_deleted_total", {"table": "orders"}) == 3
    # A second run has nothing left to do.
    assert run_upkeep_sync(config, ("retention",)).rows_deleted["fills"] == 0
    engine.dispose()


def test_recovery_and_ledger_retention(database_url: str, tmp_path: Path) -> None:
    migrate.upgrade(database_url)
    config = make_config(tmp_path, database_url, recovery_retention_days=30)
    engine = make_engine(database_url)
    old = utcnow() - timedelta(days=60)
    with engine.begin() as conn:

        def run(offset: int) -> int:
            at = old + timedelta(hours=offset)
            return int(
                conn.execute(
                    insert(BotRun)
                    .values(
                        bot="b",
                        venue="paper",
                        pid=1,
                        hostname="h",
                        started_at=at,
                        last_heartbeat_at=at,
                        stopped_at=at,
                        clean_shutdown=True,
                    )
                    .returning(BotRun.id)
                ).scalar_one()
            )

        r1, r2, r3 = run(0), run(1), run(2)
        conn.execute(
            insert(RecoveryEvent).values(
                bot="b", run_id=r2, previous_run_id=r1, kind="crash", detected_at=old, detail="{}", notified=True
            )
        )
        conn.execute(
            insert(RecoveryEvent).values(
                bot="b", run_id=r3, previous_run_id=r2, kind="crash", detected_at=old, detail="{}", notified=False
            )
        )
        runs = [
            conn.execute(
                insert(ReconciliationRun)
                .values(
                    bot="b",
                    venue="paper",
                    trigger="startup",
                    result="resolved",
                    started_at=old,
                    finished_at=old + timedelta(minutes=i),
                    discrepancies=1,
                )
                .returning(ReconciliationRun.id)
            ).scalar_one()
            for i in range(2)
        ]
        for run_id in runs:
            conn.execute(
                insert(ReconciliationDiscrepancy).values(
                    run_id=run_id, kind="missing_fill", key="t", policy="adopt", outcome="adopted"
                )
            )
        for state, closed in (("recovered", old), ("pending", None)):
            conn.execute(
                insert(Episode).values(
                    fingerprint=state,
                    starts_at=old,
                    alertname="A",
                    target="t",
                    labels="{}",
                    annotations="{}",
                    state=state,
                    closed_at=closed,
                )
            )
    result = run_upkeep_sync(config, ("retention",), retention=(ledger_retention(config),))
    assert result.failures == []
    # r1 went (its event was notified); r2 stays (an unnotified event names it), r3 is the bot's last run.
    assert names(engine, BotRun.id) == {r2, r3}
    assert result.rows_deleted["bot_runs"] == 1 and result.rows_deleted["recovery_events"] == 1
    assert names(engine, ReconciliationRun.id) == {runs[1]}  # the newest is kept whatever its age
    assert result.rows_deleted["reconciliation_discrepancies"] == 1
    # The ledger's own retention (reconciler.retention_days): the closed episode goes, the open one never.
    assert names(engine, Episode.state) == {"pending"}
    assert result.rows_deleted["reconciler_episodes"] == 1
    engine.dispose()


def test_vacuum_and_analyze(database_url: str, tmp_path: Path) -> None:
    migrate.upgrade(database_url)
    config = make_config(tmp_path, database_url)
    engine = make_engine(database_url)
    rows = JournalRows(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(Episode),
            [
                dict(
                    fingerprint=str(i),
                    starts_at=utcnow(),
                    alertname="A",
                    target="t",
                    labels="x" * 2000,
                    annotations="{}",
                    state="recovered",
                )
                for i in range(2000)
            ],
        )
        conn.execute(Episode.__table__.delete())
    rows.order("filled", utcnow())
    started = utcnow()
    result = run_upkeep_sync(config, ("vacuum",))
    assert result.failures == [] and result.vacuumed
    tables = ("orders", "reconciler_episodes")
    if database_url.startswith("sqlite"):
        assert result.database_bytes_before is not None and result.database_bytes_after is not None
        assert result.database_bytes_after < result.database_bytes_before - 2 * MIB  # the deleted rows' pages
        with engine.connect() as conn:  # ANALYZE wrote the planner's statistics of the journal's tables
            analyzed = set(conn.execute(text("SELECT DISTINCT tbl FROM sqlite_stat1")).scalars())
        assert "orders" in analyzed
    else:
        # The server's own record: both tables vacuumed and analyzed by this run (not by autovacuum).
        with engine.connect() as conn:
            stats = {
                name: (vacuumed, analyzed)
                for name, vacuumed, analyzed in conn.execute(
                    text(
                        "SELECT relname, last_vacuum, last_analyze FROM pg_stat_user_tables "
                        "WHERE relname IN ('orders', 'reconciler_episodes')"
                    )
                )
            }
        assert set(stats) == set(tables)
        for name, (vacuumed, analyzed) in stats.items():
            assert vacuumed is not None and vacuumed >= started, name
            assert analyzed is not None and analyzed >= started, name
    engine.dispose()
    assert collector(config).get_sample_value("tradingops_upkeep_last_success_timestamp_seconds") is not None


def write(path: Path, size: int, age_seconds: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    at = utcnow().timestamp() - age_seconds
    os.utime(path, (at, at))
    return path


def test_cleanup_by_age_and_size_touches_only_what_it_may(tmp_path: Path, capsys: Any) -> None:
    logs = tmp_path / "data" / "log"
    url = f"sqlite:///{logs / 'oops.log.db'}"  # a database that happens to live there: never deleted
    migrate.upgrade(url)
    config = make_config(
        tmp_path,
        url,
        cleanup={"logs": {"path": "{data_dir}/log", "pattern": "*.log.*", "max_age": "7d", "max_bytes": 3000}},
    )
    old = write(logs / "bot.log.1", 1000, 10 * 86400)
    middle = write(logs / "old" / "bot.log.2", 1000, 3 * 86400)
    newer = write(logs / "bot.log.3", 1000, 2 * 86400)
    newest = write(logs / "bot.log.4", 1500, 3600)
    live = write(logs / "bot.log", 5000, 30 * 86400)  # the live log does not match the pattern
    outside = write(tmp_path / "elsewhere" / "keep.log.1", 100, 30 * 86400)
    stray = write(logs / "cache.log.7", 0, 30 * 86400)  # a database under another name: known by its header
    stray.write_bytes(b"SQLite format 3\x00" + bytes(100))
    os.utime(stray, (0, 0))
    (logs / "link.log.9").symlink_to(outside)
    (logs / "linked").symlink_to(outside.parent, target_is_directory=True)
    os.utime(logs / "link.log.9", (0, 0), follow_symlinks=False)
    capsys.readouterr()
    assert main(["--config", str(write_config(tmp_path, config)), "upkeep", "cleanup"]) == 0
    out = capsys.readouterr().out
    # Age: bot.log.1 (10 days) goes. Size: 3,500 bytes left over 3,000, so the oldest of the rest goes (bot.log.2).
    assert not old.exists() and not middle.exists()
    assert newer.exists() and newest.exists() and live.exists() and outside.exists()
    assert (logs / "oops.log.db").exists() and stray.exists() and (logs / "link.log.9").is_symlink()
    assert "cleanup logs" in out and "2 file(s)" in out
    registry = collector(config)
    assert registry.get_sample_value("tradingops_cleanup_deleted_bytes_total", {"directory": "logs"}) == 2000
    assert registry.get_sample_value("tradingops_cleanup_deleted_files_total", {"directory": "logs"}) == 2
    assert registry.get_sample_value("tradingops_cleanup_failures_total", {"directory": "logs"}) == 0


def write_config(tmp_path: Path, config: Config, extra: str = "") -> Path:
    cleanup = "".join(
        f"    {name}:\n      path: '{c.path}'\n      pattern: '{c.pattern}'\n      max_age: '{c.max_age}'\n"
        f"      max_bytes: {c.max_bytes}\n"
        for name, c in config.upkeep.cleanup.items()
    )
    path = tmp_path / "trading-ops.yaml"
    path.write_text(
        f"database:\n  url: {config.database.url}\nbot:\n  data_dir: {config.bot.data_dir}\n"
        f"backup:\n  directory: {config.backup.directory}\nupkeep:\n  cleanup:\n{cleanup}{extra}"
    )
    return path


def test_cleanup_refuses_the_root_and_reports_one_line(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "trading-ops.yaml"
    path.write_text(
        f"database:\n  url: sqlite:///{tmp_path / 'db.sqlite'}\nupkeep:\n  cleanup:\n    all:\n      path: /\n"
    )
    capsys.readouterr()
    assert main(["--config", str(path), "upkeep", "cleanup"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "trading-ops: config: upkeep.cleanup.all.path: refusing to clean /: too close to the root"
    path.write_text("upkeep:\n  cleanup:\n    'a b': {}\n")
    assert main(["--config", str(path), "upkeep", "cleanup"]) == 2
    assert "upkeep.cleanup.a b: expected a name" in capsys.readouterr().err


def disk_free(bot: PaperBot) -> float:
    for family in bot.inst.registry.collect():
        if family.name == "tradingbot_disk_free_bytes":
            return float(family.samples[0].value)
    raise AssertionError("no tradingbot_disk_free_bytes")


async def test_the_disk_rule_heals_a_paper_bot_filled_by_chaos(tmp_path: Path) -> None:
    """The real paper bot fills its disk (`fill_disk` chaos), the packaged playbook's disk-cleanup step runs through
    the reconciler's exec action exactly as the engine runs it, the space comes back in the bot's own disk metric.

    The bot's data directory is a tmpfs of its own: on the shared disk, the other lanes' writes moved the free space by
    more than the 64 MiB measured (CI: 36 MiB gone between the fill and the check)."""
    with small_filesystem(tmp_path / "data", "256m"):
        await disk_rule_heals(tmp_path)


async def disk_rule_heals(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'journal.db'}"
    migrate.upgrade(url)
    config = parse_config(
        {
            "database": {"url": url},
            "bot": {"data_dir": str(tmp_path / "data"), "heartbeat_timeout_seconds": 0.5},
            "paper": {"seed": 3, "tick_interval_seconds": 0.01, "loop_interval_seconds": 0.02},
        },
        base_dir=tmp_path,
    )
    config_file = tmp_path / "trading-ops.yaml"
    config_file.write_text(f"database:\n  url: {url}\nbot:\n  data_dir: {tmp_path / 'data'}\n")
    bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry(), chaos=True)
    port = await bot.start("127.0.0.1", 0)
    try:
        free_before = disk_free(bot)
        status, _ = await control(port, "fill_disk", {"mib_per_second": 500, "max_mib": 64})
        assert status == 200
        scratch = tmp_path / "data" / "scratch"
        await wait_for(lambda: sum(p.stat().st_size for p in scratch.glob("fill-*.bin")) == 64 * MIB, timeout=60)
        await wait_for(lambda: bot.chaos is not None and "fill_disk" not in bot.chaos._tasks)
        free_full = disk_free(bot)

        labels = {"alertname": "TradingBotDiskAlmostFull", "severity": "critical", "instance": "127.0.0.1:9101"}
        rule = load_configured_playbook("default").match(labels)
        assert rule is not None and rule.name == "disk-cleanup"
        (step,) = rule.steps
        # What `trading-ops --config FILE reconciler` gives its steps: the configuration's path and, when its own
        # bin directory (this virtualenv's) is not on PATH, that directory first.
        old_env = {k: os.environ.get(k) for k in ("PATH", "TRADING_OPS_CONFIG")}
        environment_for_steps(str(config_file))
        try:
            async with aiohttp.ClientSession() as session:
                ctx = ActionContext(
                    config=config,
                    labels=labels,
                    annotations={},
                    alertname=labels["alertname"],
                    target=labels["instance"],
                    episode_id=1,
                    session=session,
                    alertmanager=AlertmanagerClient(session, "http://127.0.0.1:9"),
                    notifier=Notifier([]),
                    label_pattern=re.compile(config.reconciler.label_value_pattern),
                )
                result = await ACTIONS[step.action].run(ctx, step.params, step.timeout)
        finally:
            for k, v in old_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        assert result.outcome == "success", result.output
        assert "cleanup scratch" in result.output and "64.0 MiB freed" in result.output
        assert list(scratch.glob("*")) == []
        # The bot's disk metric recovers the 64 MiB: only the bot writes on this filesystem (its scratch directory and
        # files take a few pages).
        assert free_full <= free_before - 64 * MIB
        await wait_for(lambda: disk_free(bot) >= free_before - MIB, timeout=10)
        registry = collector(config)
        assert registry.get_sample_value("tradingops_cleanup_deleted_bytes_total", {"directory": "scratch"}) == 64 * MIB
        assert registry.get_sample_value("tradingops_cleanup_deleted_files_total", {"directory": "scratch"}) == 64
        # The bot never noticed: still healthy, its journal untouched.
        assert (tmp_path / "journal.db").exists()
    finally:
        await bot.stop()
        bot.engine.dispose()


def test_the_committed_example_documents_the_defaults() -> None:
    from trading_ops.config import load_config

    example = load_config(Path(__file__).resolve().parents[2] / "trading-ops.example.yaml")
    defaults = parse_config({})
    assert example.backup == defaults.backup
    assert example.upkeep == defaults.upkeep


async def test_the_scheduled_job_runs_every_task(tmp_path: Path) -> None:
    from trading_ops.ops.upkeep import run_upkeep

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate.upgrade(url)
    config = make_config(tmp_path, url)
    write(tmp_path / "data" / "scratch" / "junk.bin", 4096, 0)
    result = await run_upkeep(config, retention=(ledger_retention(config),))
    assert result.failures == [] and result.vacuumed and result.bytes_freed == 4096
    assert "reconciler_episodes" in result.rows_deleted and "bot_runs" in result.rows_deleted
    assert collector(config).get_sample_value("tradingops_upkeep_runs_total") == 1


def test_cleanup_runs_where_the_database_url_cannot_be_read(tmp_path: Path, capsys: Any) -> None:
    # A reconciler's step gets a minimal environment: a database URL from a variable is not there. Cleanup needs the
    # URL only to protect an SQLite file, and knows databases by their header anyway.
    write(tmp_path / "data" / "scratch" / "junk.bin", 1000, 0)
    db = write(tmp_path / "data" / "scratch" / "journal.db", 0, 0)
    db.write_bytes(b"SQLite format 3\x00" + bytes(4080))
    path = tmp_path / "trading-ops.yaml"
    path.write_text(f"database:\n  url_env: TRADING_OPS_TEST_UNSET_URL\nbot:\n  data_dir: {tmp_path / 'data'}\n")
    os.environ.pop("TRADING_OPS_TEST_UNSET_URL", None)
    capsys.readouterr()
    assert main(["--config", str(path), "upkeep", "cleanup"]) == 0
    assert "cleanup scratch" in capsys.readouterr().out
    assert not (tmp_path / "data" / "scratch" / "junk.bin").exists() and db.exists()
