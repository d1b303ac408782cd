"""freqtrade's log records (its /api/v1/logs), each read once and classified: exchange errors by class and channel,
orders the venue refused or never answered, and writes its database refused. Only its log says these: its REST API
reports none of them."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from trading_ops.bot.journal_health import DATABASE_UNAVAILABLE, DISK_FULL, DISK_FULL_WORDS, WRITE_ERROR

# Records asked for on each poll: freqtrade keeps its last 1000 in memory. A dropped venue makes it log about 25 a
# second at its fastest (1 s loop, five attempts per call, a few calls); with the 2 s default poll, 200 covers that
# four times over. A flood beyond it goes uncounted, never double counted.
LOG_LIMIT = 200
# freqtrade names the ccxt error class in every exchange error: "Could not load ticker due to NetworkError. ...".
DUE_TO = re.compile(r"\bdue to ([A-Z][A-Za-z]+)\b")
# ccxt's class names -> the library's `error_class` (the same table as trading_ops.venues.ccxt.errors.ERROR_CLASSES, by
# name: the sidecar never imports ccxt for this). ExchangeNotAvailable is a dropped connection (network) when ccxt's
# message is only the request line, else the venue saying so (unavailable).
ERROR_CLASSES = {
    "InvalidNonce": "nonce",
    "RateLimitExceeded": "rate_limit",
    "DDoSProtection": "rate_limit",
    "RequestTimeout": "network",
    "NetworkError": "network",
    "ExchangeNotAvailable": "unavailable",
    "OnMaintenance": "unavailable",
    "AuthenticationError": "auth",
    "PermissionDenied": "auth",
    "AccountSuspended": "auth",
    "InsufficientFunds": "insufficient_funds",
    "InvalidOrder": "invalid_order",
    "OrderNotFound": "other",
    "ExchangeError": "other",
    "BadRequest": "other",
    "BadSymbol": "other",
    "BaseError": "other",
}
# A call freqtrade's retrier gave up on or retries quotes the exception alone: `fetch_ticker() returned exception:
# "<message>". Retrying still for 4 times.` A rate limit (ccxt's DDoSProtection and RateLimitExceeded) reaches it as
# freqtrade's own DDosProtection, whose message is ccxt's with no class named (`kraken {"error": ["EAPI:Rate limit
# exceeded"], ...}`): the venue's words say what it was. Kraken's EAPI:/EOrder:Rate limit exceeded, and the usual
# words of other venues (Too many requests, HTTP 429, DDoS protection).
RETRIED = re.compile(r'^\w+\(\) returned exception: "')
RATE_LIMIT_WORDS = re.compile(r"rate limit|too many requests|\b429\b|ddos", re.IGNORECASE)
REQUEST_LINE = re.compile(r'Message: \w+ (?:GET|POST|PUT|DELETE) [^\s"]+(?=["\s]|$)(?!\s+\d{3}\b)')
# Classes that mean the venue could not be reached: the channel is down (as the ccxt broker's `on_connection`).
CONNECTION_CLASSES = ("network", "unavailable")
# The channel of a failed call, from what freqtrade says it was doing; anything else is an order call.
MARKET_DATA = re.compile(r"ticker|candle|ohlcv|order ?book|markets|trades? data|funding rate", re.IGNORECASE)
ACCOUNT = re.compile(r"balance|positions", re.IGNORECASE)
# One attempt of a call freqtrade retries: counted as an error, but the call may still succeed.
RETRYING = "Retrying still for"
# freqtrade's summary of a failed batch of candle requests, whose attempts were each logged already.
ASYNC_SUMMARY = "Async code raised an exception"
# The order freqtrade tried to place and the venue refused (freqtrade's exceptions, quoted in its warnings).
REFUSED = re.compile(
    r"(?P<what>Insufficient funds to create|Could not create) (?P<order_type>[\w-]+) (?P<side>buy|sell) order on "
    r"market (?P<pair>\S+?)\.(?:\s|$)"
)
# An order request that got no answer: freqtrade gives up on it without looking it up, so it may be on the venue.
UNANSWERED = re.compile(
    r"Unable to (?:create trade for|exit trade|emergency exit trade) (?P<pair>\S+?): Could not place "
    r"(?P<side>buy|sell) order due to (?P<cls>\w+)"
)

# A database error as SQLAlchemy words it, in the message or the traceback freqtrade logged with it:
# "(sqlite3.OperationalError) database or disk is full", "(psycopg.errors.DiskFull) could not extend file ...",
# "(psycopg.OperationalError) connection failed: ... Connection refused". The driver's class, then its message.
DB_ERROR = re.compile(
    r"\((?P<cls>(?:sqlite3|psycopg2?|pymysql|MySQLdb)(?:\.[a-z_]+)*\.(?P<name>[A-Z]\w+))\) (?P<text>[^\n]*)"
)
# PostgreSQL's words for a full disk where the driver's class does not say it (a plain OperationalError).
PG_DISK_FULL_WORDS = ("could not extend file", "could not write to file")
# The driver's classes that mean the database cannot be reached or used at all (OperationalError and PostgreSQL's
# connection-class errors); the library's journal says `database_unavailable` for the same classes.
UNAVAILABLE_CLASSES = frozenset(
    {
        "OperationalError",
        "InterfaceError",
        "AdminShutdown",
        "CrashShutdown",
        "CannotConnectNow",
        "ConnectionFailure",
        "ConnectionException",
        "ConnectionDoesNotExist",
        "SqlclientUnableToEstablishSqlconnection",
    }
)
# A record's first line in freqtrade's log file (its LOGFORMAT "%(asctime)s - %(name)s - %(levelname)s - %(message)s",
# asctime in the host's local time); the lines up to the next such line are its message's rest (a traceback).
FILE_RECORD = re.compile(
    r"^(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) - (?P<logger>\S+) - (?P<level>[A-Z]+) - (?P<message>.*)$"
)
# What the first read of a log file takes of its end (history: it sets states, counts nothing).
FILE_HISTORY_BYTES = 64 * 1024


@dataclass(frozen=True)
class ExchangeError:
    """A failed exchange call freqtrade logged. `final`: the call failed for good (its last attempt, or a call
    freqtrade does not retry), so its channel is down if the class is a connection one."""

    at: float  # Unix time of the record
    error_class: str
    channel: str
    final: bool
    counted: bool  # one failed request (freqtrade's summaries of requests logged already are not)

    @property
    def disconnects(self) -> bool:
        return self.final and self.error_class in CONNECTION_CLASSES


@dataclass(frozen=True)
class OrderProblem:
    """An order freqtrade wanted and the venue refused (`reason` insufficient_funds or invalid_order), or whose request
    got no answer (`reason` unknown_outcome)."""

    at: float
    pair: str  # freqtrade's pair (BTC/USD)
    side: str
    order_type: str  # freqtrade's (market, limit, ...); empty when its message does not say
    reason: str


@dataclass(frozen=True)
class Record:
    at: float
    logger: str
    level: str
    message: str


def records(body: Any) -> list[Record]:
    """The records of a /logs answer ({"logs": [[date, epoch_ms, logger, level, message], ...]}), oldest first;
    malformed entries are skipped."""
    out: list[Record] = []
    rows = body.get("logs") if isinstance(body, dict) else None
    for row in rows if isinstance(rows, list) else ():
        if not isinstance(row, list) or len(row) < 5:
            continue
        at = row[1]
        if not isinstance(at, int | float) or isinstance(at, bool) or not math.isfinite(at):
            continue
        out.append(Record(float(at) / 1000.0, str(row[2]), str(row[3]), str(row[4])))
    return out


class LogFile:
    """freqtrade's own log file (its `--logfile`), followed across reads: what it logged survives its exit, where its
    /logs dies with it (freqtrade exits at the first database error its loop meets, its API first). Each `read()`
    returns the records completed since the previous one; the first read returns the last FILE_HISTORY_BYTES as
    history. A file that shrank or was replaced (freqtrade rotates it) is read again from its start."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._offset: int | None = None
        self._inode: int | None = None
        self._pending: list[str] = []  # the last record's lines: complete once another record or nothing new follows
        self._rest = b""  # a line not ended yet

    def read(self) -> list[Record]:
        try:
            with self.path.open("rb") as f:
                stat = os.fstat(f.fileno())
                if self._offset is None:
                    self._offset = max(0, stat.st_size - FILE_HISTORY_BYTES)
                elif stat.st_ino != self._inode or stat.st_size < self._offset:
                    self._offset, self._rest = 0, b""
                self._inode = stat.st_ino
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return []
        self._offset += len(data)
        buffer = self._rest + data
        cut = buffer.rfind(b"\n") + 1
        complete, self._rest = buffer[:cut], buffer[cut:]
        out: list[Record] = []
        lines = complete.decode("utf-8", "replace").split("\n")[:-1]
        for line in lines:
            if FILE_RECORD.match(line) and self._pending:
                out.extend(_file_record(self._pending))
                self._pending = []
            if FILE_RECORD.match(line) or self._pending:
                self._pending.append(line)
        if not lines and self._pending:  # nothing new: the last record is whole
            out.extend(_file_record(self._pending))
            self._pending = []
        return out


def _file_record(lines: list[str]) -> list[Record]:
    found = FILE_RECORD.match(lines[0])
    if found is None:
        return []
    try:
        at = datetime.strptime(found.group("at"), "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time, as freqtrade's
    except ValueError:
        return []
    message = "\n".join([found.group("message"), *lines[1:]])
    return [Record(at, found.group("logger"), found.group("level"), message)]


class LogCursor:
    """Hands out each record once across polls: those newer than the newest seen, and at that same instant only the
    ones not handed out yet."""

    def __init__(self) -> None:
        self._last: float | None = None
        self._at_last: set[tuple[str, str]] = set()

    def new(self, batch: Iterable[Record]) -> list[Record]:
        fresh = []
        for record in batch:
            key = (record.logger, record.message[:200])
            if self._last is None or record.at > self._last:
                self._last, self._at_last = record.at, {key}
                fresh.append(record)
            elif record.at == self._last and key not in self._at_last:
                self._at_last.add(key)
                fresh.append(record)
        return fresh


def exchange_error(record: Record) -> ExchangeError | None:
    """The exchange error a record reports, if any: a warning or worse naming a ccxt error class, or a call freqtrade's
    retrier reports refused for a rate limit (RETRIED)."""
    if record.level not in ("WARNING", "ERROR", "CRITICAL"):
        return None
    first_line = record.message.splitlines()[0] if record.message else ""
    found = DUE_TO.search(record.message)
    if found is not None and found.group(1) in ERROR_CLASSES:
        name = found.group(1)
    elif RETRIED.match(first_line) and RATE_LIMIT_WORDS.search(first_line):
        name = "RateLimitExceeded"
    else:
        return None
    error_class = ERROR_CLASSES[name]
    if name == "ExchangeNotAvailable" and REQUEST_LINE.search(first_line):
        error_class = "network"
    if MARKET_DATA.search(first_line):
        channel = "market_data"
    elif ACCOUNT.search(first_line):
        channel = "account"
    else:
        channel = "orders"
    from_exchange = record.logger.startswith("freqtrade.exchange")
    return ExchangeError(
        at=record.at,
        error_class=error_class,
        channel=channel,
        final=RETRYING not in first_line,
        counted=from_exchange and ASYNC_SUMMARY not in first_line,
    )


def order_problem(record: Record) -> OrderProblem | None:
    """The refused or unanswered order a warning reports, if any."""
    if record.level not in ("WARNING", "ERROR", "CRITICAL"):
        return None
    first_line = record.message.splitlines()[0]
    refused = REFUSED.search(first_line)
    if refused is not None:
        reason = "insufficient_funds" if refused.group("what").startswith("Insufficient") else "invalid_order"
        side, order_type = refused.group("side"), refused.group("order_type")
        return OrderProblem(record.at, refused.group("pair"), side, order_type, reason)
    unanswered = UNANSWERED.search(first_line)
    if unanswered is not None and ERROR_CLASSES.get(unanswered.group("cls")) in CONNECTION_CLASSES:
        return OrderProblem(record.at, unanswered.group("pair"), unanswered.group("side"), "", "unknown_outcome")
    return None


@dataclass(frozen=True)
class DatabaseError:
    """A database call of freqtrade's that failed on the database or its storage: its trades, orders and wallet
    history could not be written (freqtrade's journal). `reason` is the library's (trading_ops.bot.journal_health)."""

    at: float
    reason: str  # disk_full, database_unavailable or write_error
    error: str  # the driver's class and message, one line


def database_error(record: Record) -> DatabaseError | None:
    """The database failure a record reports, if any: a warning or worse quoting a database driver's error (SQLAlchemy
    names the driver's class in brackets). A constraint the data broke (IntegrityError) is freqtrade's own bug, not
    its database failing, as for the library's journal."""
    if record.level not in ("WARNING", "ERROR", "CRITICAL"):
        return None
    found = DB_ERROR.search(record.message)
    if found is None or found.group("name") == "IntegrityError":
        return None
    name, text = found.group("name"), found.group("text").lower()
    if name == "DiskFull" or any(word in text for word in (*DISK_FULL_WORDS, *PG_DISK_FULL_WORDS)):
        reason = DISK_FULL
    elif name in UNAVAILABLE_CLASSES:
        reason = DATABASE_UNAVAILABLE
    else:
        reason = WRITE_ERROR
    return DatabaseError(record.at, reason, f"{found.group('cls')}: {found.group('text')[:200]}")
