"""PostgreSQL point-in-time recovery through pgBackRest: a cluster of the test's own (tests/pg_cluster.py) archives its
WAL with `pgbackrest archive-push`; `backup run` takes the pgBackRest backup; orders and episodes are written, a
moment noted, more written; `backup restore --to-time` restores the cluster as of that moment into a fresh data
directory, and the cluster started on it holds exactly what was committed before it. Needs PostgreSQL's server
programs (initdb, pg_ctl) and Debian's pgbackrest."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pg_cluster import PGBACKREST_STANZA as STANZA
from pg_cluster import Cluster, archive_now, cluster_on, own_cluster, pgbackrest_archiving
from sqlalchemy import create_engine, insert
from system_binaries import require_binary

from tests.conftest import free_port
from tests.ssh_host import SshHost, ssh_host
from trading_ops.cli import main
from trading_ops.db.base import utcnow
from trading_ops.db.models import Episode, Order


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Cluster, Path]]:
    """The cluster, archiving its WAL into a pgBackRest repository; (cluster, pgbackrest.conf)."""
    require_binary("pgbackrest")
    with own_cluster() as pg, pgbackrest_archiving(pg) as conf:
        yield pg, conf


@pytest.fixture(scope="module")
def backup_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHost]:
    """The off-host repository (sshd in a network namespace), where pgBackRest's repository is copied too."""
    require_binary("rsync")
    with ssh_host(tmp_path_factory.mktemp("pitr-backup-host")) as host:
        yield host


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


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
    cluster: tuple[Cluster, Path], backup_host: SshHost, tmp_path: Path, capsys: Any
) -> None:
    pg, conf = cluster
    url = pg.create_database("journal")
    repo = conf.parent / "repo"
    remote = backup_host.remote(path=str(backup_host.repository / tmp_path.name))
    config_path = tmp_path / "trading-ops.yaml"
    config_path.write_text(
        f"database:\n  url: {url}\nbot:\n  data_dir: {tmp_path / 'data'}\n"
        f"reconciler:\n  listen:\n    port: {free_port()}\n"
        f"backup:\n  directory: {tmp_path / 'backups'}\n"
        "  remote:\n" + "".join(f"    {k}: {v}\n" for k, v in remote.items()) +
        f"  pitr:\n    enabled: true\n    stanza: {STANZA}\n    config_file: {conf}\n    repo_path: {repo}\n"
        "    command: [runuser, -u, postgres, --, pgbackrest]\n"
    )  # fmt: skip
    write(url, "before-backup", 5)
    capsys.readouterr()
    assert main(["--config", str(config_path), "backup", "run"]) == 0
    assert "pgBackRest full backup " in capsys.readouterr().out
    # pgBackRest's repository (the full backup and the WAL archived so far) went off host with the pg_dump backup.
    copied = files_under(Path(remote["path"]) / "pgbackrest")
    assert copied == files_under(repo) and any(name.endswith("backup.manifest") for name in copied)
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
            deadline = time.monotonic() + 60
            while sql(restored.port, "postgres", "SELECT pg_is_in_recovery()")[0][0]:
                assert time.monotonic() < deadline, "the restored cluster did not promote within 60s"
                time.sleep(0.1)
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
