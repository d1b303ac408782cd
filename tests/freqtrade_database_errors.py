"""freqtrade's database errors as its log records carry them (the log message, a newline and the traceback, as /logs
answers it): what the log reader classifies (test_freqtrade_logs) and the journal acts on (test_freqtrade_journal)."""

# freqtrade 2026.9 with its SQLite database on a full tmpfs (SQLAlchemy 2.1): a /forceexit's commit failed in the API
# (uvicorn logs the traceback), then the trading loop's own commit killed freqtrade ("Fatal exception!", its API
# already stopped). The record's message is the log message, a newline and the traceback, as /logs answers it.
TRACEBACK_HEAD = (
    "Traceback (most recent call last):\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/sqlalchemy/engine/base.py", line 1201, in _commit_impl\n'
    "    self.engine.dialect.do_commit(self.connection)\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/sqlalchemy/engine/default.py", line 954, in do_commit\n'
    "    dbapi_connection.commit()\n"
)
DISK_FULL_TAIL = (
    "sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) database or disk is full\n"
    "(Background on this error at: https://sqlalche.me/e/21/e3q8)"
)
API_DISK_FULL = (
    f"Exception in ASGI application\n{TRACEBACK_HEAD}sqlite3.OperationalError: database or disk is full\n\n"
    f"The above exception was the direct cause of the following exception:\n\n{TRACEBACK_HEAD}{DISK_FULL_TAIL}"
)
LOOP_DISK_FULL = (
    f"Fatal exception!\n{TRACEBACK_HEAD}sqlite3.OperationalError: database or disk is full\n{DISK_FULL_TAIL}"
)
# SQLAlchemy's str() of psycopg 3's errors (checked against the installed SQLAlchemy and psycopg), as a traceback's
# last line; SQLite's sqlite3 messages for a locked or vanished file (sqlite3.c: SQLITE_BUSY, SQLITE_CANTOPEN).
PG_REFUSED = (
    "sqlalchemy.exc.OperationalError: (psycopg.OperationalError) connection failed: connection to server at "
    '"127.0.0.1", port 5433 failed: Connection refused\n\tIs the server running on that host and accepting TCP/IP '
    "connections?\n(Background on this error at: https://sqlalche.me/e/21/e3q8)"
)
PG_CLOSED = (
    "sqlalchemy.exc.OperationalError: (psycopg.OperationalError) consuming input failed: server closed the connection "
    "unexpectedly\n\tThis probably means the server terminated abnormally\n\tbefore or while processing the request."
)
PG_SHUTDOWN = (
    "sqlalchemy.exc.OperationalError: (psycopg.errors.AdminShutdown) terminating connection due to administrator "
    "command"
)
PG_DISK_FULL = (
    'sqlalchemy.exc.OperationalError: (psycopg.errors.DiskFull) could not extend file "base/16384/16402": No space '
    "left on device\nHINT:  Check free disk space."
)
SQLITE_LOCKED = "sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) database is locked"
SQLITE_GONE = "sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) unable to open database file"
SQLITE_MALFORMED = "sqlalchemy.exc.DatabaseError: (sqlite3.DatabaseError) database disk image is malformed"
DUPLICATE = "sqlalchemy.exc.IntegrityError: (sqlite3.IntegrityError) UNIQUE constraint failed: orders.ft_pair"
