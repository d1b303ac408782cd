"""A cluster of a test's own (tests/pg_cluster.py, archiving into pgBackRest) switched to `archive_command = trading-ops
backup archive-wal %p` with its off-host repository on sshd in a network namespace (tests/ssh_host.py): the files
the archiver (the postgres user) reads, the trading-ops configuration, and where its WAL shows up off host. Used by
tests/ops/test_backup_wal.py and benchmarks/ops/bench_wal.py."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pg_cluster import PGBACKREST_STANZA, Cluster, as_postgres
from polling import until
from ports import free_port
from ssh_host import SshHost

REPO_ROOT = Path(__file__).resolve().parent.parent


# The extras of trading-ops the archiver's copy holds besides its dependencies: its database is PostgreSQL.
ARCHIVER_EXTRAS = ("postgres",)


def _distributions(name: str, extras: tuple[str, ...] = ()) -> dict[str, importlib.metadata.Distribution]:
    """The installed distributions `name` (with `extras`) needs, not itself: its requirements, theirs, and so on."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = [(name, extras)]
    while todo:
        wanted, wanted_extras = todo.pop()
        for line in importlib.metadata.distribution(wanted).requires or []:
            requirement = Requirement(line)
            marker = requirement.marker
            if marker and not any(marker.evaluate({"extra": extra}) for extra in ("", *wanted_extras)):
                continue
            key = canonicalize_name(requirement.name)
            if key not in found:
                found[key] = importlib.metadata.distribution(requirement.name)
            todo.append((requirement.name, tuple(requirement.extras)))
    return found


def _place(source: Path, target: Path) -> None:
    """`source` at `target`, readable by every user: a hard link where it can be one (the same file system and
    readable by all already), else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        raise FileExistsError(f"{target} is there already")
    if source.stat().st_mode & 0o004:
        try:
            os.link(source, target)
            return
        except OSError:
            pass
    shutil.copy2(source, target)
    target.chmod(0o644 | (source.stat().st_mode & 0o111))


def _archiver_copy(copy: Path) -> None:
    """Into `copy`: this tree's trading_ops and every installed distribution it needs (ARCHIVER_EXTRAS included),
    readable by every user."""
    site = Path(sysconfig.get_paths()["purelib"])
    for dist in _distributions("trading-ops", ARCHIVER_EXTRAS).values():
        for file in dist.files or []:
            source = Path(os.path.normpath(dist.locate_file(file)))  # a script's is ../../../bin/<name>: left out
            if source.is_relative_to(site) and source.is_file():
                _place(source, copy / source.relative_to(site))
    for source in (REPO_ROOT / "trading_ops").rglob("*"):
        if source.is_file():
            _place(source, copy / source.relative_to(REPO_ROOT))
    for folder, _, _ in os.walk(copy):
        os.chmod(folder, 0o755)


def _cannot_run(argv: list[str]) -> str:
    """Why the archiver's user cannot run `argv --help` (its error's last line), or "" when it can."""
    done = subprocess.run(as_postgres([*argv, "--help"]), capture_output=True, text=True, timeout=120, check=False)
    lines = (done.stderr or done.stdout).strip().splitlines()
    return "" if done.returncode == 0 else (lines[-1] if lines else f"exit status {done.returncode}")


@contextlib.contextmanager
def archiver() -> Iterator[list[str]]:
    """How the archiver (the postgres user) runs this tree's trading-ops: this interpreter with this tree and its
    packages when that user can reach them; else (a checkout under /root, whose mode is 0700) a copy of the package and
    of the installed distributions it needs, in a directory of its own under /tmp that every user can enter, run by this
    interpreter's own executable or the system's of the same version, and removed at the end. Fails naming what
    that user cannot run when neither works."""
    paths = [str(REPO_ROOT), sysconfig.get_paths()["purelib"]]
    argv = ["env", f"PYTHONPATH={':'.join(paths)}", sys.executable, "-m", "trading_ops"]
    direct = _cannot_run(argv)
    if not direct:
        yield argv
        return
    copy = Path(tempfile.mkdtemp(prefix="trading-ops-archiver-"))
    try:
        _archiver_copy(copy)
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        pythons = [os.path.realpath(sys.executable), *filter(None, [shutil.which(version, path="/usr/bin")])]
        why = direct
        for python in dict.fromkeys(pythons):
            argv = ["env", f"PYTHONPATH={copy}", python, "-s", "-m", "trading_ops"]
            why = _cannot_run(argv)
            if not why:
                break
        else:
            raise RuntimeError(
                f"the postgres user cannot run trading-ops for archive_command, from {REPO_ROOT} ({direct}) "
                f"nor from a copy in {copy} ({why})"
            )
        yield argv
    finally:
        shutil.rmtree(copy, ignore_errors=True)


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
    archiver: list[str]  # how the postgres user runs trading-ops (archiver())

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
        until(f"WAL segment {segment} off host (archive-wal's shipment)", lambda: self.off_host(segment), timeout, 0.02)


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
    with archiver() as argv:
        shipping = WalShipping(pg, pgbackrest_conf, work, remote, archive_timeout, work / "trading-ops.yaml", argv)
        shipping.write_config()
        archive_command = shlex.join([*argv, "--config", str(shipping.config)])
        sql(pg.port, f"ALTER SYSTEM SET archive_command = '{archive_command} backup archive-wal %p'")
        sql(pg.port, f"ALTER SYSTEM SET archive_timeout = '{archive_timeout}s'")
        sql(pg.port, "SELECT pg_reload_conf()")
        try:
            yield shipping
        except Exception as exc:
            # What the archiver did, read while its copy of trading-ops is still there: pgbackrest_archiving's own
            # report comes after this one removed it, when the server's next try fails only for want of the module.
            exc.add_note(pg.archiver_report())
            raise
