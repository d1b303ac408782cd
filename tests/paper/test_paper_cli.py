"""`trading-ops paper-bot` and `trading-ops chaos` as real processes: start, fault, crash, SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from paper_process import CONSOLE_SCRIPT, cli, wait_healthy
from ports import free_port
from secret_file import write_secret
from system_binaries import REPO_ROOT

from trading_ops.config import load_config
from trading_ops.db import migrate
from trading_ops.db.errors import NOT_MIGRATED
from trading_ops.paper.cli import schema_problem

TOKEN = "cli-test-token"


def write_config(tmp_path: Path, port: int) -> Path:
    write_secret(tmp_path / "token", TOKEN + "\n")
    config = tmp_path / "trading-ops.yaml"
    config.write_text(
        "database:\n  url: sqlite:///var/journal.db\n"
        f"bot:\n  control_token_file: token\n  data_dir: var\n  listen:\n    port: {port}\n"
        "paper:\n  seed: 3\n  loop_interval_seconds: 0.05\n  tick_interval_seconds: 0.02\n"
    )
    return config


@pytest.fixture
def running_bot(tmp_path):
    port = free_port()
    config = write_config(tmp_path, port)
    assert cli("--config", str(config), "db", "upgrade").returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "trading_ops", "--config", str(config), "paper-bot", "--chaos"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_healthy(port, proc)
        yield proc, config, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


def test_chaos_cli_crash_kills_the_process(running_bot) -> None:
    proc, config, _port = running_bot
    status = cli("--config", str(config), "chaos", "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["state"] == "active"
    crash = cli("--config", str(config), "chaos", "crash", "--json")
    assert crash.returncode == 0 and json.loads(crash.stdout)["fault"] == "crash"
    assert proc.wait(timeout=10) == -signal.SIGKILL


def one_line_error(result: subprocess.CompletedProcess[str], status: int) -> str:
    """Failed with `status`, said so in one line on stderr, printed nothing on stdout."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert (result.returncode, len(lines), result.stdout) == (status, 1, ""), (result.returncode, result.stderr)
    return lines[0]


def test_chaos_cli_sends_typed_arguments_and_reports_refusals_in_one_line(running_bot) -> None:
    _proc, config, _port = running_bot
    result = cli("--config", str(config), "chaos", "hang_loop", "seconds=0.5", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["seconds"] == 0.5
    # Without --json: the answer's fields, one `key: value` line each.
    plain = cli("--config", str(config), "chaos", "hang_loop", "seconds=0.5")
    assert plain.returncode == 0 and "fault: hang_loop" in plain.stdout.splitlines(), plain.stdout
    assert "seconds: 0.5" in plain.stdout.splitlines()
    # A bad argument value, an unknown fault: usage errors (exit 2), one line each.
    line = one_line_error(cli("--config", str(config), "chaos", "stale_market_data", "symbol=NOPE-USD"), 2)
    assert line.startswith("trading-ops: chaos: stale_market_data: ") and "unknown symbol" in line
    assert line.endswith("(HTTP 400)")
    line = one_line_error(cli("--config", str(config), "chaos", "melt_down", "--json"), 2)
    assert line.startswith("trading-ops: chaos: melt_down: unknown command 'melt_down' (known: ")
    assert "reject_storm" in line and "loss_spike" in line
    # A command the bot's state refuses: a failure (exit 1), one line.
    line = one_line_error(cli("--config", str(config), "chaos", "clear_halt"), 1)
    assert line == "trading-ops: chaos: clear_halt: 'clear_halt' is not allowed while active (HTTP 409)"
    bad = cli("--config", str(config), "chaos", "hang_loop", "seconds")
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr
    # An argument the fault does not take is refused (it was ignored, the fault injected, exit 0): one line, exit 2.
    line = one_line_error(cli("--config", str(config), "chaos", "drop_connection", "bogus=1"), 2)
    assert line == (
        "trading-ops: chaos: drop_connection: drop_connection does not take bogus (it takes no argument) (HTTP 400)"
    )
    line = one_line_error(cli("--config", str(config), "chaos", "hang_loop", "second=5"), 2)
    assert line == "trading-ops: chaos: hang_loop: hang_loop does not take second (it takes seconds) (HTTP 400)"


def test_chaos_status_into_a_pipe_whose_reader_went_away_ends_quietly(running_bot) -> None:
    _proc, config, _port = running_bot
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `| head` leaves it once it has read its lines
    try:
        result = subprocess.run(
            [str(CONSOLE_SCRIPT), "--config", str(config), "chaos", "status"],
            check=False,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, "")


def test_sigterm_stops_the_bot_cleanly(running_bot) -> None:
    proc, _config, _port = running_bot
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert proc.stderr is not None and b"stopped" in proc.stderr.read()


def test_paper_bot_without_token_exits_2(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("TRADING_OPS_CONTROL_TOKEN", raising=False)
    config = tmp_path / "c.yaml"
    config.write_text("database:\n  url: sqlite:///var/j.db\nbot:\n  data_dir: var\n")
    result = cli("--config", str(config), "paper-bot")
    assert result.returncode == 2 and "bot.control_token" in result.stderr


def test_paper_bot_on_a_database_not_migrated_exits_2_with_one_line(tmp_path) -> None:
    config = write_config(tmp_path, free_port())
    result = cli("--config", str(config), "paper-bot")
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["trading-ops: database is not migrated: run `trading-ops db upgrade`"]
    # Migrated only part of the way is not migrated either; at the head there is nothing to say.
    loaded = load_config(config)
    first = list(ScriptDirectory.from_config(migrate.alembic_config(loaded.database_url())).walk_revisions())[-1]
    assert cli("--config", str(config), "db", "upgrade", first.revision).returncode == 0
    behind = cli("--config", str(config), "paper-bot")
    assert behind.returncode == 2 and behind.stderr.splitlines() == [f"trading-ops: {NOT_MIGRATED}"]
    assert cli("--config", str(config), "db", "upgrade").returncode == 0
    assert schema_problem(loaded) is None


def test_a_second_paper_bot_with_the_same_config_exits_1_naming_the_first(running_bot) -> None:
    """The first keeps running untouched; the second says in one line who holds the bot, and exits 1."""
    proc, config, port = running_bot
    second = cli("--config", str(config), "paper-bot", "--port", str(free_port()))
    assert second.returncode == 1, second.stderr
    [line] = second.stderr.splitlines()
    assert re.fullmatch(
        rf"trading-ops: paper-bot: bot 'paper-1' is already running: pid {proc.pid} on \S+ since \S+ holds \S+"
        r"paper-1\.lock",
        line,
    ), line
    assert proc.poll() is None
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        assert response.status == 200
