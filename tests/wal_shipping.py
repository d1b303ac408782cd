"""A cluster of a test's own (tests/pg_cluster.py, archiving into pgBackRest) switched to `archive_command = trading-ops
backup archive-wal %p` with its off-host repository on sshd in a network namespace (tests/ssh_host.py): the files
the archiver (the postgres user) reads, the trading-ops configuration, and where its WAL shows up off host. Used by
tests/test_backup_wal.py and benchmarks/bench_wal.py."""

from __future__ import annotations

import contextlib
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from pg_cluster import PGBACKREST_STANZA, Cluster
from ports import free_port
from ssh_host import SshHost

REPO_ROOT = Path(__file__).resolve().parent.parent


def archiver_argv() -> list[str]:
    """How the archiver (the postgres user) runs this tree's trading-ops: this interpreter when that user can run it,
    or else the system's interpreter of the same version with this one's packages (a virtualenv under /root)."""
    paths = [str(REPO_ROOT), sysconfig.get_paths()["purelib"]]
    python = sys.executable
    probe = subprocess.run(["runuser", "-u", "postgres", "--", python, "-c", ""], capture_output=True, check=False)
    if probe.returncode != 0:
        python = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}", path="/usr/bin") or ""
        if not python:
            raise RuntimeError(f"no Python the postgres user can run (it cannot run {sys.executable})")
    return ["env", f"PYTHONPATH={':'.join(paths)}", python, "-m", "trading_ops"]


def sql(port: int, query: str, database: str = "postgres") -> list[tuple[Any, ...]]:
    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname={database}", autocommit=True) as c:
        cur = c.execute(query)  # type: ignore[arg-type]
        return list(cur.fetchall()) if cur.description else []


@dataclass
class WalShipping:
    pg: Cluster
    pgbackrest_conf: Path
    work: Path  # the postgres user's directory: configuration, key, backups, pgBackRest's repository (repo)
    remote: dict[str, Any]  # the backup.remote section
    archive_timeout: int
    config: Path  # trading-ops.yaml

    @property
    def remote_repo(self) -> Path:
        """The off-host repository as this machine's file system sees it."""
        return Path(self.remote["path"])

    def write_config(self, pitr: dict[str, Any] | None = None, **remote: Any) -> None:
        """The configuration the archiver and the test's commands read (backup.remote overridden by `remote`,
        backup.pitr given `pitr` too)."""
        conf = self.pgbackrest_conf
        self.config.write_text(
            f"database:\n  url: {self.pg.url('journal')}\n"
            f"bot:\n  data_dir: {self.work / 'data'}\nreconciler:\n  listen:\n    port: {free_port()}\n"
            f"backup:\n  directory: {self.work / 'backups'}\n"
            "  remote:\n" + "".join(f"    {k}: {v}\n" for k, v in {**self.remote, **remote}.items()) +
            f"  pitr:\n    enabled: true\n    stanza: {PGBACKREST_STANZA}\n    config_file: {conf}\n"
            f"    repo_path: {self.work / 'repo'}\n    command: [runuser, -u, postgres, --, pgbackrest]\n"
            f"    archive_timeout_seconds: {self.archive_timeout}\n" +
            "".join(f"    {k}: {v}\n" for k, v in (pitr or {}).items())
        )  # fmt: skip
        self.config.chmod(0o644)

    def off_host(self, segment: str) -> bool:
        """Whether the off-host copy of pgBackRest's repository holds the WAL segment."""
        return any(self.remote_repo.glob(f"pgbackrest/archive/{PGBACKREST_STANZA}/*/{segment[:16]}/{segment}-*"))

    def wait_off_host(self, segment: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.off_host(segment):
            if time.monotonic() > deadline:
                raise AssertionError(f"WAL segment {segment} was not off host within {timeout:g}s")
            time.sleep(0.02)


@contextlib.contextmanager
def wal_shipping(pg: Cluster, pgbackrest_conf: Path, host: SshHost, archive_timeout: int) -> Iterator[WalShipping]:
    """`pg` (archiving with pgbackrest_archiving) archiving through `trading-ops backup archive-wal` to `host`, with
    archive_timeout seconds; the configuration's database is `journal` (the caller creates it)."""
    work = pgbackrest_conf.parent
    key, known_hosts = work / "client_key", work / "known_hosts"
    shutil.copyfile(host.identity_file, key)
    shutil.copyfile(host.known_hosts_file, known_hosts)
    (work / "backups").mkdir()
    for path in (key, known_hosts, work / "backups"):
        shutil.chown(path, "postgres")
    key.chmod(0o600)
    remote = host.remote(
        path=str(host.repository / "offsite"), identity_file=str(key), known_hosts_file=str(known_hosts)
    )
    shipping = WalShipping(pg, pgbackrest_conf, work, remote, archive_timeout, work / "trading-ops.yaml")
    shipping.write_config()
    archive_command = shlex.join([*archiver_argv(), "--config", str(shipping.config)])
    sql(pg.port, f"ALTER SYSTEM SET archive_command = '{archive_command} backup archive-wal %p'")
    sql(pg.port, f"ALTER SYSTEM SET archive_timeout = '{archive_timeout}s'")
    sql(pg.port, "SELECT pg_reload_conf()")
    yield shipping
