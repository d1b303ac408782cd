"""`logging.format: json`: the real CLI writes one JSON object per stderr line, a logged exception inside its line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

FIELDS = {"ts", "level", "logger", "msg"}


def run_cli(tmp_path: Path, log_format: str, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "trading-ops.yaml"
    # A database under a path whose "directory" is a file: `db upgrade` fails, and the CLI logs the exception with
    # its traceback before its one-line error.
    (tmp_path / "not-a-directory").write_text("")
    config.write_text(
        f"database:\n  url: sqlite:///{tmp_path / 'not-a-directory' / 'db.sqlite'}\n"
        f"logging:\n  level: INFO\n  format: {log_format}\n"
    )
    return subprocess.run(
        [sys.executable, "-m", "trading_ops", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def json_lines(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line parsed as JSON; a line that is not one fails the test, naming the line."""
    records = []
    for line in stderr.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line on stderr: {line!r}\n--- whole stderr ---\n{stderr}") from None
        assert isinstance(record, dict), line
        records.append(record)
    return records


def test_json_log_of_a_failing_command_is_one_object_per_line_with_the_traceback_inside(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "json", "db", "upgrade")
    assert result.returncode == 1, result.stderr
    records = json_lines(result.stderr)
    assert records, "nothing logged"
    for record in records:
        assert FIELDS <= record.keys(), record
        assert record["ts"].endswith("+00:00"), record["ts"]  # ISO 8601, UTC
    (failure,) = [r for r in records if "exc_info" in r]
    assert failure["level"] == "ERROR" and failure["logger"] == "trading_ops"
    assert failure["msg"] == "db failed"
    assert failure["exc_info"].startswith("Traceback (most recent call last):")
    assert "FileExistsError" in failure["exc_info"]
    # The CLI's one-line error is the last record, itself JSON.
    assert records[-1]["level"] == "ERROR" and records[-1]["msg"].startswith("trading-ops: db failed: ")
    assert "Traceback" not in records[-1]["msg"]


def test_text_log_keeps_the_plain_one_line_error(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "text", "db", "upgrade")
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert last.startswith("trading-ops: db failed: ") and "File exists" in last
    assert not last.startswith("{")


def test_json_log_turns_warnings_and_thread_crashes_into_records(tmp_path: Path) -> None:
    """What Python would print raw on stderr (a warning, a thread's uncaught exception) is a JSON record too."""
    script = (
        "import logging, threading, warnings\n"
        "from trading_ops import logsetup\n"
        "logsetup.setup('INFO', 'json')\n"
        "warnings.warn('an old API', DeprecationWarning)\n"
        "def boom():\n"
        "    raise RuntimeError('thread broke')\n"
        "t = threading.Thread(target=boom, name='worker'); t.start(); t.join()\n"
        "logging.getLogger('trading_ops.test').info(\n"
        "    'multi\\nline \"quoted\" %s', 'arg', extra={'symbol': 'BTC-USDT'})\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "always", "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    records = json_lines(result.stderr)
    assert [r["logger"] for r in records] == ["py.warnings", "trading_ops", "trading_ops.test"]
    assert "an old API" in records[0]["msg"]
    assert records[1]["msg"] == "uncaught exception in thread worker"
    assert "RuntimeError: thread broke" in records[1]["exc_info"]
    assert records[2]["msg"] == 'multi\nline "quoted" arg' and records[2]["symbol"] == "BTC-USDT"
