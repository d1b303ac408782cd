"""The paper bot's full /metrics as a golden exposition (node_exporter's collector/fixtures/e2e-output.txt habit).

tests/golden/paper_bot_metrics.txt is a complete /metrics page with deterministic values. A paper bot is built (not
started) on a fresh registry with fixed clocks, every record call of the instrumentation library is driven with
fixed arguments, and the values that belong to the host (process, GC, disk, data directory, file descriptors,
threads, memory limit, event-loop lag, Python version) are normalized; the resource budgets are configured. The
tests check that

- the generated exposition is deterministic and equals the committed golden file byte for byte;
- `promtool check metrics` accepts the golden file with no output at all;
- a live paper bot's /metrics, after real trading, passes `promtool check metrics` with no output, and has exactly
  the golden's families (name, type, help), every sample with a name and label names the golden has.

After an intended change to the metrics, regenerate the file with one command and review its diff:

    UPDATE_GOLDEN=1 .venv/bin/pytest tests/bot/test_metrics_golden.py

A new labelled family shows up in the golden without samples until `drive()` below records into it; the test
says so. Needs the promtool binary (Debian's `prometheus` package).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import prometheus_client.metrics
import pytest
from paper_helpers import TOKEN, control, fast_config, get, wait_for
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from trading_ops import logsetup
from trading_ops.bot.gate import Refusal
from trading_ops.bot.risk import ORDER_NOTIONAL, Breach
from trading_ops.config import Config
from trading_ops.paper.bot import PaperBot
from trading_ops.paper.streaming import StreamingPaperBroker

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "paper_bot_metrics.txt"
# 2026-01-01T00:00:00Z: the Unix time every timestamp of the golden is taken at.
FIXED_NOW = 1_767_225_600.0
# Values of the host, not of the bot's behaviour, by family name: every sample of the family gets this value.
HOST_VALUES = {
    "process_virtual_memory_bytes": 512e6,
    "process_resident_memory_bytes": 96e6,
    "process_start_time_seconds": FIXED_NOW - 3600,
    "process_cpu_seconds": 12.5,
    "process_open_fds": 24,
    "process_max_fds": 1024,
    "python_gc_objects_collected": 1000,
    "python_gc_objects_uncollectable": 0,
    "python_gc_collections": 10,
    "tradingbot_disk_free_bytes": 50e9,
    "tradingbot_disk_total_bytes": 100e9,
    "tradingbot_process_open_fds": 24,
    "tradingbot_process_max_fds": 1024,
    "tradingbot_process_threads": 4,
    "tradingbot_log_written_bytes": 2048,  # whatever the process logged before (logsetup.OUTPUT is process-wide)
    "tradingbot_memory_limit_bytes": 8e9,
    "tradingbot_data_dir_bytes": 1.5e6,
    "tradingbot_event_loop_lag_seconds": 0.0005,
}
HOST_PREFIXES = ("process_", "python_")
# Budgets in the configuration of the golden's bot and of the live one, so that their families are in both.
BUDGETS = {"memory_budget_bytes": 384 * 1024 * 1024, "data_dir_budget_bytes": 256 * 1024 * 1024}
HOST_LABELS = {"tradingbot_build_info": {"python_version": "normalized"}}


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Frozen(Collector):
    """Serves families collected earlier, so that they render through prometheus_client's own exposition."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


@pytest.fixture(autouse=True)
def no_created_series(monkeypatch: pytest.MonkeyPatch) -> None:
    """The paper bot turns prometheus_client's `_created` samples off (`disable_created_series`); that switch is
    process-wide, so it is pinned here for the test and restored after it, whatever other tests did."""
    monkeypatch.setattr(prometheus_client.metrics, "_use_created", False)


@pytest.fixture(autouse=True)
def journald_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bot's log as `logsetup.setup` makes it under systemd (to the journal, which rotates it), so that the log's
    families are in the golden whatever other tests in this process did to logging (OUTPUT is process-wide)."""
    monkeypatch.setattr(logsetup, "OUTPUT", logsetup.LogOutput(journal=True, active=True))


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: install Debian's 'prometheus' package (make test does)")
    return path


def lint(promtool: str, exposition: str) -> None:
    """`promtool check metrics` must accept the exposition and say nothing at all (no warning either)."""
    result = subprocess.run(
        [promtool, "check", "metrics"], check=False, input=exposition, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        result.stdout + result.stderr
    )


def drive(bot: PaperBot, clock: FakeMonotonic) -> None:
    """Every record call of the instrumentation library, with fixed arguments, as a trading bot makes them."""
    m = bot.metrics
    m._clock = lambda: FIXED_NOW
    m._monotonic = clock
    for channel in ("orders", "market_data", "account"):
        m.broker_connection(channel, True)
    m.broker_connection("market_data", False)
    m.broker_connection("market_data", True)
    for symbol in ("BTC-USD", "ETH-USD", "SOL-USD"):
        m.market_data(symbol)
    m.rate_limit_headroom(0.85)
    m.clock_skew(-0.0031)
    # A limit order acknowledged after 4 ms and filled in two parts (a maker fill with a rebate, then a taker fill).
    m.order_submitted("BTC-USD", "buy", "limit", client_order_id="o-1")
    clock.now += 0.004
    m.order_acknowledged("BTC-USD", "buy", "limit", client_order_id="o-1")
    clock.now += 0.096
    m.order_filled("BTC-USD", "buy", 0.25, 87_000.0, -0.5, "maker", client_order_id="o-1", order_done=False)
    clock.now += 0.4
    m.order_filled("BTC-USD", "buy", 0.25, 87_010.0, 10.88, "taker", client_order_id="o-1")
    # A market order with the venue's own latencies, a rejected order, a canceled one.
    m.order_submitted("ETH-USD", "sell", "market")
    m.order_acknowledged("ETH-USD", "sell", "market", latency_seconds=0.0021)
    m.order_filled("ETH-USD", "sell", 1.5, 3_000.0, 2.25, "taker", order_type="market", latency_seconds=0.0023)
    m.order_submitted("SOL-USD", "buy", "limit", client_order_id="o-3")
    m.order_rejected("SOL-USD", "insufficient_funds", client_order_id="o-3")
    m.order_submitted("ETH-USD", "buy", "limit", client_order_id="o-4")
    m.order_acknowledged("ETH-USD", "buy", "limit", client_order_id="o-4")
    m.order_canceled("ETH-USD", client_order_id="o-4")
    # Left working: one acknowledged (open), one not yet acknowledged (in flight since 1.5 s).
    m.order_submitted("SOL-USD", "sell", "limit", client_order_id="o-5")
    m.order_acknowledged("SOL-USD", "sell", "limit", client_order_id="o-5", latency_seconds=0.0035)
    m.order_submitted("BTC-USD", "sell", "limit", client_order_id="o-6")
    clock.now += 1.5
    # One order the bot's own gate kept back (paused), one whose submission got no answer.
    m.order_refused("ETH-USD", "trading_state")
    m.order_outcome_unknown("SOL-USD")
    m.position("BTC-USD", 0.5, 43_505.0)
    m.position("ETH-USD", -1.5, -4_500.0)
    m.balance("USD", 60_492.37)
    m.balance("BTC", 0.5)
    m.pnl(-13.13, 2.5)
    m.daily_loss_limit(5_000.0)
    m.venue_error("rate_limit")
    m.venue_request("orders", 0.012)
    m.venue_request("market_data", 0.0042)
    m.crashes(1)
    m.venue_error("exploded")  # not a known class: recorded as "other", the fold counted
    for duration in (0.0021, 0.0042, 0.0008):
        m.loop_iteration(duration)
    m.control_command("pause", "reconciler")
    m.control_command("resume", "operator")
    m.control_failure("resume", "unauthorized")
    m.collector_errors.labels("disk")  # exported at 0: no probe failed
    bot.inst.data_dir_size.measure()  # the walk a started bot runs in a worker thread
    bot.inst.state.apply("pause", reason="golden")
    bot.inst.state.apply("resume", reason="golden")
    # An order the gate kept back for a risk limit: counted as a breach, and the bot moved to reduce-only.
    breach = Breach(ORDER_NOTIONAL, "golden")
    bot.gate.refuse("BTC-USD", Refusal(breach.reason, breach.message, breach))
    # Its venue's stream (paper.stream, the default): both endpoints up, a ticker and the executions channel heard, a
    # silent ticker subscribed again, a dropped private endpoint reconnected, a sequence gap; the book families (a
    # streaming ccxt bot's) at their first values.
    assert isinstance(bot.broker, StreamingPaperBroker) and bot.broker.metrics is not None
    stream = bot.broker.metrics
    for endpoint in ("public", "private"):
        stream.connected.labels(endpoint).set(1)
        stream.set_rest_fallback(endpoint, False)
    stream.last_message.labels("ticker", "BTC-USD").set(FIXED_NOW)
    stream.last_message.labels("executions", "").set(FIXED_NOW)
    stream.silence_timeout.labels("ticker", "BTC-USD").set(3.0)
    stream.resyncs.labels("ticker", "silent").inc()
    stream.reconnects.labels("private", "closed").inc()
    stream.sequence_gaps.labels("executions").inc(2)
    stream.subscribe_failures.labels("ohlc", "refused").inc()
    stream.checksum_failures.labels("BTC/USD")
    stream.book_in_sync.labels("BTC/USD").set(1)
    # A Binance bot's (ProFills' user-stream hooks, BinanceBooks): at their first values.
    stream.book_gaps.labels("BTC/USD")
    stream.subscribed.labels("executions").set(1)
    stream.subscription_ends.labels("executions")
    stream.channel_silent.labels("executions").set(0)
    rec = bot.reconciler.metrics
    rec.run("startup", "clean", FIXED_NOW)
    rec.discrepancy("missing_fill")
    rec.position_mismatch("BTC-USD", 0.0)
    rec.unknown([])  # the run saw positions and balances


def normalized(registry: CollectorRegistry) -> str:
    """The registry's exposition with the host's values replaced by HOST_VALUES and HOST_LABELS."""
    families = []
    for family in registry.collect():
        if family.name in HOST_VALUES:
            value = float(HOST_VALUES[family.name])
            family.samples = [s._replace(value=value) for s in family.samples]
        elif family.name.startswith(HOST_PREFIXES):
            raise AssertionError(f"{family.name} has host-dependent values: give it a value in HOST_VALUES")
        if family.name in HOST_LABELS:
            family.samples = [s._replace(labels={**s.labels, **HOST_LABELS[family.name]}) for s in family.samples]
        families.append(family)
    frozen = CollectorRegistry()
    frozen.register(_Frozen(families))
    return generate_latest(frozen).decode()


def budgeted(config: Config) -> Config:
    for key, value in BUDGETS.items():
        setattr(config.bot.resources, key, value)
    return config


def golden_exposition(tmp_path: Path) -> str:
    bot = PaperBot(budgeted(fast_config(tmp_path)), token=TOKEN, registry=CollectorRegistry(), chaos=True)
    try:
        drive(bot, FakeMonotonic())
        return normalized(bot.inst.registry)
    finally:
        bot.engine.dispose()


def structure(exposition: str) -> tuple[dict[str, tuple[str, str]], dict[str, set[tuple[str, frozenset[str]]]]]:
    """Families as name -> (type, help), and per family the (sample name, label names) pairs it has."""
    families: dict[str, tuple[str, str]] = {}
    samples: dict[str, set[tuple[str, frozenset[str]]]] = {}
    for family in text_string_to_metric_families(exposition):
        families[family.name] = (family.type, family.documentation)
        samples[family.name] = {(s.name, frozenset(s.labels) - {"le"}) for s in family.samples}
    return families, samples


def test_golden_file_is_the_deterministic_exposition(tmp_path: Path) -> None:
    current = golden_exposition(tmp_path / "a")
    assert golden_exposition(tmp_path / "b") == current, "the generated exposition is not deterministic"
    _, samples = structure(current)
    empty = sorted(name for name, found in samples.items() if not found)
    assert not empty, f"families without a sample in the golden: record into them in drive(): {empty}"
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(current)
    assert GOLDEN.exists(), "no golden file yet: run UPDATE_GOLDEN=1 .venv/bin/pytest tests/bot/test_metrics_golden.py"
    assert current == GOLDEN.read_text(), (
        "the /metrics exposition changed: review, then UPDATE_GOLDEN=1 .venv/bin/pytest "
        "tests/bot/test_metrics_golden.py"
    )


def test_golden_file_passes_promtool(promtool: str) -> None:
    text = GOLDEN.read_text()
    assert "# TYPE tradingbot_orders_submitted_total counter" in text
    assert 'tradingbot_orders_submitted_total{order_type="limit",side="buy",strategy="demo",symbol="BTC-USD"' in text
    lint(promtool, text)


async def test_live_metrics_pass_promtool_and_match_the_golden_structure(tmp_path: Path, promtool: str) -> None:
    config = budgeted(fast_config(tmp_path, reject_probability=0.3))
    bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry(), chaos=True)
    port = await bot.start("127.0.0.1", 0)
    try:
        # Exercise the families: fills, rejects, cancels, a lost connection, a refused control call.
        await wait_for(lambda: bot.metrics._fills and bot.metrics._canceled and bot.metrics._rejected, 20)
        await control(port, "drop_connection")
        await control(port, "reconnect")
        await control(port, "reconnect", headers={"Authorization": "Bearer wrong"})
        status, text = await get(port, "/metrics")
    finally:
        await bot.stop()
    assert status == 200
    lint(promtool, text)
    live_families, live_samples = structure(text)
    golden_families, golden_samples = structure(GOLDEN.read_text())
    assert live_families == golden_families, "families differ from the golden file: regenerate it (see docstring)"
    for name, shapes in live_samples.items():
        missing = shapes - golden_samples[name]
        assert not missing, f"{name}: samples {sorted(missing)} are not in the golden file (see docstring)"
