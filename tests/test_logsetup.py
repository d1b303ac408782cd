"""`logging.format: json`: the real CLI writes one JSON object per stderr line, a logged exception inside its line."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from trading_ops import logsetup

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


# ---- the journal: one entry per record (a traceback included), its priority, journald's timestamp only -----------


# What a service logs: an INFO line, a warning, an exception with its traceback (ERROR), as a command's code does.
# argv: the log format, the journal's socket (logsetup.JOURNAL_SOCKET: one of the test's own, or none there).
LOGGING_SCRIPT = (
    "import logging, sys\n"
    "from trading_ops import logsetup\n"
    "logsetup.JOURNAL_SOCKET = sys.argv[2]\n"
    "logsetup.setup('INFO', sys.argv[1])\n"
    "log = logging.getLogger('trading_ops.bot')\n"
    "log.info('trading BTC/USD')\n"
    "log.warning('stream silent for %d s', 12)\n"
    "try:\n"
    "    raise OSError('venue unreachable')\n"
    "except OSError:\n"
    "    log.exception('reconciliation failed')\n"
    "logsetup.report('trading-ops: config: bot.listen.port: not a port')\n"
)


def run_on_stream(tmp_path: Path, log_format: str, journal_stream: str | None, socket_path: str = "") -> str:
    """LOGGING_SCRIPT's stderr, written to a file; JOURNAL_STREAM set to `journal_stream`, where "file" stands for
    that file's own device:inode (what systemd sets when stderr is its stream connection to journald); the journal's
    socket `socket_path` (default: a path where none listens)."""
    err = tmp_path / "stderr"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with open(err, "w") as out:
        if journal_stream is not None:
            stat = os.fstat(out.fileno())
            env["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino}" if journal_stream == "file" else journal_stream
        result = subprocess.run(
            [sys.executable, "-c", LOGGING_SCRIPT, log_format, socket_path or str(tmp_path / "no-journal")],
            stdout=subprocess.DEVNULL,
            stderr=out,
            env=env,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, err.read_text()
    return err.read_text()


def journal_entry(datagram: bytes) -> dict[str, str]:
    """One datagram of journald's native protocol as its fields (KEY=value lines; a binary-safe value as KEY, a
    newline, its 64-bit little-endian length, its bytes and a newline)."""
    fields: dict[str, str] = {}
    rest = datagram
    while rest:
        line, _, after = rest.partition(b"\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            rest = after
            continue
        (size,) = struct.unpack("<Q", after[:8])
        fields[line.decode()] = after[8 : 8 + size].decode()
        assert after[8 + size : 9 + size] == b"\n", datagram
        rest = after[9 + size :]
    return fields


def run_on_journal(tmp_path: Path, log_format: str) -> tuple[list[dict[str, str]], str]:
    """LOGGING_SCRIPT under systemd: stderr the journal's stream, and a journal socket of the test's own. The entries
    it received, and what reached stderr."""
    path = tmp_path / "journal.socket"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.setblocking(False)
    try:
        stderr = run_on_stream(tmp_path, log_format, "file", str(path))
        entries = []
        with contextlib.suppress(BlockingIOError):
            while True:
                entries.append(journal_entry(receiver.recv(1 << 20)))
    finally:
        receiver.close()
    return entries, stderr


def test_under_systemd_each_record_is_one_journal_entry_a_traceback_included(tmp_path: Path) -> None:
    """journald splits its stream at every newline: a traceback written there became one entry per line (98 ERROR
    messages, 8,919 entries at priority err). Each record goes to the journal's socket instead, one entry: MESSAGE
    the record's text (no time of its own: journald stamps it) with its traceback's lines, its PRIORITY, the logger."""
    entries, stderr = run_on_journal(tmp_path, "text")
    assert [(e["PRIORITY"], e["MESSAGE"].split("\n")[0]) for e in entries] == [
        ("6", "INFO trading_ops.bot: trading BTC/USD"),
        ("4", "WARNING trading_ops.bot: stream silent for 12 s"),
        ("3", "ERROR trading_ops.bot: reconciliation failed"),
    ], entries
    failure = entries[2]["MESSAGE"].splitlines()
    assert failure[1] == "Traceback (most recent call last):" and failure[-1] == "OSError: venue unreachable", failure
    assert {e["LOGGER"] for e in entries} == {"trading_ops.bot"} and all(e["SYSLOG_IDENTIFIER"] for e in entries)
    # The CLI's one-line error stays on the stream, with its priority.
    assert stderr.splitlines() == ["<3>trading-ops: config: bot.listen.port: not a port"], stderr


def test_the_json_log_under_systemd_is_one_entry_per_record(tmp_path: Path) -> None:
    entries, stderr = run_on_journal(tmp_path, "json")
    records = [json.loads(e["MESSAGE"]) for e in entries]
    assert [int(e["PRIORITY"]) for e in entries] == [{"ERROR": 3, "WARNING": 4, "INFO": 6}[r["level"]] for r in records]
    assert [r["msg"] for r in records][1:] == [
        "stream silent for 12 s",
        "reconciliation failed",
        "trading-ops: config: bot.listen.port: not a port",
    ]
    assert "OSError: venue unreachable" in records[2]["exc_info"]
    assert stderr == ""


def test_without_the_journals_socket_a_record_is_still_one_line_of_the_stream(tmp_path: Path) -> None:
    """No socket to take it (none there, a record past a datagram's size): the record goes to the journal's stream as
    one line, its priority first and its newlines written as `\\n`, so a traceback is still one entry."""
    lines = run_on_stream(tmp_path, "text", "file").splitlines()
    assert lines[:2] == [
        "<6>INFO trading_ops.bot: trading BTC/USD",
        "<4>WARNING trading_ops.bot: stream silent for 12 s",
    ], lines
    assert lines[2].startswith("<3>ERROR trading_ops.bot: reconciliation failed\\nTraceback (most recent call last):")
    assert lines[2].endswith("\\nOSError: venue unreachable"), lines
    assert lines[3:] == ["<3>trading-ops: config: bot.listen.port: not a port"], lines  # the CLI's one-line error


@pytest.mark.parametrize("value", [None, "1:2", "not-a-stream"], ids=["unset", "another-stream", "garbage"])
def test_a_redirected_stderr_keeps_the_plain_lines(tmp_path: Path, value: str | None) -> None:
    """JOURNAL_STREAM inherited by a command whose stderr goes elsewhere (`2>file` in a unit's ExecStart, a pipe):
    the lines stay as a terminal shows them, time first, and nothing goes to the journal's socket."""
    lines = run_on_stream(tmp_path, "text", value).splitlines()
    assert not any(re.match(r"<\d>", line) for line in lines), lines
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO trading_ops.bot: trading BTC/USD$", lines[0]), lines
    assert lines[-1] == "trading-ops: config: bot.listen.port: not a port"


@pytest.mark.parametrize(
    ("level", "priority"),
    [
        (logging.CRITICAL, 2),
        (logging.ERROR, 3),
        (logging.WARNING, 4),
        (logging.INFO, 6),
        (logging.DEBUG, 7),
        (logging.INFO + 5, 6),  # a custom level between two: the lower one's
        (logging.NOTSET, 7),
    ],
)
def test_syslog_priority_of_each_level(level: int, priority: int) -> None:
    assert logsetup.syslog_priority(level) == priority


def test_the_journal_formatter_has_no_time_of_its_own() -> None:
    formatter = logsetup.formatter("text", journal=True)
    record = logging.LogRecord("trading_ops.bot", logging.WARNING, __file__, 1, "first\nsecond %s", ("arg",), None)
    assert formatter.format(record) == "WARNING trading_ops.bot: first\nsecond arg"  # journald stamps the time
    plain = logsetup.formatter("text", journal=False).format(record)
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ WARNING trading_ops.bot: first\nsecond arg$", plain)
