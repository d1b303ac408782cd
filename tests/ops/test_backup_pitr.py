"""PostgreSQL point-in-time recovery through pgBackRest: a cluster of the test's own (tests/pg_cluster.py) archives its
WAL through `trading-ops backup archive-wal` (tests/wal_shipping.py); `backup run` takes the pgBackRest backup;
orders and episodes are written, a moment noted, more written; `backup restore --to-time` restores the cluster as of
that moment into a fresh data directory, and the cluster started on it holds exactly what was committed before it.
A backup run fails while the cluster's WAL does not go through archive-wal, or may stay on the host for longer than
backup.pitr.archive_timeout_seconds. Needs PostgreSQL's server programs (initdb, pg_ctl), Debian's pgbackrest, rsync
and OpenSSH."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pg_cluster import PGBACKREST_STANZA, archive_now, cluster_on, own_cluster, pgbackrest_archiving
from sqlalchemy import create_engine, insert
from ssh_host import ssh_host
from system_binaries import require_binary
from wal_shipping import WalShipping, wal_shipping
from wal_shipping import sql as server_sql

from trading_ops.cli import main
from trading_ops.db.base import utcnow
from trading_ops.db.models import Episode, Order

ARCHIVE_TIMEOUT_SECONDS = 30
# A WAL segment in pgBackRest's archive: its name, its checksum, maybe a compression suffix.
SEGMENT = r"[0-9A-F]{24}-[0-9a-f]{40}(\.[a-z0-9]+)?"


@pytest.fixture(scope="module")
def shipping(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WalShipping]:
    """The cluster, its database `journal` migrated, archiving its WAL into a pgBackRest repository through
    `trading-ops backup archive-wal`, which ships it to the off-host repository (sshd in a network namespace), where
    `backup run` copies pgBackRest's repository too."""
    for binary in ("pgbackrest", "rsync"):
        require_binary(binary)
    with (
        ssh_host(tmp_path_factory.mktemp("pitr-backup-host")) as host,
        own_cluster() as pg,
        pgbackrest_archiving(pg) as conf,
    ):
        pg.create_database("journal")
        with wal_shipping(pg, conf, host, ARCHIVE_TIMEOUT_SECONDS) as shipping:
            yield shipping


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def backups_and_their_wal(repo: Path) -> dict[str, bytes]:
    """The files of pgBackRest's repository `repo` that a restore of its latest backup needs: the backups, and the
    archive's info and WAL segments up to the backup's stop segment. Not what the server archived after the backup
    (archive_timeout), nor the backup's history file (`<segment>.<offset>.backup`, archived once the backup has
    stopped): either may be between its push into the repository here and its shipment off host."""
    stops = re.findall(
        r'"backup-archive-stop":"([0-9A-F]{24})"', (repo / "backup" / PGBACKREST_STANZA / "backup.info").read_text()
    )
    assert stops, f"no backup in {repo}"
    last = max(stops)

    def wanted(name: str) -> bool:
        if not name.startswith("archive/"):
            return True
        base = Path(name).name
        return base.startswith("archive.info") or bool(re.fullmatch(SEGMENT, base) and base[:24] <= last)

    return {name: data for name, data in files_under(repo).items() if wanted(name)}


def sql(port: int, database: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname={database}", autocommit=True) as c:
        cur = c.execute(query, params)  # type: ignore[arg-type]
        return list(cur.fetchall()) if cur.description else []


def write(url: str, tag: str, count: int) -> None:
    """`count` orders and `count` episodes, each committed on its own (as the bot and the reconciler commit)."""
    engine = create_engine(url)
    try:
        for i in range(count):
            with engine.begin() as conn:
                conn.execute(
                    insert(Order).values(
                        bot="b", client_order_id=f"{tag}-{i}", venue="paper", symbol="BTC-USD", side="buy",
                        order_type="limit", quantity=1, filled_quantity=0, status="open", strategy="s",
                    )
                )  # fmt: skip
            with engine.begin() as conn:
                conn.execute(
                    insert(Episode).values(
                        fingerprint=f"{tag}-{i}", starts_at=utcnow(), alertname="A", target="t", labels="{}",
                        annotations="{}", state="received",
                    )
                )  # fmt: skip
    finally:
        engine.dispose()


def test_restore_to_a_moment_brings_back_exactly_what_was_committed_before_it(
    shipping: WalShipping, capsys: Any
) -> None:
    pg, repo, config_path = shipping.pg, shipping.work / "repo", shipping.config
    url = pg.url("journal")
    write(url, "before-backup", 5)
    capsys.readouterr()
    assert main(["--config", str(config_path), "backup", "run"]) == 0
    assert "pgBackRest full backup " in capsys.readouterr().out
    # pgBackRest's repository (the full backup and the WAL archived so far) went off host with the pg_dump backup.
    copied = backups_and_their_wal(shipping.remote_repo / "pgbackrest")
    assert copied == backups_and_their_wal(repo) and any(name.endswith("backup.manifest") for name in copied)
    assert any(re.fullmatch(SEGMENT, Path(name).name) for name in copied)  # and the WAL the backup needs
    time.sleep(1.1)  # pgBackRest keeps a backup's stop time in whole seconds: the moment is after it
    write(url, "before", 20)
    time.sleep(0.2)
    moment = utcnow()  # the moment to restore to: the 25 orders and episodes before it were committed
    time.sleep(0.2)
    write(url, "after", 20)
    archive_now(pg.port)

    target = Path(f"{pg.data}-restored")
    target.mkdir(mode=0o700)
    shutil.chown(target, "postgres")
    try:
        assert (
            main(
                [
                    "--config",
                    str(config_path),
                    "backup",
                    "restore",
                    "--to-time",
                    moment.isoformat(),
                    "--pg-data",
                    str(target),
                ]
            )  # fmt: skip
            == 0
        )
        assert "cluster restored as of " in capsys.readouterr().out
        with cluster_on(target, options="-c archive_mode=off") as restored:
            restored.wait_promoted(60)
            orders = {r[0] for r in sql(restored.port, "journal", "SELECT client_order_id FROM orders")}
            episodes = {r[0] for r in sql(restored.port, "journal", "SELECT fingerprint FROM reconciler_episodes")}
        expected = {f"before-backup-{i}" for i in range(5)} | {f"before-{i}" for i in range(20)}
        assert orders == expected  # everything committed before the moment, nothing after it
        assert episodes == expected
    finally:
        shutil.rmtree(target, ignore_errors=True)


def test_restore_to_time_errors_are_one_line(tmp_path: Path, capsys: Any) -> None:
    config_path = tmp_path / "trading-ops.yaml"
    config_path.write_text(f"backup:\n  directory: {tmp_path / 'backups'}\n")
    capsys.readouterr()
    assert main(["--config", str(config_path), "backup", "restore", "--to-time", "2026-11-25T09:00:00Z"]) == 2
    assert capsys.readouterr().err.strip() == (
        "trading-ops: backup restore: --to-time TIME and --pg-data DIR go together, without a backup ID"
    )
    args = ["backup", "restore", "--to-time", "2026-11-25T09:00:00Z", "--pg-data", str(tmp_path / "pg")]
    assert main(["--config", str(config_path), *args]) == 2
    assert "backup.pitr.enabled is false" in capsys.readouterr().err
    config_path.write_text(
        config_path.read_text() + "  pitr:\n    enabled: true\n    config_file: /nonexistent/pgbackrest.conf\n"
    )
    assert main(["--config", str(config_path), "backup", "restore", "--to-time", "yesterday", "--pg-data", "x"]) == 2
    assert "expected an ISO 8601 time" in capsys.readouterr().err
    assert main(["--config", str(config_path), *args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("trading-ops: backup restore: pgbackrest restore failed: ") and "\n" not in err


def test_a_backup_run_fails_while_the_wal_is_not_shipped_as_it_is_archived(shipping: WalShipping, capsys: Any) -> None:
    pg, config_path = shipping.pg, shipping.config
    shipping_command = sql(pg.port, "postgres", "SHOW archive_command")[0][0]
    plain = f"pgbackrest --config={shipping.pgbackrest_conf} --stanza={PGBACKREST_STANZA} archive-push %p"
    try:
        server_sql(pg.port, f"ALTER SYSTEM SET archive_command = '{plain}'")
        sql(pg.port, "postgres", "SELECT pg_reload_conf()")
        write(pg.url("journal"), "local-only", 1)
        archive_now(pg.port)  # archived, into the local repository only
        capsys.readouterr()
        assert main(["--config", str(config_path), "backup", "run"]) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]  # after the log lines of the backup before it
        assert err.startswith("trading-ops: backup run: WAL ")
        assert "was archived but not by `trading-ops backup archive-wal`" in err
        # The cluster's archive_timeout (30 s) longer than the configured bound: WAL could stay here for longer.
        shipping.archive_timeout = 10
        shipping.write_config()
        assert main(["--config", str(config_path), "backup", "run"]) == 1
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            "trading-ops: backup run: the cluster's archive_timeout is 30s: set it to at most 10s "
            "(backup.pitr.archive_timeout_seconds), or WAL may stay on this host only for longer"
        )
    finally:
        shipping.archive_timeout = ARCHIVE_TIMEOUT_SECONDS
        shipping.write_config()
        server_sql(pg.port, f"ALTER SYSTEM SET archive_command = '{shipping_command}'")
        sql(pg.port, "postgres", "SELECT pg_reload_conf()")
