"""Commands sent straight to the freqtrade sidecar's control API, journaled by the sidecar in the trading-ops database
(trading_ops.integrations.command_journal) and pulled by the reconciler's own code into its audit chain, once, with
the token that sent them; a sidecar started again keeps them; a database not migrated stops it at start, in one line.

Needs freqtrade installed (`pip install -e '.[freqtrade]'`, `make test` does it): a REAL freqtrade trading live on the
Kraken-compatible paper gateway, and the sidecar as its own process (`trading-ops freqtrade`), all started here.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from control_audit_helpers import chain, pull_file, reconciler_config, verify_cli
from decision_helpers import TRUSTED, clear_halt
from freqtrade_helpers import PASSWORD, USERNAME, Freqtrade, make_freqtrade, until
from gateway_helpers import Gateway, start_gateway
from ports import free_port
from secret_file import write_secret
from system_binaries import REPO_ROOT

pytestmark = [pytest.mark.slow]

# The sidecar's named tokens: a person's (operate) and the reconciler's (what its bots[] entry holds).
ONCALL = "oncall-operate-token-0123456789"
RECONCILER = "reconciler-operate-token-0123456789"
LEAD = "lead-destructive-token-0123456789"
TARGET = "ft-1"
BOT = "ft-audit"
POLL_SECONDS = 0.2


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("gateway"))
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def freqtrade(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Freqtrade]:
    ft = make_freqtrade(
        tmp_path_factory.mktemp("freqtrade"), gateway.url, gateway.api_key, gateway.api_secret, hold_seconds=3600
    )
    ft.start()
    try:
        yield ft
    finally:
        ft.stop()


def sidecar_config(tmp_path: Path, freqtrade: Freqtrade, port: int, db_url: str) -> Path:
    write_secret(tmp_path / "ft-password", PASSWORD + "\n")
    write_secret(tmp_path / "oncall-token", ONCALL)
    write_secret(tmp_path / "lead-token", LEAD)
    write_secret(tmp_path / "reconciler-token", RECONCILER)
    section: dict[str, Any] = {
        "control_tokens": [
            {"name": "oncall", "scope": "operate", "token_file": str(tmp_path / "oncall-token")},
            {"name": "lead", "scope": "destructive", "token_file": str(tmp_path / "lead-token")},
            {"name": "reconciler", "scope": "operate", "token_file": str(tmp_path / "reconciler-token")},
        ],
        # The tests' reconciler key: a loss-limit halt clears on a decision it signed for this bot.
        "decision_keys": [TRUSTED],
        "poll_interval_seconds": POLL_SECONDS,
        "data_dir": str(tmp_path / "sidecar-data"),
        "targets": {
            TARGET: {
                "url": freqtrade.url,
                "username": USERNAME,
                "password_file": str(tmp_path / "ft-password"),
                "listen": {"host": "127.0.0.1", "port": port},
                "bot": BOT,
            }
        },
    }
    path = tmp_path / "trading-ops.yaml"
    path.write_text(json.dumps({"database": {"url": db_url}, "freqtrade": section}))
    return path


class Sidecar:
    """`trading-ops freqtrade` as its own process, on a fixed configuration and port: start, stop (SIGTERM)."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config = config
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trading_ops", "--config", str(self.config), "freqtrade"],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "ab"),  # noqa: SIM115
            cwd=REPO_ROOT,
        )
        until("the sidecar answers status", lambda: self.control("status", ONCALL)[0] == 200, 60)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def control(self, command: str, token: str, **args: Any) -> tuple[int, dict[str, Any]]:
        if self.proc is not None and self.proc.poll() is not None:
            pytest.fail(f"the sidecar exited with {self.proc.returncode}: {self.log.read_text()[-800:]}", pytrace=False)
        req = urllib.request.Request(
            f"{self.url}/control/{command}",
            data=json.dumps(args).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=40) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


def test_a_direct_command_and_a_refused_one_are_audited_once_and_outlive_a_sidecar_restart(
    tmp_path: Path, freqtrade: Freqtrade, migrated_sqlite: str
) -> None:
    """A person's `pause` with their own token and a `halt` its scope refuses (403) are two entries after the
    reconciler's pull, not again after a second; `status` and `control_events` are none. The sidecar stopped and
    started again still answers them (a new run); a pull appends nothing twice, a `resume` after the restart is
    appended, and `audit verify` finds the chain whole."""
    port = free_port()
    sidecar = Sidecar(sidecar_config(tmp_path, freqtrade, port, migrated_sqlite), port, tmp_path / "sidecar.log")
    config = reconciler_config(tmp_path / "reconciler", migrated_sqlite, BOT, sidecar.url, RECONCILER)
    try:
        sidecar.start()
        assert sidecar.control("pause", ONCALL, reason="checking")[0] == 200
        assert sidecar.control("halt", ONCALL)[0] == 403
        status, page = sidecar.control("control_events", RECONCILER)
        assert status == 200 and page["bot"] == BOT and page["caller"] == "reconciler", page
        events = page["events"]
        assert [(e["command"], e["principal"], e["outcome"]) for e in events] == [
            ("pause", "oncall", "ok"),
            ("halt", "oncall", "refused 403"),
        ], events
        assert (events[0]["before"], events[0]["after"], events[0]["peer"]) == ("active", "paused", "127.0.0.1")
        assert "halt needs the 'destructive' scope" in events[1]["error"]

        assert pull_file(config) == {BOT: 2}
        assert pull_file(config) == {BOT: 0}
        seen = [
            (e["action"], e["principal"], e["source"], e["before"], e["after"]) for e in chain(migrated_sqlite, BOT)
        ]
        assert seen == [
            ("bot_control:pause", "oncall", "127.0.0.1", {"state": "active"}, {"state": "paused", "outcome": "ok"}),
            ("bot_control:halt", "oncall", "127.0.0.1", {}, {"outcome": "refused 403"}),
        ]
        run = events[0]["run_id"]

        assert sidecar.stop() == 0
        sidecar.start()
        status, page = sidecar.control("control_events", RECONCILER)
        assert [e["command"] for e in page["events"]] == ["pause", "halt"], page
        assert pull_file(config) == {BOT: 0}
        assert sidecar.control("resume", ONCALL)[0] == 200
        # The reconciler's own command (its token, counted under its name) is journaled but not audited again.
        assert sidecar.control("pause", RECONCILER)[0] == 200
        assert sidecar.control("resume", RECONCILER)[0] == 200
        status, page = sidecar.control("control_events", RECONCILER, after=page["last_id"])
        assert [(e["command"], e["principal"]) for e in page["events"]] == [
            ("resume", "oncall"),
            ("pause", "reconciler"),
            ("resume", "reconciler"),
        ], page
        assert page["events"][0]["run_id"] != run
        assert pull_file(config) == {BOT: 1}
    finally:
        sidecar.stop()
        if freqtrade.api("GET", "/show_config")["state"] != "running":
            freqtrade.api("POST", "/start")
    assert [e["action"] for e in chain(migrated_sqlite, BOT)] == [
        "bot_control:pause",
        "bot_control:halt",
        "bot_control:resume",
    ]
    assert verify_cli(config) == 0
    assert "Traceback" not in (tmp_path / "sidecar.log").read_text()


def test_a_clear_halt_on_a_signed_decision_is_audited_with_who_decided(
    tmp_path: Path, freqtrade: Freqtrade, migrated_sqlite: str
) -> None:
    """A loss-limit halt of freqtrade cleared on the reconciler's signed decision: the sidecar's journaled clear_halt
    names the decision it acted on, and its audit entry says who asked for it and who approved it beside the token
    that sent the command."""
    port = free_port()
    sidecar = Sidecar(sidecar_config(tmp_path, freqtrade, port, migrated_sqlite), port, tmp_path / "sidecar.log")
    config = reconciler_config(tmp_path / "reconciler", migrated_sqlite, BOT, sidecar.url, RECONCILER)
    try:
        sidecar.start()
        assert sidecar.control("halt", LEAD, reason="risk limit daily_loss: loss 120.00 >= 100.00")[0] == 200
        status, answer = sidecar.control("clear_halt", LEAD, **clear_halt(BOT))
        assert status == 200 and answer["state"] == "paused" and answer["decision"], answer
        status, page = sidecar.control("control_events", RECONCILER)
        events = page["events"]
        assert [(e["command"], e["principal"], e["outcome"]) for e in events] == [
            ("halt", "lead", "ok"),
            ("clear_halt", "lead", "ok"),
        ], events
        decided = events[1]["decision"]
        assert decided["id"] == answer["decision"], decided
        assert (decided["requested_by"], decided["approvers"]) == ("alice", ["bob"]), decided
        assert pull_file(config) == {BOT: 2}
    finally:
        sidecar.stop()
        if freqtrade.api("GET", "/show_config")["state"] != "running":
            freqtrade.api("POST", "/start")
    last = chain(migrated_sqlite, BOT)[-1]
    assert last["action"] == "bot_control:clear_halt" and last["decision"] == f"decision:{answer['decision']}", last
    assert "requested by alice, approved by bob" in last["comment"], last
    assert verify_cli(config) == 0


def test_a_database_not_migrated_stops_the_sidecar_in_one_line_exit_2(tmp_path: Path, freqtrade: Freqtrade) -> None:
    config = sidecar_config(tmp_path, freqtrade, free_port(), f"sqlite:///{tmp_path / 'empty.db'}")
    result = subprocess.run(
        [sys.executable, "-m", "trading_ops", "--config", str(config), "freqtrade"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "database.url" in lines[0] and "trading-ops db upgrade" in lines[0], result.stderr
