"""Backups of the real database: taken while the real paper bot trades (SQLite through the online backup API,
PostgreSQL through pg_dump from an exported snapshot on the local server), verified in a scratch database, restored
to exactly the content of the moment they were taken; retention, refusal of a live database, metrics, CLI errors.
Needs the PostgreSQL server on 127.0.0.1:5432 and its client programs (pg_dump, pg_restore)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from paper_helpers import TOKEN, counter_total, wait_for
from ports import free_port
from prometheus_client import CollectorRegistry
from secret_file import write_secret
from shared_postgres import POSTGRES_ADMIN_URL
from sqlalchemy import MetaData, create_engine, insert, make_url, select, text
from ssh_host import SshHost, ssh_host

from trading_ops.bot.broker import Side
from trading_ops.cli import main
from trading_ops.config import Config, parse_config
from trading_ops.db import migrate
from trading_ops.db.base import make_engine, utcnow
from trading_ops.db.models import BotRun, Fill, Position
from trading_ops.ops import backup_postgres
from trading_ops.ops.backup import (
    BackupError,
    Catalog,
    LiveDatabase,
    kept_backups,
    restore_backup,
    run_backup,
    verify_backup,
)
from trading_ops.ops.restore_drill import run_drill
from trading_ops.ops.state_metrics import BackupCollector, RestoreDrillCollector
from trading_ops.paper.bot import PaperBot

PAPER = {
    "seed": 11,
    "tick_interval_seconds": 0.01,
    "loop_interval_seconds": 0.02,
    "order_latency_seconds": 0.0,
    "reject_probability": 0.0,
    "partial_fill_probability": 0.3,
    "volatility": 0.002,
    "order_max_age_seconds": 0.2,
}


def make_config(tmp_path: Path, url: str, **backup: Any) -> Config:
    return parse_config(
        {
            "database": {"url": url},
            "bot": {"data_dir": str(tmp_path / "data"), "heartbeat_timeout_seconds": 0.5},
            "paper": PAPER,
            "recovery": {"heartbeat_interval_seconds": 0.1, "crash_timeout_seconds": 0.5},
            # Local-only unless a test gives its remote (the off-host tests below).
            "backup": {"directory": str(tmp_path / "backups"), "remote": {"required": False}, **backup},
            # Nothing answers there: a reconciler another test runs on the default port is not this database's.
            "reconciler": {"listen": {"port": free_port()}},
        },
        base_dir=tmp_path,
    )


def content(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, sorted: the database's content, to compare two databases exactly."""
    engine = create_engine(url)
    try:
        meta = MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            return {
                name: sorted((tuple(map(str, row)) for row in conn.execute(select(table))), key=repr)
                for name, table in meta.tables.items()
            }
    finally:
        engine.dispose()


def backup_content(config: Config, manifest: Any) -> dict[str, list[tuple[Any, ...]]]:
    """The content of a SQLite backup file itself (opened read-only on a copy)."""
    path = Catalog(config.path(config.backup.directory)).data_path(manifest)
    return content(f"sqlite:///{path}")


def dump_content(config: Config, manifest: Any) -> dict[str, list[tuple[Any, ...]]]:
    """The content of a PostgreSQL backup itself: its dump loaded by the plain `pg_restore` into a fresh database of
    the local server (none of trading-ops's restore code on the way)."""
    name = f"trading_ops_dump_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        dump = Catalog(config.path(config.backup.directory)).data_path(manifest)
        pg_restore = shutil.which("pg_restore")
        assert pg_restore, "pg_restore (postgresql-client) is missing"
        argv = [pg_restore, "--no-owner", "--no-privileges", "--exit-on-error", "-h", "127.0.0.1", "-U", "postgres"]
        subprocess.run([*argv, "-d", name, str(dump)], check=True, capture_output=True, timeout=120)
        return content(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def fill_ids(url: str) -> list[int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(Fill.id).order_by(Fill.id)).scalars())
    finally:
        engine.dispose()


def positions_match_fills(url: str) -> bool:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            sums: dict[str, Decimal] = defaultdict(Decimal)
            for symbol, side, quantity in conn.execute(select(Fill.symbol, Fill.side, Fill.quantity)):
                sums[symbol] += Side(side).sign * Decimal(quantity)
            positions = {s: Decimal(q) for s, q in conn.execute(select(Position.symbol, Position.quantity))}
    finally:
        engine.dispose()
    assert sums, "no fills"
    assert {s: q for s, q in positions.items() if q} == {s: q for s, q in sums.items() if q}
    return True


async def trading_bot(config: Config) -> PaperBot:
    bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry(), chaos=True)
    bot.port = await bot.start("127.0.0.1", 0)
    return bot


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
async def test_backup_while_the_paper_bot_trades_restores_that_moment(
    tmp_path: Path, dialect: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("sqlite_url" if dialect == "sqlite" else "postgres_url")
    migrate.upgrade(url)
    config = make_config(tmp_path, url)
    bot = await trading_bot(config)
    try:
        await wait_for(lambda: counter_total(bot, "tradingbot_fills") >= 20, timeout=30)
        # Taken while the bot keeps trading and journaling (off the loop, as the scheduler runs it).
        result = await asyncio.to_thread(run_backup, config)
        manifest = result.manifest
        fills_then = manifest.row_counts["fills"]
        await wait_for(lambda: counter_total(bot, "tradingbot_fills") >= fills_then + 10, timeout=30)
    finally:
        await bot.stop()
        bot.engine.dispose()
    assert manifest.dialect == dialect and manifest.schema_revision is not None
    assert manifest.row_counts["fills"] >= 20 and manifest.row_counts["orders"] >= manifest.row_counts["fills"] // 2
    assert "password" not in manifest.source
    after_trading = content(url)
    ids_after_trading = fill_ids(url)
    assert len(after_trading["fills"]) > fills_then  # the bot went on after the backup

    verified = await asyncio.to_thread(verify_backup, config, manifest)
    assert verified.rows == sum(manifest.row_counts.values())
    # The restore drill: the backup restored into a scratch database, at head, and its journal consistent.
    drilled = await asyncio.to_thread(run_drill, config)
    assert drilled.manifest.id == manifest.id and drilled.rows == sum(manifest.row_counts.values())
    assert drilled.schema_revision == migrate.script_directory().get_current_head()

    restored = await asyncio.to_thread(restore_backup, config, manifest)
    now = content(url)
    # Exactly the journal of the moment of the backup: the manifest's counts, and row for row the same content as
    # the backup itself (the SQLite backup file opened as it is; the PostgreSQL dump loaded by the plain pg_restore).
    assert {t: len(rows) for t, rows in now.items()} == manifest.row_counts
    assert now == (backup_content(config, manifest) if dialect == "sqlite" else dump_content(config, manifest))
    assert set(now["fills"]) < set(after_trading["fills"])
    # ... and that moment is one the database really had: fills are only appended, in id order (the journal's one
    # thread commits them in turn), so the backup holds exactly the fills up to its last one, none missing.
    restored_ids = fill_ids(url)
    assert restored_ids == [i for i in ids_after_trading if i <= restored_ids[-1]]
    # One moment, not a torn copy: each fill is journaled with its position in one transaction, so in the restored
    # journal every position is the sum of its fills.
    assert positions_match_fills(url)
    # The safety backup holds what the database had just before the restore.
    assert restored.safety is not None and restored.safety.trigger == "safety"
    assert restored.safety.row_counts == {t: len(rows) for t, rows in after_trading.items()}
    # A second restore, from the safety backup, brings the later rows back. The restored journal holds the bot's
    # run as it was at the backup (running, heartbeat seconds old): that looks live, so it takes --force.
    with pytest.raises(LiveDatabase, match="bot paper-1"):
        await asyncio.to_thread(restore_backup, config, restored.safety)
    await asyncio.to_thread(restore_backup, config, restored.safety, force=True)
    assert content(url) == after_trading


def test_verify_catches_a_damaged_backup_and_counts_the_failure(sqlite_url: str, tmp_path: Path) -> None:
    migrate.upgrade(sqlite_url)
    config = make_config(tmp_path, sqlite_url)
    manifest = run_backup(config).manifest
    path = Catalog(config.path(config.backup.directory)).data_path(manifest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BackupError, match="checksum"):
        verify_backup(config, manifest)
    registry = CollectorRegistry()
    registry.register(BackupCollector(config.path(config.backup.directory)))
    assert registry.get_sample_value("tradingops_backup_verify_failures_total") == 1
    assert registry.get_sample_value("tradingops_backup_verify_runs_total") == 1


def test_metrics_come_from_the_catalog_whoever_ran_the_backup(sqlite_url: str, tmp_path: Path) -> None:
    migrate.upgrade(sqlite_url)
    config = make_config(tmp_path, sqlite_url)
    registry = CollectorRegistry()
    registry.register(BackupCollector(config.path(config.backup.directory)))
    # Before any backup: no timestamp series (the alert cannot mistake "never" for 1970), failures 0.
    assert registry.get_sample_value("tradingops_backup_last_success_timestamp_seconds") is None
    assert registry.get_sample_value("tradingops_backup_failures_total") == 0
    assert main(["--config", str(write_yaml(tmp_path, sqlite_url)), "backup", "run"]) == 0  # another "process"
    manifest = Catalog(config.path(config.backup.directory)).get("latest")
    assert registry.get_sample_value("tradingops_backup_last_success_timestamp_seconds") == pytest.approx(
        manifest.created_at.timestamp()
    )
    assert registry.get_sample_value("tradingops_backup_last_size_bytes") == manifest.size_bytes
    assert registry.get_sample_value("tradingops_backup_catalog_backups") == 1
    # A failing run (the database file vanished) is counted; the last success stays what it was.
    (tmp_path / "trading-ops.db").rename(tmp_path / "moved.db")
    with pytest.raises(FileNotFoundError):
        run_backup(config)
    assert registry.get_sample_value("tradingops_backup_failures_total") == 1
    assert registry.get_sample_value("tradingops_backup_runs_total") == 2
    assert registry.get_sample_value("tradingops_backup_last_success_timestamp_seconds") == pytest.approx(
        manifest.created_at.timestamp()
    )


def write_yaml(tmp_path: Path, url: str, extra: str = "") -> Path:
    path = tmp_path / "trading-ops.yaml"
    path.write_text(
        f"database:\n  url: {url}\nbot:\n  data_dir: {tmp_path / 'data'}\n"
        f"reconciler:\n  listen:\n    port: {free_port()}\nbackup:\n  directory: {tmp_path / 'backups'}\n"
        f"  remote:\n    required: false\n{extra}"
    )
    return path


def test_retention_keeps_the_newest_per_hour_day_and_week(sqlite_url: str, tmp_path: Path) -> None:
    migrate.upgrade(sqlite_url)
    config = make_config(tmp_path, sqlite_url, keep_hourly=3, keep_daily=3, keep_weekly=2, keep_last=1)
    start = datetime(2026, 11, 2, 0, 10, tzinfo=UTC)  # a Monday
    # Every 6 hours for 17 days, plus a second backup in the last hour.
    times = [start + timedelta(hours=6 * i) for i in range(17 * 4)]
    times.append(times[-1] + timedelta(minutes=20))
    for at in times:
        with freeze_time(at):
            run_backup(config, "scheduled")
    kept = {m.created_at for m in Catalog(config.path(config.backup.directory)).manifests()}
    last = times[-1]  # 2026-11-18 18:30, a Wednesday
    expected = {
        last,  # the newest of all, also the newest of its hour, day and week
        last - timedelta(minutes=20) - timedelta(hours=6),  # hour buckets: 18:xx (newest), 12:10, 06:10
        last - timedelta(minutes=20) - timedelta(hours=12),
        datetime(2026, 11, 17, 18, 10, tzinfo=UTC),  # days: the 18th (newest), the 17th, the 16th
        datetime(2026, 11, 16, 18, 10, tzinfo=UTC),
        datetime(2026, 11, 15, 18, 10, tzinfo=UTC),  # weeks: 16-22 Nov (newest), 9-15 Nov: its Sunday's last
    }
    assert kept == expected
    # Deleted backups leave no file behind: only the kept ones' data and manifests are in the directory.
    names = {p.name for p in config.path(config.backup.directory).iterdir() if p.name.startswith("trading-ops-")}
    assert len(names) == 2 * len(expected)


def test_kept_backups_in_a_time_zone_and_with_nothing_to_keep() -> None:
    assert kept_backups([], 3, 3, 3) == set()
    # Two backups an hour apart around midnight New York time fall on different local days.
    from trading_ops.ops.backup import Manifest

    def m(at: datetime) -> Manifest:
        return Manifest(at.strftime("%H%M"), at, "sqlite", "f", 1, "x", 0.0, {}, None, "sqlite://")

    a, b = m(datetime(2026, 3, 8, 4, 30, tzinfo=UTC)), m(datetime(2026, 3, 8, 5, 30, tzinfo=UTC))
    assert kept_backups([a, b], 0, 2, 0, "America/New_York") == {a.id, b.id}
    assert kept_backups([a, b], 0, 2, 0, "UTC") == {b.id}


def test_restore_refuses_a_live_database_without_force(sqlite_url: str, tmp_path: Path, capsys: Any) -> None:
    migrate.upgrade(sqlite_url)
    config_path = write_yaml(tmp_path, sqlite_url)
    assert main(["--config", str(config_path), "backup", "run"]) == 0
    engine = make_engine(sqlite_url)
    with engine.begin() as conn:  # a bot's run with a fresh heartbeat: it is using the database
        conn.execute(
            insert(BotRun).values(bot="paper-1", venue="paper", pid=4242, hostname="h", last_heartbeat_at=utcnow())
        )
    engine.dispose()
    before = content(sqlite_url)
    capsys.readouterr()
    assert main(["--config", str(config_path), "backup", "restore", "latest"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "in use" in err and "bot paper-1 (pid 4242" in err and "--force" in err
    assert content(sqlite_url) == before  # untouched, and no safety backup was needed
    assert len(Catalog(tmp_path / "backups").manifests()) == 1
    assert main(["--config", str(config_path), "backup", "restore", "latest", "--force"]) == 0
    assert "safety backup" in capsys.readouterr().out
    assert content(sqlite_url)["bot_runs"] == []
    assert len(Catalog(tmp_path / "backups").manifests()) == 2


async def test_restore_refuses_while_the_paper_bot_holds_its_lock(sqlite_url: str, tmp_path: Path) -> None:
    migrate.upgrade(sqlite_url)
    config = make_config(tmp_path, sqlite_url, live_seconds=0)  # the heartbeat alone would not tell
    manifest = run_backup(config).manifest
    bot = await trading_bot(config)
    try:
        with pytest.raises(LiveDatabase, match=r"a bot holds .*paper-1\.lock"):
            await asyncio.to_thread(restore_backup, config, manifest)
    finally:
        await bot.stop()
        bot.engine.dispose()


def test_off_machine_copy(sqlite_url: str, tmp_path: Path) -> None:
    migrate.upgrade(sqlite_url)
    config = make_config(tmp_path, sqlite_url, copy_to=str(tmp_path / "offsite"))
    result = run_backup(config)
    assert result.copied_to == tmp_path / "offsite"
    copied = json.loads((tmp_path / "offsite" / f"trading-ops-{result.manifest.id}.manifest.json").read_text())
    assert copied == result.manifest.to_json()
    source = Catalog(tmp_path / "backups").data_path(result.manifest)
    assert (tmp_path / "offsite" / source.name).read_bytes() == source.read_bytes()


def test_cli_errors_are_one_line(sqlite_url: str, tmp_path: Path, capsys: Any) -> None:
    migrate.upgrade(sqlite_url)
    config_path = write_yaml(tmp_path, sqlite_url)

    def run(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(["--config", str(config_path), *args])
        return code, capsys.readouterr().err.strip()

    code, err = run("backup", "verify")
    assert code == 1 and err == f"trading-ops: backup verify: no backups in {tmp_path / 'backups'}"
    assert run("backup", "run")[0] == 0
    code, err = run("backup", "restore", "20990101T000000000000Z")
    assert code == 1 and "no backup '20990101T000000000000Z'" in err and "\n" not in err
    code, err = run("backup", "verify", "../../etc/passwd")
    assert code == 1 and "no backup" in err and "\n" not in err
    config_path.write_text(config_path.read_text() + "  keep_daily: -1\n")
    code, err = run("backup", "list")
    assert code == 2 and err == "trading-ops: config: backup.keep_daily: must be at least 0, got -1"
    assert "\n" not in err


def test_postgres_errors_are_one_line(postgres_url: str, tmp_path: Path, capsys: Any) -> None:
    migrate.upgrade(postgres_url)
    missing = write_yaml(tmp_path, postgres_url, "  pg_dump: /nonexistent/pg_dump\n")
    capsys.readouterr()
    assert main(["--config", str(missing), "backup", "run"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "trading-ops: backup run: cannot start /nonexistent/pg_dump: No such file or directory"
    # A database that does not exist: the server's own message, on one line.
    gone = write_yaml(tmp_path, postgres_url.rsplit("/", 1)[0] + "/no_such_database_here")
    assert main(["--config", str(gone), "backup", "run"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and 'database "no_such_database_here" does not exist' in err
    assert shutil.which("pg_dump") and shutil.which("pg_restore")


def test_restore_refuses_a_postgresql_database_other_sessions_use(postgres_url: str, tmp_path: Path) -> None:
    migrate.upgrade(postgres_url)
    config = make_config(tmp_path, postgres_url)
    manifest = run_backup(config).manifest
    other = create_engine(postgres_url, connect_args={"application_name": "some-bot"})
    with other.connect():
        with pytest.raises(LiveDatabase, match=r"session some-bot \(pid \d+\)"):
            restore_backup(config, manifest)
    other.dispose()
    assert restore_backup(config, manifest).safety is not None


def test_progress_line_only_on_a_terminal() -> None:
    import io

    from trading_ops.ops.backup import TerminalProgress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal, pipe = Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        progress = TerminalProgress("backup", stream)
        progress(512, 1024)
        progress(1024, 1024)
        progress.finish()
    assert "backup: 50% (512/1024 pages)" in terminal.getvalue()
    assert "backup: 100% (1024/1024 pages)" in terminal.getvalue()
    assert terminal.getvalue().endswith("\r\x1b[K")  # the line is wiped at the end
    assert pipe.getvalue() == ""  # never in a log or a pipe


async def test_the_scheduled_job_records_its_run(sqlite_url: str, tmp_path: Path) -> None:
    from trading_ops.ops.backup import run_scheduled_backup

    migrate.upgrade(sqlite_url)
    config = make_config(tmp_path, sqlite_url)
    result = await run_scheduled_backup(config)
    assert result.manifest.trigger == "scheduled"
    state = Catalog(config.path(config.backup.directory)).state.read()
    assert state["last_id"] == result.manifest.id and state["runs_total"] == 1
    bad = make_config(tmp_path, f"sqlite:///{tmp_path / 'missing' / 'db.sqlite'}")
    with pytest.raises(FileNotFoundError):
        await run_scheduled_backup(bad)
    assert Catalog(config.path(config.backup.directory)).state.read()["failures_total"] == 1


def test_a_tampered_manifest_is_ignored_not_followed(sqlite_url: str, tmp_path: Path) -> None:
    migrate.upgrade(sqlite_url)
    config = make_config(tmp_path, sqlite_url, keep_hourly=0, keep_daily=0, keep_weekly=0, keep_last=1)
    manifest = run_backup(config).manifest
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    catalog = Catalog(tmp_path / "backups")
    forged = {**manifest.to_json(), "id": "20000101T000000000000Z", "file": "../victim.txt"}
    (tmp_path / "backups" / "trading-ops-20000101T000000000000Z.manifest.json").write_text(json.dumps(forged))
    assert [m.id for m in catalog.manifests()] == [manifest.id]  # unreadable as a backup: not listed
    run_backup(config)  # retention (keeping only the newest) never touches what the forged manifest names
    assert victim.read_text() == "precious"
    with pytest.raises(BackupError, match="no backup '20000101T000000000000Z'"):
        catalog.get("20000101T000000000000Z")


async def test_restore_refuses_while_the_reconciler_serves(sqlite_url: str, tmp_path: Path) -> None:
    from aiohttp import web

    from trading_ops.reconciler.app import create_app

    migrate.upgrade(sqlite_url)
    write_secret(tmp_path / "webhook-token", "t" * 32)
    port = free_port()
    config = parse_config(
        {
            "database": {"url": sqlite_url},
            "bot": {"data_dir": str(tmp_path / "data")},
            "backup": {"directory": str(tmp_path / "backups"), "remote": {"required": False}},
            "reconciler": {
                "listen": {"port": port},
                "token_file": str(tmp_path / "webhook-token"),
                "check_silences": False,
                "watchdog": {"window_seconds": 0},
            },
        },
        base_dir=tmp_path,
    )
    manifest = run_backup(config).manifest
    runner = web.AppRunner(create_app(config, registry=CollectorRegistry()))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        with pytest.raises(LiveDatabase, match=f"a reconciler answers on http://127.0.0.1:{port}"):
            await asyncio.to_thread(restore_backup, config, manifest)
    finally:
        await runner.cleanup()
    assert (await asyncio.to_thread(restore_backup, config, manifest)).manifest == manifest


def test_restoring_an_older_schema_then_upgrading(database_url: str, tmp_path: Path, capsys: Any) -> None:
    migrate.upgrade(database_url, "0006")
    config_path = write_yaml(tmp_path, database_url)
    assert main(["--config", str(config_path), "backup", "run"]) == 0
    migrate.upgrade(database_url)  # a later release added a table
    capsys.readouterr()
    assert main(["--config", str(config_path), "backup", "restore", "latest"]) == 0
    out = capsys.readouterr().out
    assert "the restored schema is at revision 0006: run `trading-ops db upgrade`" in out
    tables = content(database_url)
    assert "reconciler_audit" not in tables and tables["alembic_version"] == [("0006",)]
    migrate.upgrade(database_url)  # and the migrations bring it forward again
    migrate.check(database_url)


# -- off host: every backup's second copy on another host, over SSH --------------------------------------------------


@pytest.fixture(scope="module")
def backup_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHost]:
    """OpenSSH's sshd on a host of its own (a network namespace; tests/ssh_host.py), once for the module."""
    with ssh_host(tmp_path_factory.mktemp("backup-host")) as host:
        yield host


def remote_config(tmp_path: Path, url: str, host: SshHost, **backup: Any) -> Config:
    repository = host.repository / tmp_path.name  # a repository of the test's own on the shared host
    return make_config(tmp_path, url, remote=host.remote(path=str(repository)), **backup)


def remote_files(config: Config) -> dict[str, bytes]:
    folder = Path(config.backup.remote.path)
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.is_dir() else {}


def test_every_backup_goes_off_host_and_is_verified_there(
    sqlite_url: str, tmp_path: Path, backup_host: SshHost
) -> None:
    migrate.upgrade(sqlite_url)
    config = remote_config(tmp_path, sqlite_url, backup_host)
    result = run_backup(config)
    manifest = result.manifest
    assert (
        manifest.off_host
        == f"{backup_host.user}@{backup_host.host}:{config.backup.remote.path} (port {backup_host.port})"
    )
    catalog = Catalog(config.path(config.backup.directory))
    # Both copies, byte for byte; the local manifest says where the verified copy is, and so does the remote one.
    there = remote_files(config)
    assert there[manifest.file] == catalog.data_path(manifest).read_bytes()
    assert json.loads(there[f"trading-ops-{manifest.id}.manifest.json"]) == manifest.to_json()
    assert catalog.get("latest").off_host == manifest.off_host
    assert not [name for name in there if name.endswith(".partial")]
    # verify checks the off-host copy too: damaged there, the backup does not verify.
    verify_backup(config, manifest)
    (Path(config.backup.remote.path) / manifest.file).write_bytes(b"damaged")
    with pytest.raises(BackupError, match="off-host copy on .* is missing or damaged"):
        verify_backup(config, manifest)


def test_retention_applies_to_both_copies(sqlite_url: str, tmp_path: Path, backup_host: SshHost) -> None:
    migrate.upgrade(sqlite_url)
    config = remote_config(tmp_path, sqlite_url, backup_host, keep_hourly=1, keep_daily=0, keep_weekly=0, keep_last=1)
    start = datetime(2026, 11, 2, 0, 10, tzinfo=UTC)
    for hours in range(3):
        with freeze_time(start + timedelta(hours=hours)):
            run_backup(config, "scheduled")
    local = {m.id for m in Catalog(config.path(config.backup.directory)).manifests()}
    assert len(local) == 1
    there = remote_files(config)
    assert {n.removeprefix("trading-ops-").removesuffix(".manifest.json") for n in there if "manifest" in n} == local
    assert len(there) == 2  # the kept backup's data and manifest, nothing else


def test_a_lost_host_comes_back_from_the_off_host_copy(sqlite_url: str, tmp_path: Path, backup_host: SshHost) -> None:
    migrate.upgrade(sqlite_url)
    config_path = write_yaml(tmp_path, sqlite_url)
    remote = backup_host.remote(path=str(backup_host.repository / tmp_path.name))
    config_path.write_text(config_path.read_text().replace("  remote:\n    required: false\n", ""))
    config_path.write_text(
        config_path.read_text() + "  remote:\n" + "".join(f"    {k}: {v}\n" for k, v in remote.items())
    )
    assert main(["--config", str(config_path), "backup", "run"]) == 0
    before = content(sqlite_url)
    # The host is lost: its database and its backup catalog with it.
    Path(make_url_path(sqlite_url)).unlink()
    shutil.rmtree(tmp_path / "backups")
    assert main(["--config", str(config_path), "backup", "fetch"]) == 0
    assert main(["--config", str(config_path), "backup", "restore", "latest"]) == 0
    assert content(sqlite_url) == before


def error_line(stderr: str) -> str:
    """The command's error: one line (the log lines before it are the logger's)."""
    lines = [line for line in stderr.splitlines() if line.startswith("trading-ops:")]
    assert len(lines) == 1, stderr
    return lines[0]


def make_url_path(url: str) -> str:
    return url.removeprefix("sqlite:///")


def test_a_failed_off_host_copy_is_a_failed_backup(sqlite_url: str, tmp_path: Path, capsys: Any) -> None:
    migrate.upgrade(sqlite_url)
    registry = CollectorRegistry()
    # Nothing listens there (a port no server was given): the repository is unreachable.
    unreachable = {"host": "127.0.0.1", "port": free_port(), "connect_timeout_seconds": 2}
    config_path = write_yaml(tmp_path, sqlite_url)
    text_ = config_path.read_text().replace("  remote:\n    required: false\n", "")
    config_path.write_text(text_ + "  remote:\n" + "".join(f"    {k}: {v}\n" for k, v in unreachable.items()))
    registry.register(BackupCollector(tmp_path / "backups"))
    capsys.readouterr()
    assert main(["--config", str(config_path), "backup", "run"]) == 1
    err = error_line(capsys.readouterr().err)
    assert err.startswith("trading-ops: backup run: off-host repository 127.0.0.1:")
    assert "unreachable" in err and "Connection refused" in err
    # Not complete: a failure (with the off-host reason), and no last success for the stale alert to count on.
    assert registry.get_sample_value("tradingops_backup_failures_total") == 1
    assert registry.get_sample_value("tradingops_backup_off_host_failures_total") == 1
    assert registry.get_sample_value("tradingops_backup_last_success_timestamp_seconds") is None
    assert "unreachable" in Catalog(tmp_path / "backups").state.read()["last_error"]
    # The local copy is kept (it is a backup, just not a complete one), marked as not off host.
    assert [m.off_host for m in Catalog(tmp_path / "backups").manifests()] == [""]
    # Off host by default: without a remote host configured, every run fails the same way, saying so.
    config_path.write_text(text_)
    assert main(["--config", str(config_path), "backup", "run"]) == 1
    err = error_line(capsys.readouterr().err)
    assert "is on this host only: no off-host repository is configured (backup.remote.host" in err
    assert registry.get_sample_value("tradingops_backup_off_host_failures_total") == 2


# -- the restore drill ---------------------------------------------------------------------------------------------


def drill_metrics(tmp_path: Path) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(RestoreDrillCollector(tmp_path / "backups" / "restore-drill-state.json"))
    return registry


def test_the_drill_brings_an_older_schema_to_head_and_records_it(sqlite_url: str, tmp_path: Path, capsys: Any) -> None:
    migrate.upgrade(sqlite_url, "0006")
    config_path = write_yaml(tmp_path, sqlite_url)
    registry = drill_metrics(tmp_path)
    capsys.readouterr()
    assert main(["--config", str(config_path), "backup", "drill"]) == 1  # nothing to drill yet
    assert error_line(capsys.readouterr().err) == f"trading-ops: backup drill: no backups in {tmp_path / 'backups'}"
    assert registry.get_sample_value("tradingops_restore_drill_failures_total") == 1
    assert main(["--config", str(config_path), "backup", "run"]) == 0
    capsys.readouterr()
    assert main(["--config", str(config_path), "backup", "drill"]) == 0
    out = capsys.readouterr().out
    head = migrate.script_directory().get_current_head()
    assert out.startswith("restore drill passed: backup ") and f"migrated to {head}" in out
    assert registry.get_sample_value("tradingops_restore_drill_runs_total") == 2
    assert registry.get_sample_value("tradingops_restore_drill_failures_total") == 1
    last = registry.get_sample_value("tradingops_restore_drill_last_success_timestamp_seconds")
    assert last is not None and abs(last - utcnow().timestamp()) < 600
    manifest = Catalog(tmp_path / "backups").get("latest")
    assert registry.get_sample_value("tradingops_restore_drill_last_backup_timestamp_seconds") == pytest.approx(
        manifest.created_at.timestamp()
    )
    # The drill touched neither the database (still at 0006) nor the catalog.
    assert content(sqlite_url)["alembic_version"] == [("0006",)]
    assert [m.id for m in Catalog(tmp_path / "backups").manifests()] == [manifest.id]


def test_a_drill_of_an_inconsistent_journal_fails(
    database_url: str, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch: list[str] = []  # the scratch databases this test's commands made (the real ones, named as they are made)
    made = backup_postgres.scratch_database

    @contextlib.contextmanager
    def named(url: str) -> Iterator[str]:
        with made(url) as scratch_url:
            scratch.append(str(make_url(scratch_url).database))
            yield scratch_url

    monkeypatch.setattr(backup_postgres, "scratch_database", named)
    migrate.upgrade(database_url)
    engine = make_engine(database_url)
    with engine.begin() as conn:  # a position no fill explains, and a fill of an order that was never journaled
        conn.execute(
            insert(Position).values(bot="b", venue="paper", symbol="BTC-USD", quantity=Decimal(2), average_price=1)
        )
        conn.execute(
            insert(Fill).values(
                bot="b", venue="paper", trade_id="t1", client_order_id="lost-1", symbol="ETH-USD", side="buy",
                quantity=Decimal(1), price=Decimal(100), fee=Decimal(0), fee_asset="USD", liquidity="taker",
                executed_at=utcnow(),
            )
        )  # fmt: skip
    engine.dispose()
    config_path = write_yaml(tmp_path, database_url)
    registry = drill_metrics(tmp_path)
    assert main(["--config", str(config_path), "backup", "run"]) == 0
    capsys.readouterr()
    assert main(["--config", str(config_path), "backup", "drill"]) == 1
    err = error_line(capsys.readouterr().err)
    assert "restored, but its journal is inconsistent: " in err
    assert "position b/paper/BTC-USD is 2, its fills sum to 0" in err
    assert "position b/paper/ETH-USD is 0, its fills sum to 1" in err
    assert "1 fill(s) of bot b name order 'lost-1', which is not journaled" in err
    assert registry.get_sample_value("tradingops_restore_drill_failures_total") == 1
    assert registry.get_sample_value("tradingops_restore_drill_last_success_timestamp_seconds") is None
    assert registry.get_sample_value("tradingops_restore_drill_last_failure_timestamp_seconds") is not None
    if database_url.startswith("postgresql"):  # the drill's scratch database is gone again (other tests' drills on
        # the shared server may have one of their own meanwhile)
        admin = create_engine(POSTGRES_ADMIN_URL)
        with admin.connect() as conn:
            names = conn.execute(text("SELECT datname FROM pg_database")).scalars().all()
        admin.dispose()
        assert scratch and not set(scratch) & set(names), (scratch, names)


def test_retention_never_deletes_the_newest_backups(sqlite_url: str, tmp_path: Path) -> None:
    """Backups taken seconds apart (by hand, then the schedule's) fall in one hour, whose newest alone the hourly
    buckets keep: the `keep_last` newest stay whatever their hours; older ones of that hour go."""
    migrate.upgrade(sqlite_url)
    config = make_config(tmp_path, sqlite_url)  # the defaults: keep_last 3
    assert config.backup.keep_last == 3
    start = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
    made = []
    for seconds in (0, 6, 12, 18):
        with freeze_time(start + timedelta(seconds=seconds)):
            made.append(run_backup(config).manifest.id)
    kept = [m.id for m in Catalog(config.path(config.backup.directory)).manifests()]
    assert kept == made[:0:-1]  # the three newest; the oldest of the hour went
    assert kept_backups([], 1, 1, 1, last=3) == set()


def test_retention_keeps_the_newest_backup_of_each_schema_revision(sqlite_url: str, tmp_path: Path) -> None:
    """The backup taken before an upgrade is what a bad migration goes back to: the hour's later backups (at the new
    revision) do not push it out."""
    migrate.upgrade(sqlite_url, "0006")
    config = make_config(tmp_path, sqlite_url, keep_hourly=1, keep_daily=0, keep_weekly=0, keep_last=1)
    start = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
    with freeze_time(start):
        before_upgrade = run_backup(config).manifest
    migrate.upgrade(sqlite_url)
    for minutes in (10, 20, 30):
        with freeze_time(start + timedelta(minutes=minutes)):
            newest = run_backup(config, "scheduled").manifest
    kept = [m.id for m in Catalog(config.path(config.backup.directory)).manifests()]
    assert kept == [newest.id, before_upgrade.id]
