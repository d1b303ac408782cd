"""freqtrade's log records as the sidecar reads them (trading_ops.integrations.freqtrade.logs) and the venue connection
it derives from them (venue_link). The messages are freqtrade 2026.9's own, as it logged them on the paper gateway
(tests/integrations/test_freqtrade_sidecar.py and test_freqtrade_e2e.py watch the same with a real freqtrade); these
cases pin the exact wording the sidecar depends on, so a freqtrade upgrade that changes it fails here, by name."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from freqtrade_database_errors import (
    API_DISK_FULL,
    DISK_FULL_TAIL,
    DUPLICATE,
    LOOP_DISK_FULL,
    PG_CLOSED,
    PG_DISK_FULL,
    PG_REFUSED,
    PG_SHUTDOWN,
    SQLITE_GONE,
    SQLITE_LOCKED,
    SQLITE_MALFORMED,
    TRACEBACK_HEAD,
)

from trading_ops.integrations.freqtrade.journal import QUIET_SECONDS, FreqtradeJournal
from trading_ops.integrations.freqtrade.logs import (
    LogCursor,
    LogFile,
    Record,
    database_error,
    exchange_error,
    order_problem,
    records,
)
from trading_ops.integrations.freqtrade.venue_link import VenueLink

URL = "http://127.0.0.1:36095"
CANDLES_RETRY = (
    '_async_get_candle_history() returned exception: "Could not fetch historical candle (OHLCV) data for BTC/USD, 1m, '
    f'spot due to ExchangeNotAvailable. Message: kraken GET {URL}/0/public/OHLC?pair=XXBTZUSD&interval=1". '
    "Retrying still for 4 times."
)
TICKER_GAVE_UP = (
    'fetch_ticker() returned exception: "Could not load ticker due to NetworkError. Message: kraken GET '
    f'{URL}/0/public/Ticker?pair=XETHZUSD". Giving up.'
)
ORDER_GAVE_UP = (
    'fetch_order() returned exception: "Could not get order due to NetworkError. Message: kraken POST '
    f'{URL}/0/private/QueryOrders". Giving up.'
)
BALANCE_GAVE_UP = (
    'get_balances() returned exception: "Could not get balance due to NetworkError. Message: kraken POST '
    f'{URL}/0/private/BalanceEx". Giving up.'
)
VENUE_UNAVAILABLE = (
    'fetch_ticker() returned exception: "Could not load ticker due to ExchangeNotAvailable. Message: kraken '
    '{"error":["EService:Unavailable"]}". Giving up.'
)
ASYNC_SUMMARY = (
    "Async code raised an exception: TemporaryError('Could not fetch historical candle (OHLCV) data for BTC/USD, 1m, "
    f"spot due to ExchangeNotAvailable. Message: kraken GET {URL}/0/public/OHLC?pair=XXBTZUSD&interval=1')"
)
REFUSED = (
    "Unable to create trade for BTC/USD: Insufficient funds to create market buy order on market BTC/USD. Tried to buy "
    'amount 0.0015 at rate 64570.36.Message: kraken {"error": ["EOrder:Insufficient funds"], "result": {}}'
)
# freqtrade 2026.9 under the gateway's rate_limit fault (Kraken's EAPI:Rate limit exceeded): ccxt raises DDoSProtection,
# which freqtrade re-raises as its own DDosProtection with ccxt's message alone, no class named. Its retrier logs each
# attempt (and backs off 1, 2, 5, 10 s), then gives up; the exit that needed the ticker says so from the bot's loop.
RATE_LIMITED = 'kraken {"error": ["EAPI:Rate limit exceeded"], "result": {}}'
TICKER_RATE_LIMITED_RETRY = f'fetch_ticker() returned exception: "{RATE_LIMITED}". Retrying still for 4 times.'
TICKER_RATE_LIMITED_GAVE_UP = f'fetch_ticker() returned exception: "{RATE_LIMITED}". Giving up.'
EXIT_RATE_LIMITED = f"Unable to exit trade BTC/USD: {RATE_LIMITED}"
BACKOFF = "Applying DDosProtection backoff delay: 1"
UNANSWERED = (
    "Unable to exit trade ETH/USD: Could not place sell order due to NetworkError. Message: kraken POST "
    f"{URL}/0/private/AddOrder"
)


def record(message: str, logger: str = "freqtrade.exchange.common", level: str = "WARNING", at: float = 1.0) -> Record:
    return Record(at, logger, level, message)


@pytest.mark.parametrize(
    ("message", "logger", "error_class", "channel", "final", "counted"),
    [
        # A dropped connection, one attempt of a call freqtrade retries: an error, not yet a lost channel.
        (CANDLES_RETRY, "freqtrade.exchange.common", "network", "market_data", False, True),
        (TICKER_GAVE_UP, "freqtrade.exchange.common", "network", "market_data", True, True),
        (ORDER_GAVE_UP, "freqtrade.exchange.common", "network", "orders", True, True),
        (BALANCE_GAVE_UP, "freqtrade.exchange.common", "network", "account", True, True),
        # The venue said it is unavailable (it answered): unavailable, still a lost channel.
        (VENUE_UNAVAILABLE, "freqtrade.exchange.common", "unavailable", "market_data", True, True),
        # freqtrade's summary of attempts it logged one by one already: the channel's state, not another error.
        (ASYNC_SUMMARY, "freqtrade.exchange.exchange", "network", "market_data", True, False),
        # The same failure quoted by the bot's own loop: a lost channel, counted where the exchange logged it.
        (
            "Unable to exit trade ETH/USD: Could not load ticker due to NetworkError. Message: kraken GET x",
            "freqtrade.freqtradebot",
            "network",
            "market_data",
            True,
            False,
        ),
    ],
)
def test_exchange_errors_by_class_and_channel(
    message: str, logger: str, error_class: str, channel: str, final: bool, counted: bool
) -> None:
    error = exchange_error(record(message, logger))
    assert error is not None
    assert (error.error_class, error.channel, error.final, error.counted) == (error_class, channel, final, counted)
    assert error.disconnects is final


def test_a_rate_limit_freqtrade_retries_is_counted_by_its_venue_words_not_a_class_name() -> None:
    retry = exchange_error(record(TICKER_RATE_LIMITED_RETRY))
    gave_up = exchange_error(record(TICKER_RATE_LIMITED_GAVE_UP))
    assert retry is not None and gave_up is not None
    assert (retry.error_class, retry.channel, retry.final, retry.counted) == ("rate_limit", "market_data", False, True)
    assert (gave_up.error_class, gave_up.final, gave_up.counted) == ("rate_limit", True, True)
    # Refused, not unreachable: the channel stays up (the venue answered).
    assert not gave_up.disconnects
    link = VenueLink()
    link.observe([retry, gave_up], loop_end=5.0, count=True)
    assert link.errors == {"rate_limit": 2} and link.all_connected
    # The bot loop's exit that needed the ticker is the same failure again: not a call of its own. The backoff INFO
    # names no venue error, and a warning quoting no retried call is not read for words.
    assert exchange_error(record(EXIT_RATE_LIMITED, "freqtrade.freqtradebot")) is None
    assert exchange_error(record(BACKOFF, level="INFO")) is None
    assert exchange_error(record("Strategy says: rate limit your entries", "freqtrade.strategy")) is None


def test_what_is_not_an_exchange_error() -> None:
    # An INFO with a traceback (freqtrade logs "Cannot query order ... due to Traceback" at INFO), a warning naming no
    # ccxt class, and a nonce refusal, which is an error but no lost connection.
    assert exchange_error(record(f"Cannot query order due to {TICKER_GAVE_UP}", level="INFO")) is None
    assert exchange_error(record("Outdated history for pair BTC/USD. Last tick is 2 minutes old")) is None
    nonce = exchange_error(record('fetch_order() returned exception: "x due to InvalidNonce. Message: y". Giving up.'))
    assert nonce is not None and nonce.error_class == "nonce" and not nonce.disconnects


def test_orders_the_venue_refused_or_never_answered() -> None:
    refused = order_problem(record(REFUSED, "freqtrade.freqtradebot"))
    assert refused is not None
    assert (refused.pair, refused.side, refused.order_type, refused.reason) == (
        "BTC/USD",
        "buy",
        "market",
        "insufficient_funds",
    )
    invalid = order_problem(
        record("Unable to exit trade ETH/USD: Could not create limit sell order on market ETH/USD. Tried to sell")
    )
    assert invalid is not None and (invalid.pair, invalid.side, invalid.reason) == ("ETH/USD", "sell", "invalid_order")
    unanswered = order_problem(record(UNANSWERED, "freqtrade.freqtradebot"))
    assert unanswered is not None and (unanswered.pair, unanswered.reason) == ("ETH/USD", "unknown_outcome")
    assert order_problem(record(TICKER_GAVE_UP)) is None


def test_the_cursor_hands_out_each_record_once_across_overlapping_answers() -> None:
    body = {"logs": [["d", 1000.0, "a", "INFO", "one"], ["d", 2000.0, "a", "INFO", "two"], "junk", ["d", "x"]]}
    cursor = LogCursor()
    assert [r.message for r in cursor.new(records(body))] == ["one", "two"]
    later = {"logs": [*body["logs"][:2], ["d", 2000.0, "b", "INFO", "same instant"], ["d", 3000.0, "a", "INFO", "3"]]}
    assert [r.message for r in cursor.new(records(later))] == ["same instant", "3"]
    assert cursor.new(records(later)) == []
    assert records({"logs": "nonsense"}) == [] and records(None) == []


def test_a_channel_is_down_from_a_final_failure_until_a_whole_loop_iteration_passes_without_one() -> None:
    link = VenueLink()
    retry = exchange_error(record(CANDLES_RETRY, at=10.0))
    gave_up = exchange_error(record(TICKER_GAVE_UP, at=10.5))
    assert retry is not None and gave_up is not None
    link.observe([retry], loop_end=9.0)
    assert link.connected("market_data")  # a retry may still succeed
    link.observe([gave_up], loop_end=10.6)  # the iteration that failed ended at 10.6
    assert not link.connected("market_data") and link.connected("orders") and not link.all_connected
    link.observe([], loop_end=10.6)
    assert not link.connected("market_data")
    link.observe([], loop_end=11.6)  # an iteration that began after the failure, and none failed since
    assert link.connected("market_data")
    assert link.errors == {"network": 2.0}
    assert (link.disconnects, link.reconnects) == ({"market_data": 1.0}, {"market_data": 1.0})


def test_a_new_freqtrade_start_reconnects_and_older_failures_say_nothing_of_it() -> None:
    link = VenueLink()
    gave_up = exchange_error(record(TICKER_GAVE_UP, at=10.0))
    assert gave_up is not None
    link.observe([gave_up], loop_end=None)
    assert not link.connected("market_data")
    link.restarted()  # reload_config: a new exchange connection
    assert link.connected("market_data") and link.reconnects == {"market_data": 1.0}
    # A failure of the replaced connection read after the restart is counted, but does not take the new one down.
    late = exchange_error(record(TICKER_GAVE_UP, at=11.0))
    assert late is not None
    link.observe([late], loop_end=None, since=12.0)
    assert link.connected("market_data") and link.errors == {"network": 2.0}


def test_the_first_poll_sets_the_state_without_counting_history() -> None:
    link = VenueLink()
    gave_up = exchange_error(record(TICKER_GAVE_UP, at=10.0))
    assert gave_up is not None
    link.observe([gave_up], loop_end=10.2, count=False)
    assert not link.connected("market_data")
    assert (link.errors, link.disconnects) == ({}, {})


@pytest.mark.parametrize(
    ("message", "logger", "reason"),
    [
        (API_DISK_FULL, "uvicorn.error", "disk_full"),
        (LOOP_DISK_FULL, "freqtrade", "disk_full"),
        (f"Error saving wallet balance records: {PG_DISK_FULL}", "freqtrade.wallets", "disk_full"),
        (f"Fatal exception!\n{PG_REFUSED}", "freqtrade", "database_unavailable"),
        (f"Fatal exception!\n{PG_CLOSED}", "freqtrade", "database_unavailable"),
        (f"Fatal exception!\n{PG_SHUTDOWN}", "freqtrade", "database_unavailable"),
        (f"Error finding onexchange order\n{SQLITE_LOCKED}", "freqtrade.freqtradebot", "database_unavailable"),
        (f"Fatal exception!\n{SQLITE_GONE}", "freqtrade", "database_unavailable"),
        (f"Fatal exception!\n{SQLITE_MALFORMED}", "freqtrade", "write_error"),
    ],
)
def test_database_errors_by_reason(message: str, logger: str, reason: str) -> None:
    error = database_error(record(message, logger, level="ERROR"))
    assert error is not None and error.reason == reason
    assert "\n" not in error.error and error.error.split(":")[0].startswith(("sqlite3.", "psycopg."))


def test_what_is_not_a_database_failure() -> None:
    # A duplicate is freqtrade's bug, not its database failing (as the library's journal); an INFO quoting an error;
    # a traceback that names no database driver; an exchange error.
    assert database_error(record(f"Fatal exception!\n{DUPLICATE}", "freqtrade", "ERROR")) is None
    assert database_error(record(f"retrying\n{SQLITE_LOCKED}", level="INFO")) is None
    assert database_error(record("Fatal exception!\nValueError: (x.y) z", "freqtrade", "ERROR")) is None
    assert database_error(record(TICKER_GAVE_UP)) is None


def test_the_journal_fails_at_the_first_database_error_and_is_writable_again_after_a_write_that_landed() -> None:
    journal = FreqtradeJournal()
    trade = {"trade_id": 1, "orders": [{"order_id": "P1", "filled": 0.0015}]}
    journal.observe([], (trade,), [], loop_end=9.0)
    assert not journal.failing and journal.gauges() == {"disk_full": 0, "database_unavailable": 0, "write_error": 0}
    full = database_error(record(API_DISK_FULL, "uvicorn.error", "ERROR", at=10.0))
    assert full is not None
    journal.observe([full], (trade,), [], loop_end=10.5)
    assert journal.reason == "disk_full" and journal.failures == 1
    assert journal.gauges() == {"disk_full": 1, "database_unavailable": 0, "write_error": 0}
    # freqtrade's loop turns on, nothing new in its database: still failing (the database takes reads).
    journal.observe([], (trade,), [], loop_end=20.0)
    assert journal.failing
    # The latest failure's reason is the one exported.
    locked = database_error(record(f"x\n{SQLITE_LOCKED}", level="ERROR", at=21.0))
    assert locked is not None
    journal.observe([locked], (trade,), [], loop_end=21.5)
    assert journal.reason == "database_unavailable" and journal.failures == 2
    # A trade that closed since: it was committed, so the database is written again.
    journal.observe([], (), [{"trade_id": 1}], loop_end=22.5)
    assert not journal.failing and journal.error == "" and journal.failures == 2


def test_a_new_trade_or_a_fill_proves_a_write_and_a_quiet_loop_clears_after_quiet_seconds() -> None:
    journal = FreqtradeJournal()
    journal.observe([], (), [], loop_end=1.0)
    failure = database_error(record(LOOP_DISK_FULL, "freqtrade", "ERROR", at=10.0))
    assert failure is not None
    journal.observe([failure], (), [], loop_end=10.2)
    journal.observe([], ({"trade_id": 7, "orders": [{"order_id": "P9", "filled": 0.0}]},), [], loop_end=11.0)
    assert not journal.failing  # a trade it had not listed: freqtrade committed it
    journal.observe([failure], ({"trade_id": 7, "orders": [{"order_id": "P9", "filled": 0.0}]},), [], loop_end=12.0)
    journal.observe([], ({"trade_id": 7, "orders": [{"order_id": "P9", "filled": 0.5}]},), [], loop_end=13.0)
    assert not journal.failing  # the order's fill was committed
    journal.observe([failure], (), [], loop_end=14.0)
    journal.observe([], (), [], loop_end=10.0 + QUIET_SECONDS - 0.1)
    assert journal.failing  # the loop ran on, not yet long enough to say the database takes writes
    journal.observe([], (), [], loop_end=None)  # stopped or down: says nothing
    assert journal.failing
    journal.observe([], (), [], loop_end=10.0 + QUIET_SECONDS)
    assert not journal.failing


def test_the_first_poll_sets_the_journal_state_without_counting_history() -> None:
    journal = FreqtradeJournal()
    failure = database_error(record(LOOP_DISK_FULL, "freqtrade", "ERROR", at=10.0))
    assert failure is not None
    journal.observe([failure], ({"trade_id": 1, "orders": []},), [], loop_end=10.5, count=False)
    assert journal.reason == "disk_full" and journal.failures == 0
    journal.observe([], ({"trade_id": 1, "orders": []},), [], loop_end=11.0)
    assert journal.failing  # the trades the first poll found are no write of the failure's time


def test_the_log_file_is_followed_record_by_record_tracebacks_included_and_read_again_when_rotated(
    tmp_path: Path,
) -> None:
    # freqtrade's --logfile lines (LOGFORMAT, local time), as freqtrade 2026.9 wrote them on the full tmpfs.
    path = tmp_path / "freqtrade.log"
    path.write_text(
        "partial line of an older record\n2026-11-25 07:25:03,431 - freqtrade.worker - INFO - Bot heartbeat\n"
    )
    log_file = LogFile(path)
    assert log_file.read() == []  # the last record may still grow (a traceback): held until more comes or nothing does
    (first,) = log_file.read()
    assert (first.logger, first.level, first.message) == ("freqtrade.worker", "INFO", "Bot heartbeat")
    assert first.at == datetime(2026, 11, 25, 7, 25, 3, 431000).timestamp()
    with path.open("a") as out:
        out.write("2026-11-25 07:25:14,229 - freqtrade - ERROR - Fatal exception!\n" + TRACEBACK_HEAD + DISK_FULL_TAIL)
        out.write("\n2026-11-25 07:25:14,300 - freqtrade - INFO - half a li")
    assert log_file.read() == []  # the traceback may go on: held until the next record's line is whole
    with path.open("a") as out:
        out.write("ne\n")
    (fatal,) = log_file.read()
    assert fatal.message.startswith("Fatal exception!\nTraceback") and fatal.message.endswith("e3q8)")
    error = database_error(fatal)
    assert error is not None and error.reason == "disk_full"
    assert [r.message for r in log_file.read()] == ["half a line"]
    # Rotated (freqtrade's RotatingFileHandler renames it and starts a new file): read from the new file's start.
    path.rename(tmp_path / "freqtrade.log.1")
    path.write_text("2026-11-25 07:26:00,000 - freqtrade - INFO - after rotation\n")
    log_file.read()
    assert [r.message for r in log_file.read()] == ["after rotation"]
    path.unlink()
    assert log_file.read() == []  # no file (yet): nothing, no error
