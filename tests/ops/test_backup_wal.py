"""WAL off host as it is archived (trading_ops.ops.backup_wal): a PostgreSQL cluster of the test's own
(tests/pg_cluster.py, initdb + pg_ctl on a free port) archives with `archive_command = trading-ops backup archive-wal
%p`, which pushes each segment into pgBackRest's local repository and copies it to the off-host repository (OpenSSH's
sshd in a network namespace, tests/ssh_host.py) before it reports success. While the off-host repository cannot be
reached the segment stays and fails (pg_stat_archiver, the metrics); once it can, PostgreSQL's retry ships it. Then
the database host is lost (its data directory and the local repository deleted) and `backup restore --to-time
--from-off-host` brings the cluster back as of a moment from what is off host only, with exactly the rows committed
before it. A shipment gives rsync only what the archive gained (rsync's own itemized list says so), and a segment
whose shipment failed and which PostgreSQL then archived without one goes with the next shipment. Needs PostgreSQL's
server programs, Debian's pgbackrest, rsync, sshd and ssh."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from pg_cluster import PGBACKREST_STANZA, cluster_on, own_cluster, pgbackrest_archiving
from polling import until
from ports import free_port
from prometheus_client import CollectorRegistry
from ssh_host import ssh_host
from system_binaries import require_binary
from wal_shipping import WalShipping, sql, wal_shipping

from trading_ops.cli import main
from trading_ops.config import parse_config
from trading_ops.db.base import utcnow
from trading_ops.ops.backup import sync_pitr_repository
from trading_ops.ops.backup_remote import Remote
from trading_ops.ops.backup_wal import ARCHIVE_INFO_FILES
from trading_ops.ops.state_metrics import BackupCollector

ARCHIVE_TIMEOUT_SECONDS = 5  # the cluster's archive_timeout here: a commit leaves the host within it
WAIT_SECONDS = 90.0


def insert(port: int, tag: str, count: int) -> str:
    """`count` rows, each committed on its own; the WAL segment the last commit went to."""
    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=journal", autocommit=True) as c:
        for i in range(count):
            c.execute("INSERT INTO trades (tag) VALUES (%s)", (f"{tag}-{i}",))
        return str(c.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0])  # type: ignore[index]


def metric(work: Path, name: str) -> float | None:
    registry = CollectorRegistry()
    registry.register(BackupCollector(work / "backups"))
    return registry.get_sample_value(name)


@contextlib.contextmanager
def journal_shipping(tmp_path_factory: Any) -> Iterator[WalShipping]:
    """A cluster of the test's own with the database `journal` (a table `trades`), archiving through archive-wal to
    sshd in a network namespace."""
    for binary in ("pgbackrest", "rsync", "runuser"):
        require_binary(binary)
    with (
        ssh_host(tmp_path_factory.mktemp("wal-backup-host")) as host,
        own_cluster() as pg,
        pgbackrest_archiving(pg) as conf,
        wal_shipping(pg, conf, host, ARCHIVE_TIMEOUT_SECONDS) as shipping,
    ):
        sql(pg.port, "CREATE DATABASE journal")
        sql(pg.port, "CREATE TABLE trades (id serial PRIMARY KEY, tag text NOT NULL)", "journal")
        yield shipping


def test_wal_leaves_the_host_as_it_is_archived_and_a_restore_needs_nothing_else(
    tmp_path_factory: Any, capsys: Any
) -> None:
    with journal_shipping(tmp_path_factory) as shipping:
        pg = shipping.pg
        config, work = shipping.config, shipping.work
        capsys.readouterr()
        assert main(["--config", str(config), "backup", "run"]) == 0, capsys.readouterr().err
        assert "pgBackRest full backup " in capsys.readouterr().out
        assert metric(work, "tradingops_backup_pitr_wal_off_host_last_success_timestamp_seconds") is not None

        # The off-host repository unreachable (a port nothing listens on): the segment fails, stays, and says so.
        shipping.write_config(port=free_port())
        insert(pg.port, "before-a", 10)
        failures = sql(pg.port, "SELECT failed_count FROM pg_stat_archiver")[0][0]
        sql(pg.port, "SELECT pg_switch_wal()")
        row = until(
            "archiving failing with the off-host repository unreachable (pg_stat_archiver.failed_count)",
            lambda: (
                (r := sql(pg.port, "SELECT failed_count, last_failed_wal FROM pg_stat_archiver")[0])[0] != failures
                and r
            ),
            WAIT_SECONDS,
            0.05,
        )
        failed = str(row[1])
        assert not shipping.off_host(failed)
        assert (pg.data / "pg_wal" / "archive_status" / f"{failed}.ready").exists()  # kept for the next try
        assert "trading-ops: backup archive-wal: off-host repository " in (pg.data / "server.log").read_text()
        assert (metric(work, "tradingops_backup_pitr_wal_failures_total") or 0) >= 1
        assert (metric(work, "tradingops_backup_off_host_failures_total") or 0) >= 1
        assert (metric(work, "tradingops_backup_failures_total") or 0) >= 1  # what TradingOpsBackupFailed watches

        # Reachable again: PostgreSQL's retry (woken by the next segment) ships it.
        shipping.write_config()
        insert(pg.port, "before-b", 10)
        segment = str(sql(pg.port, "SELECT pg_walfile_name(pg_switch_wal())")[0][0])
        shipping.wait_off_host(failed)
        shipping.wait_off_host(segment)
        insert(pg.port, "before-c", 10)
        shipping.wait_off_host(str(sql(pg.port, "SELECT pg_walfile_name(pg_switch_wal())")[0][0]))

        time.sleep(0.2)
        moment = utcnow()  # the 30 rows before it were committed
        time.sleep(0.2)
        last = insert(pg.port, "after", 20)
        shipping.wait_off_host(last)  # no pg_switch_wal: archive_timeout switches the segment, archive-wal ships it

        # The database host is lost: the cluster, its data directory and the local pgBackRest repository.
        pg.ctl("-m", "immediate", "stop")
        shutil.rmtree(pg.data)
        shutil.rmtree(work / "repo")
        target = Path(f"{pg.data}-restored")
        target.mkdir(mode=0o700)
        shutil.chown(target, "postgres")
        try:
            argv = ["--config", str(config), "backup", "restore", "--to-time", moment.isoformat()]
            assert main([*argv, "--pg-data", str(target), "--from-off-host"]) == 0, capsys.readouterr().err
            out = capsys.readouterr().out
            assert "pgBackRest repository fetched from off host into " in out and "cluster restored as of " in out
            with cluster_on(target, options="-c archive_mode=off") as restored:
                restored.wait_promoted(WAIT_SECONDS)
                tags = {r[0] for r in sql(restored.port, "SELECT tag FROM trades", "journal")}
        finally:
            shutil.rmtree(target, ignore_errors=True)
    assert tags == {f"{tag}-{i}" for tag in ("before-a", "before-b", "before-c") for i in range(10)}


def test_archive_wal_errors_are_one_line(tmp_path: Path, capsys: Any) -> None:
    config = tmp_path / "trading-ops.yaml"
    config.write_text(f"backup:\n  directory: {tmp_path / 'backups'}\n")
    capsys.readouterr()
    assert main(["--config", str(config), "backup", "archive-wal", "pg_wal/000000010000000000000001"]) == 2
    assert capsys.readouterr().err.strip() == "trading-ops: backup archive-wal: backup.pitr.enabled is false"
    config.write_text(
        config.read_text() + "  pitr:\n    enabled: true\n    config_file: /nonexistent/pgbackrest.conf\n"
        "    archive_push_command: [/nonexistent/pgbackrest]\n"
    )
    assert main(["--config", str(config), "backup", "archive-wal", "pg_wal/x; rm -rf /"]) == 2
    assert capsys.readouterr().err.strip() == (
        "trading-ops: backup archive-wal: 'pg_wal/x; rm -rf /' is not a WAL file name (archive_command passes %p)"
    )
    assert main(["--config", str(config), "backup", "archive-wal", "pg_wal/000000010000000000000001"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "trading-ops: backup archive-wal: cannot start /nonexistent/pgbackrest: No such file or directory"
    state = json.loads((tmp_path / "backups" / "wal-archive-state.json").read_text())
    assert state["failures_total"] == 1 and "000000010000000000000001" in state["last_error"]
    config.write_text(config.read_text() + "    archive_timeout_seconds: 0\n")
    assert main(["--config", str(config), "backup", "archive-wal", "pg_wal/000000010000000000000001"]) == 2
    assert "archive_timeout_seconds" in capsys.readouterr().err
    args = ["backup", "restore", "--from-off-host"]
    config.write_text(f"backup:\n  directory: {tmp_path / 'backups'}\n")
    assert main(["--config", str(config), *args]) == 2
    assert capsys.readouterr().err.strip().endswith("--from-off-host goes with --to-time TIME --pg-data DIR")


def test_a_backup_run_deletes_off_host_only_the_wal_expired_here(tmp_path: Path) -> None:
    """The repository's copy at a backup run: the WAL pgBackRest expired here goes there too; a segment archive-wal is
    shipping meanwhile (rsync's temporary file) and the segments here stay."""
    require_binary("rsync")
    with ssh_host(tmp_path / "host") as host:
        remote = Remote(parse_config({"backup": {"remote": host.remote()}}).backup.remote, 60)
        repo = tmp_path / "repo"
        kept, expired = "trading-ops/15-1/0000000100000000/000000010000000000000002-ab.gz", "trading-ops/15-1/x-old.gz"
        for name in ("backup/trading-ops/backup.info", "archive/trading-ops/archive.info", f"archive/{kept}"):
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            (repo / name).write_text(name)
        there = host.repository / "pgbackrest"
        shipping = f"archive/{Path(kept).parent}/.000000010000000000000003-cd.gz.Xy12ab"
        for name in (f"archive/{expired}", shipping):
            (there / name).parent.mkdir(parents=True, exist_ok=True)
            (there / name).write_text(name)
        sync_pitr_repository(remote, repo, "rsync")
        copied = {str(p.relative_to(there)) for p in there.rglob("*") if p.is_file()}
        assert copied == {
            "backup/trading-ops/backup.info",
            "archive/trading-ops/archive.info",
            f"archive/{kept}",
            shipping,
        }


# rsync as the archiver runs it, each run's items (-ii: every file it compared, sent or not) appended to a log.
LOGGED_RSYNC = "#!/bin/sh\necho '-- shipment' >> {log}\nexec rsync -ii \"$@\" >> {log}\n"


def shipments(log: Path) -> list[dict[str, str]]:
    """Per rsync run in `log` (LOGGED_RSYNC), the files it compared: path -> rsync's item (`<f+++++++++`: sent, new
    there)."""
    runs: list[dict[str, str]] = []
    for line in log.read_text().splitlines():
        if line == "-- shipment":
            runs.append({})
        elif len(line) > 12 and line[1] == "f":  # a file's item; directories (`cd…`) are not what was compared
            runs[-1][line[12:]] = line[:11]
    return runs


def test_a_shipment_sends_what_the_archive_gained_and_what_a_failed_one_left_behind(tmp_path_factory: Any) -> None:
    """Each archive-wal gives rsync the files of the archive that are not off host yet, not the whole archive: a
    segment whose shipment failed (and was then archived here only, by a plain `pgbackrest archive-push`) goes with
    the next shipment, and no shipment compares or sends a file an earlier one shipped (the info files aside)."""
    with journal_shipping(tmp_path_factory) as shipping:
        pg, conf = shipping.pg, shipping.pgbackrest_conf
        assert main(["--config", str(shipping.config), "backup", "run"]) == 0  # the stanza, and a backup
        work, stanza = shipping.work, PGBACKREST_STANZA
        here, there = work / "repo" / "archive" / stanza, shipping.remote_repo / "pgbackrest" / "archive" / stanza
        log, rsync = work / "rsync.log", work / "rsync"
        rsync.write_text(LOGGED_RSYNC.format(log=log))
        rsync.chmod(0o755)
        log.touch()
        shutil.chown(log, "postgres")
        shipping.write_config(pitr={"rsync": rsync})
        for i in range(3):  # the first shipment compares the whole archive (no record yet), the next ones not
            shipping.wait_off_host(str(sql(pg.port, "SELECT pg_walfile_name(pg_switch_wal())")[0][0]))
            insert(pg.port, f"first-{i}", 1)
        before = {str(p.relative_to(there)) for p in there.rglob("*") if p.is_file()} - set(ARCHIVE_INFO_FILES)
        assert len(before) >= 3

        # The off-host repository unreachable: the next segment PostgreSQL gives archive-wal is pushed here, its
        # shipment fails, and PostgreSQL gives it again and again (no later one) until an archive_command takes it.
        # Which segment that is, the archiver says: the one switched here, or one that archive_timeout switched
        # before it and whose turn came only after the configuration changed (a busy machine's archiver lags).
        shipping.write_config(pitr={"rsync": rsync}, port=free_port())
        failures = sql(pg.port, "SELECT failed_count FROM pg_stat_archiver")[0][0]
        insert(pg.port, "failed", 1)
        sql(pg.port, "SELECT pg_switch_wal()")

        def failed_after_push() -> str | None:
            count, segment = sql(pg.port, "SELECT failed_count, last_failed_wal FROM pg_stat_archiver")[0]
            return segment if count != failures and list(here.glob(f"*/{segment[:16]}/{segment}-*")) else None

        failed: str = until(
            "archive-wal failing with the off-host repository unreachable, on a segment it pushed to the local "
            "repository (pg_stat_archiver.last_failed_wal, repo/archive)",
            failed_after_push,
            WAIT_SECONDS,
            0.05,
        )
        assert not shipping.off_host(failed)
        # ... and then it is archived without a shipment: PostgreSQL will not hand it to archive-wal again.
        archive_wal = sql(pg.port, "SHOW archive_command")[0][0]
        plain = f"pgbackrest --config={conf} --stanza={stanza} archive-push %p"
        sql(pg.port, f"ALTER SYSTEM SET archive_command = '{plain}'")
        sql(pg.port, "SELECT pg_reload_conf()")
        until(  # it, and maybe the segments after it: names of one timeline sort as the segments do
            f"{failed} archived by plain pgbackrest archive-push (pg_stat_archiver.last_archived_wal)",
            lambda: (sql(pg.port, "SELECT last_archived_wal FROM pg_stat_archiver")[0][0] or "") >= failed,
            WAIT_SECONDS,
            0.05,
        )
        log.write_text("")
        shipping.write_config(pitr={"rsync": rsync})
        sql(pg.port, f"ALTER SYSTEM SET archive_command = '{archive_wal}'")
        sql(pg.port, "SELECT pg_reload_conf()")

        insert(pg.port, "next", 1)
        shipping.wait_off_host(str(sql(pg.port, "SELECT pg_walfile_name(pg_switch_wal())")[0][0]))
        insert(pg.port, "last", 1)
        last = str(sql(pg.port, "SELECT pg_walfile_name(pg_switch_wal())")[0][0])
        shipping.wait_off_host(last)
        assert shipping.off_host(failed)  # shipped by the next shipment: no archive_command ran for it since
        runs = shipments(log)  # the log goes with the cluster's pgBackRest directory
    assert len(runs) >= 2
    compared = [name for run in runs for name in run if name not in ARCHIVE_INFO_FILES]
    assert len(compared) == len(set(compared)), f"a file compared by two shipments: {runs}"  # each sent once
    assert not set(compared) & before, f"shipments compared files shipped before: {runs}"
    sent = {name.rsplit("/", 1)[-1].split("-")[0]: item for run in runs for name, item in run.items()}
    assert sent[failed] == sent[last] == "<f+++++++++"  # sent, new there
    assert all(run[info].strip() == ".f" for run in runs for info in ARCHIVE_INFO_FILES)  # compared, unchanged
