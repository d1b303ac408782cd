"""runbooks/disaster-recovery.md, run: every command block of the runbook, in order, on a scratch deployment (the
runbook's /etc/trading-ops and /var/lib/trading-ops replaced by directories of the test's; SQLite journal and ledger
written by the real paper bot; the off-host backup repository on a second host: OpenSSH's sshd in a network
namespace, tests/ssh_host.py). Each scenario's disaster is made first (the host's files wiped, the database file
damaged, a bad migration), then the runbook's commands bring the system back, and the test checks it is back.

`trading-ops` runs through this checkout's module; `runuser -u trading-ops --` runs its command (as the test's user:
the scratch deployment's files are the test's); `systemctl` is the one command that has no real counterpart on a
scratch deployment (no systemd runs the test): it records its arguments, and the test checks that services are
stopped before a restore and started after it."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from paper_helpers import TOKEN, counter_total, wait_for
from prometheus_client import CollectorRegistry
from sqlalchemy import MetaData, create_engine, select, text
from ssh_host import SshHost, ssh_host

from trading_ops.config import load_config
from trading_ops.db import migrate
from trading_ops.ops.backup import Catalog
from trading_ops.paper.bot import VENUE_STATE_FILE, PaperBot

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = REPO_ROOT / "runbooks" / "disaster-recovery.md"
MARKER = re.compile(r"^<!-- dr: ([\w-]+) -->$")
EXIT_COMMENT = re.compile(r"#.*\bexits (\d)\b")
SCENARIOS = ("evidence", "host-lost", "corrupted", "bad-migration")
TIMEOUT = 180
PAPER = {
    "seed": 7,
    "tick_interval_seconds": 0.01,
    "loop_interval_seconds": 0.02,
    "order_latency_seconds": 0.0,
    "reject_probability": 0.0,
    "partial_fill_probability": 0.3,
    "volatility": 0.002,
    "order_max_age_seconds": 0.2,
}


def runbook_blocks() -> dict[str, list[str]]:
    """Each scenario's command lines, in the runbook's order (a `<!-- dr: NAME -->` marker before a fenced block)."""
    lines = RUNBOOK.read_text().splitlines()
    blocks: dict[str, list[str]] = {}
    for i, line in enumerate(lines):
        marker = MARKER.match(line.strip())
        if marker is None:
            continue
        assert lines[i + 1].startswith("```"), f"{marker.group(1)}: the marker is not right before a fenced block"
        body = []
        for command in lines[i + 2 :]:
            if command.startswith("```"):
                break
            if command.strip():
                body.append(command)
        blocks[marker.group(1)] = body
    return blocks


@dataclass
class Deployment:
    root: Path
    etc: Path
    var: Path
    bin: Path
    config_file: Path
    systemctl_log: Path

    @property
    def url(self) -> str:
        return f"sqlite:///{self.var / 'trading-ops.db'}"

    def run(self, line: str) -> subprocess.CompletedProcess[str]:
        """One command line of the runbook, with this deployment's paths, through bash (globs, as an operator's)."""
        command = line.replace("/etc/trading-ops", str(self.etc)).replace("/var/lib/trading-ops", str(self.var))
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRADING_OPS_")}
        env["PATH"] = f"{self.bin}:{env.get('PATH', os.defpath)}"
        env["PYTHONPATH"] = str(REPO_ROOT)
        return subprocess.run(
            ["bash", "-c", command],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )

    def run_scenario(self, name: str) -> list[str]:
        """Run the scenario's lines in order, each to its documented exit status; the output of each."""
        outputs = []
        for line in runbook_blocks()[name]:
            result = self.run(line)
            expected = EXIT_COMMENT.search(line)
            status = int(expected.group(1)) if expected else 0
            assert result.returncode == status, f"{line}\n{result.stdout}{result.stderr}"
            assert "Traceback" not in result.stderr, result.stderr
            outputs.append(result.stdout + result.stderr)
        return outputs

    def systemctl_calls(self) -> list[list[str]]:
        if not self.systemctl_log.exists():
            return []
        return [line.split() for line in self.systemctl_log.read_text().splitlines()]


def content(url: str) -> dict[str, list[tuple[Any, ...]]]:
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


def _script(path: Path, body: str) -> None:
    path.write_text(body)
    path.chmod(0o755)


@pytest.fixture(scope="module")
def backup_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHost]:
    with ssh_host(tmp_path_factory.mktemp("dr-backup-host")) as host:
        yield host


@pytest.fixture
def deployment(tmp_path: Path, backup_host: SshHost) -> Deployment:
    etc, var, bin_dir = tmp_path / "etc", tmp_path / "var", tmp_path / "bin"
    for folder in (etc, var, bin_dir):
        folder.mkdir()
    systemctl_log = tmp_path / "systemctl.log"
    _script(bin_dir / "trading-ops", f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m trading_ops "$@"\n')
    _script(bin_dir / "runuser", '#!/bin/sh\n[ "$1 $2 $3" = "-u trading-ops --" ] || exit 2\nshift 3\nexec "$@"\n')
    _script(bin_dir / "systemctl", f'#!/bin/sh\necho "$@" >> {shlex.quote(str(systemctl_log))}\n')
    remote = backup_host.remote(path=str(backup_host.repository / tmp_path.name))
    remote_yaml = "".join(f"    {key}: {value}\n" for key, value in remote.items())
    config_file = etc / "trading-ops.yaml"
    config_file.write_text(
        f"database:\n  url: sqlite:///{var / 'trading-ops.db'}\n"
        f"bot:\n  data_dir: {var}\n  heartbeat_timeout_seconds: 0.5\n"
        f"recovery:\n  heartbeat_interval_seconds: 0.1\n  crash_timeout_seconds: 0.5\n"
        f"paper:\n" + "".join(f"  {k}: {v}\n" for k, v in PAPER.items()) + "reconciler:\n  listen:\n"
        f"    port: {free_port_for_test()}\n"
        f"backup:\n  directory: {var / 'backups'}\n  live_seconds: 0\n  remote:\n{remote_yaml}"
    )
    return Deployment(tmp_path, etc, var, bin_dir, config_file, systemctl_log)


def free_port_for_test() -> int:
    from ports import free_port

    return free_port()


async def trade(deployment: Deployment, fills: int) -> None:
    """The real paper bot trades on the deployment's journal until it journaled `fills` more fills, then stops."""
    config = load_config(deployment.config_file)
    bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry())
    bot.port = await bot.start("127.0.0.1", 0)
    try:
        await wait_for(lambda: counter_total(bot, "tradingbot_fills") >= fills, timeout=30)
    finally:
        await bot.stop()
        bot.engine.dispose()


def backup(deployment: Deployment) -> None:
    result = deployment.run("trading-ops --config /etc/trading-ops/trading-ops.yaml backup run")
    assert result.returncode == 0, result.stderr


def drill_passed(deployment: Deployment) -> None:
    result = deployment.run("trading-ops --config /etc/trading-ops/trading-ops.yaml backup drill")
    assert result.returncode == 0 and result.stdout.startswith("restore drill passed"), result.stdout + result.stderr


def test_the_runbook_has_every_scenario_and_only_real_commands() -> None:
    blocks = runbook_blocks()
    assert tuple(blocks) == SCENARIOS
    for name, lines in blocks.items():
        for line in lines:
            words = shlex.split(line, comments=True)
            if words[0] == "runuser":  # the units' user runs trading-ops (a Debian host has no sudo)
                assert words[1:4] == ["-u", "trading-ops", "--"], f"{name}: {line}"
                words = words[4:]
            assert words[0] in {"trading-ops", "systemctl", "mkdir", "mv"}, f"{name}: {line}"


async def test_the_disaster_recovery_runbook_brings_the_system_back(deployment: Deployment) -> None:
    migrate.upgrade(deployment.url)
    await trade(deployment, 15)
    backup(deployment)
    drill_passed(deployment)

    # -- the evidence: the last drill passed, and the catalog lists the backup as off host -------------------------
    evidence, listing = deployment.run_scenario("evidence")
    latest = Catalog(deployment.var / "backups").get("latest")
    assert evidence.startswith("last restore drill passed at ") and f"on backup {latest.id}" in evidence
    assert latest.id in listing and " yes " in listing

    # -- a host lost: everything under /var/lib/trading-ops is gone; the off-host copy brings it back ---------------
    before = content(deployment.url)
    # The paper venue keeps its book in the bot's data directory; a real venue is not on the lost host: kept.
    venue = next(deployment.var.glob(f"*-{VENUE_STATE_FILE}"))
    venue_state = venue.read_bytes()
    shutil.rmtree(deployment.var)
    deployment.var.mkdir()
    outputs = deployment.run_scenario("host-lost")
    assert outputs[0].startswith(f"backup {latest.id} fetched from ")
    assert content(deployment.url) == before
    assert deployment.systemctl_calls()[-1][0] == "start"
    assert Catalog(deployment.var / "backups").get("latest").off_host  # and the new host backs up off host again
    venue.write_bytes(venue_state)

    # -- a database corrupted: the file's header overwritten while the bot ran (then it traded on, and was backed up)
    await trade(deployment, 10)
    backup(deployment)
    at_backup = content(deployment.url)
    await trade(deployment, 5)  # fills after the last backup: what a restore loses (reconciliation adopts them)
    database = deployment.var / "trading-ops.db"
    with open(database, "r+b") as fh:
        fh.write(b"\0" * 100)
    calls_before = len(deployment.systemctl_calls())
    deployment.run_scenario("corrupted")
    assert content(deployment.url) == at_backup
    assert (deployment.var / "damaged" / "trading-ops.db").read_bytes()[:100] == b"\0" * 100  # kept for a post-mortem
    calls = deployment.systemctl_calls()[calls_before:]
    assert [c[0] for c in calls] == ["stop", "start"]

    # -- a bad migration: a newer release's revision that broke the data (its fills gone), after the pre-upgrade
    # backup, and a scheduled backup of the broken database since -------------------------------------------------
    backup(deployment)  # "take a backup before an upgrade"
    before_upgrade = content(deployment.url)
    engine = create_engine(deployment.url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_bad'"))
        conn.execute(text("DELETE FROM fills"))
    engine.dispose()
    backup(deployment)  # the schedule backs up the broken database: `latest` is not the one to restore
    assert Catalog(deployment.var / "backups").get("latest").schema_revision == "9999_bad"
    outputs = deployment.run_scenario("bad-migration")
    assert "does not know" in outputs[1]
    assert content(deployment.url) == before_upgrade
    safety = [m for m in Catalog(deployment.var / "backups").manifests() if m.trigger == "safety"]
    assert safety and safety[0].schema_revision == "9999_bad"  # the broken database, kept for the bug report
    drill_passed(deployment)  # the next scheduled drill: the new backup of the restored database
