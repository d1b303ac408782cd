"""freqtrade's log records as the sidecar reads them (trading_ops.integrations.freqtrade.logs) and the venue connection
it derives from them (venue_link). The messages are freqtrade 2026.9's own, as it logged them on the paper gateway
(tests/test_freqtrade_sidecar.py and test_freqtrade_e2e.py watch the same with a real freqtrade); these cases pin the
exact wording the sidecar depends on, so a freqtrade upgrade that changes it fails here, by name."""

from __future__ import annotations

import pytest

from trading_ops.integrations.freqtrade.logs import LogCursor, Record, exchange_error, order_problem, records
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
