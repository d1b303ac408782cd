"""A Patroni cluster of a test module's own: one etcd (Debian's etcd-server) and two or three Patroni members (Debian's
patroni, on the system python3), each managing a PostgreSQL data directory of its own under one temp dir, everything on
free 127.0.0.1 ports (never etcd's default 2379/2380, never the shared server on 5432), `synchronous_mode: true`.
Patroni fails over by itself: the test only kills. Everything is stopped by its pid at the end, whatever happened; a
part that does not come up in time fails the test naming what it waited for and the tail of its log."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml
from pg_cluster import alive, server_binary
from polling import until
from ports import free_port
from system_binaries import require_binary

from trading_ops.db import migrate

LOG_TAIL_LINES = 15
# Patroni's own timings (its dynamic configuration's defaults, as docs/deployment.md ships them): the leader key lives
# `ttl` seconds unless renewed every `loop_wait`, so a killed leader is replaced about `ttl` seconds later, longer than
# the reconciler's 30 s claim lease. Shorter ones cost a needless failover here (Patroni 3.0.2 on etcd3, ttl 10): each
# member's first etcd lease is granted with the 30 s default before the bootstrap's dynamic configuration applies, and
# about 20 s after the bootstrap the standby took the leader key from a live leader.
TTL_SECONDS = 30
LOOP_WAIT_SECONDS = 10
RETRY_TIMEOUT_SECONDS = 10


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"\n  {path.name}: (none)"
    return f"\n  {path.name}: ...\n  " + "\n  ".join(text)


def _kill(pid: int | None, sig: int = signal.SIGKILL, wait: float = 30.0) -> None:
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    end = time.monotonic() + wait
    while alive(pid) and time.monotonic() < end:
        time.sleep(0.05)


def _stop_child(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM a process of ours, SIGKILL it after `grace` seconds, and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


def _get(url: str, timeout: float = 2.0) -> tuple[int, dict[str, Any]]:
    """GET a JSON answer (Patroni's API answers 503 with a body for 'not the primary')."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (a loopback URL of the test's own)
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@dataclass
class Member:
    """One Patroni member: its REST API port, its PostgreSQL port and data directory, its process."""

    name: str
    folder: Path
    api_port: int
    pg_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "patroni.log"

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def state(self) -> dict[str, Any]:
        """Patroni's own view of this member (GET /patroni): role, state, sync_standby..."""
        return _get(f"http://127.0.0.1:{self.api_port}/patroni")[1]

    def is_primary(self) -> bool:
        return _get(f"http://127.0.0.1:{self.api_port}/primary")[0] == 200

    def is_sync_standby(self) -> bool:
        return _get(f"http://127.0.0.1:{self.api_port}/sync")[0] == 200


@dataclass
class PatroniCluster:
    scope: str
    root: Path
    etcd_port: int
    members: list[Member]
    etcd: subprocess.Popen[bytes] | None = None
    killed: list[str] = field(default_factory=list)

    def url(self, database: str) -> str:
        """The multi-host SQLAlchemy URL naming every member; libpq keeps the first that takes writes."""
        hosts = "&".join(f"host=127.0.0.1:{m.pg_port}" for m in self.members)
        return f"postgresql+psycopg://postgres@/{database}?{hosts}&target_session_attrs=read-write"

    def roles(self) -> dict[str, str]:
        """member name -> its role as the DCS says (GET /cluster of a live member: leader, sync_standby, replica)."""
        for member in self.members:
            if member.name in self.killed:
                continue
            with contextlib.suppress(OSError, ValueError):
                code, view = _get(f"http://127.0.0.1:{member.api_port}/cluster")
                if code == 200:
                    return {m["name"]: m["role"] for m in view.get("members", []) if m.get("state") == "running"}
        return {}

    def _with_role(self, role: str) -> Member | None:
        named = [name for name, r in self.roles().items() if r == role and name not in self.killed]
        return next((m for m in self.members if m.name in named), None)

    def leader(self) -> Member | None:
        """The member holding the leader key whose PostgreSQL takes writes (none while Patroni fails over)."""
        member = self._with_role("leader")
        with contextlib.suppress(OSError, ValueError):
            if member is not None and member.is_primary():
                return member
        return None

    def sync_standby(self) -> Member | None:
        """The member Patroni names synchronous standby (its commits wait for this one)."""
        member = self._with_role("sync_standby")
        with contextlib.suppress(OSError, ValueError):
            if member is not None and member.is_sync_standby():
                return member
        return None

    def logs(self) -> str:
        return tail(self.root / "etcd.log") + "".join(tail(m.log) for m in self.members)

    def wait(self, what: str, probe: Any, timeout: float) -> Any:
        """`until`, whose failure names what it waited for and quotes etcd's and every member's log."""
        try:
            return until(what, probe, timeout, 0.2, (OSError, ValueError, psycopg.Error))
        except AssertionError as exc:
            raise AssertionError(f"{exc}{self.logs()}") from None

    def wait_replicated(self, timeout: float = 120.0) -> tuple[Member, Member]:
        """A leader whose synchronous standby streams from it: (leader, sync standby)."""

        def ready() -> tuple[Member, Member] | None:
            leader, standby = self.leader(), self.sync_standby()
            return (leader, standby) if leader and standby else None

        return self.wait("a Patroni leader and a synchronous standby (GET /primary, GET /sync: 200)", ready, timeout)

    def create_database(self, name: str) -> str:
        """A new database on the leader, migrated; the multi-host URL."""
        leader = self.leader()
        assert leader is not None, "no Patroni leader"
        with psycopg.connect(
            f"host=127.0.0.1 port={leader.pg_port} user=postgres dbname=postgres", autocommit=True
        ) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        url = self.url(name)
        migrate.upgrade(url)
        return url

    def kill_member(self, member: Member) -> None:
        """SIGKILL the member's Patroni and its PostgreSQL: the host gone at once, its leader key left to expire."""
        self.killed.append(member.name)
        postmaster = member.postmaster_pid()
        if member.proc is not None:
            member.proc.kill()
            member.proc.wait()
        _kill(postmaster)


def _member_config(cluster: PatroniCluster, member: Member, synchronous: bool) -> dict[str, Any]:
    replication_params = {"wal_level": "replica", "max_wal_senders": 8, "max_replication_slots": 8}
    return {
        "scope": cluster.scope,
        "name": member.name,
        "log": {"level": "INFO"},
        "restapi": {"listen": f"127.0.0.1:{member.api_port}", "connect_address": f"127.0.0.1:{member.api_port}"},
        "etcd3": {"hosts": [f"127.0.0.1:{cluster.etcd_port}"]},
        "bootstrap": {
            "dcs": {
                "ttl": TTL_SECONDS,
                "loop_wait": LOOP_WAIT_SECONDS,
                "retry_timeout": RETRY_TIMEOUT_SECONDS,
                "maximum_lag_on_failover": 1048576,
                "synchronous_mode": synchronous,
                "postgresql": {"use_pg_rewind": False, "use_slots": True, "parameters": replication_params},
            },
            "initdb": [{"encoding": "UTF8"}, {"auth": "trust"}],
            "pg_hba": [
                "local all all trust",
                "host all all 127.0.0.1/32 trust",
                "host replication all 127.0.0.1/32 trust",
            ],
        },
        "postgresql": {
            "listen": f"127.0.0.1:{member.pg_port}",
            "connect_address": f"127.0.0.1:{member.pg_port}",
            "data_dir": str(member.data),
            "bin_dir": str(Path(server_binary("pg_ctl")).parent),
            "pgpass": str(member.folder / "pgpass"),
            "authentication": {"superuser": {"username": "postgres"}, "replication": {"username": "postgres"}},
            "parameters": {"unix_socket_directories": str(member.folder), "fsync": "off"},
        },
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
    }


@contextlib.contextmanager
def patroni_cluster(members: int = 2, *, synchronous: bool = True) -> Iterator[PatroniCluster]:
    """etcd and `members` Patroni members, up with a leader and a synchronous standby; all stopped by pid at the end."""
    etcd_bin, patroni_bin = require_binary("etcd"), require_binary("patroni")
    root = Path(tempfile.mkdtemp(prefix=f"trading-ops-patroni-{os.getpid()}-"))  # under /tmp: postgres can reach it
    root.chmod(0o755)
    as_root = os.geteuid() == 0
    cluster = PatroniCluster(f"trading-ops-{uuid.uuid4().hex[:8]}", root, free_port(), [])
    try:
        peer_port = free_port()
        etcd_log = root / "etcd.log"
        cluster.etcd = subprocess.Popen(
            [
                etcd_bin,
                "--name",
                "etcd0",
                "--data-dir",
                str(root / "etcd"),
                "--listen-client-urls",
                f"http://127.0.0.1:{cluster.etcd_port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{cluster.etcd_port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-cluster",
                f"etcd0=http://127.0.0.1:{peer_port}",
                "--initial-cluster-token",
                cluster.scope,
                "--listen-metrics-urls",
                "",
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=open(etcd_log, "ab"),  # noqa: SIM115
        )
        cluster.wait(
            f"etcd healthy on 127.0.0.1:{cluster.etcd_port} (GET /health)",
            lambda: _get(f"http://127.0.0.1:{cluster.etcd_port}/health")[1].get("health") == "true",
            60,
        )
        for i in range(members):
            folder = root / f"pg{i}"
            folder.mkdir()
            cluster.members.append(Member(f"pg{i}", folder, free_port(), free_port()))
        for member in cluster.members:
            config = member.folder / "patroni.yml"
            config.write_text(yaml.safe_dump(_member_config(cluster, member, synchronous)))
            if as_root:
                shutil.chown(member.folder, "postgres", "postgres")
                shutil.chown(config, "postgres", "postgres")
            member.folder.chmod(0o700)
            env = {
                "PATH": "/usr/bin:/bin",
                "HOME": str(member.folder),
                "LANG": "C.UTF-8",
                "PYTHONDONTWRITEBYTECODE": "1",
            }
            member.proc = subprocess.Popen(
                ["/usr/bin/python3", patroni_bin, str(config)],  # Debian's patroni on the system python3
                stdout=open(member.log, "ab"),  # noqa: SIM115
                stderr=subprocess.STDOUT,
                env=env,
                cwd=member.folder,
                user="postgres" if as_root else None,
                group="postgres" if as_root else None,
            )
            if member is cluster.members[0]:  # the first bootstraps (initdb); the others clone from it
                cluster.wait(f"{member.name} the Patroni leader (GET /primary: 200)", member.is_primary, 120)
        cluster.wait_replicated()
        yield cluster
    finally:
        for member in cluster.members:
            postmaster = member.postmaster_pid()
            if member.proc is not None:
                _stop_child(member.proc, 30)  # Patroni stops its PostgreSQL on SIGTERM
            if postmaster is not None and alive(postmaster):
                _kill(postmaster, signal.SIGQUIT, 20)
                _kill(postmaster)
        if cluster.etcd is not None:
            _stop_child(cluster.etcd, 10)
        shutil.rmtree(root, ignore_errors=True)
