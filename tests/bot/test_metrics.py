"""The instrumentation API: metric names and values, latency tracking, the cardinality guard."""

from __future__ import annotations

import prometheus_client.metrics
import pytest
from prometheus_client import CollectorRegistry, Counter

from trading_ops.bot.broker import BrokerError, BrokerEvents
from trading_ops.bot.metrics import TRACKING_SWEEP_INTERVAL_SECONDS, BotMetrics
from trading_ops.paper.venue import PaperVenue


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def make(registry: CollectorRegistry, limit: int = 200) -> BotMetrics:
    return BotMetrics(venue="paper", strategy="demo", registry=registry, cardinality_limit=limit, daily_loss_limit=5000)


def test_order_lifecycle_counts_and_latency(registry: CollectorRegistry) -> None:
    m = make(registry)
    m.order_submitted("BTC-USD", "buy", "limit", client_order_id="c1")
    assert value(registry, "tradingbot_orders_in_flight", venue="paper", symbol="BTC-USD") == 1
    assert value(registry, "tradingbot_oldest_order_in_flight_timestamp_seconds", venue="paper") is not None
    m.order_acknowledged("BTC-USD", "buy", "limit", client_order_id="c1")
    assert value(registry, "tradingbot_orders_in_flight", venue="paper", symbol="BTC-USD") == 0
    assert value(registry, "tradingbot_open_orders", venue="paper", symbol="BTC-USD") == 1
    assert value(registry, "tradingbot_oldest_order_in_flight_timestamp_seconds", venue="paper") is None
    m.order_filled("BTC-USD", "buy", 0.5, 100.0, fee=0.05, liquidity="maker", client_order_id="c1")
    common = {"venue": "paper", "strategy": "demo", "symbol": "BTC-USD"}
    assert value(registry, "tradingbot_orders_submitted_total", side="buy", order_type="limit", **common) == 1
    assert value(registry, "tradingbot_orders_acknowledged_total", side="buy", order_type="limit", **common) == 1
    assert value(registry, "tradingbot_fills_total", side="buy", liquidity="maker", **common) == 1
    assert value(registry, "tradingbot_filled_quantity_total", side="buy", **common) == 0.5
    assert value(registry, "tradingbot_filled_notional_total", side="buy", **common) == 50.0
    assert value(registry, "tradingbot_fees_total", **common) == 0.05
    assert value(registry, "tradingbot_order_ack_latency_seconds_count", venue="paper", order_type="limit") == 1
    assert value(registry, "tradingbot_order_fill_latency_seconds_count", venue="paper", order_type="limit") == 1
    assert value(registry, "tradingbot_open_orders", venue="paper", symbol="BTC-USD") == 0


def test_explicit_latency_lands_in_the_right_bucket(registry: CollectorRegistry) -> None:
    m = make(registry)
    m.order_acknowledged("ETH-USD", "sell", "market", latency_seconds=0.0007)
    bucket = "tradingbot_order_ack_latency_seconds_bucket"
    assert value(registry, bucket, venue="paper", order_type="market", le="0.0005") == 0
    assert value(registry, bucket, venue="paper", order_type="market", le="0.001") == 1


def test_reject_and_cancel_end_tracking(registry: CollectorRegistry) -> None:
    m = make(registry)
    m.order_submitted("BTC-USD", "buy", "limit", client_order_id="a")
    m.order_submitted("BTC-USD", "sell", "limit", client_order_id="b")
    m.order_rejected("BTC-USD", "insufficient_funds", client_order_id="a")
    m.order_canceled("BTC-USD", client_order_id="b")
    assert value(registry, "tradingbot_orders_in_flight", venue="paper", symbol="BTC-USD") == 0
    assert (
        value(
            registry,
            "tradingbot_orders_rejected_total",
            venue="paper",
            strategy="demo",
            symbol="BTC-USD",
            reason="insufficient_funds",
        )
        == 1
    )
    assert value(registry, "tradingbot_orders_canceled_total", venue="paper", strategy="demo", symbol="BTC-USD") == 1


def test_broker_connection_counts_disconnects_and_reconnects(registry: CollectorRegistry) -> None:
    m = make(registry)
    m.broker_connection("orders", True)
    m.broker_connection("orders", False)
    m.broker_connection("orders", False)
    m.broker_connection("orders", True)
    assert value(registry, "tradingbot_broker_connected", venue="paper", channel="orders") == 1
    assert value(registry, "tradingbot_broker_disconnects_total", venue="paper", channel="orders") == 1
    assert value(registry, "tradingbot_broker_reconnects_total", venue="paper", channel="orders") == 1


def test_seconds_connected_count_every_stretch_up_even_one_no_scrape_saw(registry: CollectorRegistry) -> None:
    clock = [100.0]
    m = BotMetrics(venue="paper", registry=registry, monotonic=lambda: clock[0])
    m.broker_connection("orders", True)
    clock[0] += 10
    m.broker_connection("orders", False)  # down for 5 s between two scrapes: the gauge never showed it
    clock[0] += 5
    m.broker_connection("orders", True)
    clock[0] += 3
    assert value(registry, "tradingbot_broker_connected_seconds_total", venue="paper", channel="orders") == 13
    assert value(registry, "tradingbot_broker_connected", venue="paper", channel="orders") == 1


def test_every_venue_request_is_counted_with_its_duration(registry: CollectorRegistry) -> None:
    m = make(registry)
    m.broker_connection("orders", True)  # a channel's requests are exported from 0
    assert value(registry, "tradingbot_venue_requests_total", venue="paper", channel="orders") == 0
    m.venue_request("orders", 0.004)
    m.venue_request("orders", 0.3)
    assert value(registry, "tradingbot_venue_requests_total", venue="paper", channel="orders") == 2
    bucket = "tradingbot_venue_request_duration_seconds_bucket"
    assert value(registry, bucket, venue="paper", channel="orders", le="0.005") == 1
    assert value(registry, bucket, venue="paper", channel="orders", le="0.5") == 2


def test_crashes_are_absent_until_the_journal_counted_them(registry: CollectorRegistry) -> None:
    m = make(registry)
    assert value(registry, "tradingbot_crashes_total", venue="paper") is None  # never a jump from 0 at a start
    m.crashes(3)
    assert value(registry, "tradingbot_crashes_total", venue="paper") == 3


async def test_the_paper_venue_reports_each_request_answered_or_failed() -> None:
    venue = PaperVenue(seed=1)
    seen: list[tuple[str, float]] = []
    await venue.connect(BrokerEvents(on_venue_request=lambda channel, seconds: seen.append((channel, seconds))))
    await venue.positions()
    await venue.close()
    with pytest.raises(BrokerError):
        await venue.balances()  # the channel is closed: failed, and still a request
    assert [channel for channel, _ in seen] == ["orders", "orders"] and all(s >= 0 for _, s in seen)


def test_the_heartbeat_reads_the_loops_start_until_its_first_iteration(registry: CollectorRegistry) -> None:
    now = [1_700_000_000.0]
    m = BotMetrics(venue="paper", registry=registry, clock=lambda: now[0])
    assert value(registry, "tradingbot_heartbeat_timestamp_seconds") == 0  # before the loop: not started
    m.loop_started()
    assert value(registry, "tradingbot_heartbeat_timestamp_seconds") == 1_700_000_000.0
    assert m.heartbeat_age() is None  # no iteration yet
    now[0] += 5
    m.loop_iteration(0.003)
    now[0] += 5
    m.loop_started()  # a loop started again in the same process keeps its last iteration's heartbeat
    assert value(registry, "tradingbot_heartbeat_timestamp_seconds") == 1_700_000_005.0


def test_loop_iteration_is_the_heartbeat(registry: CollectorRegistry) -> None:
    m = BotMetrics(venue="paper", registry=registry, clock=lambda: 1_700_000_000.0)
    assert m.heartbeat_age() is None
    m.loop_iteration(0.003)
    assert value(registry, "tradingbot_heartbeat_timestamp_seconds") == 1_700_000_000.0
    assert value(registry, "tradingbot_loop_iterations_total") == 1
    assert value(registry, "tradingbot_loop_duration_seconds_bucket", le="0.005") == 1
    age = m.heartbeat_age()
    assert age is not None and age >= 0


def test_pnl_positions_and_venue_health(registry: CollectorRegistry) -> None:
    m = make(registry)
    # Not reported yet: absent, not 0 (which would read as "rate limit exhausted" and fire an alert).
    assert value(registry, "tradingbot_rate_limit_headroom_ratio", venue="paper") is None
    assert value(registry, "tradingbot_clock_skew_seconds", venue="paper") is None
    m.position("BTC-USD", -0.25, -16_000.0)
    m.balance("USD", 99_000.0)
    m.pnl(-120.5, 30.0)
    m.rate_limit_headroom(1.7)
    m.clock_skew(-0.25)
    m.venue_error("nonce")
    m.venue_error("exploded")
    assert value(registry, "tradingbot_position_quantity", venue="paper", symbol="BTC-USD") == -0.25
    assert value(registry, "tradingbot_balance", venue="paper", asset="USD") == 99_000.0
    assert value(registry, "tradingbot_realized_pnl", venue="paper", strategy="demo") == -120.5
    assert value(registry, "tradingbot_daily_loss_limit", venue="paper", strategy="demo") == 5000
    assert value(registry, "tradingbot_rate_limit_headroom_ratio", venue="paper") == 1.0  # ratios stay in 0-1
    assert value(registry, "tradingbot_clock_skew_seconds", venue="paper") == -0.25
    assert value(registry, "tradingbot_venue_errors_total", venue="paper", error_class="nonce") == 1
    assert value(registry, "tradingbot_venue_errors_total", venue="paper", error_class="other") == 1


def test_cardinality_guard_folds_overflow_into_other_and_counts_it(registry: CollectorRegistry) -> None:
    m = make(registry, limit=3)
    for i in range(10):
        m.market_data(f"SYM{i}")
    seen = {
        s.labels["symbol"] for f in registry.collect() if f.name == "tradingbot_market_data_updates" for s in f.samples
    }
    assert seen == {"SYM0", "SYM1", "SYM2", "other"}
    assert value(registry, "tradingbot_market_data_updates_total", venue="paper", symbol="other") == 7
    # Each update records two series (the counter and the last-update gauge): both are folded and counted.
    assert value(registry, "tradingbot_label_values_folded_total", label="symbol") == 14


def test_enumerated_labels_accept_only_known_values(registry: CollectorRegistry) -> None:
    m = make(registry)
    m.order_submitted("BTC-USD", "sideways", "iceberg")
    assert (
        value(
            registry,
            "tradingbot_orders_submitted_total",
            venue="paper",
            strategy="demo",
            symbol="BTC-USD",
            side="other",
            order_type="other",
        )
        == 1
    )
    assert value(registry, "tradingbot_label_values_folded_total", label="side") == 1


def test_order_ids_never_become_labels(registry: CollectorRegistry) -> None:
    m = make(registry)
    for i in range(50):
        m.order_submitted("BTC-USD", "buy", "limit", client_order_id=f"order-{i}")
        m.order_acknowledged("BTC-USD", "buy", "limit", client_order_id=f"order-{i}")
    for family in registry.collect():
        for sample in family.samples:
            assert not any("order-" in v for v in sample.labels.values()), sample


def test_build_info(registry: CollectorRegistry) -> None:
    make(registry)
    info = [s for f in registry.collect() if f.name == "tradingbot_build_info" for s in f.samples]
    assert len(info) == 1 and info[0].value == 1 and info[0].labels["version"]


class FakeMonotonic:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def dropped(registry: CollectorRegistry, reason: str) -> float | None:
    return value(registry, "tradingbot_tracked_orders_dropped_total", venue="paper", reason=reason)


def test_tracked_orders_older_than_the_horizon_are_dropped_and_counted(registry: CollectorRegistry) -> None:
    clock = FakeMonotonic()
    m = BotMetrics(
        venue="paper", registry=registry, monotonic=clock, clock=lambda: 1_700_000_000.0, tracked_order_max_age=60
    )
    assert dropped(registry, "expired") == 0 and dropped(registry, "overflow") == 0  # exported before any drop
    m.order_submitted("BTC-USD", "buy", "limit", client_order_id="forgotten")
    m.order_acknowledged("BTC-USD", "buy", "limit", client_order_id="forgotten")
    clock.now += 30
    m.order_submitted("BTC-USD", "buy", "limit", client_order_id="young")
    assert value(registry, "tradingbot_open_orders", venue="paper", symbol="BTC-USD") == 1
    assert value(registry, "tradingbot_orders_in_flight", venue="paper", symbol="BTC-USD") == 1
    clock.now += 31  # "forgotten" is now 61 s old, "young" 31 s
    # Past the horizon it no longer counts as open, even before a sweep removes it ...
    assert value(registry, "tradingbot_open_orders", venue="paper", symbol="BTC-USD") == 0
    assert m.tracked_orders() == 2
    # ... and the next tracked submission sweeps it out of memory.
    m.order_submitted("ETH-USD", "sell", "limit", client_order_id="next")
    assert m.tracked_orders() == 2
    assert dropped(registry, "expired") == 1
    # The oldest unacknowledged order is still "young", submitted 31 s before now.
    oldest = value(registry, "tradingbot_oldest_order_in_flight_timestamp_seconds", venue="paper")
    assert oldest == 1_700_000_000.0 - 31
    # An event for a dropped order is still counted, it just has no tracked submission to measure from.
    m.order_filled("BTC-USD", "buy", 1.0, 100.0, client_order_id="forgotten")
    assert (
        value(
            registry,
            "tradingbot_fills_total",
            venue="paper",
            strategy="default",
            symbol="BTC-USD",
            side="buy",
            liquidity="taker",
        )
        == 1
    )
    assert value(registry, "tradingbot_order_fill_latency_seconds_count", venue="paper", order_type="limit") is None


def test_tracked_orders_are_capped_oldest_first(registry: CollectorRegistry) -> None:
    clock = FakeMonotonic()
    m = BotMetrics(venue="paper", registry=registry, monotonic=clock, max_tracked_orders=3)
    for i in range(5):
        clock.now += 0.001
        m.order_submitted("BTC-USD", "buy", "limit", client_order_id=f"o{i}")
    # The cap is enforced by the sweep, at most once per TRACKING_SWEEP_INTERVAL_SECONDS, never per call.
    clock.now += TRACKING_SWEEP_INTERVAL_SECONDS
    m.order_submitted("BTC-USD", "buy", "limit", client_order_id="o5")
    assert m.tracked_orders() == 3
    assert dropped(registry, "overflow") == 3
    assert dropped(registry, "expired") == 0
    assert value(registry, "tradingbot_orders_in_flight", venue="paper", symbol="BTC-USD") == 3
    clock.now += 0.5
    m.order_acknowledged("BTC-USD", "buy", "limit", client_order_id="o0")  # dropped: nothing to measure
    m.order_acknowledged("BTC-USD", "buy", "limit", client_order_id="o5")  # tracked: latency measured
    count = "tradingbot_order_ack_latency_seconds_count"
    assert value(registry, count, venue="paper", order_type="limit") == 1
    assert value(registry, "tradingbot_order_ack_latency_seconds_sum", venue="paper", order_type="limit") == (
        pytest.approx(0.5)
    )


def test_a_negative_fee_is_a_rebate_not_a_crash(registry: CollectorRegistry) -> None:
    m = make(registry)
    m.order_filled("BTC-USD", "buy", 1.0, 100.0, fee=-0.02, liquidity="maker")
    m.order_filled("BTC-USD", "buy", 1.0, 100.0, fee=0.05, liquidity="taker")
    common = {"venue": "paper", "strategy": "demo", "symbol": "BTC-USD"}
    assert value(registry, "tradingbot_fee_rebates_total", **common) == pytest.approx(0.02)
    assert value(registry, "tradingbot_fees_total", **common) == pytest.approx(0.05)


def created_samples(registry: CollectorRegistry) -> list[str]:
    return [s.name for f in registry.collect() for s in f.samples if s.name.endswith("_created")]


def test_created_series_stay_unless_the_bot_opts_out(monkeypatch) -> None:
    """Turning `_created` off is process-wide in prometheus_client: the library does it only when asked."""
    monkeypatch.setattr(prometheus_client.metrics, "_use_created", True)  # the default; restored after the test
    other = CollectorRegistry()
    Counter("someone_elses_total", "A counter of another library in the same process.", registry=other)
    BotMetrics(venue="paper", registry=CollectorRegistry())
    assert created_samples(other) == ["someone_elses_created"]
    BotMetrics(venue="paper", registry=CollectorRegistry(), disable_created_series=True)
    assert created_samples(other) == []
