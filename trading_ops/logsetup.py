"""Logging of every command on stderr: text lines, or one JSON object per line with exceptions inside it."""

from __future__ import annotations

import logging
import sys
import threading

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The fields of a JSON line, from the LogRecord attributes they are renamed from; `extra=` keys follow them, the
# traceback of a logged exception is `exc_info` (a string), the time `ts` (ISO 8601, UTC).
JSON_FORMAT = "{levelname}{name}{message}"
JSON_FIELDS = {"levelname": "level", "name": "logger", "message": "msg"}
JSON_TIMESTAMP_FIELD = "ts"
# Alembic announces each of its plugins at INFO while it is imported: noise in every command's log.
QUIET_LOGGERS = ("alembic.runtime.plugins",)

log = logging.getLogger("trading_ops")


def json_formatter() -> logging.Formatter:
    from pythonjsonlogger.json import JsonFormatter  # only with the JSON log: every command sets logging up

    return JsonFormatter(JSON_FORMAT, style="{", rename_fields=JSON_FIELDS, timestamp=JSON_TIMESTAMP_FIELD)


def setup(level: str, fmt: str) -> None:
    """Configure the root logger on stderr; in JSON, warnings and threads' uncaught exceptions become records too,
    so that every line on stderr is one JSON object."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(json_formatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
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

    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)


def report(line: str) -> None:
    """The CLI's one-line error: as it is on a terminal, or as one JSON record when the log is JSON."""
    if json_enabled():
        log.error(line)
    else:
        print(line, file=sys.stderr)
