"""Logging of every command on stderr: text lines, or one JSON object per line with exceptions inside it; under
systemd each record straight to the journal, one entry with its syslog priority (a traceback included)."""

from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import struct
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# On the journal's stream (a service's stderr under systemd) journald stamps each line itself: no second time.
JOURNAL_TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"
# journald reads a leading "<N>" on a line as its syslog priority (sd-daemon(3); SyslogLevelPrefix= is on by
# default) and stores the line without it, so `journalctl -p err` finds the errors. Python's levels to syslog's:
# CRITICAL crit, ERROR err, WARNING warning, INFO info, DEBUG debug (a custom level takes the next one down).
SYSLOG_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
SYSLOG_DEBUG = 7
SYSLOG_ERR = 3
# The fields of a JSON line, from the LogRecord attributes they are renamed from; `extra=` keys follow them, the
# traceback of a logged exception is `exc_info` (a string), the time `ts` (ISO 8601, UTC).
JSON_FORMAT = "{levelname}{name}{message}"
JSON_FIELDS = {"levelname": "level", "name": "logger", "message": "msg"}
JSON_TIMESTAMP_FIELD = "ts"
# journald's native protocol (systemd.journal-fields(7), sd_journal_sendv): one datagram per record, so a traceback is
# one entry, not one per line as on the stream, where journald splits at every newline.
JOURNAL_SOCKET = "/run/systemd/journal/socket"
# Alembic announces each of its plugins at INFO while it is imported: noise in every command's log.
QUIET_LOGGERS = ("alembic.runtime.plugins",)

log = logging.getLogger("trading_ops")


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a Python log level (journald's PRIORITY=)."""
    return next((priority for level, priority in SYSLOG_PRIORITIES if levelno >= level), SYSLOG_DEBUG)


def journal_stream(stream: IO[str] | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """Whether `stream` (stderr) is connected to the journal: systemd sets $JOURNAL_STREAM to that connection's
    "device:inode" (systemd.exec(5)), which a redirection (`2>file`, a pipe) no longer matches."""
    env = os.environ if environ is None else environ
    device, sep, inode = env.get("JOURNAL_STREAM", "").partition(":")
    if not (sep and device.isdigit() and inode.isdigit()):
        return False
    try:
        stat = os.fstat((sys.stderr if stream is None else stream).fileno())
    except (OSError, ValueError, AttributeError):  # no file descriptor (a StringIO, a closed stream)
        return False
    return stat.st_dev == int(device) and stat.st_ino == int(inode)


def journal_fields(fields: Mapping[str, str]) -> bytes:
    """`fields` in journald's native datagram format: KEY=value lines, a value with a newline as the key, a newline,
    its length (64-bit little-endian) and its bytes."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """Each record as one journal entry through journald's socket (`JOURNAL_SOCKET`): MESSAGE the formatted text, a
    traceback's lines included, with PRIORITY and the logger's name. A record the socket does not take (none there, a
    message past the datagram's size) goes to `fallback` (stderr, the journal's stream) as one line, its newlines
    written as the two characters `\\n`, with its "<N>" priority: still one entry."""

    def __init__(self, fallback: IO[str], path: str | None = None, identifier: str | None = None) -> None:
        super().__init__()
        self.fallback = fallback
        self.path = path or JOURNAL_SOCKET
        self.identifier = identifier or os.path.basename(sys.argv[0] or "") or "python"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            priority = syslog_priority(record.levelno)
            fields = {
                "MESSAGE": text,
                "PRIORITY": str(priority),
                "SYSLOG_IDENTIFIER": self.identifier,
                "LOGGER": record.name,
                "CODE_FILE": record.pathname,
                "CODE_LINE": str(record.lineno),
                "CODE_FUNC": record.funcName,
            }
            try:
                self.sock.sendto(journal_fields(fields), self.path)
            except OSError:
                self.fallback.write(f"<{priority}>" + text.replace("\n", "\\n") + "\n")
                self.fallback.flush()
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self.sock.close()
        super().close()


def formatter(fmt: str, journal: bool) -> logging.Formatter:
    """The formatter of `fmt` (text or json); for the journal (`journal`) without a time of its own: journald stamps
    each entry itself."""
    if fmt == "json":
        return json_formatter()
    return logging.Formatter(JOURNAL_TEXT_FORMAT if journal else TEXT_FORMAT)


def json_formatter() -> logging.Formatter:
    from pythonjsonlogger.json import JsonFormatter  # only with the JSON log: every command sets logging up

    return JsonFormatter(JSON_FORMAT, style="{", rename_fields=JSON_FIELDS, timestamp=JSON_TIMESTAMP_FIELD)


@dataclass
class LogOutput:
    """Where the log set up by `setup` goes, and how much it wrote: what a bot exports of its log (its size and whether
    it rotates, a readiness criterion)."""

    written_bytes: int = 0
    file: Path | None = None
    file_max_bytes: int = 0
    journal: bool = False
    active: bool = False


# The log of this process, as `setup` made it (one per process: the root logger's).
OUTPUT = LogOutput()


class _Counting:
    """Counts the characters of every line a handler formats (ASCII in practice: bytes) into OUTPUT."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)  # type: ignore[misc]
        OUTPUT.written_bytes += len(text) + 1
        return text  # type: ignore[no-any-return]


class CountingStreamHandler(_Counting, logging.StreamHandler):  # type: ignore[type-arg]
    pass


class CountingFileHandler(_Counting, logging.handlers.RotatingFileHandler):
    pass


class CountingJournalHandler(_Counting, JournalHandler):
    pass


def setup(level: str, fmt: str, file: str = "", file_max_bytes: int = 0, file_backups: int = 0) -> None:
    """Configure the root logger on stderr (or in `file`, rotated at `file_max_bytes` keeping `file_backups`); in JSON,
    warnings and threads' uncaught exceptions become records too, so that every line is one JSON object."""
    handler: logging.Handler
    if file:
        Path(file).parent.mkdir(parents=True, exist_ok=True)
        handler = CountingFileHandler(file, maxBytes=file_max_bytes, backupCount=file_backups, encoding="utf-8")
        handler.setFormatter(formatter(fmt, False))
        OUTPUT.file, OUTPUT.file_max_bytes, OUTPUT.journal = Path(file), file_max_bytes, False
    else:
        journal = journal_stream()
        if journal:  # stderr is the journal's stream: each record an entry of its own, a traceback included
            handler = CountingJournalHandler(sys.stderr)
        else:
            handler = CountingStreamHandler(sys.stderr)
        handler.setFormatter(formatter(fmt, journal))
        OUTPUT.file, OUTPUT.file_max_bytes, OUTPUT.journal = None, 0, journal
    OUTPUT.active = True
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    if fmt == "json":
        logging.captureWarnings(True)
        threading.excepthook = log_thread_exception


def log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    log.error("uncaught exception in thread %s", name, exc_info=args.exc_value)


def json_enabled() -> bool:
    if "pythonjsonlogger.json" not in sys.modules:  # no JSON formatter was ever made
        return False
    from pythonjsonlogger.json import JsonFormatter

    formatters = (getattr(h.formatter, "inner", h.formatter) for h in logging.getLogger().handlers)
    return any(isinstance(f, JsonFormatter) for f in formatters)


def report(line: str) -> None:
    """The CLI's one-line error: as it is on a terminal (with the priority "err" on the journal's stream), or as
    one JSON record when the log is JSON."""
    if json_enabled():
        log.error(line)
    else:
        print(f"<{SYSLOG_ERR}>{line}" if journal_stream() else line, file=sys.stderr)
